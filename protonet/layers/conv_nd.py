"""N-D passes of Convolution, Deconvolution and Im2col (3 or more spatial axes).

The classes in :mod:`protonet.layers.conv` read the geometry
(``_conv_geometry``: one ``kernel``/``stride``/``pad``/``dilation`` value per
spatial axis) and call these functions when the input has 3 or more spatial
axes; 1-D and 2-D inputs keep their own (tiled, channels-last) code. As Caffe's
``im2col_nd_cpu`` path, numerically the same as Caffe's (``force_nd_im2col``
changes nothing).

Shapes, with ``S = in_shape`` the spatial extent of the bottom, ``Q`` that of
the top, ``N`` the product of the axes before the channel axis, ``G`` groups:

- Convolution: bottom ``(N, C, *S)`` -> top ``(N, O, *Q)``, weight
  ``(O, C/G, *kernel)``; the whole batch is unfolded into columns
  ``(C, *kernel, N, *Q)`` and multiplied by one GEMM per group
  ``(O/G, C/G*prod(kernel)) @ (C/G*prod(kernel), N*prod(Q))``.
- Deconvolution: bottom ``(N, C, *S)`` -> top ``(N, O, *Q)`` with
  ``Q = stride*(S-1) + dilation*(kernel-1)+1 - 2*pad``, weight
  ``(C, O/G, *kernel)``; forward is one GEMM per group into columns
  ``(O, *kernel, N, *S)`` folded by col2im, backward the convolution's forward.
- Im2col: bottom ``(N, C, *S)`` -> top ``(N, C*prod(kernel), *Q)``.

Every function takes the layer as its first argument and keeps its scratch
in the layer's ``_buf`` dict under ``nd*`` keys.
"""
from __future__ import annotations

import math

import numpy as np

from .. import parallel
from ..kernels.im2col_nd import col2im_nd, conv_out_shape, deconv_out_shape, im2col_nd


def _scratch(layer, name: str, shape, dtype) -> np.ndarray:
    """A kept scratch array of ``shape`` (grows only; a smaller request is a prefix view)."""
    buf, size = layer._buf.get(name), math.prod(shape)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = layer._buf[name] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _frame(layer, shape, dtype) -> np.ndarray | None:
    """Scratch for a ``shape`` ``(n, c, *S)`` image padded by ``layer.pad`` (None without pad)."""
    if not any(layer.pad):
        return None
    return _scratch(layer, "ndpad", shape[:2] + tuple(
        n + 2 * p for n, p in zip(shape[2:], layer.pad)), dtype)


def _geometry(layer) -> tuple:
    return layer.kernel, layer.pad, layer.stride, layer.dilation


