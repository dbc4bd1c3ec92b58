"""The compiled implicit GEMM (protonet.kernels.jit_conv) against the textbook definitions:
forward rows and weight gradients for every geometry it takes, parts of the batch, the
ragged last tiles, every vector count per row; its argument checks; and that a
convolution layer runs it where it applies."""
import numpy as np
import pytest

from protonet.kernels import jit, jit_conv
from protonet.kernels.conv import column_matrix, conv2d_reference, weight_columns
from protonet.kernels.conv_backward import conv2d_backward_reference
from protonet.layers.base import TRAIN
from protonet.testing import make_layer, setup_layer

pytestmark = pytest.mark.skipif(not jit.enabled(), reason="numba is not installed "
                                "(pip install protonet[fast]) or PROTONET_JIT=0")

V = jit_conv.vector_width() if jit.enabled() else 16
GEOMETRIES = [  # (n, C, H, W), O, kernel, stride, pad, dilation
    ((2, 3, 9, 7), V, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 5, 8, 11), 2 * V, (5, 3), (2, 1), (2, 1), (1, 1)),
    ((2, 4, 10, 10), 4 * V, (3, 3), (1, 2), (0, 0), (2, 1)),     # dilated rows
    ((1, 7, 6, 6), 8 * V, (1, 1), (1, 1), (0, 0), (1, 1)),       # two column blocks
    ((2, 16, 5, 6), 3 * V, (5, 5), (1, 1), (2, 2), (1, 1)),      # one vector a row
    ((1, 1, 1, 1), V, (1, 1), (1, 1), (0, 0), (1, 1)),           # one position
    ((3, 2, 4, 13), 2 * V, (3, 1), (1, 3), (1, 0), (1, 1)),      # ragged tiles
]


def frame_of(x, pad):
    n, C, H, W = x.shape
    frame = np.zeros((n, H + 2 * pad[0], W + 2 * pad[1], C), x.dtype)
    frame[:, pad[0]:pad[0] + H, pad[1]:pad[1] + W] = x.transpose(0, 2, 3, 1)
    return frame


