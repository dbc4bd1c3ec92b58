"""Convolution and Pooling: against PyTorch, against Caffe's rules, gradients, errors."""
import numpy as np
import pytest

from protonet.blob import Blob
from protonet import parallel
from protonet.errors import ProtonetError
from protonet.layers.base import TEST, TRAIN
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer


@pytest.fixture
def torch():
    """PyTorch (CPU), the reference for the comparison tests; they skip without it."""
    return pytest.importorskip("torch")

FILLED = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def conv_layer(params, dtype=np.float32, seed=0):
    return make_layer(f'name: "conv" type: "Convolution" '
                      f'convolution_param {{ {params} {FILLED} }}', dtype=dtype, seed=seed)


def pool_layer(params, dtype=np.float32, phase=TEST, top=1):
    tops = " ".join(f'top: "t{i}"' for i in range(top))
    return make_layer(f'name: "pool" type: "Pooling" {tops} pooling_param {{ {params} }}',
                      phase=phase, dtype=dtype)


def forward_backward(layer, x, seed=1):
    """Run forward and backward (random top diff); returns (bottom, top, top diff)."""
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    dy = np.random.default_rng(seed).standard_normal(top[0].shape).astype(x.dtype)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    return bottom, top, dy


def assert_close(actual, expected, tol=1e-4):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


# -- Convolution ---------------------------------------------------------------------------
CONV_CASES = [
    # params, input shape
    ("num_output: 4 kernel_size: 3", (2, 3, 7, 6)),
    ("num_output: 5 kernel_size: 3 stride: 2", (2, 3, 9, 8)),
    ("num_output: 4 kernel_size: 3 pad: 1", (1, 2, 5, 5)),
    ("num_output: 4 kernel_size: 5 pad: 2 stride: 3", (3, 2, 11, 13)),
    ("num_output: 3 kernel_size: 3 dilation: 2", (2, 2, 9, 9)),
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1", (2, 6, 6, 5)),
    ("num_output: 4 kernel_size: 3 group: 4 pad: 1 stride: 2", (2, 4, 7, 7)),  # depthwise
    ("num_output: 8 kernel_size: 3 group: 4", (2, 4, 5, 6)),  # depthwise, multiplier 2
    ("num_output: 4 kernel_size: 1", (2, 3, 5, 4)),
    ("num_output: 4 kernel_size: 1", (1, 3, 5, 4)),
    ("num_output: 6 kernel_size: 1 group: 2", (3, 4, 3, 3)),
    ("num_output: 3 kernel_size: 1 stride: 2", (2, 3, 5, 5)),
    ("num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2",
     (2, 3, 6, 7)),
    ("num_output: 4 kernel_size: 2 kernel_size: 3 pad: 0 pad: 1 stride: 2 stride: 1 "
     "dilation: 1 dilation: 2", (2, 3, 8, 9)),
    ("num_output: 6 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 2 "
     "group: 3 dilation: 2", (3, 6, 9, 8)),
    ("num_output: 4 kernel_size: 3 bias_term: false", (2, 3, 5, 5)),
    ("num_output: 4 kernel_size: 3 pad: 1 bias_term: false", (1, 4, 5, 5)),
]


@pytest.mark.parametrize("params, shape", CONV_CASES)
def test_convolution_matches_torch(params, shape, torch):
    F = torch.nn.functional
    layer = conv_layer(params)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    bottom, top, dy = forward_backward(layer, x)
    w = torch.tensor(layer.blobs[0].data, requires_grad=True)
    b = torch.tensor(layer.blobs[1].data, requires_grad=True) if layer.bias_term else None
    xt = torch.tensor(x, requires_grad=True)
    yt = F.conv2d(xt, w, b, stride=layer.stride, padding=layer.pad, dilation=layer.dilation,
                  groups=layer.group)
    yt.backward(torch.tensor(dy))
    assert top[0].data.dtype == np.float32 and bottom[0].diff.dtype == np.float32
    assert top[0].shape == tuple(yt.shape)
    assert_close(top[0].data, yt.detach().numpy())
    assert_close(bottom[0].diff, xt.grad.numpy())
    assert_close(layer.blobs[0].diff, w.grad.numpy())
    if layer.bias_term:
        assert_close(layer.blobs[1].diff, b.grad.numpy())
        assert layer.blobs[1].diff.dtype == np.float32


