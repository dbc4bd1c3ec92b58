"""2-D convolution, backward: the gradients of ``x (N, C, H, W)`` and ``w (O, C/G, kh, kw)``.

With ``dy (N, O, Ho, Wo)`` the top diff (definitions: :func:`conv2d_backward_reference`)::

    dw[o, c, i, j] = sum over n, a, b of dy[n, o, a, b] * x[n, c, a*sh - ph + i*dh, b*sw - pw + j*dw]
    dx[n, c, h, v] = sum over the (o, i, j, a, b) whose tap reads x[n, c, h, v] of dy * w
    db[o]          = sum over n, a, b of dy[n, o, a, b]

Two families, each for one batch part (its images ``s``), as the forward kernels:

* columns (NCHW, any group): ``dw = dy @ col^T`` over Caffe's columns of the part (kept
  from the forward pass when they are still there), ``dcol = w^T @ dy`` folded back by
  col2im (:func:`columns_backward`);
* channels-last (group 1): with stride 1, ``dx`` is a convolution of the zero-padded top
  diff with the flipped, transposed weights, whose columns also give ``dw``
  (:func:`channels_last_backward` through
  :func:`~protonet.kernels.conv.channels_last_conv`); otherwise ``dw`` from the input
  windows tile by tile and ``dx`` folded from per-tap slabs of one batched matmul.
"""
from __future__ import annotations

import math

import numpy as np

from .. import parallel
from .affine import Epilogue
from . import jit_conv
from .conv import (channels_last_conv, channels_last_tiles, column_matrix, column_tile_bytes,
                   frame_channels_last, weight_columns)
from .im2col import col2im, windows_channels_last
from .scratch import buffer

#: how much larger than the top a bottom may be for backward-data to run as a full convolution
FULL_CONV_MAX_GROWTH = 1.5


