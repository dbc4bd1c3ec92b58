"""Slice, Reshape, BatchReindex, Filter, Parameter, Reduction, Silence, ArgMax, Tile, Embed,
Bias and Scale: against PyTorch where it has the op, by hand otherwise, gradients, errors."""
import numpy as np
import pytest

from protonet import ProtonetError
from protonet.blob import Blob
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")

F32 = dict(rtol=1e-5, atol=1e-5)


def randn(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def forward_backward(layer, arrays, params=(), propagate=None, seed=1):
    """Set up and run ``layer`` forward, then backward from random top diffs.

    Returns (top data, top diffs, bottom diffs), all copies."""
    bottom, top = setup_layer(layer, arrays, fill=not params)
    for blob, value in zip(layer.blobs, params):
        blob.data[...] = value
    layer.forward(bottom, top)
    tops = [t.data.copy() for t in top]
    diffs = [randn(*t.shape, seed=seed + i, dtype=t.dtype) for i, t in enumerate(top)]
    for t, d in zip(top, diffs):
        t.diff[...] = d
    layer.backward(top, propagate or [True] * len(bottom), bottom)
    return tops, diffs, [b.diff.copy() for b in bottom]


def leaf(a):
    return torch.from_numpy(np.array(a)).requires_grad_()


def torch_grads(output, output_grad, *tensors):
    output.backward(torch.from_numpy(np.asarray(output_grad)))
    return [t.grad.numpy() for t in tensors]


# -- Slice ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, shape, sizes", [
    ("", (2, 6, 3), [2, 2, 2]),                                   # even split of axis 1
    ("axis: 0 slice_point: 1 slice_point: 3", (4, 3), [1, 2, 1]),
    ("axis: -1 slice_point: 2", (2, 3, 5), [2, 3]),
    ("slice_dim: 2 slice_point: 1 slice_point: 4", (2, 3, 5), [1, 3, 1]),  # legacy slice_dim
])
def test_slice_matches_torch_split(params, shape, sizes):
    n = len(sizes)
    tops = " ".join(f'top: "t{i}"' for i in range(n))
    layer = make_layer(f'type: "Slice" {tops} slice_param {{ {params} }}', dtype=np.float32)
    x = randn(*shape)
    ys, dys, (dx,) = forward_backward(layer, [x])
    axis = layer.axis
    xt = leaf(x)
    parts = torch.split(xt, sizes, dim=axis)
    for y, p in zip(ys, parts):
        np.testing.assert_array_equal(y, p.detach().numpy())
    torch.autograd.backward(parts, [torch.from_numpy(d) for d in dys])
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def test_slice_single_top_shares_data_and_gradients():
    layer = make_layer('type: "Slice" slice_param { axis: 1 }')
    check_gradients(layer, [randn(2, 3, 4, dtype=np.float64)])
    bottom, top = setup_layer(layer, [randn(2, 3, dtype=np.float64)])
    layer.forward(bottom, top)
    assert np.shares_memory(top[0].data, bottom[0].data)
    layer = make_layer('type: "Slice" top: "a" top: "b" slice_param { slice_point: 1 }')
    check_gradients(layer, [randn(2, 3, 2, dtype=np.float64)])


def test_slice_errors():
    x = [np.zeros((2, 5))]
    with pytest.raises(ProtonetError, match="slice.*3 tops do not divide axis 1 of size 5"):
        run_layer(make_layer('name: "slice" type: "Slice" top: "a" top: "b" top: "c"'), x)
    with pytest.raises(ProtonetError, match="1 slice_point.s. make 2 pieces, but the layer has 3"):
        run_layer(make_layer('type: "Slice" top: "a" top: "b" top: "c" '
                             'slice_param { slice_point: 2 }'), x)
    with pytest.raises(ProtonetError, match="must increase strictly"):
        run_layer(make_layer('type: "Slice" top: "a" top: "b" top: "c" '
                             'slice_param { slice_point: 3 slice_point: 2 }'), x)
    with pytest.raises(ProtonetError, match="must increase strictly"):
        run_layer(make_layer('type: "Slice" top: "a" top: "b" slice_param { slice_point: 6 }'), x)
    with pytest.raises(ProtonetError, match="either slice_param.axis or slice_dim"):
        run_layer(make_layer('type: "Slice" slice_param { axis: 1 slice_dim: 1 }'), x)
    with pytest.raises(ProtonetError, match="slice_dim 2 is out of range"):
        run_layer(make_layer('type: "Slice" slice_param { slice_dim: 2 }'), x)


