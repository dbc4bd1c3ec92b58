"""The pooling kernels (protonet.kernels.pool) against Caffe's window loops, and the TEST
phase's MAX pooling, which keeps no choices, against the TRAIN phase's."""
import numpy as np
import pytest

from protonet.kernels import pool as kpool
from protonet.layers.base import TEST, TRAIN
from protonet.testing import make_layer, setup_layer

GEOMETRIES = [  # params, input shape
    ("kernel_size: 3 stride: 1 pad: 1", (2, 3, 7, 6)),
    ("kernel_size: 3 stride: 2", (1, 4, 9, 8)),
    ("kernel_size: 3 stride: 2 pad: 1", (2, 40, 5, 5)),     # channels along numpy's loops
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1", (1, 3, 8, 10)),
    ("kernel_size: 2 stride: 3", (1, 2, 7, 8)),            # stride > kernel
    ("kernel_size: 1 stride: 2", (1, 2, 6, 5)),            # last window past the image
    # stride 1 runs over all planes at once: two rows, four rows, one column, no frame
    ("kernel_size: 2 stride: 1", (2, 3, 5, 7)),
    ("kernel_h: 4 kernel_w: 3 stride: 1 pad_h: 2 pad_w: 0", (3, 2, 6, 5)),
    ("kernel_h: 3 kernel_w: 1 stride: 1", (2, 2, 5, 4)),
]


def pool_layer(params, phase=TEST, method="MAX"):
    return make_layer(f'type: "Pooling" pooling_param {{ pool: {method} {params} }}', phase=phase,
                      dtype=np.float32)


@pytest.mark.parametrize("tile_bytes", [None, 64])  # whole images a tile; a few channels
@pytest.mark.parametrize("params, shape", GEOMETRIES)
def test_max_values_match_caffes_loops(params, shape, tile_bytes, monkeypatch):
    if tile_bytes:
        monkeypatch.setattr(kpool, "TILE_BYTES", tile_bytes)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x[0, 0, 0, 0] = np.nan  # skipped, as Caffe's '>' skips it
    layer = pool_layer(params)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    assert layer._index is None  # TEST: values only
    finite = np.nan_to_num(x, nan=-np.inf)
    want = kpool.pool2d_reference(finite, "MAX", layer.window, layer.stride, layer.pad)
    want[np.isinf(want)] = -kpool.FLT_MAX
    np.testing.assert_array_equal(top[0].data, want.astype(np.float32))


@pytest.mark.parametrize("params, shape", GEOMETRIES)
def test_test_phase_max_backward_chooses_as_train_does(params, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x[..., ::2, :] = 0.5  # ties: the first in row-major window order wins
    dy = None
    diffs = []
    for phase in (TRAIN, TEST):
        layer = pool_layer(params, phase)
        bottom, top = setup_layer(layer, [x])
        layer.forward(bottom, top)
        if dy is None:
            dy = np.random.default_rng(2).standard_normal(top[0].shape).astype(np.float32)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        diffs.append(bottom[0].diff.copy())
    np.testing.assert_array_equal(diffs[0], diffs[1])


@pytest.mark.parametrize("params, shape", GEOMETRIES[:4])
def test_ave_matches_caffes_loops(params, shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    layer = pool_layer(params, method="AVE")
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    want = kpool.pool2d_reference(x, "AVE", layer.window, layer.stride, layer.pad)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("s, channels, channel_bytes, tile_bytes", [
    (slice(0, 5), 4, 10, 100),    # two images a tile
    (slice(2, 7), 4, 10, 40),     # one image a tile
    (slice(1, 3), 10, 10, 30),    # blocks of three channels of one image
    (slice(0, 1), 7, 100, 1),     # one channel a tile
])
def test_image_channel_tiles_cover_the_work_once(s, channels, channel_bytes, tile_bytes):
    from protonet.kernels.scratch import image_channel_tiles
    seen = np.zeros((s.stop, channels), int)
    for images, chans in image_channel_tiles(s, channels, channel_bytes, tile_bytes):
        seen[images, chans] += 1
        size = (images.stop - images.start) * (chans.stop - chans.start) * channel_bytes
        assert size <= max(tile_bytes, channel_bytes)
    assert (seen[s.start:] == 1).all() and (seen[:s.start] == 0).all()
