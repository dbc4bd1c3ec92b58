"""Deconvolution, Im2col, Crop and SPP: against PyTorch, Caffe's rules, gradients, errors."""
import numpy as np
import pytest

from protonet.errors import ProtonetError
from protonet.layers.base import TRAIN
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer


@pytest.fixture
def torch():
    """PyTorch (CPU), the reference for the comparison tests; they skip without it."""
    return pytest.importorskip("torch")


FILLED = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def deconv_layer(params, dtype=np.float32):
    return make_layer(f'name: "deconv" type: "Deconvolution" '
                      f'convolution_param {{ {params} {FILLED} }}', dtype=dtype)


def randn(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def forward_backward(layer, arrays, seed=1):
    """Run forward and backward (random top diff); returns (bottom, top, top diff)."""
    bottom, top = setup_layer(layer, arrays)
    layer.forward(bottom, top)
    dy = randn(*top[0].shape, seed=seed, dtype=arrays[0].dtype)
    top[0].diff[...] = dy
    layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
    return bottom, top, dy


def assert_close(actual, expected, tol=1e-4):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


# -- Deconvolution -------------------------------------------------------------------------
DECONV_CASES = [
    # params, input shape
    ("num_output: 4 kernel_size: 3", (2, 3, 5, 4)),
    ("num_output: 3 kernel_size: 4 stride: 2 pad: 1", (2, 2, 5, 6)),
    ("num_output: 2 kernel_size: 3 stride: 3 pad: 2", (1, 3, 4, 4)),
    ("num_output: 3 kernel_size: 3 dilation: 2 pad: 1", (2, 2, 5, 5)),
    ("num_output: 6 kernel_size: 3 group: 3 stride: 2", (2, 6, 4, 5)),
    ("num_output: 4 kernel_size: 4 stride: 2 group: 4 bias_term: false", (2, 4, 3, 3)),  # FCN
    ("num_output: 2 kernel_size: 2 group: 2", (2, 4, 3, 3)),  # 2 channels in per output
    ("num_output: 5 kernel_size: 1", (2, 3, 4, 4)),
    ("num_output: 5 kernel_size: 1", (1, 3, 4, 4)),
    ("num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
     (2, 2, 4, 5)),
    ("num_output: 4 kernel_size: 3 kernel_size: 2 stride: 1 stride: 3 dilation: 2 dilation: 1 "
     "pad: 2 pad: 0 group: 2", (3, 4, 5, 3)),
]


@pytest.mark.parametrize("params, shape", DECONV_CASES)
def test_deconvolution_matches_torch(params, shape, torch):
    F = torch.nn.functional
    layer = deconv_layer(params)
    x = randn(*shape)
    bottom, top, dy = forward_backward(layer, [x])
    C, O, G = shape[1], layer.num_output, layer.group
    assert layer.blobs[0].shape == (C, O // G) + layer.kernel  # Caffe's reversed layout
    w = torch.tensor(layer.blobs[0].data, requires_grad=True)
    b = torch.tensor(layer.blobs[1].data, requires_grad=True) if layer.bias_term else None
    xt = torch.tensor(x, requires_grad=True)
    yt = F.conv_transpose2d(xt, w, b, stride=layer.stride, padding=layer.pad,
                            dilation=layer.dilation, groups=G)
    yt.backward(torch.tensor(dy))
    assert top[0].shape == tuple(yt.shape)
    assert top[0].data.dtype == np.float32 and bottom[0].diff.dtype == np.float32
    assert layer.blobs[0].diff.dtype == np.float32
    assert_close(top[0].data, yt.detach().numpy())
    assert_close(bottom[0].diff, xt.grad.numpy())
    assert_close(layer.blobs[0].diff, w.grad.numpy())
    if layer.bias_term:
        assert_close(layer.blobs[1].diff, b.grad.numpy())


def test_deconvolution_output_size_follows_caffe():
    # stride*(H-1) + dilation*(k-1)+1 - 2*pad, per axis
    layer = deconv_layer("num_output: 1 kernel_h: 4 kernel_w: 3 stride_h: 2 stride_w: 3 "
                         "pad_h: 1 pad_w: 2")
    (y,) = run_layer(layer, [np.zeros((1, 1, 7, 5), np.float32)])
    assert y.shape == (1, 1, 2 * 6 + 4 - 2, 3 * 4 + 3 - 4)
    layer = deconv_layer("num_output: 2 kernel_size: 3 dilation: 3")
    (y,) = run_layer(layer, [np.zeros((1, 1, 4, 4), np.float32)])
    assert y.shape == (1, 2, 3 + 7, 3 + 7)


def test_deconvolution_1d_matches_torch(torch):
    F = torch.nn.functional
    layer = deconv_layer("num_output: 3 kernel_size: 3 stride: 2 pad: 1 dilation: 2")
    x = randn(2, 4, 6)
    bottom, top, dy = forward_backward(layer, [x])
    assert layer.blobs[0].shape == (4, 3, 3)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.conv_transpose1d(xt, torch.tensor(layer.blobs[0].data),
                            torch.tensor(layer.blobs[1].data), stride=2, padding=1, dilation=2)
    yt.backward(torch.tensor(dy))
    assert_close(top[0].data, yt.detach().numpy())
    assert_close(bottom[0].diff, xt.grad.numpy())


def test_deconvolution_bilinear_upsampling_as_fcn():
    """FCN's upscore: group = C, bilinear filler, no bias, lr_mult 0 (frozen weights)."""
    layer = make_layer('name: "up" type: "Deconvolution" param { lr_mult: 0 } '
                       'convolution_param { num_output: 2 group: 2 kernel_size: 4 stride: 2 '
                       'bias_term: false weight_filler { type: "bilinear" } }', dtype=np.float32)
    x = np.zeros((1, 2, 3, 3), np.float32)
    x[0, 0] = 1.0
    x[0, 1] = [0, 2, 4]  # a ramp along w
    bottom, top = setup_layer(layer, [x])
    layer.param_propagate_down = [False]  # what the net sets for lr_mult 0
    layer.forward(bottom, top)
    y = top[0].data
    assert y.shape == (1, 2, 8, 8)
    # kernel 4: f = 2, c = 0.75, taps 1 - |i/2 - 0.75| = [.25, .75, .75, .25]
    np.testing.assert_allclose(layer.blobs[0].data[0, 0, 0], [.0625, .1875, .1875, .0625])
    # away from the (unpadded) border every output mixes two inputs with weights .25/.75
    np.testing.assert_allclose(y[0, 0, 2:6, 2:6], 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0, 1, 2:6, 2:6], np.tile([0.5, 1.5, 2.5, 3.5], (4, 1)),
                               rtol=1e-6)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert not layer.blobs[0].diff.any()  # frozen
    assert bottom[0].diff.shape == x.shape and np.isfinite(bottom[0].diff).all()


DECONV_GRAD_CASES = [
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 3, 3, 3)),
    ("num_output: 4 kernel_size: 2 group: 2 stride: 2", (2, 2, 3, 2)),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 dilation: 2 pad_h: 1 pad_w: 0 bias_term: false",
     (1, 2, 3, 4)),
    ("num_output: 3 kernel_size: 1", (2, 2, 2, 3)),
    ("num_output: 2 kernel_size: 3 stride: 2", (2, 3, 4)),  # 1-D
]