# -- Reshape -------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, shape, expected", [
    ("shape { dim: 0 dim: -1 dim: 2 }", (3, 6), (3, 3, 2)),
    ("shape { dim: 3 dim: 2 } axis: 1", (3, 6), (3, 3, 2)),
    ("shape { dim: 1 } num_axes: 0", (3, 6), (1, 3, 6)),
    ("shape { dim: 1 } axis: -1 num_axes: 0", (3, 6), (3, 6, 1)),
    ("shape { dim: -1 } axis: 1 num_axes: 2", (2, 3, 4, 5), (2, 12, 5)),
    ("shape { dim: 0 dim: 0 dim: 2 dim: -1 }", (2, 3, 4, 5), (2, 3, 2, 10)),
    ("shape { dim: -1 }", (2, 3, 4), (24,)),
    ("shape { }", (1, 1), ()),  # everything into a scalar... of 1 element
])
def test_reshape_shapes_share_data_and_match_torch(params, shape, expected):
    layer = make_layer(f'type: "Reshape" reshape_param {{ {params} }}', dtype=np.float32)
    x = randn(*shape)
    bottom, top = setup_layer(layer, [x])
    assert top[0].shape == expected
    layer.forward(bottom, top)
    assert np.shares_memory(top[0].data, bottom[0].data)  # no copy
    np.testing.assert_array_equal(top[0].data, torch.from_numpy(x).reshape(expected).numpy())
    dy = randn(*expected, seed=2)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, dy.reshape(shape))


def test_reshape_follows_bottom_reshapes_and_gradients():
    layer = make_layer('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }')
    check_gradients(layer, [randn(2, 3, 2, dtype=np.float64)])
    bottom, top = setup_layer(layer, [np.zeros((2, 3, 2))])
    bottom[0].reshape((4, 5, 1))
    bottom[0].data[...] = 1
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (4, 5) and np.shares_memory(top[0].data, bottom[0].data)


@pytest.mark.parametrize("params, shape, message", [
    ("shape { dim: -1 dim: -1 }", (2, 3), "2 -1 dims; at most one"),
    ("shape { dim: 0 dim: 0 dim: 0 }", (2, 3), "the 0 at position 2 has no bottom axis 2"),
    ("shape { dim: 4 dim: -1 }", (2, 3), "bottom count 6 is not divisible by .* \\(4\\)"),
    ("shape { dim: 4 dim: 2 }", (2, 3), "top shape \\[4, 2\\] of 8 elements; the bottom has 6"),
    ("shape { dim: 2 } axis: 3", (2, 3), "axis 3 is out of range"),
    ("shape { dim: 2 } axis: 1 num_axes: 2", (2, 3), "runs past the 2-axis bottom"),
    ("shape { dim: -2 }", (2, 3), "dims must be positive, 0 \\(copy\\) or -1"),
])
def test_reshape_errors(params, shape, message):
    layer = make_layer(f'name: "rs" type: "Reshape" reshape_param {{ {params} }}')
    with pytest.raises(ProtonetError, match=f"layer 'rs' \\(Reshape\\).*{message}"):
        run_layer(layer, [np.zeros(shape)])


def test_reshape_refuses_in_place():
    layer = make_layer('type: "Reshape" reshape_param { shape { dim: -1 } }')
    blob = Blob((2, 3))
    with pytest.raises(ProtonetError, match="in-place"):
        layer.setup([blob], [blob])


# -- BatchReindex -------------------------------------------------------------------------------
def test_batch_reindex_by_hand_and_repeated_indices_accumulate():
    layer = make_layer('type: "BatchReindex"', dtype=np.float32)
    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    index = np.array([2, 0, 2, 2], np.float32)
    (y,), (dy,), (dx, _) = forward_backward(layer, [x, index], propagate=[True, False])
    np.testing.assert_array_equal(y, [[4, 5], [0, 1], [4, 5], [4, 5]])
    np.testing.assert_allclose(dx, [dy[1], [0, 0], dy[0] + dy[2] + dy[3]], rtol=1e-6)
    xt = leaf(x)
    (g,) = torch_grads(xt[torch.tensor([2, 0, 2, 2])], dy, xt)
    np.testing.assert_allclose(dx, g, rtol=1e-6)


