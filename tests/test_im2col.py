"""Output-size rules and the im2col/col2im and channels-last window kernels."""
import numpy as np
import pytest

from protonet.im2col import (col2im, conv_out_size, im2col, pad_channels_last, pool_out_size,
                             windows_channels_last)


@pytest.mark.parametrize("size, kernel, pad, stride, ceil, expected", [
    (112, 3, 1, 2, True, 57),   # Caffe; PyTorch's default floor gives 56
    (112, 3, 1, 2, False, 56),
    (3, 2, 1, 2, True, 2),      # ceil alone gives 3; the last window would start in the padding
    (55, 3, 0, 2, True, 27),    # CaffeNet pool1
    (13, 3, 0, 2, True, 6),     # CaffeNet pool5
    (24, 2, 0, 2, True, 12),    # LeNet
    (7, 3, 0, 2, True, 3),
    (6, 3, 0, 2, True, 3),      # ceil: (6-3)/2 -> 2, +1
    (6, 3, 0, 2, False, 2),
    (4, 3, 1, 2, True, 3),
    (5, 5, 0, 1, True, 1),      # global-sized window
])
def test_pool_out_size(size, kernel, pad, stride, ceil, expected):
    assert pool_out_size(size, kernel, pad, stride, ceil) == expected


@pytest.mark.parametrize("size, kernel, pad, stride, dilation, expected", [
    (227, 11, 0, 4, 1, 55),     # CaffeNet conv1
    (28, 5, 0, 1, 1, 24),       # LeNet conv1
    (224, 7, 3, 2, 1, 112),     # ResNet conv1
    (13, 3, 1, 1, 1, 13),
    (10, 3, 0, 1, 2, 6),        # dilated extent 5
    (8, 3, 2, 3, 2, 3),
])
def test_conv_out_size(size, kernel, pad, stride, dilation, expected):
    assert conv_out_size(size, kernel, pad, stride, dilation) == expected


def reference_im2col(x, kernel, pad, stride, dilation):
    """Caffe's im2col definition, element by element."""
    N, C, H, W = x.shape
    Ho = conv_out_size(H, kernel[0], pad[0], stride[0], dilation[0])
    Wo = conv_out_size(W, kernel[1], pad[1], stride[1], dilation[1])
    col = np.zeros((C, kernel[0], kernel[1], N, Ho, Wo), x.dtype)
    for c, i, j, n, oh, ow in np.ndindex(col.shape):
        h = oh * stride[0] - pad[0] + i * dilation[0]
        w = ow * stride[1] - pad[1] + j * dilation[1]
        if 0 <= h < H and 0 <= w < W:
            col[c, i, j, n, oh, ow] = x[n, c, h, w]
    return col


GEOMETRIES = [
    # (N, C, H, W), kernel, pad, stride, dilation
    ((2, 3, 5, 5), (3, 3), (0, 0), (1, 1), (1, 1)),
    ((1, 2, 7, 6), (3, 3), (1, 1), (2, 2), (1, 1)),
    ((2, 1, 6, 9), (2, 3), (1, 0), (1, 2), (1, 1)),
    ((2, 2, 9, 8), (3, 2), (2, 1), (2, 3), (2, 1)),
    ((1, 3, 4, 4), (1, 1), (0, 0), (1, 1), (1, 1)),
    ((1, 2, 5, 5), (1, 1), (0, 0), (3, 3), (1, 1)),     # stride > kernel
    ((2, 2, 3, 4), (3, 3), (3, 2), (1, 1), (1, 1)),     # pad >= kernel (legal for conv)
    ((1, 1, 11, 7), (3, 2), (1, 1), (4, 2), (3, 2)),
]


@pytest.mark.parametrize("shape, kernel, pad, stride, dilation", GEOMETRIES)
def test_im2col_matches_definition(shape, kernel, pad, stride, dilation):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = reference_im2col(x, kernel, pad, stride, dilation)
    np.testing.assert_array_equal(im2col(x, kernel, pad, stride, dilation), expected)
    # a reused buffer holding garbage is fully overwritten
    out = np.full(expected.shape, np.nan, np.float32)
    N, C, H, W = shape
    frame = np.full((N, C, H + 2 * pad[0], W + 2 * pad[1]), np.nan, np.float32)
    im2col(x, kernel, pad, stride, dilation, out=out, frame=frame)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32
    # a strided image (a slice of a batch along H) unfolds the same
    wide = np.concatenate([x, x[:, :, :1]], axis=2)
    np.testing.assert_array_equal(im2col(wide[:, :, :H], kernel, pad, stride, dilation),
                                  expected)
    with pytest.raises(ValueError, match="out has shape"):
        im2col(x, kernel, pad, stride, dilation, out=out[1:])


@pytest.mark.parametrize("shape, kernel, pad, stride, dilation", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(shape, kernel, pad, stride, dilation):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    col = im2col(x, kernel, pad, stride, dilation)
    c = rng.standard_normal(col.shape)
    back = col2im(c, shape, kernel, pad, stride, dilation)
    assert back.shape == shape
    np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, back), rtol=1e-12)
    # `out` is overwritten, not accumulated into
    out = np.full(shape, 7.0)
    np.testing.assert_array_equal(col2im(c, shape, kernel, pad, stride, dilation, out=out), back)


@pytest.mark.parametrize("shape, kernel, pad, stride, dilation", GEOMETRIES)
def test_channels_last_windows_are_im2col_transposed(shape, kernel, pad, stride, dilation):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    N, C, H, W = shape
    frame = np.full((N, H + 2 * pad[0], W + 2 * pad[1], C), np.nan, np.float32)  # garbage
    pad_channels_last(x, pad, frame)
    col = im2col(x, kernel, pad, stride, dilation)
    windows = windows_channels_last(frame, kernel, stride, dilation, col.shape[-2:])
    np.testing.assert_array_equal(windows, col.transpose(3, 4, 5, 1, 2, 0))
    assert not windows.flags.writeable
    with pytest.raises(ValueError, match="out has shape"):
        pad_channels_last(x, pad, frame[:, 1:])


def test_col2im_counts_overlaps():
    # a 3x3 kernel, stride 1, over a 4x4 image: each pixel is read once per window covering it
    col = np.ones(im2col(np.zeros((1, 1, 4, 4)), (3, 3)).shape)
    counts = col2im(col, (1, 1, 4, 4), (3, 3))[0, 0]
    np.testing.assert_array_equal(counts, [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])