def test_convolution_1d_matches_torch_conv1d(torch):
    F = torch.nn.functional
    layer = conv_layer("num_output: 4 kernel_size: 3 stride: 2 pad: 1 dilation: 2")
    x = np.random.default_rng(0).standard_normal((2, 3, 11)).astype(np.float32)
    bottom, top, dy = forward_backward(layer, x)
    assert layer.blobs[0].shape == (4, 3, 3)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.conv1d(xt, torch.tensor(layer.blobs[0].data), torch.tensor(layer.blobs[1].data),
                  stride=2, padding=1, dilation=2)
    yt.backward(torch.tensor(dy))
    assert_close(top[0].data, yt.detach().numpy())
    assert_close(bottom[0].diff, xt.grad.numpy())


def test_convolution_axis_flattens_leading_axes(torch):
    F = torch.nn.functional
    layer = conv_layer("num_output: 2 kernel_size: 3 axis: 2")
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5, 5)).astype(np.float32)
    (y,) = run_layer(layer, [x])
    assert y.shape == (2, 3, 2, 3, 3)
    yt = F.conv2d(torch.tensor(x.reshape(6, 4, 5, 5)), torch.tensor(layer.blobs[0].data),
                  torch.tensor(layer.blobs[1].data))
    assert_close(y, yt.numpy().reshape(y.shape))


@pytest.mark.parametrize("channels", [2, 16])  # NCHW columns; channels-last
def test_convolution_param_diffs_accumulate_and_bottoms_share_weights(channels):
    layer = conv_layer("num_output: 3 kernel_size: 3 pad: 1")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, channels, 5, 5)).astype(np.float32) for _ in range(2)]
    bottom = [Blob(x.shape, name=f"b{i}") for i, x in enumerate(xs)]
    for b, x in zip(bottom, xs):
        b.data[...] = x
    top = [Blob(), Blob()]
    layer.setup(bottom, top)
    layer.fill_params()
    layer.forward(bottom, top)
    for i, x in enumerate(xs):
        single = conv_layer("num_output: 3 kernel_size: 3 pad: 1")
        (y,) = run_layer(single, [x])
        np.testing.assert_array_equal(top[i].data, y)  # same seed, same weights
    for t in top:
        t.diff[...] = 1
    layer.backward(top, [True, False], bottom)
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward(top, [True, False], bottom)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d, rtol=1e-5)
    np.testing.assert_array_equal(layer.blobs[1].diff, np.full(3, 2 * 2 * 2 * 25))


def test_convolution_skips_frozen_params():
    layer = conv_layer("num_output: 3 kernel_size: 3 pad: 1", dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    bottom, top = setup_layer(layer, [x])
    layer.param_propagate_down = [False, False]
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert not layer.blobs[0].diff.any() and not layer.blobs[1].diff.any()
    dx = bottom[0].diff.copy()
    layer.param_propagate_down = [True, True]
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx)
    assert layer.blobs[0].diff.any() and np.all(layer.blobs[1].diff == 2 * 25)


GRAD_CASES = [
    ("num_output: 3 kernel_size: 3", (2, 2, 5, 5)),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1",
     (2, 3, 6, 5)),
    ("num_output: 4 kernel_size: 2 group: 2 stride: 2 pad: 1", (2, 4, 5, 5)),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 2 bias_term: false", (1, 2, 6, 6)),
    ("num_output: 3 kernel_size: 1", (2, 2, 3, 4)),
    ("num_output: 3 kernel_size: 1", (1, 2, 3, 4)),
    ("num_output: 3 kernel_size: 3 group: 3 pad: 1", (2, 3, 4, 4)),  # depthwise
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 3, 7)),  # 1-D
]


