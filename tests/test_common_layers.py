"""InnerProduct, Split, Flatten, Dropout, Concat, Eltwise, Softmax against PyTorch and by hand."""
import numpy as np
import pytest

from protonet import ProtonetError, TRAIN
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")

F32 = dict(rtol=1e-5, atol=1e-5)


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def forward_backward(layer, arrays, params=(), seed=1):
    """Set up and run ``layer`` forward, then backward from random top diffs.

    Returns (top data, top diffs, bottom diffs), all copies."""
    bottom, top = setup_layer(layer, arrays, fill=False)
    for blob, value in zip(layer.blobs, params):
        blob.data[...] = value
    layer.forward(bottom, top)
    tops = [t.data.copy() for t in top]
    diffs = [randn(*t.shape, seed=seed + i) for i, t in enumerate(top)]
    for t, d in zip(top, diffs):
        t.diff[...] = d
    layer.backward(top, [True] * len(bottom), bottom)
    return tops, diffs, [b.diff.copy() for b in bottom]


def grad(tensors, output, output_grad):
    """PyTorch gradients of ``output`` (seeded with ``output_grad``) w.r.t. ``tensors``."""
    output.backward(torch.from_numpy(output_grad))
    return [t.grad.numpy() for t in tensors]


def leaf(a):
    return torch.from_numpy(a.copy()).requires_grad_()


# -- InnerProduct ---------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((4, 6), 1), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 2),
                                        ((3, 7), -1), ((2, 3, 5), -1), ((5,), 0)])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_inner_product_matches_torch(shape, axis, transpose, bias):
    n_out = 3
    layer = make_layer(f'type: "InnerProduct" inner_product_param {{ num_output: {n_out} '
                       f'axis: {axis} transpose: {str(transpose).lower()} '
                       f'bias_term: {str(bias).lower()} }}', dtype=np.float32)
    x = randn(*shape)
    a = axis % len(shape)
    k = int(np.prod(shape[a:]))
    w = randn(n_out, k, seed=2)
    b = randn(n_out, seed=3)
    params = [w.T.copy() if transpose else w] + ([b] if bias else [])
    (y,), (dy,), (dx,) = forward_backward(layer, [x], params)
    assert y.shape == shape[:a] + (n_out,) and y.dtype == np.float32
    assert layer.blobs[0].shape == ((k, n_out) if transpose else (n_out, k))

    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    ty = torch.nn.functional.linear(tx.reshape(-1, k), tw, tb if bias else None)
    np.testing.assert_allclose(y.reshape(-1, n_out), ty.detach().numpy(), **F32)
    gx, gw, *gb = grad([tx, tw] + [tb] * bias, ty, dy.reshape(-1, n_out))
    np.testing.assert_allclose(dx, gx, **F32)
    np.testing.assert_allclose(layer.blobs[0].diff, gw.T if transpose else gw, **F32)
    if bias:
        np.testing.assert_allclose(layer.blobs[1].diff, gb[0], **F32)
    assert layer.macc(None, None) == int(np.prod(shape[:a])) * k * n_out


@pytest.mark.parametrize("transpose", ["false", "true"])
def test_inner_product_gradients(transpose):
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 4 '
                       f'transpose: {transpose} weight_filler {{ type: "gaussian" std: 1 }} '
                       'bias_filler { type: "gaussian" std: 1 } }')
    check_gradients(layer, [randn(3, 2, 5).astype(np.float64)])


def test_inner_product_accumulates_param_diffs():
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }',
                       dtype=np.float32)
    x = randn(3, 4)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True], bottom)
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward(top, [True], bottom)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d)


def test_inner_product_skips_frozen_params():
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }',
                       dtype=np.float32)
    bottom, top = setup_layer(layer, [randn(3, 4)])
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.param_propagate_down = [False, True]  # as the net sets it for lr_mult: 0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, 0.0)
    np.testing.assert_array_equal(layer.blobs[1].diff, 3.0)


