"""Compiled pooling loops (numba; see :mod:`protonet.kernels.jit` for when they are used).

Definitions: :func:`protonet.kernels.pool.pool2d_reference` (Caffe's windows) and the
numpy kernels of :mod:`protonet.kernels.pool`. MAX matches them exactly: the same choice
on ties (the first maximum in row-major window order), NaN never chosen, a window with no
value above ``-inf`` giving ``-FLT_MAX`` and choice -1. Sums (AVE, and backward where
windows overlap) add the same terms in another order, so they agree to float rounding.

* :func:`pool_part` -- MAX (values only) and AVE pooling of some images and channels.
* :func:`max_pool_choice_part` -- MAX values and the tap each window chose
  (``i*kw + j`` within the window, as :func:`protonet.kernels.pool.running_max_index`),
  what a TRAIN forward keeps for backward.
* :func:`route_max_part` / :func:`spread_average_part` -- backward: each image plane of
  ``dx`` zeroed and its windows' ``dy`` added in while the plane is in cache, where numpy
  makes a pass per tap over a framed copy.

Each loop works on images ``n0 <= n < n1`` (channels ``c0 <= c < c1`` for the forward
ones), so the layers run them on :mod:`protonet.parallel`'s threads part by part.
"""
from __future__ import annotations

import numpy as np

from .jit import _kernel

_LOWEST = -float(np.finfo(np.float32).max)


