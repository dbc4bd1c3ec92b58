"""Pure kernels for convolution and pooling: output sizes, im2col, col2im.

Everything works on the whole batch at once. The column buffer has shape
``(C, kh, kw, N, Ho, Wo)``: its rows (``C*kh*kw``, channel-major, then kernel
row, then kernel column) are Caffe's im2col rows, and its columns are
``N*Ho*Wo``, so that one convolution is a single matmul

    (O, C*kh*kw) @ (C*kh*kw, N*Ho*Wo) -> (O, N*Ho*Wo)

and grouped convolution splits the rows into ``group`` equal blocks.
im2col is one copy of a strided view of the image (first padded into a
zero-bordered frame when there is padding): a single numpy call, so that
threads unfolding parts of a batch are not held up by per-tap Python work
under the GIL. col2im loops over the ``kh*kw`` kernel taps, each one strided
slice; cells of a tap that fall in the padding are ignored.

For many channels the convolution layer unfolds channels-last instead: the
image padded into an ``(N, Hp, Wp, C)`` frame, whose windows are one strided
view (:func:`windows_channels_last`); copied, a tile of it is the transposed
column matrix ``(n*Ho*Wo, kh*kw*C)`` with rows in ``(kh, kw, C)`` order.
"""
from __future__ import annotations

import numpy as np

from .scratch import buffer


def conv_out_size(size: int, kernel: int, pad: int = 0, stride: int = 1,
                  dilation: int = 1) -> int:
    """Convolution output extent (Caffe rounds down).

    ``(size + 2*pad - (dilation*(kernel-1) + 1)) // stride + 1``; the result
    is < 1 when the dilated kernel does not fit into the padded input.
    """
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def pool_out_size(size: int, kernel: int, pad: int = 0, stride: int = 1,
                  ceil: bool = True) -> int:
    """Pooling output extent, Caffe's rule (``pooling_layer.cpp`` Reshape).

    ``ceil((size + 2*pad - kernel) / stride) + 1`` (``floor`` when ``ceil`` is
    False); then, if ``pad > 0`` and the last window would start at or beyond
    ``size + pad`` (wholly in the padding), that window is dropped. So
    112/k3/s2/p1 gives 57 (PyTorch: 56) and 3/k2/s2/p1 gives 2 (not 3).
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _tap_range(size: int, out: int, offset: int, stride: int) -> tuple[int, int]:
    """Outputs ``o`` in ``[lo, hi)`` whose input ``o*stride + offset`` is in ``[0, size)``."""
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


def _taps(shape, kernel, pad, stride, dilation, out_hw):
    """Yield ``(i, j, (oh0, oh1), (ow0, ow1), h_slice, w_slice)`` for every kernel tap."""
    H, W = shape
    kh, kw = kernel
    Ho, Wo = out_hw
    for i in range(kh):
        oh = _tap_range(H, Ho, i * dilation[0] - pad[0], stride[0])
        h0 = oh[0] * stride[0] + i * dilation[0] - pad[0]
        hs = slice(h0, h0 + (oh[1] - oh[0] - 1) * stride[0] + 1, stride[0])
        for j in range(kw):
            ow = _tap_range(W, Wo, j * dilation[1] - pad[1], stride[1])
            w0 = ow[0] * stride[1] + j * dilation[1] - pad[1]
            ws = slice(w0, w0 + (ow[1] - ow[0] - 1) * stride[1] + 1, stride[1])
            yield i, j, oh, ow, hs, ws


def im2col(x: np.ndarray, kernel, pad=(0, 0), stride=(1, 1), dilation=(1, 1),
           out: np.ndarray | None = None, frame: np.ndarray | None = None) -> np.ndarray:
    """Unfold ``x`` of shape ``(N, C, H, W)`` into columns ``(C, kh, kw, N, Ho, Wo)``.

    ``col[c, i, j, n, oh, ow] = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]``,
    zero where that index falls outside the image. ``kernel``, ``pad``,
    ``stride`` and ``dilation`` are ``(h, w)`` pairs. ``out``, if given, must be
    a C-contiguous array of the result's shape and dtype; it is overwritten.
    ``frame``, if given, is scratch of shape ``(N, C, H+2*ph, W+2*pw)`` for the
    padded image (unused without padding).
    """
    N, C, H, W = x.shape
    Ho = conv_out_size(H, kernel[0], pad[0], stride[0], dilation[0])
    Wo = conv_out_size(W, kernel[1], pad[1], stride[1], dilation[1])
    shape = (C, kernel[0], kernel[1], N, Ho, Wo)
    if out is None:
        out = np.empty(shape, x.dtype)
    elif out.shape != shape:
        raise ValueError(f"im2col: out has shape {out.shape}, expected {shape}")
    if tuple(pad) != (0, 0):
        x = pad_image(x, pad, frame)
    sn, sc, sh, sw = x.strides
    out[...] = np.lib.stride_tricks.as_strided(
        x, shape, (sc, sh * dilation[0], sw * dilation[1], sn, sh * stride[0], sw * stride[1]),
        writeable=False)
    return out


def pad_image(x: np.ndarray, pad, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` ``(N, C, H, W)`` copied into ``out`` ``(N, C, H+2*ph, W+2*pw)`` with a zero border."""
    (ph, pw), (N, C, H, W) = pad, x.shape
    shape = (N, C, H + 2 * ph, W + 2 * pw)
    if out is None:
        out = np.empty(shape, x.dtype)
    elif out.shape != shape:
        raise ValueError(f"pad_image: out has shape {out.shape}, expected {shape}")
    _zero_border(out, pad, (H, W))
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