def test_inner_product_reshaped_bottom_must_match_weights():
    layer = make_layer('name: "fc1" type: "InnerProduct" inner_product_param { num_output: 2 }',
                       dtype=np.float32)
    bottom, top = setup_layer(layer, [randn(3, 4)])
    bottom[0].reshape((3, 5))
    with pytest.raises(ProtonetError, match=r"fc1.*\[3, 5\]"):
        layer.reshape(bottom, top)


def test_inner_product_needs_num_output():
    with pytest.raises(ProtonetError, match="num_output"):
        run_layer(make_layer('type: "InnerProduct"'), [randn(2, 3)])


# -- Split ----------------------------------------------------------------------------------

def test_split_copies_forward_and_sums_backward():
    layer = make_layer('type: "Split" top: "a" top: "b" top: "c"', dtype=np.float32)
    x = randn(2, 3, 4)
    tops, diffs, (dx,) = forward_backward(layer, [x])
    assert len(tops) == 3
    for t in tops:
        np.testing.assert_array_equal(t, x)
    np.testing.assert_allclose(dx, diffs[0] + diffs[1] + diffs[2], **F32)


def test_split_gradients():
    check_gradients(make_layer('type: "Split" top: "a" top: "b"'), [randn(2, 3).astype(float)])


def test_split_refuses_in_place():
    layer = make_layer('type: "Split"')
    bottom, _ = setup_layer(make_layer('type: "Split"'), [randn(2)])
    with pytest.raises(ProtonetError, match="in-place"):
        layer.setup(bottom, [bottom[0]])


# -- Flatten --------------------------------------------------------------------------------

@pytest.mark.parametrize("axis,end_axis", [(1, -1), (0, -1), (1, 2), (2, 3), (-2, -1), (0, 0)])
def test_flatten_matches_torch(axis, end_axis):
    layer = make_layer(f'type: "Flatten" flatten_param {{ axis: {axis} end_axis: {end_axis} }}',
                       dtype=np.float32)
    x = randn(2, 3, 4, 5)
    (y,), (dy,), (dx,) = forward_backward(layer, [x])
    expected = torch.flatten(torch.from_numpy(x), axis, end_axis).numpy()
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(dx, dy.reshape(x.shape))


def test_flatten_gradients():
    check_gradients(make_layer('type: "Flatten"'), [randn(2, 3, 2).astype(float)])


def test_flatten_bad_axis():
    with pytest.raises(ProtonetError, match=r"flatten.*axis 4.*\[2, 3\]"):
        run_layer(make_layer('type: "Flatten" flatten_param { axis: 4 }'), [randn(2, 3)])


# -- Dropout --------------------------------------------------------------------------------

def test_dropout_train_scales_kept_units_and_reuses_mask():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', phase=TRAIN,
                       dtype=np.float32)
    x = randn(40, 50) + 5  # no zeros in the input
    (y,), (dy,), (dx,) = forward_backward(layer, [x])
    kept = y != 0
    assert y.dtype == np.float32
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.75, 0), rtol=1e-6)


def test_dropout_test_phase_is_identity():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', dtype=np.float32)
    x = randn(3, 4)
    (y,), (dy,), (dx,) = forward_backward(layer, [x])
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)


def test_dropout_in_place_keeps_mask():
    x = randn(6, 7) + 5
    ref = make_layer('type: "Dropout"', phase=TRAIN, dtype=np.float32, seed=3)
    (y_ref,), (dy,), (dx_ref,) = forward_backward(ref, [x])

    layer = make_layer('type: "Dropout"', phase=TRAIN, dtype=np.float32, seed=3)
    bottom, _ = setup_layer(layer, [x])
    top = [bottom[0]]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(bottom[0].data, y_ref)
    bottom[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, dx_ref)


def test_dropout_gradients():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', phase=TRAIN)
    check_gradients(layer, [randn(4, 5).astype(float)])


def test_dropout_bad_ratio():
    with pytest.raises(ProtonetError, match="dropout_ratio"):
        run_layer(make_layer('type: "Dropout" dropout_param { dropout_ratio: 1 }'), [randn(2)])