def _build(numba):
    njit = numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    # the loops' helpers are inlined into them: called as compiled functions, the tap
    # offset's bound (>= 0) was lost to the loops, which then ran 1.2-2x slower
    inline = numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy",
                        inline="always")

    @inline
    def columns(j, W, Wo, sw, pw):
        # the output columns b whose tap j lies inside the image: 0 <= b*sw - pw + j < W
        b0 = 0 if j >= pw else (pw - j + sw - 1) // sw
        b1 = min(Wo, (W - 1 - j + pw) // sw + 1) if W - 1 - j + pw >= 0 else 0
        return b0, max(b1, b0)

    @inline
    def extent(start, k, size, pad):
        # Caffe's pool size along one axis: the window clipped to size + pad
        return min(start + k, size + pad) - start

    @inline
    def phase_geometry(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw):
        # (Wq, plane, run) of the phase planes below
        Hq = (max(H + ph, (Ho - 1) * sh + kh) + sh - 1) // sh
        Wq = (max(W + pw, (Wo - 1) * sw + kw) + sw - 1) // sw
        return Wq, Hq * Wq, (Ho - 1) * Wq + Wo

    @inline
    def split_phases(x, n, c, phases, sh, sw, ph, pw, Wq, plane):
        # The plane x[n, c] (H, W) inside a frame (the border already in ``phases``), split
        # into sh*sw phases: phase (p, q) holds the frame's rows p, p + sh, ... and columns
        # q, q + sw, ..., each Hq x Wq, flat. Output (a, b)'s tap (i, j) is frame cell
        # (a*sh + i, b*sw + j), that is cell (a + i//sh)*Wq + b + j//sw of phase
        # (i % sh, j % sw) (:func:`tap_offset`): over t = a*Wq + b, each tap is one
        # contiguous run of (Ho-1)*Wq + Wo cells (the columns past Wo are worked out and
        # dropped), so the loops are vector-wide even for 7-wide images.
        H, W = x.shape[2], x.shape[3]
        for r in range(H):
            fr = r + ph
            if sw == 1:
                base = max((fr % sh) * plane + (fr // sh) * Wq + pw, 0)
                for u in range(W):
                    phases[base + u] = x[n, c, r, u]
                continue
            for q in range(sw):  # the columns u with (u + pw) % sw == q
                first = (q - pw) % sw
                base = max(((fr % sh) * sw + q) * plane + (fr // sh) * Wq
                           + (first + pw) // sw, 0)
                for u in range((W - first + sw - 1) // sw):
                    phases[base + u] = x[n, c, r, first + u * sw]

    @inline
    def tap_offset(i, j, sh, sw, Wq, plane):
        return max(((i % sh) * sw + j % sw) * plane + (i // sh) * Wq + j // sw, 0)

    @njit
    def pool_planes(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, fill, is_max):
        # over the phase planes (split_phases), the frame's border ``fill``
        H, W = x.shape[2], x.shape[3]
        Ho, Wo = y.shape[2], y.shape[3]
        Wq, plane, run = phase_geometry(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw)
        phases = np.full(sh * sw * plane, fill, x.dtype)
        acc = np.empty(run, x.dtype)
        for n in range(n0, n1):
            for c in range(c0, c1):
                split_phases(x, n, c, phases, sh, sw, ph, pw, Wq, plane)
                for t in range(run):
                    acc[t] = fill
                for i in range(kh):
                    for j in range(kw):
                        off = tap_offset(i, j, sh, sw, Wq, plane)
                        if is_max:  # Caffe's '>': NaN never wins, ties keep the first
                            for t in range(run):
                                v = phases[off + t]
                                acc[t] = v if v > acc[t] else acc[t]
                        else:
                            for t in range(run):
                                acc[t] += phases[off + t]
                for a in range(Ho):
                    base = max(a * Wq, 0)
                    for q in range(Wo):
                        y[n, c, a, q] = acc[base + q]

    @njit
    def pool_rows(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, fill, is_max):
        # strided windows, separably: per output row, the window's rows (clipped to the
        # image) are reduced into one row, framed by ``fill`` cells where the windows hang
        # over the padding or past the edge (they change no maximum, add nothing); then
        # each output column reduces its kw cells of that row. The common 3x3 and 2x2
        # windows at stride 2 take contiguous passes (3x3: neighbours paired first, then
        # one more cell): one strided pass per tap was 1.4-2.2x slower (SqueezeNet's pools)
        H, W = x.shape[2], x.shape[3]
        Ho, Wo = y.shape[2], y.shape[3]
        row = np.full(max(pw + W, (Wo - 1) * sw + kw), fill, x.dtype)
        pair = np.empty(row.size, x.dtype)
        body = row[pw:pw + W]
        for n in range(n0, n1):
            for c in range(c0, c1):
                for a in range(Ho):
                    r0, r1 = max(a * sh - ph, 0), min(a * sh - ph + kh, H)
                    if r1 <= r0:
                        body[:] = fill
                    for r in range(r0, r1):  # starting from fill, as Caffe's loops
                        xr = x[n, c, r]
                        if r == r0 and is_max:  # Caffe's '>': NaN never wins
                            for u in range(W):
                                v = xr[u]
                                body[u] = v if v > fill else fill
                        elif r == r0:
                            for u in range(W):
                                body[u] = fill + xr[u]
                        elif is_max:
                            for u in range(W):
                                v = xr[u]
                                body[u] = v if v > body[u] else body[u]
                        else:
                            for u in range(W):
                                body[u] += xr[u]
                    o = y[n, c, a]
                    if sw == 2 and kw == 3:
                        if is_max:
                            for u in range(2 * Wo - 1):
                                v = row[u + 1]
                                pair[u] = v if v > row[u] else row[u]
                            for q in range(Wo):
                                v = row[2 * q + 2]
                                o[q] = v if v > pair[2 * q] else pair[2 * q]
                        else:
                            for u in range(2 * Wo - 1):
                                pair[u] = row[u] + row[u + 1]
                            for q in range(Wo):
                                o[q] = pair[2 * q] + row[2 * q + 2]
                    elif sw == 2 and kw == 2:
                        if is_max:
                            for q in range(Wo):
                                v, m = row[2 * q + 1], row[2 * q]
                                o[q] = v if v > m else m
                        else:
                            for q in range(Wo):
                                o[q] = row[2 * q] + row[2 * q + 1]
                    else:
                        for q in range(Wo):
                            o[q] = fill
                        for j in range(kw):
                            if is_max:
                                for q in range(Wo):
                                    v = row[q * sw + j]
                                    o[q] = v if v > o[q] else o[q]
                            else:
                                for q in range(Wo):
                                    o[q] += row[q * sw + j]

    @njit
    def pooled(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, fill, is_max):
        if sh == 1 and sw == 1:
            pool_planes(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, fill, is_max)
        else:
            pool_rows(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, fill, is_max)

    @njit
    def max_pool(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, lowest):
        # from -FLT_MAX, as Caffe: a window of padding, NaN or -inf only stays -FLT_MAX
        pooled(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, lowest, True)

    @njit
    def ave_pool(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw):
        # the sum over Caffe's pool size; an empty window gives 0/0, as Caffe's
        H, W = x.shape[2], x.shape[3]
        Ho, Wo = y.shape[2], y.shape[3]
        pooled(x, y, n0, n1, c0, c1, kh, kw, sh, sw, ph, pw, x.dtype.type(0), False)
        for n in range(n0, n1):
            for c in range(c0, c1):
                for a in range(Ho):
                    rows = extent(a * sh - ph, kh, H, ph)
                    for q in range(Wo):
                        cols = extent(q * sw - pw, kw, W, pw)
                        y[n, c, a, q] = y[n, c, a, q] / (rows * cols)

    @njit
    def max_choice(x, y, index, n0, n1, kh, kw, sh, sw, ph, pw, lowest):
        # over the phase planes, the frame's border -inf: a running maximum over the taps
        # in row-major order, the choice moved only by a strictly larger value (">" never
        # picks a NaN or the border). The choice is arithmetic, not a branch: which tap
        # wins is data, and a mispredicted branch per cell cost twice the time
        H, W = x.shape[2], x.shape[3]
        C, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
        Wq, plane, run = phase_geometry(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw)
        phases = np.full(sh * sw * plane, -np.inf, x.dtype)
        acc = np.empty(run, x.dtype)
        pick = np.empty(run, np.int32)
        for n in range(n0, n1):
            for c in range(C):
                split_phases(x, n, c, phases, sh, sw, ph, pw, Wq, plane)
                for t in range(run):
                    acc[t] = -np.inf
                    pick[t] = -1
                for i in range(kh):
                    for j in range(kw):
                        off = tap_offset(i, j, sh, sw, Wq, plane)
                        k = np.int32(i * kw + j)
                        for t in range(run):
                            v = phases[off + t]
                            better = np.int32(v > acc[t])
                            acc[t] = v if v > acc[t] else acc[t]
                            pick[t] += better * (k - pick[t])
                for a in range(Ho):
                    base = a * Wq
                    for b in range(Wo):
                        chosen = pick[base + b]
                        y[n, c, a, b] = acc[base + b] if chosen >= 0 else lowest
                        index[n, c, a, b] = chosen

    @njit
    def route_max(index, dy, dx, n0, n1, kh, kw, sh, sw, ph, pw):
        # dx[n, c] = 0, then each window's dy added at the cell it chose
        C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
        Ho, Wo = dy.shape[2], dy.shape[3]
        for n in range(n0, n1):
            for c in range(C):
                plane = dx[n, c]
                plane[:, :] = 0
                for a in range(Ho):
                    for b in range(Wo):
                        k = index[n, c, a, b]
                        if k >= 0:
                            plane[a * sh - ph + k // kw, b * sw - pw + k % kw] += dy[n, c, a, b]

    @njit
    def spread_average(dy, dx, n0, n1, kh, kw, sh, sw, ph, pw):
        # dx[n, c] = 0, then per output row: each window's dy over Caffe's pool size,
        # spread across its kw columns (inside the image) into one row of W, which is
        # added to each of the window's rows inside the image
        C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
        Ho, Wo = dy.shape[2], dy.shape[3]
        row = np.empty(W, dx.dtype)
        for n in range(n0, n1):
            for c in range(C):
                plane = dx[n, c]
                plane[:, :] = 0
                for a in range(Ho):
                    h0 = a * sh - ph
                    rows = extent(h0, kh, H, ph)
                    for u in range(W):
                        row[u] = 0
                    for j in range(kw):
                        b0, b1 = columns(j, W, Wo, sw, pw)
                        for b in range(b0, b1):
                            cols = extent(b * sw - pw, kw, W, pw)
                            row[b * sw - pw + j] += dy[n, c, a, b] / (rows * cols)
                    for i in range(max(-h0, 0), min(kh, H - h0)):
                        target = plane[h0 + i]
                        for u in range(W):
                            target[u] += row[u]
    return {"max_pool": max_pool, "ave_pool": ave_pool, "max_choice": max_choice,
            "route_max": route_max, "spread_average": spread_average}




def _geometry(kernel, stride, pad) -> tuple:
    return kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1]


def _loops() -> dict:
    return _kernel("pool", _build)


def pool_part(method: str, x, y, s: slice, cs: slice, kernel, stride, pad) -> None:
    """``y[s, cs]``: MAX (values only) or AVE pooling of ``x (N, C, H, W)`` over Caffe's
    windows (:func:`protonet.kernels.pool.pool2d_reference`) into ``y (N, C, Ho, Wo)``."""
    args = (x, y, s.start, s.stop, cs.start, cs.stop) + _geometry(kernel, stride, pad)
    if method == "MAX":
        _loops()["max_pool"](*args, x.dtype.type(_LOWEST))
    else:
        _loops()["ave_pool"](*args)


def max_pool_choice_part(x, y, index, s: slice, kernel, stride, pad) -> None:
    """Images ``s`` of ``y (N, C, Ho, Wo)``: MAX over Caffe's windows of ``x (N, C, H, W)``,
    and of ``index`` (same shape, int8 or int32): the tap ``i*kw + j`` each window chose,
    -1 where none (``y`` then ``-FLT_MAX``)."""
    _loops()["max_choice"](x, y, index, s.start, s.stop, *_geometry(kernel, stride, pad),
               x.dtype.type(_LOWEST))


def route_max_part(index, dy, dx, s: slice, kernel, stride, pad) -> None:
    """Images ``s`` of ``dx (N, C, H, W)``: MAX backward, the sum of ``dy (N, C, Ho, Wo)``
    over the windows whose ``index`` chose each cell (0 where none did)."""
    _loops()["route_max"](index, dy, dx, s.start, s.stop, *_geometry(kernel, stride, pad))


def spread_average_part(dy, dx, s: slice, kernel, stride, pad) -> None:
    """Images ``s`` of ``dx (N, C, H, W)``: AVE backward, the sum over the windows holding
    each cell of ``dy (N, C, Ho, Wo)`` over the window's pool size."""
    _loops()["spread_average"](dy, dx, s.start, s.stop, *_geometry(kernel, stride, pad))