def _batch_rows(layer, name: str, x: np.ndarray, channels: int) -> np.ndarray:
    """``x`` ``(N, channels, *)`` as ``(G, channels/G, N*P)`` (a view when N == 1)."""
    N, G = layer.num, layer.group
    P = x.size // (N * channels)
    if N == 1:
        return x.reshape(G, channels // G, P)
    rows = _scratch(layer, name, (channels, N, P), x.dtype)
    rows[...] = x.reshape(N, channels, P).transpose(1, 0, 2)
    return rows.reshape(G, channels // G, N * P)


def _to_batch(rows: np.ndarray, out: np.ndarray, N: int) -> None:
    """Rows ``(G, ch/G, N*P)`` written into ``out`` ``(N, ch, *)``."""
    ch = rows.shape[0] * rows.shape[1]
    out.reshape(N, ch, -1)[...] = rows.reshape(ch, N, -1).transpose(1, 0, 2)


# -- Convolution ----------------------------------------------------------------------------
def conv_reshape(layer, bottom, top) -> None:
    shape = layer._check_bottoms(bottom)  # sets num and in_hw (all spatial axes)
    layer.out_hw = conv_out_shape(layer.in_hw, *_geometry(layer))
    if min(layer.out_hw) < 1:
        raise layer.shape_error(
            f"the (dilated) kernel {list(layer.kernel)} (dilation {list(layer.dilation)}, "
            f"pad {list(layer.pad)}) does not fit the padded input", bottom)
    for t in top:
        t.reshape(shape[:layer.axis] + (layer.num_output,) + layer.out_hw)
    layer._col_of = None


def _conv_columns(layer, x: np.ndarray) -> np.ndarray:
    """The batch ``x`` ``(N, C, *S)`` unfolded, as ``(G, C/G*prod(kernel), N*prod(Q))``."""
    N, C, G = layer.num, layer.channels, layer.group
    if layer.is_1x1:  # im2col is the identity: only the batch axis moves
        return _batch_rows(layer, "ndcol", x, C)
    col = _scratch(layer, "ndcol", (C,) + layer.kernel + (N,) + layer.out_hw, x.dtype)
    im2col_nd(x, *_geometry(layer), out=col, frame=_frame(layer, x.shape, x.dtype))
    return col.reshape(G, -1, N * math.prod(layer.out_hw))


def conv_forward(layer, bottom, top) -> None:
    N, C, O, G = layer.num, layer.channels, layer.num_output, layer.group
    P = math.prod(layer.out_hw)
    w = layer._weights()  # (G, O/G, C/G*prod(kernel))
    with parallel.blas_released():  # whole-batch GEMMs: BLAS gets its threads
        for i, (b, t) in enumerate(zip(bottom, top)):
            col = _conv_columns(layer, b.data.reshape((N, C) + layer.in_hw))
            if N == 1:
                np.matmul(w, col, out=t.data.reshape(G, O // G, P))
            else:
                y = _scratch(layer, "ndout", (G, O // G, N * P), col.dtype)
                np.matmul(w, col, out=y)
                _to_batch(y, t.data, N)
            if layer.bias_term:
                t.data.reshape(N, O, P)[...] += layer.blobs[1].data[:, None]
            layer._col_of = i
            layer._buf["owner"] = layer._token


def conv_backward(layer, top, propagate_down, bottom) -> None:
    N, C, O, G = layer.num, layer.channels, layer.num_output, layer.group
    w = layer._weights()
    want_w = layer.param_propagate_down[0]
    want_b = layer.bias_term and layer.param_propagate_down[1]
    kept = not (layer.is_1x1 and N == 1)  # else the columns are a view of the bottom
    with parallel.blas_released():
        for i in reversed(range(len(bottom))):  # the last forwarded bottom's columns are kept
            b, t = bottom[i], top[i]
            if not (propagate_down[i] or want_w or want_b):
                continue
            dy = _batch_rows(layer, "ndout", t.diff, O)  # (G, O/G, N*P)
            if want_b:
                layer.blobs[1].diff += dy.reshape(O, -1).sum(axis=1)
            x = b.data.reshape((N, C) + layer.in_hw)
            if want_w:
                if kept and layer._col_of == i and layer._buf.get("owner") is layer._token:
                    col = _scratch(layer, "ndcol", (G, C // G * math.prod(layer.kernel),
                                                    dy.shape[2]), dy.dtype)
                else:
                    col = _conv_columns(layer, x)
                # dW (G, O/G, K) += dy (G, O/G, N*P) @ col^T (G, N*P, K)
                layer.blobs[0].diff.reshape(w.shape)[...] += np.matmul(dy, col.transpose(0, 2, 1))
            if not propagate_down[i]:
                continue
            dx = b.diff.reshape(x.shape)
            if not kept:
                np.matmul(w.transpose(0, 2, 1), dy, out=dx.reshape(G, C // G, -1))
                continue
            # dcol (G, K, N*P) = W^T (G, K, O/G) @ dy (G, O/G, N*P), then folded back
            shape = (C, N) + layer.in_hw if layer.is_1x1 else \
                (C,) + layer.kernel + (N,) + layer.out_hw
            dcol = _scratch(layer, "ndcol", shape, dy.dtype)
            np.matmul(w.transpose(0, 2, 1), dy, out=dcol.reshape(G, -1, dy.shape[2]))
            layer._col_of = None  # the column buffer now holds gradients
            if layer.is_1x1:
                _to_batch(dcol.reshape(G, C // G, -1), dx, N)
            else:
                col2im_nd(dcol, dx.shape, *_geometry(layer), out=dx)


def conv_macc(layer, bottom, top) -> int:
    """``prod(kernel) * C/G * O * prod(Q) * N`` per bottom."""
    return (math.prod(layer.kernel) * (layer.channels // layer.group) * layer.num_output
            * math.prod(layer.out_hw) * layer.num * len(bottom))


# -- Deconvolution --------------------------------------------------------------------------
def deconv_reshape(layer, bottom, top) -> None:
    shape = layer._check_bottoms(bottom)
    layer.out_hw = deconv_out_shape(layer.in_hw, *_geometry(layer))
    if min(layer.out_hw) < 1:
        raise layer.shape_error(f"pad {list(layer.pad)} leaves no output "
                                f"(output size {list(layer.out_hw)})", bottom)
    for t in top:
        t.reshape(shape[:layer.axis] + (layer.num_output,) + layer.out_hw)


def _deconv_col(layer, dtype) -> np.ndarray:
    """Columns over the *bottom* positions, ``(O, *kernel, N, *S)``."""
    return _scratch(layer, "ndcol", (layer.num_output,) + layer.kernel + (layer.num,)
                    + layer.in_hw, dtype)


def deconv_forward(layer, bottom, top) -> None:
    N, C, O, G = layer.num, layer.channels, layer.num_output, layer.group
    P = math.prod(layer.in_hw)
    w = layer._weights()  # (G, C/G, O/G*prod(kernel))
    for b, t in zip(bottom, top):
        col = _deconv_col(layer, b.data.dtype)
        # col (G, O/G*K, N*P) = W^T (G, O/G*K, C/G) @ x (G, C/G, N*P)
        np.matmul(w.transpose(0, 2, 1), _batch_rows(layer, "ndrows", b.data, C),
                  out=col.reshape(G, -1, N * P))
        y = t.data.reshape((N, O) + layer.out_hw)
        col2im_nd(col, y.shape, *_geometry(layer), out=y)
        if layer.bias_term:
            y.reshape(N, O, -1)[...] += layer.blobs[1].data[:, None]


def deconv_backward(layer, top, propagate_down, bottom) -> None:
    N, C, O, G = layer.num, layer.channels, layer.num_output, layer.group
    P = math.prod(layer.in_hw)
    w = layer._weights()
    want_w = layer.param_propagate_down[0]
    want_b = layer.bias_term and layer.param_propagate_down[1]
    for i in range(len(bottom)):
        b, t = bottom[i], top[i]
        dy = t.diff.reshape((N, O) + layer.out_hw)
        if want_b:
            layer.blobs[1].diff += dy.reshape(N, O, -1).sum(axis=(0, 2))
        if not (want_w or propagate_down[i]):
            continue
        col = im2col_nd(dy, *_geometry(layer), out=_deconv_col(layer, dy.dtype),
                        frame=_frame(layer, dy.shape, dy.dtype)).reshape(G, -1, N * P)
        if want_w:
            # dW (G, C/G, O/G*K) += x (G, C/G, N*P) @ col^T (G, N*P, O/G*K)
            layer.blobs[0].diff.reshape(w.shape)[...] += np.matmul(
                _batch_rows(layer, "ndrows", b.data, C), col.transpose(0, 2, 1))
        if propagate_down[i]:
            # dx (G, C/G, N*P) = W (G, C/G, O/G*K) @ col (G, O/G*K, N*P)
            if N == 1:
                np.matmul(w, col, out=b.diff.reshape(G, C // G, P))
            else:
                dx = _scratch(layer, "ndrows", (G, C // G, N * P), dy.dtype)
                np.matmul(w, col, out=dx)
                _to_batch(dx, b.diff, N)


def deconv_macc(layer, bottom, top) -> int:
    """``prod(kernel) * C/G * O * prod(S) * N`` per bottom (the GEMM runs over the bottom)."""
    return (math.prod(layer.kernel) * (layer.channels // layer.group) * layer.num_output
            * math.prod(layer.in_hw) * layer.num * len(bottom))


# -- Im2col ---------------------------------------------------------------------------------
def im2col_reshape(layer, bottom, top) -> None:
    if not hasattr(layer, "_buf"):
        layer._buf = {}  # scratch for the padded image
    shape = bottom[0].shape
    if len(shape) != layer.axis + 1 + layer.num_spatial:
        raise layer.shape_error("the number of input axes may not change", bottom)
    layer.num = math.prod(shape[:layer.axis])
    layer.channels = shape[layer.axis]
    layer.in_hw = tuple(shape[layer.axis + 1:])
    layer.out_hw = conv_out_shape(layer.in_hw, *_geometry(layer))
    if min(layer.out_hw) < 1:
        raise layer.shape_error(
            f"the (dilated) kernel {list(layer.kernel)} does not fit the padded input", bottom)
    rows = layer.channels * math.prod(layer.kernel)
    top[0].reshape(shape[:layer.axis] + (rows,) + layer.out_hw)


def _im2col_view(layer, array: np.ndarray) -> np.ndarray:
    """A top-shaped array viewed in the column layout ``(C, *kernel, N, *Q)``."""
    nsp = layer.num_spatial
    a = array.reshape((layer.num, layer.channels) + layer.kernel + layer.out_hw)
    return a.transpose((1,) + tuple(range(2, 2 + nsp)) + (0,)
                       + tuple(range(2 + nsp, 2 + 2 * nsp)))


def im2col_forward(layer, bottom, top) -> None:
    x = bottom[0].data.reshape((layer.num, layer.channels) + layer.in_hw)
    # written straight into the top through a transposed view
    im2col_nd(x, *_geometry(layer), out=_im2col_view(layer, top[0].data),
              frame=_frame(layer, x.shape, x.dtype))


def im2col_backward(layer, top, propagate_down, bottom) -> None:
    if propagate_down[0]:
        dx = bottom[0].diff.reshape((layer.num, layer.channels) + layer.in_hw)
        col2im_nd(_im2col_view(layer, top[0].diff), dx.shape, *_geometry(layer), out=dx)