@pytest.mark.parametrize("params, shape", DECONV_GRAD_CASES)
def test_deconvolution_gradients(params, shape):
    layer = deconv_layer(params, dtype=np.float64)
    check_gradients(layer, [randn(*shape, seed=3, dtype=np.float64)], max_checks=60)


def test_deconvolution_param_diffs_accumulate_and_frozen_params_are_skipped():
    layer = deconv_layer("num_output: 3 kernel_size: 2 stride: 2", dtype=np.float64)
    bottom, top = setup_layer(layer, [randn(2, 2, 3, 3, dtype=np.float64)])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    once = [p.diff.copy() for p in layer.blobs]
    dx = bottom[0].diff.copy()
    layer.backward(top, [True], bottom)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d)
    np.testing.assert_allclose(bottom[0].diff, dx)  # bottom diffs are overwritten
    np.testing.assert_array_equal(layer.blobs[1].diff, np.full(3, 2 * 2 * 36))
    for p in layer.blobs:
        p.diff[...] = 0
    layer.param_propagate_down = [False, False]
    layer.backward(top, [True], bottom)
    assert not any(p.diff.any() for p in layer.blobs)
    np.testing.assert_allclose(bottom[0].diff, dx)


def test_deconvolution_bottoms_share_the_weights():
    params = "num_output: 2 kernel_size: 3 stride: 2"
    xs = [randn(2, 3, 3, 4, seed=s) for s in (1, 2)]
    layer = deconv_layer(params)
    bottom, top = setup_layer(layer, xs, num_top=2)
    layer.forward(bottom, top)
    for t in top:
        t.diff[...] = 1
    layer.backward(top, [True, True], bottom)
    w_diff = np.zeros_like(layer.blobs[0].diff)
    for x, b, t in zip(xs, bottom, top):
        single = deconv_layer(params)  # same seed, same weights
        (y,), _, dx = forward_backward_ones(single, x)
        np.testing.assert_array_equal(t.data, y)
        np.testing.assert_allclose(b.diff, dx, rtol=1e-6)
        w_diff += single.blobs[0].diff
    np.testing.assert_allclose(layer.blobs[0].diff, w_diff, rtol=1e-5)


