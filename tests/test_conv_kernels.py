"""The convolution kernels (protonet.kernels.conv, conv_backward) against the textbook
definitions, for every strategy the layer picks, with batches cut into parts, kernels
called on slices of the output channels, and an epilogue (folded BatchNorm/Scale,
ReLU) written while in cache."""
import numpy as np
import pytest

from protonet.kernels.affine import Epilogue, batchnorm_coefficients, compose, \
    epilogue_reference
from protonet.kernels.conv import conv2d_reference
from protonet.kernels.conv_backward import conv2d_backward_reference
from protonet.layers.base import TEST, TRAIN
from protonet.testing import make_layer, setup_layer


def conv_layer(params, phase=TEST):
    return make_layer(f'type: "Convolution" convolution_param {{ {params} '
                      'weight_filler { type: "gaussian" std: 0.3 } '
                      'bias_filler { type: "gaussian" std: 0.3 } }', phase=phase,
                      dtype=np.float32)


def forward_matches_the_definition(layer, x, bottom, top):
    """Run ``layer`` forward, check it, and set a random top diff: ``(w, args, dy)``."""
    layer.forward(bottom, top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    args = (layer.stride, layer.pad, layer.dilation, layer.group)
    np.testing.assert_allclose(top[0].data, conv2d_reference(x, w, b, *args),
                               rtol=1e-4, atol=1e-4)
    dy = np.random.default_rng(1).standard_normal(top[0].shape).astype(np.float32)
    top[0].diff[...] = dy
    return w, args, dy


CASES = [  # (params, input shape, strategy)
    ("num_output: 6 kernel_size: 1", (1, 5, 6, 7), "1x1"),
    ("num_output: 6 kernel_size: 1", (3, 5, 6, 7), "1x1"),
    ("num_output: 4 kernel_size: 1 stride: 2", (2, 3, 7, 6), "1x1"),
    ("num_output: 6 kernel_size: 3 pad: 1 group: 6", (1, 6, 9, 8), "depthwise"),
    ("num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 6", (3, 6, 9, 8), "depthwise"),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2 group: 4", (2, 4, 7, 7), "depthwise"),
    ("num_output: 5 kernel_h: 3 kernel_w: 2 group: 5", (1, 5, 6, 5), "depthwise"),
    ("num_output: 3 kernel_h: 3 kernel_w: 4 stride_h: 3 stride_w: 2 pad_h: 2 pad_w: 1 group: 3",
     (2, 3, 10, 9), "depthwise"),
    ("num_output: 40 kernel_size: 3 pad: 1 group: 40", (2, 40, 4, 4), "depthwise"),  # c last
    ("num_output: 40 kernel_size: 3 pad: 1 stride: 2 group: 40", (1, 40, 5, 4), "depthwise"),
    ("num_output: 6 kernel_size: 3 pad: 1 group: 2", (1, 4, 6, 7), "columns"),
    ("num_output: 6 kernel_size: 3 pad: 1 stride: 2", (3, 3, 8, 9), "columns"),
    ("num_output: 4 kernel_size: 5 pad: 1", (1, 3, 9, 8), "columns"),
    ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 16, 17), "columns"),  # image by image
    ("num_output: 8 kernel_size: 3 pad: 1", (2, 16, 7, 6), "channels_last"),
    ("num_output: 8 kernel_size: 3 pad: 1", (1, 16, 7, 6), "columns"),  # one image
    ("num_output: 8 kernel_size: 3 stride: 2", (3, 16, 9, 8), "channels_last"),
    # a short window (16*3*3 < 320 values) with 64+ outputs stays on BLAS's columns; the
    # compiled implicit GEMM takes it channels-last (outputs a multiple of the vector width)
    ("num_output: 64 kernel_size: 3 pad: 1", (2, 16, 5, 6), ("columns", "channels_last")),
    ("num_output: 64 kernel_size: 5 pad: 2", (2, 16, 5, 6), "channels_last"),
    # compiled: dx as the implicit GEMM of the padded top diff, dW in place
    ("num_output: 16 kernel_size: 3 pad: 1", (2, 16, 7, 6), "channels_last"),
    # ... with the flipped weights in several chunks (48 = 3 x 16 bottom channels)
    ("num_output: 16 kernel_size: 3 pad: 1", (2, 48, 5, 6), "channels_last"),
    # compiled forward and dW; dx (3 channels) through columns
    ("num_output: 32 kernel_size: 5 pad: 2", (3, 3, 8, 9), ("columns", "channels_last")),
    # compiled forward and dW; dx (stride 2) folded from slabs
    ("num_output: 32 kernel_size: 3 stride: 2 pad: 1", (2, 16, 9, 8), "channels_last"),
    ("num_output: 48 kernel_h: 5 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1",
     (2, 32, 11, 9), "channels_last"),
    # dilated along the width: the compiled forward does not apply, dW does
    ("num_output: 16 kernel_h: 3 kernel_w: 2 dilation: 2 stride: 2 pad: 2", (2, 16, 8, 7),
     "channels_last"),
]