def test_batch_reindex_gradients_and_errors():
    layer = make_layer('type: "BatchReindex"')
    check_gradients(layer, [randn(4, 2, 3, dtype=np.float64), np.array([3., 1, 1, 0, 3])],
                    check_bottoms=[0])
    with pytest.raises(ProtonetError, match="reindex indices must lie in \\[0, 4\\), got 4"):
        run_layer(make_layer('type: "BatchReindex"'), [np.zeros((4, 2)), np.array([0., 4])])
    with pytest.raises(ProtonetError, match="must lie in \\[0, 4\\), got -1"):
        run_layer(make_layer('type: "BatchReindex"'), [np.zeros((4, 2)), np.array([-1.])])
    with pytest.raises(ProtonetError, match="index bottom .bottom\\[1\\]. must be 1-D"):
        run_layer(make_layer('type: "BatchReindex"'), [np.zeros((4, 2)), np.zeros((2, 1))])


# -- Filter --------------------------------------------------------------------------------------
def test_filter_selects_rows_by_hand():
    layer = make_layer('type: "Filter" top: "a" top: "b"', dtype=np.float32)
    a = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    b = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2) * -1
    selector = np.array([0, 1, 0, 2], np.float32).reshape(4, 1)
    bottom, top = setup_layer(layer, [a, b, selector], num_top=2)
    assert top[0].shape == (4, 3)  # Caffe's first reshape keeps all rows
    layer.reshape(bottom, top)
    assert top[0].shape == (2, 3) and top[1].shape == (2, 2, 2)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, a[[1, 3]])
    np.testing.assert_array_equal(top[1].data, b[[1, 3]])
    for blob in bottom:
        blob.diff[...] = 9  # stale
    top[0].diff[...] = [[1, 2, 3], [4, 5, 6]]
    top[1].diff[...] = 1
    layer.backward(top, [True, True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[0, 0, 0], [1, 2, 3], [0, 0, 0], [4, 5, 6]])
    np.testing.assert_array_equal(bottom[1].diff[[0, 2]], 0)
    np.testing.assert_array_equal(bottom[1].diff[[1, 3]], 1)
    np.testing.assert_array_equal(bottom[2].diff, 9)  # the selector is left alone


def test_filter_forward_follows_the_selector_and_gradients():
    layer = make_layer('type: "Filter"', dtype=np.float32)
    x = randn(3, 2)
    (y,) = run_layer(layer, [x, np.array([[1.], [0.], [1.]], np.float32)])
    np.testing.assert_array_equal(y, x[[0, 2]])
    layer = make_layer('type: "Filter"')
    check_gradients(layer, [randn(5, 2, 2, dtype=np.float64),
                            np.array([1., 0, 0, 1, 1]).reshape(5, 1, 1)], check_bottoms=[0])
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)


def test_filter_errors():
    with pytest.raises(ProtonetError, match="needs one top per filtered bottom \\(2\\), got 1"):
        run_layer(make_layer('type: "Filter"'), [np.zeros((2, 1)), np.zeros((2, 1)),
                                                 np.zeros((2, 1))])
    with pytest.raises(ProtonetError, match="selector .last bottom. must have shape \\(N, 1"):
        run_layer(make_layer('type: "Filter"'), [np.zeros((2, 3)), np.zeros((2, 2))])
    with pytest.raises(ProtonetError, match="needs the selector's 2 items on axis 0"):
        run_layer(make_layer('type: "Filter"'), [np.zeros((3, 3)), np.zeros((2, 1))])