def forward_backward_ones(layer, x):
    """Forward, then backward from a top diff of ones; returns (tops, layer, bottom diff)."""
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    return [top[0].data.copy()], layer, bottom[0].diff.copy()


def test_deconvolution_macc_and_errors():
    layer = deconv_layer("num_output: 6 kernel_size: 4 stride: 2 group: 2")
    bottom, top = setup_layer(layer, [np.zeros((2, 4, 5, 5), np.float32)])
    assert layer.macc(bottom, top) == 4 * 4 * (4 // 2) * 6 * 5 * 5 * 2
    with pytest.raises(ProtonetError, match="deconv.*num_output .5. must be divisible by group"):
        run_layer(deconv_layer("num_output: 5 kernel_size: 2 group: 2"),
                  [np.zeros((1, 4, 3, 3), np.float32)])
    with pytest.raises(ProtonetError, match="deconv.*leaves no output"):
        run_layer(deconv_layer("num_output: 1 kernel_size: 2 pad: 3"),
                  [np.zeros((1, 1, 2, 2), np.float32)])
    with pytest.raises(ProtonetError, match="kernel_size .* is required"):
        run_layer(deconv_layer("num_output: 1"), [np.zeros((1, 1, 2, 2), np.float32)])


# -- Im2col ------------------------------------------------------------------------------------
IM2COL_CASES = [
    ("kernel_size: 3", (2, 3, 5, 6)),
    ("kernel_size: 3 stride: 2 pad: 1", (2, 2, 7, 6)),
    ("kernel_h: 2 kernel_w: 3 dilation: 2 pad_h: 1 pad_w: 2 stride_h: 1 stride_w: 2", (1, 3, 6, 7)),
    ("kernel_size: 1", (2, 4, 3, 3)),
]


@pytest.mark.parametrize("params, shape", IM2COL_CASES)
def test_im2col_matches_torch_unfold(params, shape, torch):
    F = torch.nn.functional
    layer = make_layer(f'type: "Im2col" convolution_param {{ {params} }}', dtype=np.float32)
    x = randn(*shape)
    bottom, top, dy = forward_backward(layer, [x])
    xt = torch.tensor(x, requires_grad=True)
    cols = F.unfold(xt, layer.kernel, dilation=layer.dilation, padding=layer.pad,
                    stride=layer.stride)  # (N, C*kh*kw, L), channel-major as Caffe's im2col
    cols.backward(torch.tensor(dy.reshape(cols.shape)))
    N, K, Ho, Wo = top[0].shape
    assert K == shape[1] * layer.kernel[0] * layer.kernel[1]
    np.testing.assert_array_equal(top[0].data.reshape(N, K, -1), cols.detach().numpy())
    assert_close(bottom[0].diff, xt.grad.numpy())


def test_im2col_channel_order_by_hand():
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 }', dtype=np.float32)
    x = np.arange(2 * 9, dtype=np.float32).reshape(1, 2, 3, 3)
    (y,) = run_layer(layer, [x])
    assert y.shape == (1, 8, 2, 2)
    # channel (c*kh + i)*kw + j holds x[c, oh + i, ow + j]
    np.testing.assert_array_equal(y[0, 0], [[0, 1], [3, 4]])
    np.testing.assert_array_equal(y[0, 3], [[4, 5], [7, 8]])
    np.testing.assert_array_equal(y[0, 5], [[10, 11], [13, 14]])