@pytest.fixture(params=["numpy", "compiled"])
def conv_path(request, monkeypatch):
    """Channels-last products through BLAS on copied columns, or the compiled implicit GEMM
    (numba: protonet.kernels.jit_conv)."""
    from protonet.kernels import jit
    if request.param == "compiled":
        if not jit.enabled():
            pytest.skip("numba is not installed (pip install protonet[fast])")
    else:
        monkeypatch.setattr(jit, "_state", {"enabled": False})
    return request.param


def expected_strategy(strategy, path: str) -> str:
    """A case's strategy: one for both paths, or ``(numpy's, compiled's)``."""
    return strategy if isinstance(strategy, str) else strategy[path == "compiled"]


@pytest.mark.parametrize("params, shape, strategy", CASES)
def test_forward_and_backward_match_the_definitions(params, shape, strategy, conv_path,
                                                    cut_everything, phase=TEST):
    layer = conv_layer(params, phase)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    assert layer.strategy == expected_strategy(strategy, conv_path)
    # batch parts; a single image is not cut (its GEMMs run on BLAS's threads)
    assert len(layer._parts()) == (2 if shape[0] > 1 else 1)
    w, args, dy = forward_matches_the_definition(layer, x, bottom, top)
    layer.param_propagate_down = [True, True]
    layer.backward(top, [True], bottom)
    dx, dw, db = conv2d_backward_reference(x, w, dy, *args)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[0].diff, dw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(layer.blobs[1].diff, db, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("params, shape, strategy", CASES)
def test_epilogue_written_in_cache_matches_step_by_step(params, shape, strategy, conv_path,
                                                        cut_everything):
    layer = conv_layer(params)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    assert layer.strategy == expected_strategy(strategy, conv_path)
    rng = np.random.default_rng(2)
    O = layer.num_output
    bn = batchnorm_coefficients(rng.normal(0, 1, O), rng.uniform(0.5, 2, O), 1.0, 1e-5)
    scale = compose((np.ones(O), layer.blobs[1].data.astype(np.float64)), bn)
    second = (rng.uniform(0.5, 1.5, O), rng.normal(0, 1, O))
    first_out, second_out = np.zeros(top[0].shape, np.float32), np.zeros(top[0].shape,
                                                                          np.float32)
    ep = Epilogue([(first_out, *(c.astype(np.float32) for c in scale)),
                   (second_out, *(c.astype(np.float32) for c in second))], relu=True)
    layer.forward(bottom, top, epilogue=ep)
    raw = conv2d_reference(x, layer.blobs[0].data, None, layer.stride, layer.pad,
                           layer.dilation, layer.group)
    want = epilogue_reference(raw, ep)
    for got, expected in zip((first_out, second_out), want):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (second_out >= 0).all() and (first_out < 0).any()  # the ReLU on the last only


DEPTHWISE_CASES = [case[:2] for case in CASES if case[2] == "depthwise"]


@pytest.fixture(params=["planes", "channels_last", "compiled"])
def depthwise_path(request, monkeypatch):
    """Each depthwise path, whatever the channel count: numpy's phase planes or channels-last
    windows, or the compiled loop (numba)."""
    from protonet.kernels import conv as kconv
    from protonet.kernels import jit
    if request.param == "compiled":
        if not jit.enabled():
            pytest.skip("numba is not installed (pip install protonet[fast])")
    else:
        monkeypatch.setattr(jit, "_state", {"enabled": False})
    monkeypatch.setattr(kconv, "DEPTHWISE_CHANNELS_LAST_MIN",
                        (10**9, 10**9) if request.param == "planes" else (1, 1))
    return request.param


@pytest.mark.parametrize("params, shape", DEPTHWISE_CASES)
def test_both_depthwise_paths_match_the_definition(params, shape, depthwise_path,
                                                   cut_everything):
    test_forward_and_backward_match_the_definitions(params, shape, "depthwise", depthwise_path,
                                                    None)
    test_epilogue_written_in_cache_matches_step_by_step(params, shape, "depthwise",
                                                        depthwise_path, None)


def test_depthwise_takes_any_tile(monkeypatch, depthwise_path):
    from protonet.kernels import conv as kconv
    monkeypatch.setattr(kconv, "DEPTHWISE_TILE_BYTES", 64)  # one image, a few channels a tile
    layer = conv_layer("num_output: 7 kernel_size: 3 pad: 1 group: 7")
    x = np.random.default_rng(0).standard_normal((2, 7, 6, 6)).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, conv2d_reference(
        x, layer.blobs[0].data, layer.blobs[1].data, (1, 1), (1, 1), (1, 1), 7),
        rtol=1e-4, atol=1e-4)