# -- Parameter -----------------------------------------------------------------------------------
def test_parameter_exposes_its_blob():
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }',
                       dtype=np.float32)
    bottom, top = setup_layer(layer, [])
    assert layer.blobs[0].shape == (2, 3) and top[0].shape == (2, 3)
    assert not layer.blobs[0].data.any()  # no filler: zeros
    layer.blobs[0].data[...] = randn(2, 3)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, layer.blobs[0].data)
    assert np.shares_memory(top[0].data, layer.blobs[0].data)
    top[0].diff[...] = 2
    layer.backward(top, [], bottom)
    layer.backward(top, [], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, 4)  # param diffs accumulate
    layer.param_propagate_down = [False]
    layer.backward(top, [], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, 4)
    check_gradients(make_layer('type: "Parameter" parameter_param { shape { dim: 3 } }'), [])
    with pytest.raises(ProtonetError, match="exactly 0 bottom"):
        run_layer(layer, [np.zeros(3)])


# -- Reduction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, -0.5), (-1, 2.0), (2, 1.0)])
def test_reduction_matches_torch(op, axis, coeff):
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} '
                       f'coeff: {coeff} }}', dtype=np.float32)
    x = randn(2, 3, 4)
    (y,), (dy,), (dx,) = forward_backward(layer, [x])
    a = axis % 3
    assert y.shape == x.shape[:a] and y.dtype == np.float32 and dx.dtype == np.float32
    xt = leaf(x)
    dims = tuple(range(a, 3))
    fn = {"SUM": lambda t: t.sum(dims), "ASUM": lambda t: t.abs().sum(dims),
          "SUMSQ": lambda t: (t * t).sum(dims), "MEAN": lambda t: t.mean(dims)}[op]
    yt = fn(xt) * coeff
    np.testing.assert_allclose(y, yt.detach().numpy(), **F32)
    (g,) = torch_grads(yt, dy, xt)
    np.testing.assert_allclose(dx, g, **F32)
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} '
                       f'coeff: {coeff} }}')
    check_gradients(layer, [randn(2, 3, 4, dtype=np.float64)], kink=0.0, kink_range=1e-2)


def test_reduction_errors():
    with pytest.raises(ProtonetError, match="axis 3 is out of range"):
        run_layer(make_layer('type: "Reduction" reduction_param { axis: 3 }'),
                  [np.zeros((2, 2, 2))])


# -- Silence -------------------------------------------------------------------------------------
def test_silence_takes_any_bottoms_and_zero_fills():
    layer = make_layer('type: "Silence"')
    bottom, top = setup_layer(layer, [np.ones((2, 3)), np.ones(4)], num_top=0)
    layer.forward(bottom, top)
    for b in bottom:
        b.diff[...] = 5
    layer.backward(top, [True, False], bottom)
    assert not bottom[0].diff.any() and (bottom[1].diff == 5).all()
    with pytest.raises(ProtonetError, match="exactly 0 top"):
        setup_layer(make_layer('type: "Silence"'), [np.ones(2)], num_top=1)


# -- ArgMax --------------------------------------------------------------------------------------
def argmax_layer(params=""):
    return make_layer(f'name: "am" type: "ArgMax" argmax_param {{ {params} }}', dtype=np.float32)


@pytest.mark.parametrize("top_k", [1, 3])
def test_argmax_over_items_matches_torch_topk(top_k):
    x = randn(4, 3, 2, 2)  # distinct values: no ties
    (y,) = run_layer(argmax_layer(f"top_k: {top_k}"), [x])
    assert y.shape == (4, 1, top_k, 1)
    values, index = torch.topk(torch.from_numpy(x.reshape(4, -1)), top_k, dim=1)
    np.testing.assert_array_equal(y.reshape(4, top_k), index.numpy())
    (y,) = run_layer(argmax_layer(f"top_k: {top_k} out_max_val: true"), [x])
    assert y.shape == (4, 2, top_k, 1)  # indices, then values
    np.testing.assert_array_equal(y[:, 0, :, 0], index.numpy())
    np.testing.assert_array_equal(y[:, 1, :, 0], values.numpy())


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_argmax_along_axis_matches_torch_topk(axis):
    x = randn(3, 5, 4)
    (y,) = run_layer(argmax_layer(f"axis: {axis} top_k: 2"), [x])
    values, index = torch.topk(torch.from_numpy(x), 2, dim=axis)
    np.testing.assert_array_equal(y, index.numpy())
    (y,) = run_layer(argmax_layer(f"axis: {axis} top_k: 2 out_max_val: true"), [x])
    np.testing.assert_array_equal(y, values.numpy())  # values only, in place of the indices