def test_im2col_gradients_and_1d():
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }')
    check_gradients(layer, [randn(2, 2, 5, 4, dtype=np.float64)], max_checks=60)
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 dilation: 2 }',
                       dtype=np.float32)
    x = np.arange(2 * 6, dtype=np.float32).reshape(1, 2, 6)
    (y,) = run_layer(layer, [x])
    assert y.shape == (1, 4, 4)
    np.testing.assert_array_equal(y[0], [[0, 1, 2, 3], [2, 3, 4, 5], [6, 7, 8, 9],
                                         [8, 9, 10, 11]])


def test_im2col_errors():
    with pytest.raises(ProtonetError, match="does not fit the padded input"):
        run_layer(make_layer('name: "cols" type: "Im2col" convolution_param { kernel_size: 4 }'),
                  [np.zeros((1, 1, 3, 3))])
    with pytest.raises(ProtonetError, match="at least one spatial axis"):
        run_layer(make_layer('type: "Im2col" convolution_param { kernel_size: 1 }'),
                  [np.zeros((1, 1))])


# -- Crop ---------------------------------------------------------------------------------------
def crop_layer(params="", dtype=np.float32):
    return make_layer(f'name: "crop" type: "Crop" crop_param {{ {params} }}', dtype=dtype)


def test_crop_default_axis_2_and_offsets():
    x = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    like = np.zeros((1, 1, 2, 3), np.float32)  # only axes >= 2 matter
    (y,) = run_layer(crop_layer(), [x, like])
    np.testing.assert_array_equal(y, x[:, :, :2, :3])
    (y,) = run_layer(crop_layer("offset: 2"), [x, like])
    np.testing.assert_array_equal(y, x[:, :, 2:4, 2:5])
    (y,) = run_layer(crop_layer("offset: 3 offset: 1"), [x, like])
    np.testing.assert_array_equal(y, x[:, :, 3:5, 1:4])
    (y,) = run_layer(crop_layer("axis: 1 offset: 1 offset: 0 offset: 2"),
                     [x, np.zeros((1, 2, 4, 4), np.float32)])
    np.testing.assert_array_equal(y, x[:, 1:3, 0:4, 2:6])
    (y,) = run_layer(crop_layer("axis: -1 offset: 3"), [x, np.zeros((9, 9, 9, 2))])
    np.testing.assert_array_equal(y, x[..., 3:5])


def test_crop_fcn_score_crop_by_hand():
    """FCN-32s: upscore (N, 21, 64+H..) cropped to the data at offset 19."""
    x = np.random.default_rng(0).standard_normal((1, 2, 50, 60)).astype(np.float32)
    (y,) = run_layer(crop_layer("axis: 2 offset: 19"), [x, np.zeros((1, 3, 20, 30))])
    np.testing.assert_array_equal(y, x[:, :, 19:39, 19:49])


def test_crop_backward_zero_fills_and_copies():
    x = np.ones((1, 2, 4, 4), np.float32)
    layer = crop_layer("offset: 1")
    bottom, top = setup_layer(layer, [x, np.zeros((1, 2, 2, 3), np.float32)])
    layer.forward(bottom, top)
    bottom[0].diff[...] = 7  # stale values must go
    top[0].diff[...] = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
    layer.backward(top, [True, False], bottom)
    expected = np.zeros_like(x)
    expected[:, :, 1:3, 1:4] = top[0].diff
    np.testing.assert_array_equal(bottom[0].diff, expected)
    check_gradients(crop_layer("offset: 1 offset: 2", np.float64),
                    [randn(2, 2, 5, 5, dtype=np.float64), np.zeros((2, 2, 3, 2))],
                    check_bottoms=[0])