@pytest.mark.parametrize("params, shape", GRAD_CASES)
def test_convolution_gradients(params, shape):
    layer = conv_layer(params, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal(shape)
    check_gradients(layer, [x], max_checks=60)


def test_convolution_reuses_buffers_and_follows_reshapes():
    layer = conv_layer("num_output: 2 kernel_size: 3 pad: 1")
    bottom, top = setup_layer(layer, [np.ones((2, 1, 4, 4), np.float32)])
    layer.forward(bottom, top)
    col = layer._buf["col0"]
    layer.forward(bottom, top)
    assert layer._buf["col0"] is col
    bottom[0].reshape((3, 1, 6, 5))
    bottom[0].data[...] = 1
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (3, 2, 6, 5)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert np.isclose(top[0].data[0, 1, 2, 2], w[1].sum() + b[1], rtol=1e-5)


def test_convolution_macc():
    layer = conv_layer("num_output: 8 kernel_size: 3 group: 2 stride: 2")
    bottom, top = setup_layer(layer, [np.zeros((2, 4, 9, 9), np.float32)])
    assert layer.macc(bottom, top) == 3 * 3 * 2 * 8 * 4 * 4 * 2


@pytest.mark.parametrize("params, shape, message", [
    ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 5, 5), "divisible by group"),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 4, 5, 5), "num_output .* divisible"),
    ("num_output: 3", (1, 4, 5, 5), "kernel_size .* required"),
    ("num_output: 3 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 4, 5, 5), "not both"),
    ("num_output: 3 kernel_size: 3 kernel_size: 3 kernel_size: 3", (1, 4, 5, 5), "once per"),
    ("kernel_size: 3", (1, 4, 5, 5), "num_output"),
    ("num_output: 3 kernel_size: 0", (1, 4, 5, 5), "positive"),
    ("num_output: 3 kernel_size: 7", (1, 4, 5, 5), "does not fit"),
    ("num_output: 3 kernel_size: 3", (1, 4), "at least one spatial axis"),
    ("num_output: 3 kernel_h: 3 kernel_w: 3", (1, 4, 5), "2-D"),
])
def test_convolution_errors_name_the_layer(params, shape, message):
    layer = conv_layer(params)
    with pytest.raises(ProtonetError, match=f"layer 'conv'.*{message}"):
        setup_layer(layer, [np.zeros(shape, np.float32)])


# -- Pooling: Caffe's loops, transcribed, for the cases PyTorch cannot check ----------------
def caffe_pool(x, method, kernel, stride, pad, out):
    """Caffe's CPU MAX/AVE pooling, one window at a time (``pooling_layer.cpp``)."""
    N, C, H, W = x.shape
    y = np.zeros((N, C) + out)
    mask = np.full((N, C) + out, -1)
    for n, c, oh, ow in np.ndindex(y.shape):
        hs, ws = oh * stride[0] - pad[0], ow * stride[1] - pad[1]
        if method == "MAX":
            best = -np.finfo(np.float32).max
            for h in range(max(hs, 0), min(hs + kernel[0], H)):
                for w in range(max(ws, 0), min(ws + kernel[1], W)):
                    if x[n, c, h, w] > best:
                        best, mask[n, c, oh, ow] = x[n, c, h, w], h * W + w
            y[n, c, oh, ow] = best
        else:
            he, we = min(hs + kernel[0], H + pad[0]), min(ws + kernel[1], W + pad[1])
            size = (he - hs) * (we - ws)
            with np.errstate(invalid="ignore"):
                y[n, c, oh, ow] = np.divide(
                    x[n, c, max(hs, 0):min(he, H), max(ws, 0):min(we, W)].sum(), size)
    return y, mask


def test_ave_divisor_counts_padding_but_not_cells_beyond_it():
    (y,) = run_layer(pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 1"),
                     [np.ones((1, 1, 4, 4), np.float32)])
    expected = [[4 / 9, 6 / 9, 2 / 6], [6 / 9, 1, 3 / 6], [2 / 6, 3 / 6, 1 / 4]]
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-6)