def problem(shape, O, kernel, pad, seed=0):
    """``(x, w, x's channels-last frame, w's columns in the kernel's chunks)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((O, shape[1]) + kernel).astype(np.float32)
    return x, w, frame_of(x, pad), weight_columns(w, chunk=jit_conv.chunk(O))


@pytest.mark.parametrize("shape, O, kernel, stride, pad, dilation", GEOMETRIES)
def test_rows_are_the_convolution(shape, O, kernel, stride, pad, dilation):
    x, w, frame, w_cols = problem(shape, O, kernel, pad)
    want = conv2d_reference(x, w, stride=stride, pad=pad, dilation=dilation)
    n, _, Ho, Wo = want.shape
    out = np.full((n * Ho * Wo, O), np.nan, np.float32)
    jit_conv.conv_rows(frame, w_cols, out, slice(0, n * Ho * Wo), kernel, stride, dilation,
                       (Ho, Wo))
    got = out.reshape(n, Ho, Wo, O).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("positions", [slice(1, 3), slice(5, 50), slice(44, 88), slice(7, 7)])
def test_rows_of_some_positions(positions):
    """Any range of the flat (image, row, column) positions, across images or inside one."""
    shape, O, kernel, stride, pad, dilation = GEOMETRIES[1]
    x, w, frame, w_cols = problem(shape, O, kernel, pad)
    want = conv2d_reference(x, w, stride=stride, pad=pad, dilation=dilation)
    n, _, Ho, Wo = want.shape
    assert positions.stop <= n * Ho * Wo
    out = np.empty((positions.stop - positions.start, O), np.float32)
    jit_conv.conv_rows(frame, w_cols, out, positions, kernel, stride, dilation, (Ho, Wo))
    np.testing.assert_allclose(out, want.transpose(0, 2, 3, 1).reshape(-1, O)[positions],
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("panel_bytes", [1, None])  # one kernel row at a time; all at once
def test_rows_summed_in_panels_of_kernel_rows(panel_bytes, monkeypatch):
    if panel_bytes:
        monkeypatch.setattr(jit_conv, "PANEL_BYTES", panel_bytes)
    test_rows_are_the_convolution(*GEOMETRIES[4])


@pytest.mark.parametrize("shape, O, kernel, stride, pad, dilation", GEOMETRIES + [
    ((2, 3, 9, 9), 2 * V, (3, 2), (2, 1), (2, 2), (2, 3))])      # dilated columns too
def test_weight_gradient_is_the_definition_and_adds(shape, O, kernel, stride, pad, dilation):
    x, w, frame, _ = problem(shape, O, kernel, pad)
    Ho, Wo = conv2d_reference(x, w, stride=stride, pad=pad, dilation=dilation).shape[2:]
    dy = np.random.default_rng(1).standard_normal((shape[0], O, Ho, Wo)).astype(np.float32)
    _, want, _ = conv2d_backward_reference(x, w, dy, stride, pad, dilation)
    start = np.random.default_rng(2).standard_normal((np.prod(kernel) * shape[1], O))
    d_w = start.astype(np.float32)
    jit_conv.weight_gradient(frame, np.ascontiguousarray(dy.transpose(0, 2, 3, 1)), d_w,
                             kernel, stride, dilation)
    got = (d_w - start).reshape(kernel + (shape[1], O)).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_weight_gradient_reads_a_top_diff_view():
    """The top diff may be the inside of a padded frame (backward-data's)."""
    shape, O, kernel, stride, pad, dilation = GEOMETRIES[0]
    x, w, frame, _ = problem(shape, O, kernel, pad)
    Ho, Wo = conv2d_reference(x, w, stride=stride, pad=pad).shape[2:]
    dy = np.random.default_rng(1).standard_normal((shape[0], O, Ho, Wo)).astype(np.float32)
    padded = frame_of(dy, (2, 1))
    d_w = np.zeros((np.prod(kernel) * shape[1], O), np.float32)
    jit_conv.weight_gradient(frame, padded[:, 2:2 + Ho, 1:1 + Wo], d_w, kernel, stride,
                             dilation)
    _, want, _ = conv2d_backward_reference(x, w, dy, stride, pad, dilation)
    np.testing.assert_allclose(d_w.reshape(kernel + (shape[1], O)).transpose(3, 2, 0, 1),
                               want, rtol=1e-4, atol=1e-3)


def test_what_the_kernel_takes():
    assert jit_conv.supported(2 * V) and jit_conv.supported(V)
    assert not jit_conv.supported(V + 1)
    assert not jit_conv.supported(V, dilation_w=2)
    assert not jit_conv.supported(V, dtype=np.float64)
    assert [jit_conv.chunk(o) for o in (V, 2 * V, 3 * V, 4 * V, 8 * V, V + 1)] == \
        [V, 2 * V, V, 4 * V, 4 * V, V + 1]
    assert jit_conv.chunk(4 * V, dilation_w=2) == 4 * V  # not taken: one chunk


def test_weights_in_chunks_are_the_weight_matrix():
    w = np.random.default_rng(0).standard_normal((8 * V, 3, 2, 5)).astype(np.float32)
    scale = np.arange(8 * V, dtype=np.float32)
    whole = weight_columns(w, scale)
    assert whole.shape == (1, 30, 8 * V)
    np.testing.assert_array_equal(
        whole[0], (w * scale[:, None, None, None]).transpose(2, 3, 1, 0).reshape(30, -1))
    np.testing.assert_array_equal(column_matrix(weight_columns(w, scale, chunk=V)), whole[0])


def test_bad_arguments_raise_instead_of_reading_past_the_arrays():
    shape, O, kernel, stride, pad, dilation = GEOMETRIES[0]
    x, w, frame, w_cols = problem(shape, O, kernel, pad)
    out = np.empty((2 * 9 * 7, O), np.float32)
    args = (slice(0, 2 * 9 * 7), kernel, stride, dilation, (9, 7))
    with pytest.raises(ValueError, match="windows leave the frame"):
        jit_conv.conv_rows(frame, w_cols, np.empty((2 * 10 * 7, O), np.float32),
                           slice(0, 2 * 10 * 7), kernel, stride, dilation, (10, 7))
    with pytest.raises(ValueError, match="windows leave the frame"):
        jit_conv.conv_rows(frame, w_cols, out, slice(1, 2 * 9 * 7 + 1), *args[1:])
    with pytest.raises(ValueError, match="out has shape"):
        jit_conv.conv_rows(frame, w_cols, out[1:], *args)
    with pytest.raises(ValueError, match="float32"):
        jit_conv.conv_rows(frame.astype(np.float64), w_cols, out, *args)
    with pytest.raises(ValueError, match="contiguous"):
        jit_conv.conv_rows(frame[:, :, ::-1], w_cols, out, *args)
    with pytest.raises(ValueError, match="weights do not match"):
        jit_conv.conv_rows(frame, column_matrix(w_cols), out, *args)
    dy = np.zeros((2, 9, 7, O), np.float32)
    with pytest.raises(ValueError, match="layouts"):
        jit_conv.weight_gradient(frame, dy[..., ::-1], np.zeros((27, O), np.float32),
                                 kernel, stride, dilation)
    with pytest.raises(ValueError, match="shapes"):
        jit_conv.weight_gradient(frame, dy, np.zeros((26, O), np.float32), kernel, stride,
                                 dilation)


def test_a_training_convolution_runs_the_compiled_kernels(monkeypatch):
    calls = []
    for name in ("conv_rows", "weight_gradient"):
        real = getattr(jit_conv, name)
        monkeypatch.setattr(jit_conv, name, lambda *a, real=real, name=name: (
            calls.append(name), real(*a))[1])
    layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: {2 * V} '
                       'kernel_size: 5 pad: 2 weight_filler { type: "gaussian" std: 0.1 } '
                       'bias_filler { type: "constant" value: 0.5 } }', phase=TRAIN,
                       dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((3, V, 6, 7)).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    assert layer.strategy == "channels_last"
    layer.forward(bottom, top)
    assert calls == ["conv_rows"]
    top[0].diff[...] = 1
    layer.param_propagate_down = [True, True]
    layer.backward(top, [True], bottom)
    assert sorted(calls[1:]) == ["conv_rows", "weight_gradient"]  # dx, then dW
    np.testing.assert_allclose(
        top[0].data, conv2d_reference(x, layer.blobs[0].data, layer.blobs[1].data,
                                      pad=(2, 2)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tile_bytes", [1, 7 * 4 * 2 * V, 1 << 20])
def test_output_rows_in_any_tile(tile_bytes, monkeypatch, cut_everything):
    """Whole images a tile, or a large image's positions in pieces (one position, seven)."""
    from protonet.kernels import conv as kconv
    monkeypatch.setattr(kconv, "EPILOGUE_TILE_BYTES", tile_bytes)
    layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: {2 * V} '
                       'kernel_size: 3 stride: 2 pad: 1 '
                       'weight_filler { type: "gaussian" std: 0.1 } '
                       'bias_filler { type: "constant" value: 0.5 } }', dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((4, 16, 9, 11)).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    assert layer.strategy == "channels_last"
    layer.forward(bottom, top)
    np.testing.assert_allclose(
        top[0].data, conv2d_reference(x, layer.blobs[0].data, layer.blobs[1].data,
                                      stride=(2, 2), pad=(1, 1)), rtol=1e-5, atol=1e-4)


def test_image_position_tiles_cover_every_position_once():
    from protonet.kernels.conv import image_position_tiles
    for n, P, tile in ((5, 30, 4 * 30 * 2), (3, 30, 4 * 7), (2, 30, 1)):
        seen = np.zeros((n, P), int)
        for images, positions in image_position_tiles(n, P, 4, tile):
            assert images.stop - images.start == 1 or positions == slice(0, P)
            seen[images, positions] += 1
        assert (seen == 1).all()


@pytest.mark.parametrize("channels", [3, 16])
def test_few_channels_and_large_images_stay_on_the_columns(channels, monkeypatch):
    """Transposing a large image's output rows would cost more than the little product."""
    from protonet.kernels import conv as kconv
    layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: {V} '
                       'kernel_size: 3 }', dtype=np.float32)
    x = np.zeros((2, channels, 6, 6), np.float32)
    setup_layer(layer, [x])
    assert layer.strategy == "channels_last"
    monkeypatch.setattr(kconv, "EPILOGUE_TILE_BYTES", 4 * V * 16 - 1)  # one image: 16 rows
    setup_layer(layer, [x])
    assert layer.strategy == ("columns" if channels < 16 else "channels_last")


AVX2_CHECK = """
import numpy as np
from protonet.kernels import jit_conv
from protonet.kernels.conv import conv2d_reference, weight_columns
from protonet.kernels.conv_backward import conv2d_backward_reference
assert jit_conv.vector_width() == 8, jit_conv.vector_width()
rng = np.random.default_rng(0)
for O, kernel, stride in ((8, (3, 3), (1, 1)), (16, (5, 3), (2, 1)), (40, (3, 3), (1, 2)),
                          (96, (1, 1), (1, 1))):
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    w = rng.standard_normal((O, 5) + kernel).astype(np.float32)
    frame = np.zeros((2, 11, 10, 5), np.float32)
    frame[:, 1:10, 1:9] = x.transpose(0, 2, 3, 1)
    want = conv2d_reference(x, w, stride=stride, pad=(1, 1))
    Ho, Wo = want.shape[2:]
    out = np.empty((2 * Ho * Wo, O), np.float32)
    jit_conv.conv_rows(frame, weight_columns(w, chunk=jit_conv.chunk(O)), out,
                       slice(0, 2 * Ho * Wo), kernel, stride, (1, 1), (Ho, Wo))
    np.testing.assert_allclose(out.reshape(2, Ho, Wo, O).transpose(0, 3, 1, 2), want,
                               rtol=1e-5, atol=1e-4)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    dw = np.zeros((np.prod(kernel) * 5, O), np.float32)
    jit_conv.weight_gradient(frame, np.ascontiguousarray(dy.transpose(0, 2, 3, 1)), dw,
                             kernel, stride, (1, 1))
    ref = conv2d_backward_reference(x, w, dy, stride, (1, 1))[1]
    np.testing.assert_allclose(dw.reshape(kernel + (5, O)).transpose(3, 2, 0, 1), ref,
                               rtol=1e-4, atol=1e-3)
print("ok")
"""


@pytest.mark.slow
def test_the_eight_wide_kernels_of_a_cpu_without_avx512():
    """Compiled as for AVX2 (numba told the CPU lacks AVX-512): 8-float vectors, 16
    registers, other tile heights -- the code such a CPU runs, checked here too."""
    import os
    import subprocess
    import sys
    from llvmlite import binding
    features = binding.get_host_cpu_features().flatten().split(",")
    if "+avx2" not in features:
        pytest.skip("this CPU has no AVX2")
    wide = ("+avx512", "+avx10", "+amx", "+evex512")
    features = ["-" + f[1:] if f.startswith(wide) else f for f in features]
    env = dict(os.environ, NUMBA_CPU_FEATURES=",".join(features))
    done = subprocess.run([sys.executable, "-c", AVX2_CHECK], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