def test_crop_errors():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ProtonetError, match="crop.*axis 3 .*runs past"):
        run_layer(crop_layer("offset: 2"), [x, np.zeros((1, 2, 2, 3))])
    with pytest.raises(ProtonetError, match="offset must be given once or once per cropped"):
        run_layer(crop_layer("offset: 0 offset: 0 offset: 0"), [x, np.zeros((1, 2, 2, 2))])
    with pytest.raises(ProtonetError, match="axis 4 is out of range"):
        run_layer(crop_layer("axis: 4"), [x, x])
    with pytest.raises(ProtonetError, match="exactly 2 bottom"):
        run_layer(crop_layer(), [x])


# -- SPP ----------------------------------------------------------------------------------------
def spp_layer(height, pool="MAX", dtype=np.float32, phase=None):
    extra = {} if phase is None else {"phase": phase}
    return make_layer(f'name: "spp" type: "SPP" spp_param {{ pyramid_height: {height} '
                      f'pool: {pool} }}', dtype=dtype, **extra)


def caffe_pool_reference(x, kernel, pad, ave):
    """Caffe's pooling with kernel = stride, by the definition (loops: a reference only)."""
    N, C, H, W = x.shape
    out = []
    for size, k, p in zip((H, W), kernel, pad):
        n = -(-(size + 2 * p - k) // k) + 1
        if p > 0 and (n - 1) * k >= size + p:
            n -= 1
        out.append(n)
    y = np.zeros((N, C) + tuple(out), np.float64)
    for oh in range(out[0]):
        for ow in range(out[1]):
            h0, w0 = oh * kernel[0] - pad[0], ow * kernel[1] - pad[1]
            h1, w1 = min(h0 + kernel[0], H + pad[0]), min(w0 + kernel[1], W + pad[1])
            area = (h1 - h0) * (w1 - w0)
            win = x[:, :, max(h0, 0):min(h1, H), max(w0, 0):min(w1, W)]
            y[:, :, oh, ow] = win.sum(axis=(2, 3)) / area if ave else win.max(axis=(2, 3))
    return y


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, height", [((2, 3, 8, 8), 3), ((1, 2, 7, 6), 3),
                                           ((2, 2, 13, 9), 2), ((1, 1, 6, 11), 3)])