def test_ceil_and_clip_rule_shapes():
    for h, params, expected in [(112, "kernel_size: 3 stride: 2 pad: 1", 57),
                                (3, "kernel_size: 2 stride: 2 pad: 1", 2),
                                (55, "kernel_size: 3 stride: 2", 27),
                                (112, "kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", 56)]:
        (y,) = run_layer(pool_layer(params), [np.zeros((1, 1, h, h), np.float32)])
        assert y.shape == (1, 1, expected, expected)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params, shape, out", [
    ("kernel_size: 3 stride: 1 pad: 2", (1, 2, 5, 4), (7, 6)),   # pad > kernel/2: torch refuses
    ("kernel_size: 2 stride: 3", (1, 2, 7, 8), (3, 3)),          # stride > kernel
    ("kernel_h: 4 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 3 pad_w: 2", (2, 1, 7, 6), (4, 4)),
    # the last window starts past the image: Caffe gives -FLT_MAX (mask -1) and 0/0 for AVE
    ("kernel_size: 1 stride: 2", (1, 2, 6, 5), (4, 3)),
])
def test_pooling_matches_caffes_loops(method, params, shape, out):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    layer = pool_layer(f"pool: {method} {params}", top=2 if method == "MAX" else 1)
    tops = run_layer(layer, [x])
    y, mask = caffe_pool(x.astype(np.float64), method, tuple(layer.kernel), layer.stride,
                         layer.pad, out)
    assert tops[0].shape == y.shape
    np.testing.assert_allclose(tops[0], y, rtol=1e-6, atol=1e-7)
    if method == "MAX":
        np.testing.assert_array_equal(tops[1], mask)


@pytest.mark.parametrize("params, shape, out", [
    ("kernel_size: 2 stride: 2", (1, 2, 4, 6), (2, 3)),
    ("kernel_size: 3 stride: 2", (1, 2, 7, 5), (3, 2)),
])
def test_max_pooling_skips_nan_and_minus_infinity_as_caffe(params, shape, out):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = np.nan                # a window's first cell
    x[0, 0, :2, 2:4] = np.nan             # a window of NaN only
    x[0, 1, :2, :2] = -np.inf             # a window of -inf only
    x[0, 1, 2, 3] = np.inf
    layer = pool_layer(f"pool: MAX {params}", top=2)
    y, mask = run_layer(layer, [x])
    expected, expected_mask = caffe_pool(x.astype(np.float64), "MAX", tuple(layer.kernel),
                                         layer.stride, layer.pad, out)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(mask, expected_mask)