def test_argmax_ties_and_layout_by_hand():
    # std::partial_sort with greater<pair<value, index>>: equal values -> larger index first
    x = np.array([[1, 3, 3, 0, 3], [2, 2, 2, 2, 2]], np.float32)
    (y,) = run_layer(argmax_layer(), [x])
    assert y.shape == (2, 1, 1)
    np.testing.assert_array_equal(y.ravel(), [4, 4])
    (y,) = run_layer(argmax_layer("top_k: 4 out_max_val: true"), [x])
    np.testing.assert_array_equal(y[0], [[4, 2, 1, 0], [3, 3, 3, 1]])
    np.testing.assert_array_equal(y[1], [[4, 3, 2, 1], [2, 2, 2, 2]])
    (y,) = run_layer(argmax_layer("axis: 0"), [np.array([[5, 1], [5, 2]], np.float32)])
    np.testing.assert_array_equal(y, [[1, 1]])


def test_argmax_has_no_backward_and_errors():
    layer = argmax_layer()
    bottom, top = setup_layer(layer, [randn(2, 3)])
    assert not layer.has_backward
    with pytest.raises(ProtonetError, match="cannot propagate"):
        layer.backward(top, [True], bottom)
    with pytest.raises(ProtonetError, match="am.*top_k \\(7\\) exceeds the 6 entries of each item"):
        run_layer(argmax_layer("top_k: 7"), [np.zeros((2, 3, 2))])
    with pytest.raises(ProtonetError, match="top_k \\(4\\) exceeds the 3 entries of axis 1"):
        run_layer(argmax_layer("top_k: 4 axis: 1"), [np.zeros((2, 3, 2))])
    with pytest.raises(ProtonetError, match="top_k must be at least 1"):
        run_layer(argmax_layer("top_k: 0"), [np.zeros((2, 3))])


# -- Tile ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis, tiles", [(1, 3), (0, 2), (-1, 4), (2, 1)])
def test_tile_matches_torch_repeat(axis, tiles):
    layer = make_layer(f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}',
                       dtype=np.float32)
    x = randn(2, 3, 2)
    (y,), (dy,), (dx,) = forward_backward(layer, [x])
    reps = [1, 1, 1]
    reps[axis % 3] = tiles
    xt = leaf(x)
    yt = xt.repeat(*reps)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    (g,) = torch_grads(yt, dy, xt)
    np.testing.assert_allclose(dx, g, **F32)


def test_tile_gradients_and_errors():
    check_gradients(make_layer('type: "Tile" tile_param { tiles: 3 }'),
                    [randn(2, 2, 3, dtype=np.float64)])
    with pytest.raises(ProtonetError, match="tiles must be given"):
        run_layer(make_layer('type: "Tile"'), [np.zeros((2, 2))])
    with pytest.raises(ProtonetError, match="tiles must be positive, got 0"):
        run_layer(make_layer('type: "Tile" tile_param { tiles: 0 }'), [np.zeros((2, 2))])


# -- Embed ---------------------------------------------------------------------------------------
EMBED = ('type: "Embed" embed_param {{ num_output: 3 input_dim: 5 bias_term: {bias} '
         'weight_filler {{ type: "gaussian" std: 1 }} bias_filler {{ type: "gaussian" }} }}')


@pytest.mark.parametrize("bias", ["true", "false"])
def test_embed_matches_torch_embedding(bias):
    layer = make_layer(EMBED.format(bias=bias), dtype=np.float32)
    index = np.array([[0, 4, 2], [4, 4, 1]], np.float32)
    bottom, top = setup_layer(layer, [index])
    assert layer.blobs[0].shape == (5, 3)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 3)
    w = leaf(layer.blobs[0].data)
    yt = torch.nn.functional.embedding(torch.from_numpy(index.astype(np.int64)), w)
    if bias == "true":
        b = leaf(layer.blobs[1].data)
        yt = yt + b
    np.testing.assert_allclose(top[0].data, yt.detach().numpy(), **F32)
    dy = randn(2, 3, 3, seed=4)
    top[0].diff[...] = dy
    layer.backward(top, [False], bottom)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.blobs[0].diff, w.grad.numpy(), **F32)  # row 4 thrice
    if bias == "true":
        np.testing.assert_allclose(layer.blobs[1].diff, b.grad.numpy(), **F32)