def test_spp_matches_caffe_levels(shape, height, pool):
    x = randn(*shape)
    (y,) = run_layer(spp_layer(height, pool), [x])
    N, C, H, W = shape
    parts = []
    for level in range(height):
        bins = 2 ** level
        kernel = [-(-n // bins) for n in (H, W)]
        pad = [(k * bins - n + 1) // 2 for k, n in zip(kernel, (H, W))]
        ref = caffe_pool_reference(x.astype(np.float64), kernel, pad, pool == "AVE")
        assert ref.shape[2:] == (bins, bins)  # for these sizes every level has bins x bins
        parts.append(ref.reshape(N, -1))
    assert y.shape == (N, C * sum(4 ** level for level in range(height)))
    np.testing.assert_allclose(y, np.concatenate(parts, axis=1), rtol=1e-6, atol=1e-6)


def test_spp_by_hand():
    # 1 x 1 x 3 x 3, height 2: level 0 is the global max; level 1 has kernel 2, pad
    # (2*2 - 3 + 1) // 2 = 1, so the windows are rows/cols {0}, {1, 2}
    x = np.array([[1, 9, 2], [3, 4, 8], [7, 5, 6]], np.float32).reshape(1, 1, 3, 3)
    (y,) = run_layer(spp_layer(2), [x])
    np.testing.assert_array_equal(y, [[9, 1, 9, 7, 8]])
    (y,) = run_layer(spp_layer(2, "AVE"), [x])
    # AVE divides by the window clipped to H + pad: 4 for the padded corner, 4 inside
    np.testing.assert_allclose(y, [[45 / 9, 1 / 4, 11 / 4, 10 / 4, 23 / 4]], rtol=1e-6)


def test_spp_height_one_keeps_four_axes():
    x = randn(2, 3, 5, 4)
    (y,) = run_layer(spp_layer(1), [x])
    assert y.shape == (2, 3, 1, 1)  # Caffe runs the single Pooling straight into the top
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_spp_gradients(pool):
    layer = spp_layer(3, pool, dtype=np.float64)
    # distinct values keep MAX away from ties
    x = np.random.default_rng(5).permutation(2 * 2 * 8 * 7).reshape(2, 2, 8, 7) / 10.0
    check_gradients(layer, [x], max_checks=80)


def test_spp_follows_reshapes_and_counts_macc():
    layer = spp_layer(2)
    bottom, top = setup_layer(layer, [randn(1, 2, 4, 4)])
    layer.forward(bottom, top)
    assert top[0].shape == (1, 10)
    assert layer.macc(bottom, top) == 2 * 16 + 2 * 4 * 4
    bottom[0].reshape((3, 2, 9, 6))
    bottom[0].data[...] = randn(3, 2, 9, 6)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (3, 10)
    np.testing.assert_array_equal(top[0].data[:, :2], bottom[0].data.max(axis=(2, 3)))


def test_spp_errors():
    with pytest.raises(ProtonetError, match="spp.*pyramid_height must be given"):
        run_layer(make_layer('name: "spp" type: "SPP"'), [np.zeros((1, 1, 4, 4))])
    # 5 rows into 4 bins: kernel 2, pad 2 -- Caffe's Pooling refuses pad >= kernel
    with pytest.raises(ProtonetError, match="spp.*pyramid level 2 .*kernel \\[2, 2\\], "
                                            "pad \\[2, 2\\]"):
        run_layer(spp_layer(3), [np.zeros((1, 1, 5, 5), np.float32)])
    with pytest.raises(ProtonetError, match="4 axes"):
        run_layer(spp_layer(2), [np.zeros((1, 4, 4), np.float32)])
    with pytest.raises(ProtonetError, match="padding is implemented only for MAX and AVE"):
        run_layer(spp_layer(2, "STOCHASTIC", phase=TRAIN), [np.zeros((1, 1, 3, 3), np.float32)])


# -- in a net ------------------------------------------------------------------------------------
FCN = """name: "fcn" force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 9 dim: 11 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 2 kernel_size: 3 stride: 2 pad: 5
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up" param { lr_mult: 0 }
        convolution_param { num_output: 2 group: 2 kernel_size: 4 stride: 2 bias_term: false
                            weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "out"
        crop_param { axis: 2 offset: 3 } }
layer { name: "loss" type: "Reduction" bottom: "out" top: "loss" loss_weight: 1
        reduction_param { operation: SUMSQ } }
"""


def test_fcn_upsampling_in_a_net_matches_torch(torch):
    import protonet
    from protonet.io import parse_net
    F = torch.nn.functional
    net = protonet.Net(parse_net(FCN), protonet.TRAIN, seed=3)
    x = randn(2, 3, 9, 11, seed=4)
    out = net.forward(data=x)
    assert net.blobs["up"].shape == (2, 2, 2 * 9 + 2, 2 * 10 + 2)
    assert net.blobs["out"].shape == (2, 2, 9, 11)
    net.backward()
    w, b = (torch.tensor(p.data, requires_grad=True) for p in net.params["score"])
    xt = torch.tensor(x, requires_grad=True)
    wu = torch.tensor(net.params["up"][0].data, requires_grad=True)
    up = F.conv_transpose2d(F.conv2d(xt, w, b, stride=2, padding=5), wu, stride=2, groups=2)
    loss = (up[:, :, 3:12, 3:14] ** 2).sum()
    loss.backward()
    assert_close(out["loss"], loss.item(), tol=1e-5)
    assert_close(net.blobs["data"].diff, xt.grad.numpy())
    assert_close(net.params["score"][0].diff, w.grad.numpy())
    # force_backward makes Caffe compute every param diff, lr_mult 0 or not
    assert_close(net.params["up"][0].diff, wu.grad.numpy())