def test_kernels_write_only_the_channels_asked_for(depthwise_path):
    from protonet.kernels import conv as kconv
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 7, 5)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    for w, call in [
        (rng.standard_normal((6, 1, 3, 3)).astype(np.float32),
         lambda w, ep, cs: kconv.depthwise(x, w, ep, slice(0, 2), cs, (3, 3), (2, 1), (1, 1),
                                           (1, 1), {}, 0)),
        (rng.standard_normal((6, 6, 1, 1)).astype(np.float32),
         lambda w, ep, cs: kconv.conv_1x1(x, w.reshape(6, 6), ep, slice(0, 2), cs, (2, 1),
                                          {}, 0))]:
        group = 6 if w.shape[1] == 1 else 1
        want = conv2d_reference(x, w, b, (2, 1), (1, 1) if group == 6 else (0, 0), (1, 1), group)
        y = np.full(want.shape, 7.0, np.float32)
        call(w, Epilogue([(y.reshape(2, 6, -1), None, b)]), slice(2, 5))
        np.testing.assert_allclose(y[:, 2:5], want[:, 2:5], rtol=1e-5, atol=1e-5)
        assert (y[:, :2] == 7).all() and (y[:, 5:] == 7).all()


def test_a_1x1_convolution_of_1x1_images_is_one_product_over_the_batch():
    from protonet.kernels import conv as kconv
    from protonet.kernels.affine import epilogue_reference
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 8, 1, 1)).astype(np.float32)  # a classifier's input
    w = rng.standard_normal((6, 8, 1, 1)).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    r = conv2d_reference(x, w).reshape(5, 6, 1)
    y = np.full((5, 6, 1), 7.0, np.float32)
    ep = Epilogue([(y, scale, shift)], relu=True)
    kconv.conv_1x1(x, w.reshape(6, 8), ep, slice(1, 4), slice(2, 5), (1, 1), {}, 0)
    want = epilogue_reference(r, ep)[0]
    np.testing.assert_allclose(y[1:4, 2:5], want[1:4, 2:5], rtol=1e-5, atol=1e-5)
    y[1:4, 2:5] = 7.0
    assert (y == 7).all()  # nothing outside the images and channels asked for


@pytest.mark.parametrize("one_by_one", [True, False])
def test_columns_of_large_images_go_one_by_one_or_together(one_by_one, cut_everything,
                                                           monkeypatch):
    from protonet.kernels import conv as kconv
    monkeypatch.setattr(kconv, "COLUMNS_IMAGE_BYTES", (0, 1 << 40) if one_by_one else (1, 0))
    params = "num_output: 5 kernel_size: 3 pad: 1"
    for phase in (TEST, TRAIN):  # TEST keeps no columns: backward makes them anew
        test_forward_and_backward_match_the_definitions(params, (5, 2, 17, 16), "columns",
                                                        "numpy", None, phase)
    test_epilogue_written_in_cache_matches_step_by_step(params, (5, 2, 17, 16), "columns",
                                                         "numpy", None)


@pytest.mark.parametrize("phase", [TEST, TRAIN])
@pytest.mark.parametrize("params, shape", [
    ("num_output: 6 kernel_size: 3 pad: 1 group: 2", (5, 4, 6, 7)),
    ("num_output: 6 kernel_size: 3 pad: 1 stride: 2", (3, 3, 8, 9)),
    ("num_output: 4 kernel_size: 3 pad: 1", (4, 3, 16, 17)),  # 256+ outputs an image
    ("num_output: 4 kernel_size: 1", (3, 3, 5, 6)),
])
def test_columns_backward_matches_the_definitions_in_both_phases(params, shape, phase,
                                                                 cut_everything):
    """TRAIN keeps every image's columns from forward; TEST makes them anew."""
    layer = conv_layer(params, phase)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    layer.strategy = "columns"  # (1x1 too: Caffe's columns, as the layer's fallback)
    w, args, dy = forward_matches_the_definition(layer, x, bottom, top)
    for down in (True, False):
        layer.blobs[0].diff[...] = 0
        layer.blobs[1].diff[...] = 0
        bottom[0].diff[...] = 7.0
        layer.backward(top, [down], bottom)
        dx, dw, db = conv2d_backward_reference(x, w, dy, *args)
        if down:
            np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-4)
        else:
            assert (bottom[0].diff == 7.0).all()
        np.testing.assert_allclose(layer.blobs[0].diff, dw, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(layer.blobs[1].diff, db, rtol=1e-4, atol=1e-4)
