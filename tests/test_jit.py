"""The compiled loops (protonet.kernels.jit, numba) against the textbook definitions: every
depthwise geometry, with and without shift and ReLU, on parts of the images and channels,
into views, in float32 and float64; and how the compiled path is turned off."""
import os
import subprocess
import sys

import numpy as np
import pytest

from protonet.kernels import jit, jit_pool
from protonet.kernels.conv import conv2d_reference

pytestmark = pytest.mark.skipif(not jit.enabled(), reason="numba is not installed "
                                "(pip install protonet[fast]) or PROTONET_JIT=0")

GEOMETRIES = [  # (input shape, kernel, stride, pad, dilation)
    ((2, 5, 9, 8), (3, 3), (1, 1), (1, 1), (1, 1)),     # MobileNet's, stride 1
    ((2, 5, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1)),     # and stride 2, even width
    ((1, 4, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1)),     # odd width: the last column's
    ((1, 3, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1)),     # one pixel
    ((1, 3, 2, 2), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 3, 1, 2), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 3, 3, 1), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 4, 7, 7), (3, 3), (1, 1), (2, 2), (2, 2)),     # dilation
    ((1, 5, 6, 5), (3, 2), (1, 1), (0, 0), (1, 1)),     # no padding, 3x2
    ((2, 3, 10, 9), (3, 4), (3, 2), (2, 1), (1, 1)),
    ((1, 6, 11, 12), (5, 5), (2, 2), (2, 2), (1, 1)),
    ((1, 2, 4, 4), (3, 3), (1, 1), (3, 3), (1, 1)),     # padding wider than the kernel
    ((1, 2, 4, 6), (1, 1), (2, 3), (0, 0), (1, 1)),
    ((1, 3, 6, 5), (3, 3), (1, 1), (0, 0), (1, 1)),     # 3x3, stride 1, unpadded
    ((1, 3, 6, 5), (3, 3), (1, 1), (2, 0), (1, 2)),
    ((2, 3, 5, 33), (3, 3), (1, 1), (1, 1), (1, 1)),    # wide: the rows' loop
    ((1, 2, 1, 40), (3, 3), (1, 1), (1, 1), (1, 1)),    # wide, one row: the flat frame
]


@pytest.fixture(params=["flat frame", "rows"])
def pad1_path(request, monkeypatch):
    """3x3, stride 1, pad 1: through the flat frame, or (every width) the rows' loop."""
    monkeypatch.setattr(jit, "PAD1_ROWS_MIN_WIDTH", 10 ** 9 if request.param == "flat frame"
                        else 2)


def reference(x, taps, shift, relu, stride, pad, dilation):
    w = taps[:, None].astype(np.float64)
    r = conv2d_reference(x.astype(np.float64), w, shift, stride, pad, dilation, x.shape[1])
    return np.maximum(r, 0) if relu else r


@pytest.mark.parametrize("shape, kernel, stride, pad, dilation", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_matches_the_definition(shape, kernel, stride, pad, dilation, dtype,
                                          pad1_path):
    rng = np.random.default_rng(0)
    N, C, H, W = shape
    x = rng.standard_normal(shape).astype(dtype)
    taps = rng.standard_normal((C,) + kernel).astype(dtype)
    shift = rng.standard_normal(C).astype(dtype)
    Ho, Wo = ((n + 2 * p - (d * (k - 1) + 1)) // s + 1
              for n, k, s, p, d in zip((H, W), kernel, stride, pad, dilation))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for relu in (False, True):
        for bias in (None, shift):
            out = np.full((N, C, Ho, Wo), np.nan, dtype)
            jit.depthwise_part(x, taps, bias, relu, out, slice(0, N), slice(0, C), stride,
                               pad, dilation)
            want = reference(x, taps, bias, relu, stride, pad, dilation)
            np.testing.assert_allclose(out, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (1, 2)])