def conv2d_backward_reference(x, w, dy, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """``(dx, dw, db)`` in float64 by the definitions above, one kernel tap at a time."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, pad, dilation
    Ho, Wo = dy.shape[2:]
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    Og = O // group
    for g in range(group):
        cs, os_ = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for i in range(kh):
            for j in range(kw):
                hs = slice(i * dh, i * dh + (Ho - 1) * sh + 1, sh)
                ws = slice(j * dw_, j * dw_ + (Wo - 1) * sw + 1, sw)
                dw[os_, :, i, j] = np.einsum("noab,ncab->oc", dy[:, os_], xp[:, cs, hs, ws])
                dxp[:, cs, hs, ws] += np.einsum("noab,oc->ncab", dy[:, os_], w[os_, :, i, j])
    return dxp[:, :, ph:ph + H, pw:pw + W], dw, dy.sum(axis=(0, 2, 3))


def full_conv_pad(kernel, pad, stride, dilation, in_hw, out_hw):
    """Padding that makes backward-data a stride-1 convolution of the top diff, if it pays.

    With stride 1, ``dx`` is ``dy`` padded by ``dilation*(k-1) - pad`` and convolved
    with the weights flipped in space and transposed in channels. That is one more
    tiled convolution, unless the padding is negative or the bottom much larger than
    the top (the GEMM would then mostly multiply padding zeros); None then.
    """
    if tuple(stride) != (1, 1):
        return None
    full = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, pad))
    if min(full) < 0 or math.prod(in_hw) > FULL_CONV_MAX_GROWTH * math.prod(out_hw):
        return None
    return full


def flipped_weight_columns(w, scratch: dict, chunk: int | None = None) -> np.ndarray:
    """The backward-data convolution's weights, the matrix ``(kh*kw*O, C)`` (rows in
    channels-last window order of the top diff, ``w[o, c, kh-1-i, kw-1-j]`` at
    ``((i, j, o), c)``) in chunks of ``chunk`` columns: ``(C/chunk, kh*kw*O, chunk)``."""
    # the forward's weight columns of the flipped, transposed filters (C, O, kh, kw)
    return weight_columns(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3),
                          out=buffer(scratch, "wflip", (w.size,), w.dtype), chunk=chunk)


def weight_slabs(w, scratch: dict) -> np.ndarray:
    """Weights as ``(kh*kw, O, C)``, one ``(O, C)`` matrix per kernel tap (a copy)."""
    O, C = w.shape[:2]
    return buffer(scratch, "wslabs", (w.shape[2] * w.shape[3], O, C), w.dtype,
                  copy_of=w.reshape(O, C, -1).transpose(2, 0, 1))


def channels_last_backward(geometry, k, x4, dy, dx, down, frame_kept, want_w, want_b, w_data,
                           scratch):
    """One part's gradients, channels-last: ``(dW (O, C, kh, kw) or None, db (O,) or None)``.

    ``geometry = (kernel, pad, stride, dilation, in_hw, out_hw)``; ``x4 (n, C, H, W)`` the
    part's images, ``dy (n, O, Ho*Wo)`` their top diff, ``dx (n, C, H, W)`` written when
    ``down``. ``frame_kept``: the forward's channels-last frame of ``x4`` is still in
    ``scratch`` (``xpad{k}``). ``w_data``: :func:`flipped_weight_columns` when
    :func:`full_conv_pad` applies, else :func:`weight_slabs` (made once for all parts).
    Where the compiled kernels apply (:mod:`~protonet.kernels.jit_conv`), ``dx`` is the
    implicit GEMM of the padded top diff and ``dW`` sums the input frame's windows against
    the top diff in place; else both come from copied columns and BLAS.
    """
    kernel, pad, stride, dilation, in_hw, out_hw = geometry
    n, C = x4.shape[:2]
    O = dy.shape[1]
    (kh, kw), P = kernel, out_hw[0] * out_hw[1]
    d_b = dy.sum(axis=(0, 2)) if want_b else None
    compiled_w = want_w and jit_conv.supported(O, dtype=dy.dtype)
    full = full_conv_pad(kernel, pad, stride, dilation, in_hw, out_hw) if down else None
    if full is not None:
        frame = frame_channels_last(dy.reshape((n, O) + tuple(out_hw)), full, scratch,
                                    f"dypad{k}")
        into_dx = Epilogue([(dx.reshape(n, C, -1), None, None)])
        if jit_conv.supported(C, dilation[1], dy.dtype) and (compiled_w or not want_w):
            channels_last_conv(frame, w_data, into_dx, slice(0, n),
                               (kernel, (1, 1), dilation, in_hw), scratch, k)
            top = frame[:, full[0]:full[0] + out_hw[0], full[1]:full[1] + out_hw[1]]
            return (_compiled_weight_gradient(geometry, k, x4, top, frame_kept, scratch)
                    if want_w else None), d_b
        # one unfold of dy serves dx and dW
        windows = windows_channels_last(frame, kernel, (1, 1), dilation, in_hw)
        d_w = channels_last_tiles(windows, column_matrix(w_data), into_dx, slice(0, n),
                                  scratch, k, x=x4 if want_w else None)
        # dW[o, c, i, j] = (the flipped kernel's gradient)[c, kh-1-i, kw-1-j, o]
        return (None if d_w is None else
                d_w.reshape(C, kh, kw, O)[:, ::-1, ::-1].transpose(3, 0, 1, 2)), d_b
    if not (want_w or down):
        return None, d_b
    rows = buffer(scratch, f"out{k}", (n, P, O), dy.dtype)  # dy rows, for dW and dx
    rows[...] = dy.transpose(0, 2, 1)
    d_w = None
    if compiled_w:
        d_w = _compiled_weight_gradient(geometry, k, x4, rows.reshape((n,) + tuple(out_hw)
                                                                       + (O,)),
                                        frame_kept, scratch)
    elif want_w:
        windows = windows_channels_last(_input_frame(geometry, k, x4, frame_kept, scratch),
                                        kernel, stride, dilation, out_hw)
        d_w = weight_gradient_tiles(windows, rows, scratch, k)
    if down:
        fold_slabs(geometry, rows, w_data, dx, scratch, k)
    return d_w, d_b


def _input_frame(geometry, k, x4, frame_kept, scratch) -> np.ndarray:
    """The part's input padded channels-last ``(n, Hp, Wp, C)``: the forward's, if kept."""
    pad, in_hw = geometry[1], geometry[4]
    if frame_kept:
        shape = (x4.shape[0], in_hw[0] + 2 * pad[0], in_hw[1] + 2 * pad[1], x4.shape[1])
        return buffer(scratch, f"xpad{k}", shape, x4.dtype)
    return frame_channels_last(x4, pad, scratch, f"xpad{k}")


def _compiled_weight_gradient(geometry, k, x4, top, frame_kept, scratch) -> np.ndarray:
    """dW ``(O, C, kh, kw)`` from the input frame's windows and ``top`` ``(n, Ho, Wo, O)``,
    the top diff channels-last, by :func:`~protonet.kernels.jit_conv.weight_gradient`."""
    kernel, _, stride, dilation = geometry[:4]
    (kh, kw), C, O = kernel, x4.shape[1], top.shape[3]
    d_w = np.zeros((kh * kw * C, O), top.dtype)
    jit_conv.weight_gradient(_input_frame(geometry, k, x4, frame_kept, scratch), top, d_w,
                             kernel, stride, dilation)
    return d_w.reshape(kh, kw, C, O).transpose(3, 2, 0, 1)


def weight_gradient_tiles(windows, rows, scratch: dict, key) -> np.ndarray:
    """dW ``(O, C, kh, kw)`` = sum over tiles of dy rows^T @ the tile's input columns.

    ``windows`` are the input windows ``(n, Ho, Wo, kh, kw, C)`` and ``rows`` the matching
    top diff, channels-last ``(n, Ho*Wo, O)``.
    """
    n, P, O = rows.shape
    kh, kw, C = windows.shape[3:]
    K = C * kh * kw
    d_w = np.zeros((O, K), rows.dtype)
    for t in parallel.tiles(slice(0, n), P * K * rows.itemsize, column_tile_bytes(O)):
        m = t.stop - t.start
        col = buffer(scratch, f"col{key}", (m,) + windows.shape[1:], rows.dtype)
        col[...] = windows[t]
        d_w += parallel.matmul(rows[t].reshape(m * P, O).T, col.reshape(m * P, K))
    return d_w.reshape(O, kh, kw, C).transpose(0, 3, 1, 2)


def fold_slabs(geometry, rows, slabs, dx, scratch: dict, key) -> None:
    """Bottom diff ``dx`` ``(n, C, H, W)``, channels-last, where :func:`full_conv_pad` is None.

    One batched matmul gives, per kernel tap, a contiguous slab ``(n*Ho*Wo, C)`` = dy
    ``rows`` ``(n, Ho*Wo, O)`` @ ``W_tap (O, C)``; each slab is added into a padded
    channels-last frame ``(n, Hf, Wf, C)`` at its tap offset (runs of ``C`` contiguous
    floats), and the frame's interior is transposed into ``dx``.
    """
    kernel, pad, stride, dilation, (H, W), (Ho, Wo) = geometry
    n, _, O = rows.shape
    C = dx.shape[1]
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    slab = buffer(scratch, f"col{key}", (kh * kw, n * Ho * Wo, C), rows.dtype)
    parallel.matmul(rows.reshape(-1, O), slabs, out=slab)
    frame_hw = (max(H + 2 * ph, (Ho - 1) * sh + dh * (kh - 1) + 1),
                max(W + 2 * pw, (Wo - 1) * sw + dw * (kw - 1) + 1))
    frame = buffer(scratch, f"dframe{key}", (n,) + frame_hw + (C,), rows.dtype)
    frame[...] = 0
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        target = frame[:, i * dh:i * dh + (Ho - 1) * sh + 1:sh,
                       j * dw:j * dw + (Wo - 1) * sw + 1:sw]
        target += slab[t].reshape(n, Ho, Wo, C)
    dx[...] = frame[:, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)


def columns_backward(geometry, group, w, col, x4_part, dy, dx, down, want_w, want_b,
                     scratch, key, is_1x1):
    """One part's gradients through Caffe's columns: ``(dW (G, O/G, K) or None, db or None)``.

    ``col``: the part's columns ``(G, K, n*P)`` (kept from forward, or made anew);
    ``dy (n, O, P)``, ``dx (n, C, H, W)`` written when ``down``.
    """
    kernel, pad, stride, dilation, in_hw, out_hw = geometry
    G = group
    n, O, P = dy.shape
    C = dx.shape[1]
    wg = w.reshape(G, O // G, -1)
    if n == 1:
        dyg = dy[0].reshape(G, O // G, P)
    else:
        dyg = buffer(scratch, f"out{key}", (O, n * P), dy.dtype).reshape(O, n, P)
        dyg[...] = dy.transpose(1, 0, 2)
        dyg = dyg.reshape(G, O // G, n * P)
    d_b = dyg.reshape(O, -1).sum(axis=1) if want_b else None
    # dW (G, O/G, K) = (col (G, K, n*P) @ dy^T (G, n*P, O/G))^T: this orientation of
    # the product measured 0.5-1.0 of the time of dy @ col^T
    d_w = (parallel.matmul(col(), dyg.transpose(0, 2, 1)).transpose(0, 2, 1) if want_w
           else None)
    if not down:
        return d_w, d_b
    if is_1x1 and n == 1:
        parallel.matmul(wg.transpose(0, 2, 1), dyg, out=dx[0].reshape(G, C // G, -1))
        return d_w, d_b
    # dcol (G, K, n*P) = W^T (G, K, O/G) @ dy (G, O/G, n*P), over the columns
    dcol = buffer(scratch, f"col{key}", (C,) + tuple(kernel) + (n,) + tuple(out_hw), dy.dtype)
    parallel.matmul(wg.transpose(0, 2, 1), dyg, out=dcol.reshape(G, -1, n * P))
    if is_1x1:
        dx.reshape(n, C, -1)[...] = dcol.reshape(C, n, -1).transpose(1, 0, 2)
    else:
        col2im(dcol, dx.shape, kernel, pad, stride, dilation, out=dx)
    return d_w, d_b