def test_embed_gradients_and_errors():
    layer = make_layer(EMBED.format(bias="true"))
    check_gradients(layer, [np.array([[1., 3], [3, 0]])], check_bottoms=[])
    assert not layer.allow_force_backward(0)
    with pytest.raises(ProtonetError, match="embed indices must lie in \\[0, 5\\), got 5"):
        run_layer(make_layer(EMBED.format(bias="true")), [np.array([1., 5])])
    with pytest.raises(ProtonetError, match="embed indices must be integers"):
        run_layer(make_layer(EMBED.format(bias="true")), [np.array([1.5])])
    with pytest.raises(ProtonetError, match="input_dim must be given"):
        run_layer(make_layer('type: "Embed" embed_param { num_output: 2 }'), [np.zeros(2)])


# -- Bias and Scale ------------------------------------------------------------------------------
BROADCAST_CASES = [
    # params, bottom shape, operand shape, how the operand lines up (reshape for torch)
    ("", (2, 3, 4, 5), (3,), (1, 3, 1, 1)),
    ("axis: 0 num_axes: 2", (2, 3, 4), (2, 3), (2, 3, 1)),
    ("axis: -1", (2, 3, 4), (4,), (1, 1, 4)),
    ("num_axes: 0", (2, 3, 4), (), (1, 1, 1)),
    ("num_axes: -1", (2, 3, 4), (3, 4), (1, 3, 4)),
    ("axis: 1 num_axes: 2", (2, 3, 4, 2), (3, 4), (1, 3, 4, 1)),
]


@pytest.mark.parametrize("kind", ["Bias", "Scale"])
@pytest.mark.parametrize("params, shape, operand, view", BROADCAST_CASES)
def test_bias_and_scale_with_a_learned_blob_match_torch(kind, params, shape, operand, view):
    field = "bias_param" if kind == "Bias" else "scale_param"
    layer = make_layer(f'type: "{kind}" {field} {{ {params} }}', dtype=np.float32)
    x, p = randn(*shape), randn(*operand, seed=7)
    (y,), (dy,), (dx,) = forward_backward(layer, [x], params=[p])
    assert layer.blobs[0].shape == operand
    xt, pt = leaf(x), leaf(p)
    yt = xt + pt.reshape(view) if kind == "Bias" else xt * pt.reshape(view)
    np.testing.assert_allclose(y, yt.detach().numpy(), **F32)
    gx, gp = torch_grads(yt, dy, xt, pt)
    np.testing.assert_allclose(dx, gx, **F32)
    np.testing.assert_allclose(layer.blobs[0].diff, gp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["Bias", "Scale"])
@pytest.mark.parametrize("params, shape, operand, view", BROADCAST_CASES)
def test_bias_and_scale_with_a_second_bottom_match_torch(kind, params, shape, operand, view):
    field = "bias_param" if kind == "Bias" else "scale_param"
    layer = make_layer(f'type: "{kind}" {field} {{ {params} }}', dtype=np.float32)
    x, p = randn(*shape), randn(*operand, seed=7)
    (y,), (dy,), (dx, dp) = forward_backward(layer, [x, p])
    assert not layer.blobs
    xt, pt = leaf(x), leaf(p)
    yt = xt + pt.reshape(view) if kind == "Bias" else xt * pt.reshape(view)
    np.testing.assert_allclose(y, yt.detach().numpy(), **F32)
    gx, gp = torch_grads(yt, dy, xt, pt)
    np.testing.assert_allclose(dx, gx, **F32)
    np.testing.assert_allclose(dp, gp, rtol=1e-4, atol=1e-4)


