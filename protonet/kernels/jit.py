"""Compiled loops for the elementwise work numpy cannot do in one pass, through numba.

numba is optional (``pip install protonet[fast]``): without it, or with
``PROTONET_JIT=0`` in the environment, or after :func:`set_enabled(False) <set_enabled>`,
every kernel takes its numpy path, which stays the one the reference versions are checked
against. The loops here compute the same sums in the same order of taps as the numpy
kernels (a tap at a time over a row of outputs), so both paths agree to float rounding.

Each function compiles on its first call for its argument types (about a second each;
kept on disk in numba's cache, so later processes skip it) and releases the GIL, so the
layers run it on :mod:`protonet.parallel`'s threads part by part, as they do numpy's.

* :func:`depthwise_part` -- a depthwise convolution (``group == C == O``) of some images
  and channels, with the epilogue's shift and ReLU applied while each row of outputs is in
  registers: one pass over the input and one over the output, where numpy makes two passes
  per kernel tap.
* :func:`affine_in_place` -- a convolution's epilogue (``relu?(scale * r + shift)`` per
  channel) in one pass over its output, where numpy makes one per step.

The pooling loops (forward, TEST and TRAIN, and backward) are in
:mod:`protonet.kernels.jit_pool`, the channels-last convolution's implicit GEMM in
:mod:`protonet.kernels.jit_conv`.
"""
from __future__ import annotations

import os
import threading

import numpy as np

_ENV = "PROTONET_JIT"
_state = {"enabled": os.environ.get(_ENV, "1").strip().lower() not in ("0", "off", "no",
                                                                          "false", "")}
_compiled: dict = {}
_lock = threading.RLock()


def set_enabled(on: bool) -> None:
    """Use the compiled loops (if numba is importable) or not: numpy everywhere."""
    _state["enabled"] = bool(on)


def enabled() -> bool:
    """Whether the kernels take the compiled loops: numba is importable and not turned off."""
    return _state["enabled"] and _numba() is not None


def _numba():
    if "numba" not in _compiled:
        with _lock:
            if "numba" not in _compiled:
                try:
                    import numba
                except Exception:  # not installed, or installed against another numpy
                    numba = None
                _compiled["numba"] = numba
    return _compiled["numba"]


def _kernel(name: str, build):
    """The compiled function ``name``, built by ``build(numba)`` once per process."""
    fn = _compiled.get(name)
    if fn is None:
        with _lock:
            fn = _compiled.get(name)
            if fn is None:
                fn = _compiled[name] = build(_numba())
    return fn