def test_depthwise_writes_its_part_only_and_into_views(stride, pad1_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 8, 7)).astype(np.float32)
    taps = rng.standard_normal((6, 3, 3)).astype(np.float32)
    want = reference(x, taps, None, True, stride, (1, 1), (1, 1))
    top = np.full((3, 10) + want.shape[2:], 7.0, np.float32)  # a Concat top: channels 2..8
    view = top[:, 2:8]
    jit.depthwise_part(x, taps[1:4], None, True, view, slice(1, 3), slice(1, 4), stride,
                       (1, 1), (1, 1))
    np.testing.assert_allclose(view[1:3, 1:4], want[1:3, 1:4], rtol=1e-5, atol=1e-5)
    untouched = np.ones(top.shape, bool)
    untouched[1:3, 3:6] = False
    assert (top[untouched] == 7).all()


def test_relu_keeps_nan_as_caffe_does(pad1_path):
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    taps = np.ones((2, 3, 3), np.float32)
    for stride in ((1, 1), (2, 2), (1, 2)):
        out = np.zeros((1, 2) + reference(x, taps, None, True, stride, (1, 1), (1, 1))
                       .shape[2:], np.float32)
        jit.depthwise_part(x, taps, None, True, out, slice(0, 1), slice(0, 2), stride,
                           (1, 1), (1, 1))
        assert np.isnan(out[0, 0]).any() and not np.isnan(out[0, 1]).any()


def test_the_compiled_path_can_be_turned_off(monkeypatch):
    code = "from protonet.kernels import jit; print(jit.enabled())"
    for value, want in (("0", "False"), ("1", "True")):
        env = dict(os.environ, PROTONET_JIT=value)
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert got == want
    jit.set_enabled(False)
    try:
        assert not jit.enabled()
    finally:
        jit.set_enabled(True)
    assert jit.enabled()


POOLS = [  # (input shape, kernel, stride, pad)
    ((1, 3, 9, 9), (3, 3), (1, 1), (1, 1)),     # GoogLeNet's inception pools
    ((2, 3, 13, 13), (3, 3), (2, 2), (0, 0)),   # CaffeNet's, SqueezeNet's
    ((1, 2, 8, 8), (3, 3), (2, 2), (0, 0)),     # ceil: the last window hangs over
    ((1, 2, 6, 5), (1, 1), (2, 2), (0, 0)),     # ... and is empty: AVE 0/0
    ((1, 2, 7, 6), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 9, 10), (3, 3), (2, 2), (1, 1)),
    ((1, 2, 7, 7), (7, 7), (1, 1), (0, 0)),
    ((2, 2, 11, 9), (3, 2), (3, 2), (2, 1)),
    ((1, 2, 5, 5), (2, 2), (1, 1), (1, 1)),
    ((1, 2, 9, 8), (2, 2), (2, 2), (1, 1)),     # the 2x2 stride-2 loop with padding
    ((2, 3, 4, 3), (3, 3), (2, 2), (1, 1)),     # 3x3 stride 2 on planes narrower than it
]


def pooled(method, x, kernel, stride, pad):
    from protonet.kernels.im2col import pool_out_size
    out = tuple(pool_out_size(n, k, p, s, True) for n, k, p, s in
                zip(x.shape[2:], kernel, pad, stride))
    y = np.full(x.shape[:2] + out, 123.0, x.dtype)
    jit_pool.pool_part(method, x, y, slice(0, x.shape[0]), slice(0, x.shape[1]), kernel, stride,
                  pad)
    return y


@pytest.mark.parametrize("shape, kernel, stride, pad", POOLS)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_matches_caffes_loops(shape, kernel, stride, pad, method, dtype):
    from protonet.kernels.pool import pool2d_reference
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    with np.errstate(invalid="ignore"):  # an empty window's 0/0
        want = pool2d_reference(x, method, kernel, stride, pad)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(pooled(method, x, kernel, stride, pad), want, rtol=tol,
                               atol=tol)