def test_scale_with_bias_term_and_default_fillers():
    layer = make_layer('type: "Scale" scale_param { bias_term: true }', dtype=np.float32)
    x = randn(2, 3, 2, 2)
    bottom, top = setup_layer(layer, [x])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)  # filler default: constant 1
    np.testing.assert_array_equal(layer.blobs[1].data, 0)  # bias_filler default: constant 0
    s, b = randn(3, seed=2), randn(3, seed=3)
    layer = make_layer('type: "Scale" scale_param { bias_term: true }', dtype=np.float32)
    (y,), (dy,), (dx,) = forward_backward(layer, [x], params=[s, b])
    xt, st, bt = leaf(x), leaf(s), leaf(b)
    yt = xt * st.reshape(1, 3, 1, 1) + bt.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y, yt.detach().numpy(), **F32)
    gx, gs, gb = torch_grads(yt, dy, xt, st, bt)
    np.testing.assert_allclose(dx, gx, **F32)
    np.testing.assert_allclose(layer.blobs[0].diff, gs, **F32)
    np.testing.assert_allclose(layer.blobs[1].diff, gb, **F32)
    # with a second bottom the learned bias takes the shape of bottom[1]
    layer = make_layer('type: "Scale" scale_param { axis: 0 bias_term: true '
                       'bias_filler { type: "constant" value: 2 } }')
    setup_layer(layer, [np.ones((2, 3)), np.ones((2, 3))])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 3)
    np.testing.assert_array_equal(layer.blobs[0].data, 2)


GRAD_FILLERS = 'filler { type: "gaussian" } bias_filler { type: "gaussian" }'


@pytest.mark.parametrize("params", ["", "bias_term: true", "axis: 0 num_axes: 2 bias_term: true",
                                    "num_axes: 0 bias_term: true", "num_axes: -1"])
def test_scale_gradients(params):
    layer = make_layer(f'type: "Scale" scale_param {{ {params} {GRAD_FILLERS} }}')
    check_gradients(layer, [randn(2, 3, 4, dtype=np.float64)])
    layer = make_layer(f'type: "Scale" scale_param {{ {params} {GRAD_FILLERS} }}')
    learned = layer.param.scale_param
    shape = {0: (), -1: (3, 4)}.get(learned.num_axes, (2, 3) if learned.axis == 0 else (3,))
    check_gradients(layer, [randn(2, 3, 4, dtype=np.float64), randn(*shape, seed=2,
                                                                    dtype=np.float64)])


@pytest.mark.parametrize("params, operand", [("", (3,)), ("axis: 0 num_axes: 2", (2, 3)),
                                             ("num_axes: 0", ())])
def test_bias_gradients(params, operand):
    layer = make_layer(f'type: "Bias" bias_param {{ {params} filler {{ type: "gaussian" }} }}')
    check_gradients(layer, [randn(2, 3, 4, dtype=np.float64)])
    check_gradients(make_layer(f'type: "Bias" bias_param {{ {params} }}'),
                    [randn(2, 3, 4, dtype=np.float64), randn(*operand, seed=2, dtype=np.float64)])


def in_place(layer, x):
    """Set up ``layer`` with one blob as bottom and top (``bottom: "x" top: "x"``)."""
    blob = Blob(x.shape, layer.dtype, name="x")
    blob.data[...] = x
    layer.setup([blob], [blob])
    layer.fill_params()
    return blob


@pytest.mark.parametrize("params", ["bias_term: true", "", "num_axes: -1"])
def test_scale_in_place_matches_out_of_place(params):
    """ResNet's ``bottom: "x" top: "x"`` Scale: the same numbers as with separate blobs."""
    text = f'type: "Scale" scale_param {{ {params} {GRAD_FILLERS} }}'
    x = randn(2, 3, 4, 4)
    dy = randn(2, 3, 4, 4, seed=9)
    ref = make_layer(text, dtype=np.float32, seed=3)
    bottom, top = setup_layer(ref, [x])
    ref.forward(bottom, top)
    top[0].diff[...] = dy
    ref.backward(top, [True], bottom)

    layer = make_layer(text, dtype=np.float32, seed=3)
    blob = in_place(layer, x)
    layer.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, top[0].data)
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    np.testing.assert_array_equal(blob.diff, bottom[0].diff)
    for p, q in zip(layer.blobs, ref.blobs):
        np.testing.assert_allclose(p.diff, q.diff, rtol=1e-6)  # used x, not the scaled x


def test_bias_in_place():
    layer = make_layer('type: "Bias" bias_param { filler { type: "constant" value: 2 } }',
                       dtype=np.float32)
    x = randn(2, 3, 2)
    blob = in_place(layer, x)
    layer.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, x + 2)
    blob.diff[...] = 1
    layer.backward([blob], [True], [blob])
    np.testing.assert_array_equal(blob.diff, 1)
    np.testing.assert_array_equal(layer.blobs[0].diff, [4, 4, 4])