# -- Concat ---------------------------------------------------------------------------------

@pytest.mark.parametrize("axis,shapes", [
    (1, [(2, 3, 4), (2, 1, 4), (2, 5, 4)]),
    (0, [(1, 3), (4, 3)]),
    (-1, [(2, 3, 1), (2, 3, 2)]),
    (2, [(2, 2, 3, 5), (2, 2, 1, 5)]),
    (1, [(2, 3, 4)]),
])
def test_concat_matches_torch(axis, shapes):
    layer = make_layer(f'type: "Concat" concat_param {{ axis: {axis} }}', dtype=np.float32)
    xs = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    (y,), (dy,), dxs = forward_backward(layer, xs)
    txs = [leaf(x) for x in xs]
    ty = torch.cat(txs, dim=axis)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    for dx, g in zip(dxs, grad(txs, ty, dy)):
        np.testing.assert_array_equal(dx, g)


def test_concat_legacy_concat_dim():
    layer = make_layer('type: "Concat" concat_param { concat_dim: 0 }', dtype=np.float32)
    a, b = randn(1, 2), randn(3, 2, seed=1)
    (y,) = run_layer(layer, [a, b])
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=0))


def test_concat_gradients():
    check_gradients(make_layer('type: "Concat"'),
                    [randn(2, 2, 3).astype(float), randn(2, 4, 3, seed=1).astype(float)])


def test_concat_shape_mismatch_names_layer_and_shapes():
    layer = make_layer('name: "cat" type: "Concat"')
    with pytest.raises(ProtonetError, match=r"'cat'.*axis 1.*\[2, 3, 4\].*\[2, 3, 5\]"):
        run_layer(layer, [randn(2, 3, 4), randn(2, 3, 5)])
    with pytest.raises(ProtonetError, match="cat"):
        run_layer(make_layer('name: "cat" type: "Concat"'), [randn(2, 3), randn(2, 3, 1)])


def test_concat_bad_axis_and_both_axis_params():
    with pytest.raises(ProtonetError, match=r"axis 3.*\[2, 3\]"):
        run_layer(make_layer('type: "Concat" concat_param { axis: 3 }'), [randn(2, 3)] * 2)
    with pytest.raises(ProtonetError, match="concat_dim 2"):
        run_layer(make_layer('type: "Concat" concat_param { concat_dim: 2 }'), [randn(2, 3)] * 2)
    with pytest.raises(ProtonetError, match="not both"):
        run_layer(make_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }'),
                  [randn(2, 3)] * 2)


# -- Eltwise --------------------------------------------------------------------------------

SHAPE = (2, 3, 4, 5)


def _eltwise(op, extra=""):
    return make_layer(f'type: "Eltwise" eltwise_param {{ operation: {op} {extra} }}',
                      dtype=np.float32)


@pytest.mark.parametrize("coeffs", [None, (1.0, -0.5, 2.0)])
def test_eltwise_sum_matches_torch(coeffs):
    extra = " ".join(f"coeff: {c}" for c in coeffs) if coeffs else ""
    xs = [randn(*SHAPE, seed=i) for i in range(3)]
    (y,), (dy,), dxs = forward_backward(_eltwise("SUM", extra), xs)
    txs = [leaf(x) for x in xs]
    ty = sum(t * c for t, c in zip(txs, coeffs or (1.0,) * 3))
    np.testing.assert_allclose(y, ty.detach().numpy(), **F32)
    for dx, g in zip(dxs, grad(txs, ty, dy)):
        np.testing.assert_allclose(dx, g, **F32)


@pytest.mark.parametrize("stable", ["true", "false"])
def test_eltwise_prod_matches_torch(stable):
    xs = [randn(*SHAPE, seed=i) for i in range(3)]
    (y,), (dy,), dxs = forward_backward(_eltwise("PROD", f"stable_prod_grad: {stable}"), xs)
    txs = [leaf(x) for x in xs]
    ty = txs[0] * txs[1] * txs[2]
    np.testing.assert_allclose(y, ty.detach().numpy(), **F32)
    for dx, g in zip(dxs, grad(txs, ty, dy)):
        np.testing.assert_allclose(dx, g, rtol=1e-4, atol=1e-5)