def numpy_choice(x, kernel, stride, pad):
    """MAX values and choices by the numpy kernels (running_max_index on a -inf frame)."""
    from protonet.kernels import pool as kpool
    from protonet.kernels.im2col import pool_out_size
    out = tuple(pool_out_size(n, k, p, s, True) for n, k, p, s in
                zip(x.shape[2:], kernel, pad, stride))
    geo = kpool.geometry(x.shape[2:], kernel, pad, stride, out)
    xp = kpool.frame_tile(x, geo, -np.inf, {}, "f", x.shape[:2])
    y = np.empty(x.shape[:2] + out, x.dtype)
    index = np.empty(y.shape, np.int8)
    kpool.max_pool(xp, y, geo, index, {}, "")
    return y, index, geo


def awkward(shape, dtype, seed):
    """Random values with ties (rounded to a few levels), NaN, -inf and -FLT_MAX in them."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape) * 2).astype(dtype)
    flat = x.reshape(-1)
    cells = rng.choice(flat.size, size=(3, max(1, flat.size // 10)), replace=False)
    flat[cells[0]] = np.nan
    flat[cells[1]] = -np.inf
    flat[cells[2]] = -np.finfo(np.float32).max
    x[0, 0] = np.nan  # a whole plane with nothing to choose
    return x


@pytest.mark.parametrize("shape, kernel, stride, pad", POOLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_choice_matches_the_numpy_kernel(shape, kernel, stride, pad, dtype):
    x = awkward(shape, dtype, 4)
    want_y, want_index, _ = numpy_choice(x, kernel, stride, pad)
    y = np.full(want_y.shape, 123.0, dtype)
    index = np.full(want_y.shape, 99, np.int8)
    jit_pool.max_pool_choice_part(x, y, index, slice(0, shape[0]), kernel, stride, pad)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(index, want_index)


@pytest.mark.parametrize("shape, kernel, stride, pad", POOLS)
def test_max_values_match_the_numpy_kernel_bit_for_bit(shape, kernel, stride, pad):
    x = awkward(shape, np.float32, 7)  # NaN, -inf, -FLT_MAX, ties, a plane of NaN
    want_y, _, _ = numpy_choice(x, kernel, stride, pad)
    np.testing.assert_array_equal(pooled("MAX", x, kernel, stride, pad), want_y)


@pytest.mark.parametrize("shape, kernel, stride, pad", POOLS)
def test_max_and_average_backward_match_the_numpy_kernels(shape, kernel, stride, pad):
    from protonet.kernels import pool as kpool
    x = awkward(shape, np.float64, 5)
    _, index, geo = numpy_choice(x, kernel, stride, pad)
    dy = np.random.default_rng(6).standard_normal(index.shape)
    want = np.empty_like(x)
    kpool.route_selected(index, dy, want, geo, {}, "")
    dx = np.full_like(x, np.nan)
    jit_pool.route_max_part(index, dy, dx, slice(0, shape[0]), kernel, stride, pad)
    np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-12)
    frame = np.empty((shape[0], shape[1]) + geo.frame)
    with np.errstate(divide="ignore"):  # a window wholly in the padding: dy / 0, unused
        kpool.spread_average(dy, frame, geo)
    (H, W), (ph, pw) = shape[2:], pad
    dx = np.full_like(x, np.nan)
    jit_pool.spread_average_part(dy, dx, slice(0, shape[0]), kernel, stride, pad)
    np.testing.assert_allclose(dx, frame[:, :, ph:ph + H, pw:pw + W], rtol=1e-12, atol=1e-12)


def test_the_backward_kernels_write_their_images_only():
    index = np.zeros((3, 2, 2, 2), np.int8)
    dy = np.ones((3, 2, 2, 2))
    for run in (lambda dx: jit_pool.route_max_part(index, dy, dx, slice(1, 2), (2, 2), (2, 2),
                                                   (0, 0)),
                lambda dx: jit_pool.spread_average_part(dy, dx, slice(1, 2), (2, 2), (2, 2),
                                                        (0, 0))):
        dx = np.full((3, 2, 4, 4), 7.0)
        run(dx)
        assert (dx[0] == 7).all() and (dx[2] == 7).all() and not (dx[1] == 7).any()


def test_max_pooling_skips_nan_and_minus_infinity_as_caffe():
    x = np.full((1, 1, 4, 4), np.nan, np.float32)
    x[0, 0, 0, 0] = -np.inf
    x[0, 0, 3, 3] = 2.0
    y = pooled("MAX", x, (2, 2), (2, 2), (0, 0))
    lowest = -np.finfo(np.float32).max
    np.testing.assert_array_equal(y[0, 0], [[lowest, lowest], [lowest, 2.0]])


@pytest.mark.filterwarnings("ignore:overflow")  # AVE over -FLT_MAX cells, on the parts' threads
@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_the_pooling_layer_gives_the_same_with_and_without_compiled_loops(cut_everything,
                                                                         phase):
    from protonet.layers.base import TEST, TRAIN
    from protonet.testing import make_layer, setup_layer
    for params, shape in [("pool: MAX kernel_size: 3 stride: 1 pad: 1", (1, 6, 7, 7)),
                          ("pool: MAX kernel_size: 3 stride: 2", (3, 4, 9, 8)),
                          ("pool: MAX kernel_size: 2 stride: 2", (4, 3, 8, 8)),
                          ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 6, 9, 8)),
                          ("pool: AVE kernel_size: 2 stride: 2", (2, 4, 7, 7))]:
        x = awkward(shape, np.float32, 3)
        dy = np.random.default_rng(7).standard_normal(
            (shape[0], shape[1]) + (9, 9)).astype(np.float32)
        results = []
        for on in (True, False):
            jit.set_enabled(on)
            try:
                layer = make_layer(f'type: "Pooling" pooling_param {{ {params} }}',
                                   phase=TRAIN if phase == "TRAIN" else TEST,
                                   dtype=np.float32)
                bottom, top = setup_layer(layer, [x])
                layer.forward(bottom, top)
                top[0].diff[...] = dy[tuple(slice(0, n) for n in top[0].shape)]
                layer.backward(top, [True], bottom)
                results.append((top[0].data.copy(), bottom[0].diff.copy()))
            finally:
                jit.set_enabled(True)
        for got, want in zip(*results):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_scale, with_shift, relu", [
    (True, True, True), (False, True, True), (True, False, False), (False, True, False)])
def test_affine_in_place_matches_numpy(with_scale, with_shift, relu):
    from protonet.kernels.affine import Epilogue, epilogue_reference
    rng = np.random.default_rng(4)
    top = rng.standard_normal((2, 9, 5, 6)).astype(np.float32)  # a Concat top: channels 3..7
    top[0, 4, 1, 1] = np.nan
    scale = rng.uniform(0.5, 2, 9).astype(np.float32) if with_scale else None
    shift = rng.standard_normal(9).astype(np.float32) if with_shift else None
    before = top.copy()
    view = top[:, 3:7]
    jit.affine_in_place(view, scale, shift, relu, slice(3, 7))
    cs = slice(3, 7)
    want = epilogue_reference(before[:, cs], Epilogue(
        [(None, None if scale is None else scale[cs], None if shift is None else shift[cs])],
        relu))[0]
    np.testing.assert_allclose(view, want, rtol=1e-6, atol=1e-6)  # NaN where it was
    assert np.isnan(view[0, 1, 1, 1])
    outside = np.ones(top.shape, bool)
    outside[:, cs] = False
    np.testing.assert_array_equal(top[outside], before[outside])


def test_finish_views_falls_back_to_numpy_for_a_view_with_no_planes():
    from protonet.kernels.affine import Epilogue, epilogue_reference, finish_views
    rng = np.random.default_rng(5)
    base = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
    view = base.transpose(0, 1, 3, 2)  # columns first: no (n, c, positions) view
    assert jit.planes(view) is None
    with pytest.raises(ValueError, match="no \\(n, c, positions\\) view"):
        jit.affine_in_place(view, None, np.ones(3, np.float32), False, slice(None))
    shift = rng.standard_normal(3).astype(np.float32)
    ep = Epilogue([(None, None, shift)], relu=True)
    want = epilogue_reference(view.copy(), ep)[0]
    finish_views([view], ep, axis=1)
    np.testing.assert_allclose(view, want, rtol=1e-6)