# -- depthwise convolution ------------------------------------------------------------------
# Each loop writes out[n, c] for its images n and channels c: the shift, the taps, then
# the ReLU. Indices are written so the compiler can see they are >= 0 (numba reads a
# negative index from the end, and the test for it keeps a loop from being vectorised).
def _build_depthwise_3x3(numba):
    @numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    def stride1(x, taps, shift, relu, out, n0, n1, c0, c1, ph, pw, dh, dw):
        # 3x3, stride 1, any padding and dilation. Each plane is copied into a zero frame
        # of width Wf, flat: output (a, b) sits at t = a*Wf + b and its tap (i, j) at
        # t + i*dh*Wf + j*dw, so the nine taps are nine contiguous runs over the whole
        # plane, summed in one loop ((Ho-1)*Wf + Wo values; the columns past Wo are worked
        # out and dropped) -- vector-wide even for 7-wide images
        H, W = x.shape[2], x.shape[3]
        Ho, Wo = out.shape[2], out.shape[3]
        Hf, Wf = max(H + ph, Ho + 2 * dh), max(W + pw, Wo + 2 * dw)
        frame = np.zeros(Hf * Wf, x.dtype)
        run = (Ho - 1) * Wf + Wo
        acc = np.empty(run, x.dtype)
        r0, r1, r2 = 0, max(dh * Wf, 0), max(2 * dh * Wf, 0)
        c1_, c2_ = max(dw, 0), max(2 * dw, 0)
        for n in range(n0, n1):
            for c in range(c0, c1):
                for r in range(H):
                    base = max((r + ph) * Wf + pw, 0)
                    for u in range(W):
                        frame[base + u] = x[n, c, r, u]
                k = taps[c - c0]
                k0, k1, k2 = k[0, 0], k[0, 1], k[0, 2]
                k3, k4, k5 = k[1, 0], k[1, 1], k[1, 2]
                k6, k7, k8 = k[2, 0], k[2, 1], k[2, 2]
                for t in range(run):
                    acc[t] = (k0 * frame[r0 + t] + k1 * frame[r0 + c1_ + t]
                              + k2 * frame[r0 + c2_ + t]) \
                        + (k3 * frame[r1 + t] + k4 * frame[r1 + c1_ + t]
                           + k5 * frame[r1 + c2_ + t]) \
                        + (k6 * frame[r2 + t] + k7 * frame[r2 + c1_ + t]
                           + k8 * frame[r2 + c2_ + t])
                b = shift[c] if shift.shape[0] else x.dtype.type(0)
                for a in range(Ho):
                    base = max(a * Wf, 0)
                    o = out[n, c, a]
                    if relu:
                        for q in range(Wo):  # NaN stays, as in Caffe's max(x, 0)
                            v = acc[base + q] + b
                            o[q] = 0.0 if v < 0 else v
                    else:
                        for q in range(Wo):
                            o[q] = acc[base + q] + b

    @numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    def stride2(x, taps, shift, relu, out, n0, n1, c0, c1):
        # 3x3, pad 1, stride 2: output column q reads columns 2q-1, 2q, 2q+1
        H, W = x.shape[2], x.shape[3]
        Ho, Wo = out.shape[2], out.shape[3]
        inner = max(1, min(Wo, W // 2))  # columns 1 <= q < inner read three inside the row
        for n in range(n0, n1):
            for c in range(c0, c1):
                start = shift[c] if shift.shape[0] else 0.0
                k = taps[c - c0]
                for a in range(Ho):
                    o = out[n, c, a]
                    for q in range(Wo):
                        o[q] = start
                    for i in range(3):
                        y = 2 * a + i - 1
                        if y < 0 or y >= H:
                            continue
                        xr = x[n, c, y]
                        t0, t1, t2 = k[i, 0], k[i, 1], k[i, 2]
                        o[0] += t1 * xr[0] + (t2 * xr[1] if W > 1 else 0.0)
                        for q in range(1, inner):
                            o[q] += t0 * xr[2 * q - 1] + t1 * xr[2 * q] + t2 * xr[2 * q + 1]
                        for q in range(inner, Wo):  # the last column, past the row's end
                            v = t0 * xr[2 * q - 1]
                            if 2 * q < W:
                                v += t1 * xr[2 * q]
                            o[q] += v
                    if relu:
                        for q in range(Wo):
                            o[q] = 0.0 if o[q] < 0 else o[q]
    @numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    def pad1_rows(x, taps, shift, relu, out, n0, n1, c0, c1):
        # 3x3, stride 1, pad 1, on wide images (W >= 2): no frame; each inner output row
        # sums its nine taps straight from the three input rows in one loop, the first and
        # last rows (and columns) leave out the taps past the edge
        H, W = x.shape[2], x.shape[3]
        for n in range(n0, n1):
            for c in range(c0, c1):
                b = shift[c] if shift.shape[0] else x.dtype.type(0)
                k = taps[c - c0]
                k0, k1, k2 = k[0, 0], k[0, 1], k[0, 2]
                k3, k4, k5 = k[1, 0], k[1, 1], k[1, 2]
                k6, k7, k8 = k[2, 0], k[2, 1], k[2, 2]
                xp = x[n, c]
                for a in range(H):
                    o = out[n, c, a]
                    if a == 0 or a == H - 1:  # a kernel row at a time, the rows inside
                        for q in range(W):
                            o[q] = b
                        for i in range(3):
                            y = a + i - 1
                            if y < 0 or y >= H:
                                continue
                            xr = xp[y]
                            t0, t1, t2 = k[i, 0], k[i, 1], k[i, 2]
                            o[0] += t1 * xr[0] + t2 * xr[1]
                            for q in range(1, W - 1):
                                o[q] += t0 * xr[q - 1] + t1 * xr[q] + t2 * xr[q + 1]
                            o[W - 1] += t0 * xr[W - 2] + t1 * xr[W - 1]
                    else:
                        u, m, d = xp[a - 1], xp[a], xp[a + 1]
                        o[0] = b + (k1 * u[0] + k2 * u[1]) + (k4 * m[0] + k5 * m[1]) \
                            + (k7 * d[0] + k8 * d[1])
                        for q in range(1, W - 1):
                            o[q] = b + (k0 * u[q - 1] + k1 * u[q] + k2 * u[q + 1]) \
                                + (k3 * m[q - 1] + k4 * m[q] + k5 * m[q + 1]) \
                                + (k6 * d[q - 1] + k7 * d[q] + k8 * d[q + 1])
                        o[W - 1] = b + (k0 * u[W - 2] + k1 * u[W - 1]) \
                            + (k3 * m[W - 2] + k4 * m[W - 1]) + (k6 * d[W - 2] + k7 * d[W - 1])
                    if relu:  # NaN stays, as in Caffe's max(x, 0)
                        for q in range(W):
                            o[q] = 0.0 if o[q] < 0 else o[q]
    return stride1, stride2, pad1_rows


#: image width from which a 3x3 depthwise convolution of stride 1 and pad 1 sums its taps
#: row by row from the input (no frame): 0.75x the flat frame's time at 112x112, 0.95x at
#: 56x56, the same at 28x28, slower below
PAD1_ROWS_MIN_WIDTH = 32


def _build_depthwise_any(numba):
    @numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    def any_geometry(x, taps, shift, relu, out, n0, n1, c0, c1, sh, sw, ph, pw, dh, dw):
        H, W = x.shape[2], x.shape[3]
        kh, kw = taps.shape[1], taps.shape[2]
        Ho, Wo = out.shape[2], out.shape[3]
        step = max(sw, 1)
        # tap j reads column q*sw + j*dw - pw for output column q, inside the row for q in
        # [first[j], stop[j])
        first, stop = np.empty(kw, np.int64), np.empty(kw, np.int64)
        for j in range(kw):
            off = j * dw - pw
            first[j] = 0 if off >= 0 else (-off + sw - 1) // sw
            stop[j] = max(first[j], min(Wo, (W - 1 - off) // sw + 1)) if W > off else first[j]
        for n in range(n0, n1):
            for c in range(c0, c1):
                start = shift[c] if shift.shape[0] else 0.0
                k = taps[c - c0]
                for a in range(Ho):
                    o = out[n, c, a]
                    for q in range(Wo):
                        o[q] = start
                    for i in range(kh):
                        y = a * sh + i * dh - ph
                        if y < 0 or y >= H:
                            continue
                        xr = x[n, c, y]
                        for j in range(kw):
                            t, o0 = k[i, j], max(first[j], 0)
                            x0 = max(first[j] * sw + j * dw - pw, 0)
                            for u in range(stop[j] - first[j]):
                                o[o0 + u] += t * xr[x0 + u * step]
                    if relu:
                        for q in range(Wo):
                            o[q] = 0.0 if o[q] < 0 else o[q]
    return any_geometry


def depthwise_part(x, taps, shift, relu: bool, out, s: slice, cs: slice, stride, pad,
                   dilation) -> None:
    """``out[s, cs] = relu?(sum over taps (i, j) of taps[c, i, j] * xpad[n, c, a*sh + i*dh,
    b*sw + j*dw] + shift[c])``.

    ``x (N, C, H, W)``, ``taps (c, kh, kw)`` of channels ``cs`` (the epilogue's first scale
    already in them), ``shift (C,)`` or None, ``out (N, C, Ho, Wo)`` (a view is fine).
    Padding reads as zeros. 3x3 kernels of stride 1, and MobileNet's of stride 2 with pad 1,
    have loops of their own.
    """
    taps = np.ascontiguousarray(taps, x.dtype)
    shift = np.empty(0, x.dtype) if shift is None else np.ascontiguousarray(shift, x.dtype)
    args = (x, taps, shift, bool(relu), out, s.start, s.stop, cs.start, cs.stop)
    if taps.shape[1:] == (3, 3) and tuple(stride) == (1, 1) and tuple(pad) == (1, 1) and \
            tuple(dilation) == (1, 1) and x.shape[3] >= PAD1_ROWS_MIN_WIDTH and x.shape[2] >= 2:
        return _kernel("depthwise_3x3", _build_depthwise_3x3)[2](*args)
    if taps.shape[1:] == (3, 3) and tuple(stride) == (1, 1):
        stride1, _, _ = _kernel("depthwise_3x3", _build_depthwise_3x3)
        return stride1(*args, pad[0], pad[1], dilation[0], dilation[1])
    if taps.shape[1:] == (3, 3) and tuple(stride) == (2, 2) and tuple(pad) == (1, 1) \
            and tuple(dilation) == (1, 1):
        _, stride2, _ = _kernel("depthwise_3x3", _build_depthwise_3x3)
        return stride2(*args)
    _kernel("depthwise", _build_depthwise_any)(*args, stride[0], stride[1], pad[0], pad[1],
                                               dilation[0], dilation[1])


# -- per-channel affine maps ----------------------------------------------------------------
def _build_affine(numba):
    @numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    def in_place(out, scale, shift, relu, c0):
        # out[n, c, :] = relu?(scale[c0 + c] * out[n, c, :] + shift[c0 + c]); (0,) for none.
        # One array, read and written in place: with two, the compiler could not rule out
        # that they overlap and would not vectorise the loop
        N, C, P = out.shape
        for n in range(N):
            for c in range(C):
                s = scale[c0 + c] if scale.shape[0] else out.dtype.type(1)
                b = shift[c0 + c] if shift.shape[0] else out.dtype.type(0)
                if relu:
                    for p in range(P):
                        v = out[n, c, p] * s + b
                        out[n, c, p] = 0.0 if v < 0 else v  # NaN stays, as Caffe's max(x, 0)
                else:
                    for p in range(P):
                        out[n, c, p] = out[n, c, p] * s + b
    return in_place


def planes(out: np.ndarray) -> np.ndarray | None:
    """``out (n, c, ...)`` seen as ``(n, c, positions)`` without a copy, or None where
    its trailing axes are not one contiguous run (a sliced or transposed view)."""
    rows = out.view()
    try:
        rows.shape = (*out.shape[:2], -1)  # raises rather than make a copy
    except AttributeError:
        return None
    return rows


def affine_in_place(out, scale, shift, relu: bool, channels: slice) -> None:
    """``out = relu?(scale * out + shift)`` per channel, in one pass: ``out (n, c, ...)``
    holds channels ``channels`` of ``scale`` and ``shift`` ``(C,)`` (None for 1 and 0)."""
    rows = planes(out)
    if rows is None:
        raise ValueError(f"affine_in_place: an array of strides {out.strides} has no "
                         "(n, c, positions) view")
    empty = np.empty(0, out.dtype)
    _kernel("affine", _build_affine)(
        rows, empty if scale is None else np.ascontiguousarray(scale, out.dtype),
        empty if shift is None else np.ascontiguousarray(shift, out.dtype), bool(relu),
        channels.start or 0)