def test_scale_skips_frozen_params_and_accumulates():
    layer = make_layer(f'type: "Scale" scale_param {{ bias_term: true {GRAD_FILLERS} }}')
    bottom, top = setup_layer(layer, [randn(2, 3, dtype=np.float64)])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward(top, [True], bottom)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d)
    layer.param_propagate_down = [False, True]
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once[0])
    np.testing.assert_allclose(layer.blobs[1].diff, 3 * once[1])


@pytest.mark.parametrize("kind", ["Bias", "Scale"])
def test_bias_and_scale_errors(kind):
    field = "bias_param" if kind == "Bias" else "scale_param"
    x = np.zeros((2, 3, 4))
    with pytest.raises(ProtonetError, match=f"'op' \\({kind}\\).*of shape \\[4\\] does not match "
                                            "bottom\\[0\\]'s axes 1..1 \\[3\\]"):
        run_layer(make_layer(f'name: "op" type: "{kind}"'), [x, np.zeros(4)])
    with pytest.raises(ProtonetError, match="extends past bottom\\[0\\]'s shape"):
        run_layer(make_layer(f'type: "{kind}" {field} {{ axis: 2 num_axes: 2 }}'), [x])
    with pytest.raises(ProtonetError, match="num_axes must be >= 0, or -1"):
        run_layer(make_layer(f'type: "{kind}" {field} {{ num_axes: -2 }}'), [x])
    with pytest.raises(ProtonetError, match="at most 2 bottom"):
        run_layer(make_layer(f'type: "{kind}"'), [x, x, x])


def test_macc_of_utility_layers_is_small():
    layer = make_layer('type: "Scale"', dtype=np.float32)
    bottom, top = setup_layer(layer, [np.zeros((2, 3, 4), np.float32)])
    assert layer.macc(bottom, top) == 24
    layer = make_layer('type: "Tile" tile_param { tiles: 2 }')
    bottom, top = setup_layer(layer, [np.zeros((2, 3))])
    assert layer.macc(bottom, top) == 0


# -- in a net ------------------------------------------------------------------------------------
NET = """name: "utility" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "rs" type: "Reshape" bottom: "ip" top: "rs"
        reshape_param { shape { dim: 0 dim: 2 dim: -1 } } }
layer { name: "sc" type: "Scale" bottom: "rs" top: "rs"
        scale_param { bias_term: true filler { type: "gaussian" }
                      bias_filler { type: "gaussian" } } }
layer { name: "sl" type: "Slice" bottom: "rs" top: "a" top: "b"
        slice_param { axis: 2 slice_point: 1 } }
layer { name: "quiet" type: "Silence" bottom: "b" }
layer { name: "sum" type: "Reduction" bottom: "a" top: "loss" loss_weight: 1
        reduction_param { operation: SUMSQ axis: 0 coeff: 0.5 } }
"""


def test_utility_layers_in_a_net_match_torch():
    import protonet
    from protonet.io import parse_net
    net = protonet.Net(parse_net(NET), protonet.TRAIN, seed=3)
    x = randn(4, 6, seed=5)
    out = net.forward(data=x)
    assert net.blobs["rs"].shape == (4, 2, 3) and net.blobs["a"].shape == (4, 2, 1)
    assert np.shares_memory(net.blobs["rs"].data, net.blobs["ip"].data)  # Reshape: no copy
    net.backward()
    w, b = (leaf(p.data) for p in net.params["ip"])
    s, c = (leaf(p.data) for p in net.params["sc"])
    xt = leaf(x)
    y = (torch.nn.functional.linear(xt, w, b).reshape(4, 2, 3) * s.reshape(1, 2, 1)
         + c.reshape(1, 2, 1))[:, :, :1]
    loss = 0.5 * (y * y).sum()
    loss.backward()
    np.testing.assert_allclose(out["loss"], loss.item(), rtol=1e-5)
    np.testing.assert_allclose(net.blobs["data"].diff, xt.grad.numpy(), **F32)
    for blob, ref in zip(net.params["ip"] + net.params["sc"], (w, b, s, c)):
        np.testing.assert_allclose(blob.diff, ref.grad.numpy(), **F32)
