"""Convolution as an implicit GEMM: a register-tiled multiply-add kernel compiled by numba.

A channels-last convolution is a matrix product whose left matrix is never formed: output
position ``p`` (image ``i``, row ``y``, column ``x``) reads, for kernel row ``ky``, the
``kw*C`` contiguous values of the padded frame ``(n, Hp, Wp, C)`` starting at
``((i*Hp + y*sh + ky*dh)*Wp + x*sw)*C`` (dilation 1 along the width). So::

    out[p, o] = sum over ky, j < kw*C of frame.flat[base(p) + ky*dh*Wp*C + j] * w[ky*kw*C + j, o]

with ``w (kh*kw*C, O)`` the weights in channels-last window order (the references:
:func:`protonet.kernels.conv.conv2d_reference` and the numpy path, which copies the
windows into columns and calls BLAS). The weight gradient is the same shape of sum with
the roles turned round: ``dw[k, o] = sum over positions p of frame.flat[base(p) + off(k)]
* dy[p, o]``.

Both run on one micro-kernel (:func:`protonet.kernels.jit_conv_loops._tile`): ``R`` rows of
the result, each ``NV`` vectors of ``V`` outputs wide, stay in registers while the sum
runs; each step loads ``NV`` vectors of the right operand and broadcasts one value of the
left one per row. BLAS's GEMM copies both operands into packed panels first, which for
these products -- few output columns (32, 64), a long sum -- costs about as much as the
multiply-adds, and the columns would have to be copied out of the frame before that
(CIFAR-10 quick's 5x5 convolutions, one core: 140-185 GFLOP/s here against 85-115 for
columns + BLAS). The weights come in chunks of one tile row's width (:func:`chunk`), each
chunk contiguous.

The kernel is written in LLVM IR (vector types and all) through numba's ``intrinsic``, as
numba has no vector types of its own; the loops that call it are plain numba
(:mod:`protonet.kernels.jit_conv_loops`, imported only when numba is there). ``V`` is 16
floats with AVX-512 and 8 without; the output width must be a multiple of it
(:func:`supported`). Results agree with the numpy path to float rounding (the sums run in
another order).
"""
from __future__ import annotations

import importlib

import numpy as np

from .jit import _kernel, enabled

#: bytes of weights one pass of :func:`conv_rows` sums over (whole kernel rows), for the
#: weights to stay in the core's cache while every output position reads them (ResNet's
#: 3x3, 256 channels: 0.45x the time of all nine rows at once)
PANEL_BYTES = 1 << 18


def _loops():
    """:mod:`protonet.kernels.jit_conv_loops`, imported on first use (it imports numba)."""
    return _kernel("conv.loops",
                   lambda numba: importlib.import_module(".jit_conv_loops", __package__))


def vector_width() -> int:
    """Floats per vector of the compiled kernel (16 with AVX-512, else 8)."""
    return _loops().V


def supported(outputs: int, dilation_w: int = 1, dtype=np.float32) -> bool:
    """Whether the compiled kernel takes a float32 product with ``outputs`` columns (the
    forward: also dilation 1 along the width, for a kernel row's values to be contiguous)."""
    return (np.dtype(dtype) == np.float32 and dilation_w == 1 and enabled()
            and outputs % vector_width() == 0)


def chunk(outputs: int, dilation_w: int = 1, dtype=np.float32) -> int:
    """Columns per chunk of the weights :func:`conv_rows` takes: what one tile row holds
    (4, 2 or 1 vectors) where the kernel applies, else all ``outputs`` (one chunk)."""
    if not supported(outputs, dilation_w, dtype):
        return outputs
    V = vector_width()
    return next(nv * V for nv in (4, 2, 1) if outputs % (nv * V) == 0)


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"jit_conv: {what}")


def conv_rows(frame, w, out, positions: slice, kernel, stride, dilation, out_hw) -> np.ndarray:
    """``out (p, O)`` = the windows at ``positions`` (of the flat ``(n, Ho, Wo)`` output
    positions of ``frame (n, Hp, Wp, C)``) @ the weights, by the compiled kernel.

    ``w (O/q, kh*kw*C, q)`` holds the weight matrix ``(kh*kw*C, O)`` (rows in
    channels-last window order) in chunks of ``q =`` :func:`chunk` columns, each chunk
    contiguous (a chunk's rows would otherwise lie ``O`` floats apart, a page every few
    rows for wide layers)."""
    (kh, kw), (sh, sw), (dh, dwl), (Ho, Wo) = kernel, stride, dilation, out_hw
    p0, p1 = positions.start, positions.stop
    _check(frame.dtype == w.dtype == out.dtype == np.float32, "float32 only")
    _check(all(a.flags.c_contiguous for a in (frame, w, out)), "contiguous arrays only")
    _check(w.ndim == 3 and dwl == 1 and w.shape[1] == kh * kw * frame.shape[3]
           and w.shape[2] == chunk(w.shape[0] * w.shape[2]), "weights do not match")
    _check(out.shape == (p1 - p0, w.shape[0] * w.shape[2]), f"out has shape {out.shape}")
    _check(0 <= p0 <= p1 <= frame.shape[0] * Ho * Wo
           and (Ho - 1) * sh + (kh - 1) * dh < frame.shape[1]
           and (Wo - 1) * sw + kw - 1 < frame.shape[2], "windows leave the frame")
    panel = max(1, min(kh, PANEL_BYTES // (w[0].nbytes // kh)))
    _loops().rows(frame, w, out, p0, p1, kh, sh, sw, dh, Ho, Wo, panel)
    return out


def weight_gradient(frame, dy, dw, kernel, stride, dilation) -> np.ndarray:
    """``dw (kh*kw*C, O) +=`` the windows of ``frame (n, Hp, Wp, C)`` ^T @ ``dy (n, Ho, Wo,
    O)`` (a view whose last axis is contiguous), summed over images and positions."""
    (kh, kw), (sh, sw), (dh, dwl) = kernel, stride, dilation
    n, Hp, Wp, C = frame.shape
    _, Ho, Wo, O = dy.shape
    _check(frame.dtype == dy.dtype == dw.dtype == np.float32, "float32 only")
    _check(frame.flags.c_contiguous and dw.flags.c_contiguous and dy.strides[3] == 4
           and min(dy.strides) >= 0, "layouts do not match")
    _check(dy.shape[0] == n and dw.shape == (kh * kw * C, O) and O % vector_width() == 0,
           "shapes do not match")
    _check((Ho - 1) * sh + (kh - 1) * dh < Hp and (Wo - 1) * sw + (kw - 1) * dwl < Wp,
           "windows leave the frame")
    _loops().weights(frame, dy, dw, kh, kw, sh, sw, dh, dwl)
    return dw