# -- Pooling against PyTorch (ceil_mode + count_include_pad agree with Caffe's rules) -------
POOL_CASES = [
    ("kernel_size: 3 stride: 2", (2, 3, 7, 7)),
    ("kernel_size: 3 stride: 2", (2, 3, 6, 6)),            # ceil overhang, no pad
    ("kernel_size: 2 stride: 2", (2, 3, 6, 8)),
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 112, 112)),  # 57, the last window clipped
    ("kernel_size: 2 stride: 2 pad: 1", (2, 3, 3, 3)),
    ("kernel_size: 3 stride: 1 pad: 1", (2, 2, 5, 6)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1", (2, 3, 9, 10)),
    ("kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (2, 3, 8, 9)),
    ("kernel_size: 3 stride: 3 round_mode: FLOOR", (2, 3, 10, 11)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params, shape", POOL_CASES)
def test_pooling_matches_torch(method, params, shape, torch):
    F = torch.nn.functional
    layer = pool_layer(f"pool: {method} {params}")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    bottom, top, dy = forward_backward(layer, x)
    xt = torch.tensor(x, requires_grad=True)
    args = (tuple(layer.kernel), layer.stride, layer.pad)
    if method == "MAX":
        yt = F.max_pool2d(xt, *args, ceil_mode=layer.ceil)
    else:
        yt = F.avg_pool2d(xt, *args, ceil_mode=layer.ceil, count_include_pad=True)
    yt.backward(torch.tensor(dy))
    assert top[0].data.dtype == np.float32 and top[0].shape == tuple(yt.shape)
    assert_close(top[0].data, yt.detach().numpy(), 1e-6)
    assert_close(bottom[0].diff, xt.grad.numpy(), 1e-6)


def test_max_mask_top_matches_torch_indices(torch):
    F = torch.nn.functional
    layer = pool_layer("pool: MAX kernel_size: 3 stride: 2 pad: 1", top=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    y, mask = run_layer(layer, [x])
    yt, idx = F.max_pool2d(torch.tensor(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(mask, idx.numpy())


def test_max_ties_keep_the_first_maximum():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 0] = x[0, 0, 0, 1] = x[0, 0, 1, 1] = 5  # three tied maxima in the first window
    layer = pool_layer("pool: MAX kernel_size: 2 stride: 2", top=2)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    assert top[1].data[0, 0, 0, 0] == 1  # (h=0, w=1) comes first in row-major order
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert bottom[0].diff[0, 0, 0, 1] == 1 and bottom[0].diff[0, 0, 1, :2].sum() == 0


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    layer = pool_layer(f"pool: {method} global_pooling: true")
    bottom, top, dy = forward_backward(layer, x)
    assert top[0].shape == (2, 3, 1, 1)
    reduce = np.max if method == "MAX" else np.mean
    assert_close(top[0].data[:, :, 0, 0], reduce(x, axis=(2, 3)), 1e-6)
    if method == "AVE":
        np.testing.assert_allclose(bottom[0].diff, np.broadcast_to(dy / 30, x.shape), rtol=1e-6)
    else:
        flat = x.reshape(2, 3, -1)
        expected = np.zeros_like(flat)
        np.put_along_axis(expected, flat.argmax(2)[..., None], dy.reshape(2, 3, 1), 2)
        np.testing.assert_array_equal(bottom[0].diff, expected.reshape(x.shape))
    layer2 = pool_layer("pool: MAX global_pooling: true", top=2)
    _, mask = run_layer(layer2, [x])
    np.testing.assert_array_equal(mask[:, :, 0, 0], x.reshape(2, 3, -1).argmax(2))


def test_pooling_follows_bottom_reshape():
    layer = pool_layer("pool: AVE global_pooling: true")
    bottom, top = setup_layer(layer, [np.ones((1, 2, 4, 4), np.float32)])
    bottom[0].reshape((1, 2, 3, 5))
    bottom[0].data[...] = 2
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, 2)


def distinct(shape, seed=0):
    """Values with no ties (so MAX gradients are well defined)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 3.0).astype(np.float64)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params, shape", [
    ("kernel_size: 3 stride: 2", (2, 2, 6, 7)),
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 5, 6)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 2", (1, 2, 5, 5)),
    ("kernel_size: 2 stride: 2", (2, 2, 4, 4)),
    ("global_pooling: true", (2, 2, 3, 4)),
])
def test_pooling_gradients(method, params, shape):
    layer = pool_layer(f"pool: {method} {params}", dtype=np.float64)
    check_gradients(layer, [distinct(shape)], max_checks=80)


def test_stochastic_test_phase_is_sum_of_squares_over_sum():
    x = np.random.default_rng(0).random((2, 3, 5, 5)).astype(np.float32)
    (y,) = run_layer(pool_layer("pool: STOCHASTIC kernel_size: 3 stride: 2"), [x])
    assert y.shape == (2, 3, 2, 2) and y.dtype == np.float32
    for oh, ow in np.ndindex(2, 2):
        win = x[:, :, 2 * oh:2 * oh + 3, 2 * ow:2 * ow + 3]
        np.testing.assert_allclose(y[:, :, oh, ow], (win ** 2).sum((2, 3)) / win.sum((2, 3)),
                                   rtol=1e-5)
    layer = pool_layer("pool: STOCHASTIC kernel_size: 3 stride: 2")
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    with pytest.raises(ProtonetError, match="TEST"):
        layer.backward(top, [True], bottom)


def test_stochastic_train_samples_a_cell_and_routes_its_gradient():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 7, 7)).astype(np.float32)
    layer = pool_layer("pool: STOCHASTIC kernel_size: 3 stride: 2", phase=TRAIN)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    idx = layer.flat_index()
    y = top[0].data
    assert y.shape == (2, 3, 3, 3)
    for n, c, oh, ow in np.ndindex(y.shape):
        h, w = divmod(int(idx[n, c, oh, ow]), 7)
        assert 2 * oh <= h < 2 * oh + 3 and 2 * ow <= w < 2 * ow + 3
        assert y[n, c, oh, ow] == x[n, c, h, w]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    expected = np.zeros((2, 3, 49), np.float32)
    for n, c, oh, ow in np.ndindex(y.shape):
        expected[n, c, idx[n, c, oh, ow]] += dy[n, c, oh, ow]
    np.testing.assert_allclose(bottom[0].diff, expected.reshape(x.shape), rtol=1e-6)


def test_stochastic_train_samples_in_proportion_to_activations():
    x = np.tile(np.array([[1, 2], [3, 4]], np.float32), (1, 4000, 1, 1))
    layer = pool_layer("pool: STOCHASTIC kernel_size: 2 stride: 2", phase=TRAIN)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    freq = np.bincount(layer.flat_index().ravel(), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.025)


def test_pooling_macc():
    layer = pool_layer("pool: MAX kernel_size: 3 stride: 2")
    bottom, top = setup_layer(layer, [np.zeros((2, 3, 7, 7), np.float32)])
    assert layer.macc(bottom, top) == 2 * 3 * 3 * 3 * 9


@pytest.mark.parametrize("params, message, top", [
    ("kernel_size: 3 pad: 3", "pad .* smaller than the kernel", 1),
    ("kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", "smaller than the kernel", 1),
    ("global_pooling: true kernel_size: 2", "global_pooling", 1),
    ("global_pooling: true pad: 1", "global_pooling allows only pad 0", 1),
    ("global_pooling: true stride: 2", "global_pooling allows only pad 0", 1),
    ("stride: 2", "kernel_size or kernel_h", 1),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", "exactly one form", 1),
    ("kernel_h: 2", "together", 1),
    ("kernel_size: 2 pad_h: 1", "pad or both pad_h", 1),
    ("kernel_size: 2 stride: 0", "stride must be positive", 1),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "padding", 1),
    ("pool: AVE kernel_size: 2", "mask", 2),
])
def test_pooling_errors_name_the_layer(params, message, top):
    layer = pool_layer(params, top=top)
    with pytest.raises(ProtonetError, match=f"layer 'pool'.*{message}"):
        setup_layer(layer, [np.zeros((1, 1, 5, 5), np.float32)], num_top=top)


def test_pooling_needs_four_axes():
    layer = pool_layer("kernel_size: 2")
    with pytest.raises(ProtonetError, match="layer 'pool'.*4 axes"):
        setup_layer(layer, [np.zeros((1, 5, 5), np.float32)])


# many input channels (and several images): channels-last tiles; backward-data is a stride-1 convolution of the
# padded top diff where that pays, else per-tap slabs folded into a frame
WIDE_CASES = [
    # params, input shape, backward-data as a full convolution?
    ("num_output: 8 kernel_size: 5 pad: 2", (2, 16, 7, 6), True),
    ("num_output: 5 kernel_size: 3 pad: 1 bias_term: false", (2, 16, 4, 4), True),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2", (2, 16, 7, 7), True),
    ("num_output: 4 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2", (3, 18, 5, 8), True),
    ("num_output: 6 kernel_size: 3 stride: 2 pad: 1", (3, 17, 9, 8), False),
    ("num_output: 4 kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2", (2, 20, 10, 9), False),
    ("num_output: 4 kernel_size: 3", (2, 16, 6, 6), False),  # bottom much larger than top
    ("num_output: 4 kernel_size: 3 pad: 3", (2, 16, 5, 5), False),  # pad > kernel - 1
    ("num_output: 3 kernel_size: 3 stride: 2 dilation: 2 pad: 1", (2, 16, 9, 9), False),
]


@pytest.mark.parametrize("tile_bytes", [None, 1])  # cache-sized tiles; one image per tile
@pytest.mark.parametrize("params, shape, full", WIDE_CASES)
def test_convolution_channels_last_matches_torch(params, shape, full, tile_bytes, torch,
                                                 monkeypatch):
    if tile_bytes:
        monkeypatch.setattr(parallel, "TILE_BYTES", tile_bytes)
    F = torch.nn.functional
    layer = conv_layer(params)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    bottom, top, dy = forward_backward(layer, x)
    assert layer._channels_last and (layer._full_pad is not None) == full
    w = torch.tensor(layer.blobs[0].data, requires_grad=True)
    b = torch.tensor(layer.blobs[1].data, requires_grad=True) if layer.bias_term else None
    xt = torch.tensor(x, requires_grad=True)
    yt = F.conv2d(xt, w, b, stride=layer.stride, padding=layer.pad, dilation=layer.dilation)
    yt.backward(torch.tensor(dy))
    assert_close(top[0].data, yt.detach().numpy())
    assert_close(bottom[0].diff, xt.grad.numpy())
    assert_close(layer.blobs[0].diff, w.grad.numpy())
    if layer.bias_term:
        assert_close(layer.blobs[1].diff, b.grad.numpy())


def test_convolution_channels_last_1d_matches_torch_conv1d(torch):
    F = torch.nn.functional
    layer = conv_layer("num_output: 4 kernel_size: 3 pad: 1")
    x = np.random.default_rng(0).standard_normal((2, 16, 9)).astype(np.float32)
    bottom, top, dy = forward_backward(layer, x)
    assert layer._channels_last and layer._full_pad is not None
    xt = torch.tensor(x, requires_grad=True)
    w = torch.tensor(layer.blobs[0].data, requires_grad=True)
    yt = F.conv1d(xt, w, torch.tensor(layer.blobs[1].data), padding=1)
    yt.backward(torch.tensor(dy))
    assert_close(top[0].data, yt.detach().numpy())
    assert_close(bottom[0].diff, xt.grad.numpy())
    assert_close(layer.blobs[0].diff, w.grad.numpy())


@pytest.mark.parametrize("params", ["num_output: 3 kernel_size: 3 pad: 1",  # full convolution
                                    "num_output: 3 kernel_size: 3 stride: 2 pad: 1"])  # slabs
def test_convolution_channels_last_gradients(params):
    layer = conv_layer(params, dtype=np.float64)
    x = np.random.default_rng(6).standard_normal((2, 16, 5, 5))
    setup_layer(layer, [x])
    assert layer._channels_last
    check_gradients(layer, [x], max_checks=60)


@pytest.mark.parametrize("params", ["num_output: 3 kernel_size: 3 pad: 1",
                                    "num_output: 3 kernel_size: 3 stride: 2 pad: 1"])
def test_convolution_channels_last_computes_only_what_is_asked(params):
    """Frozen weights, no bottom diff: each gradient is still right on its own."""
    layer = conv_layer(params)
    x = np.random.default_rng(7).standard_normal((2, 16, 5, 5)).astype(np.float32)
    bottom, top, _ = forward_backward(layer, x)
    assert layer._channels_last
    dx, dw, db = bottom[0].diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()
    for b in [bottom[0]] + layer.blobs:
        b.diff[...] = 0
    layer.param_propagate_down = [False, True]
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-5, atol=1e-5)
    assert not layer.blobs[0].diff.any()
    np.testing.assert_allclose(layer.blobs[1].diff, db, rtol=1e-5)
    bottom[0].diff[...] = 7
    layer.param_propagate_down = [True, False]
    layer.backward(top, [False], bottom)
    assert (bottom[0].diff == 7).all()
    np.testing.assert_allclose(layer.blobs[0].diff, dw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].diff, db, rtol=1e-5)  # unchanged


@pytest.mark.parametrize("params, shape", [
    ("kernel_size: 1 stride: 2", (1, 2, 6, 5)),    # windows past the image select nothing
    ("kernel_size: 3 stride: 2", (2, 3, 9, 9)),    # overlapping windows may share a cell
    ("kernel_size: 3 stride: 1 pad: 2", (1, 2, 5, 4)),
    # windows that never overlap are written tap by tap
    ("kernel_size: 2 stride: 2", (2, 3, 6, 8)),    # they tile the image
    ("kernel_size: 2 stride: 2", (2, 3, 7, 5)),    # the last ones hang over (a frame)
    ("kernel_size: 2 stride: 3", (1, 2, 8, 7)),    # cells between windows get 0
    ("kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 1", (2, 2, 7, 6)),
])
def test_max_pooling_backward_routes_by_the_mask(params, shape):
    layer = pool_layer(f"pool: MAX {params}", top=2)
    x = np.random.default_rng(0).integers(0, 3, shape).astype(np.float32)  # many ties
    bottom, top = setup_layer(layer, [x], num_top=2)
    layer.forward(bottom, top)
    dy = np.random.default_rng(1).standard_normal(top[0].shape).astype(np.float32)
    dy.flat[1] = np.nan  # reaches only the cell its window chose
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    expected = np.zeros(shape)
    mask = top[1].data.astype(int)
    for n, c, oh, ow in np.ndindex(*mask.shape):  # Caffe's loop: dx[mask] += dy
        if mask[n, c, oh, ow] >= 0:
            expected[n, c].flat[mask[n, c, oh, ow]] += dy[n, c, oh, ow]
    if params.startswith("kernel_size: 1"):
        assert (mask < 0).any()  # the case really has empty windows
    assert layer.disjoint == ("stride: 1" not in params and "kernel_size: 3" not in params)
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-6, atol=1e-6)