def test_eltwise_max_matches_torch():
    xs = [randn(*SHAPE, seed=i) for i in range(3)]
    (y,), (dy,), dxs = forward_backward(_eltwise("MAX"), xs)
    txs = [leaf(x) for x in xs]
    ty = torch.maximum(torch.maximum(txs[0], txs[1]), txs[2])
    np.testing.assert_array_equal(y, ty.detach().numpy())
    for dx, g in zip(dxs, grad(txs, ty, dy)):
        np.testing.assert_array_equal(dx, g)


def test_eltwise_max_ties_follow_caffe():
    # bottom 1 wins a tie with bottom 0; a later bottom must be strictly greater
    a = np.array([1.0, 2.0, 0.0], np.float32)
    b = np.array([1.0, 0.0, 3.0], np.float32)
    c = np.array([1.0, 2.0, 3.0], np.float32)
    layer = _eltwise("MAX")
    bottom, top = setup_layer(layer, [a, b, c])
    layer.forward(bottom, top)
    top[0].diff[...] = [10.0, 20.0, 30.0]
    layer.backward(top, [True] * 3, bottom)
    np.testing.assert_array_equal(top[0].data, [1, 2, 3])
    np.testing.assert_array_equal(bottom[0].diff, [0, 20, 0])
    np.testing.assert_array_equal(bottom[1].diff, [10, 0, 30])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 0])


@pytest.mark.parametrize("op", ["SUM coeff: 0.5 coeff: -2", "PROD", "PROD stable_prod_grad: false",
                                "MAX"])
def test_eltwise_gradients(op):
    layer = make_layer(f'type: "Eltwise" eltwise_param {{ operation: {op} }}')
    check_gradients(layer, [randn(2, 3, 4, seed=i).astype(float) for i in range(2)])


def test_eltwise_errors():
    with pytest.raises(ProtonetError, match=r"'sum'.*\[2, 3\].*\[3, 2\]"):
        run_layer(make_layer('name: "sum" type: "Eltwise"'), [randn(2, 3), randn(3, 2)])
    with pytest.raises(ProtonetError, match="one coeff per bottom"):
        run_layer(make_layer('type: "Eltwise" eltwise_param { coeff: 1 }'), [randn(2)] * 2)
    with pytest.raises(ProtonetError, match="SUM"):
        run_layer(make_layer('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }'
                             ), [randn(2)] * 2)
    with pytest.raises(ProtonetError, match="at least 2 bottom"):
        run_layer(make_layer('type: "Eltwise"'), [randn(2)])


# -- Softmax --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((4, 7), 1), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -1),
                                        ((2, 3, 4), 0), ((3, 1), 1)])
def test_softmax_matches_torch(shape, axis):
    layer = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', dtype=np.float32)
    x = randn(*shape) * 3
    (y,), (dy,), (dx,) = forward_backward(layer, [x])
    tx = leaf(x)
    ty = torch.softmax(tx, dim=axis)
    np.testing.assert_allclose(y, ty.detach().numpy(), **F32)
    np.testing.assert_allclose(dx, grad([tx], ty, dy)[0], **F32)


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1001.0], [-1e4, -1e4]], np.float32)
    (y,) = run_layer(make_layer('type: "Softmax"', dtype=np.float32), [x])
    np.testing.assert_allclose(y, [[1 / (1 + np.e), np.e / (1 + np.e)], [0.5, 0.5]], rtol=1e-6)


def test_softmax_gradients():
    check_gradients(make_layer('type: "Softmax" softmax_param { axis: 2 }'),
                    [randn(2, 3, 4).astype(float)])


def test_softmax_bad_axis():
    with pytest.raises(ProtonetError, match=r"softmax.*axis 2.*\[4, 3\]"):
        run_layer(make_layer('type: "Softmax" softmax_param { axis: 2 }'), [randn(4, 3)])