def _zero_border(frame: np.ndarray, pad, hw) -> None:
    """Zero the ``pad`` border around the ``hw`` interior of ``frame`` ``(N, C, Hp, Wp)``
    (any strides: a channels-last frame seen as NCHW)."""
    (ph, pw), (H, W) = pad, hw
    frame[:, :, :ph] = 0
    frame[:, :, ph + H:] = 0
    frame[:, :, ph:ph + H, :pw] = 0
    frame[:, :, ph:ph + H, pw + W:] = 0


def col2im(col: np.ndarray, x_shape, kernel, pad=(0, 0), stride=(1, 1), dilation=(1, 1),
           out: np.ndarray | None = None) -> np.ndarray:
    """Fold columns ``(C, kh, kw, N, Ho, Wo)`` back into an image ``(N, C, H, W)``.

    The adjoint of :func:`im2col`: every column entry is added to the pixel it
    was read from (entries that read padding are dropped). ``out``, if given,
    is overwritten (not accumulated into).
    """
    N, C, H, W = x_shape
    Ho, Wo = col.shape[-2:]
    if out is None:
        out = np.zeros(x_shape, col.dtype)
    else:
        out[...] = 0
    ot = out.transpose(1, 0, 2, 3)  # (C, N, H, W), a view
    for i, j, (oh0, oh1), (ow0, ow1), hs, ws in _taps((H, W), kernel, pad, stride, dilation,
                                                       (Ho, Wo)):
        if oh1 > oh0 and ow1 > ow0:
            ot[:, :, hs, ws] += col[:, i, j, :, oh0:oh1, ow0:ow1]
    return out


def pad_channels_last(x: np.ndarray, pad, out: np.ndarray) -> np.ndarray:
    """Copy ``x`` ``(n, C, H, W)`` into ``out`` ``(n, H+2*ph, W+2*pw, C)``, zero border.

    The channels-last frame that :func:`windows_channels_last` unfolds: in it a
    kernel row's ``kw*C`` inputs lie next to each other (for dilation 1).
    """
    (ph, pw), (H, W) = pad, x.shape[2:]
    if out.shape != (x.shape[0], H + 2 * ph, W + 2 * pw, x.shape[1]):
        raise ValueError(f"pad_channels_last: out has shape {out.shape}")
    _zero_border(out.transpose(0, 3, 1, 2), pad, (H, W))
    out[:, ph:ph + H, pw:pw + W] = x.transpose(0, 2, 3, 1)
    return out


def windows_channels_last(frame: np.ndarray, kernel, stride, dilation, out_hw) -> np.ndarray:
    """The convolution windows of a padded channels-last ``frame`` ``(n, Hp, Wp, C)``.

    A read-only view ``(n, Ho, Wo, kh, kw, C)`` with
    ``v[n, oh, ow, i, j, c] = frame[n, oh*sh + i*dh, ow*sw + j*dw, c]``: copied
    into a contiguous array it is the channels-last im2col, one row of
    ``kh*kw*C`` per output position.
    """
    sn, sh, sw, sc = frame.strides
    shape = (frame.shape[0],) + tuple(out_hw) + tuple(kernel) + (frame.shape[3],)
    strides = (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc)
    return np.lib.stride_tricks.as_strided(frame, shape, strides, writeable=False)


def phase_planes(x, pad, stride, plane_hw, scratch: dict, key, channels_last: bool = False,
                 fill: float = 0.0) -> np.ndarray:
    """``x (n, c, H, W)`` padded by ``pad`` (with ``fill``) and split into ``sh*sw`` phase
    planes, flattened: ``(sh*sw, n, c, Hq*Wq)`` with
    ``plane[p*sw + q][u, v] = xpad[u*sh + p, v*sw + q]`` (``fill`` past the padded image too);
    ``channels_last``: ``(sh*sw, n, Hq*Wq, c)``. In a plane, the cells a kernel tap reads for
    the output rows ``0..Ho-1`` (all ``Wq`` columns of them) are one contiguous run."""
    n, c, H, W = x.shape
    (ph, pw), (sh, sw), (Hq, Wq) = pad, stride, plane_hw
    if channels_last:
        kept = buffer(scratch, key, (sh * sw, n, Hq, Wq, c), x.dtype)
        planes = kept.transpose(0, 1, 4, 2, 3)  # seen as (sh*sw, n, c, Hq, Wq)
    else:
        kept = planes = buffer(scratch, key, (sh * sw, n, c, Hq, Wq), x.dtype)
    if (sh, sw) == (1, 1):
        plane = planes[0]
        plane[:, :, :ph] = fill
        plane[:, :, ph + H:] = fill
        plane[:, :, ph:ph + H, :pw] = fill
        plane[:, :, ph:ph + H, pw + W:] = fill
        plane[:, :, ph:ph + H, pw:pw + W] = x
    else:
        kept[...] = fill
        for p in range(sh):
            r0 = (p - ph) % sh  # image rows r0, r0 + sh, ... land on phase p
            rows, u0 = slice(r0, None, sh), (r0 + ph) // sh  # from plane row u0 on
            for q in range(sw):
                c0 = (q - pw) % sw
                cols, v0 = slice(c0, None, sw), (c0 + pw) // sw
                part = x[:, :, rows, cols]
                planes[p * sw + q, :, :, u0:u0 + part.shape[2], v0:v0 + part.shape[3]] = part
    if channels_last:
        return kept.reshape(sh * sw, n, Hq * Wq, c)
    return kept.reshape(sh * sw, n, c, Hq * Wq)
