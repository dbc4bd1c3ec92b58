"""2-D pooling: ``x (n, C, H, W)`` -> ``(n, C, Ho, Wo)`` over Caffe's windows.

The definition (:func:`pool2d_reference`): window ``(a, b)`` covers input rows
``a*sh - ph .. a*sh - ph + kh - 1`` and columns likewise, clipped to the image; MAX takes
its largest value (the first one in row-major order on ties, NaN skipped, ``-FLT_MAX``
and index -1 for a window with no value), AVE the sum over Caffe's pool size (the window
clipped to ``H + ph`` before it is clipped to the image), STOCHASTIC a cell drawn with
probability proportional to its value (TRAIN) or ``sum(x^2) / sum(x)`` (TEST).

The kernels read a *framed* image: the image inside a frame whose border holds the
value that pads it (``-inf`` for MAX, 0 otherwise), large enough for the last window, so
that every kernel tap ``(i, j)`` is one strided view ``frame[..., i::sh, j::sw]`` of
``Ho x Wo`` cells (:func:`geometry`). Python loops run over the ``kh*kw`` taps only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .im2col import phase_planes
from .scratch import buffer

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Geometry:
    """Where a pooling's windows lie for one input size (:func:`geometry`)."""
    in_hw: tuple
    window: tuple
    out_hw: tuple
    pad: tuple
    stride: tuple
    frame: tuple          # (Hf, Wf): the padded frame, large enough for the last window
    framed: bool          # whether the frame differs from the image
    disjoint: bool        # stride >= kernel: each cell in at most one window
    tiled: bool           # windows cover the frame exactly, without overlap
    single: bool          # one window, the whole image
    taps: tuple           # per tap: the (..., rows, cols) index of its strided view
    tap_offsets: np.ndarray     # (kh*kw,) a tap's offset inside a window, flat in the image
    window_offsets: np.ndarray  # (Ho, Wo) each window's first cell, flat in the image
    starts: tuple         # window start rows (Ho,) and columns (Wo,), before clipping
    area: np.ndarray      # (Ho, Wo) Caffe's AVE pool size


def geometry(in_hw, kernel, pad, stride, out) -> Geometry:
    """The tap slices, window starts and AVE divisor of a pooling over ``in_hw``."""
    (H, W), (kh, kw), (Ho, Wo), (ph, pw), (sh, sw) = in_hw, kernel, out, pad, stride
    frame = (max(H + ph, (Ho - 1) * sh + kh), max(W + pw, (Wo - 1) * sw + kw))
    starts = np.arange(Ho) * sh - ph, np.arange(Wo) * sw - pw
    hs, ws = starts
    return Geometry(
        in_hw=tuple(in_hw), window=tuple(kernel), out_hw=tuple(out), pad=tuple(pad),
        stride=tuple(stride), frame=frame, framed=frame != tuple(in_hw),
        disjoint=sh >= kh and sw >= kw,
        tiled=(sh, sw) == (kh, kw) and frame == (Ho * sh, Wo * sw),
        single=tuple(out) == (1, 1) and tuple(pad) == (0, 0),
        taps=tuple((Ellipsis, slice(i, i + (Ho - 1) * sh + 1, sh),
                    slice(j, j + (Wo - 1) * sw + 1, sw)) for i in range(kh) for j in range(kw)),
        tap_offsets=np.array([i * W + j for i in range(kh) for j in range(kw)], np.intp),
        window_offsets=np.add.outer(hs * W, ws), starts=starts,
        area=np.outer(np.minimum(hs + kh, H + ph) - hs, np.minimum(ws + kw, W + pw) - ws))


def frame_images(x, geo: Geometry, fill: float, scratch: dict, key: str, capacity: int):
    """``x (n, C, H, W)`` inside a frame whose border holds ``fill`` (``x`` itself when no
    frame is needed). The frame buffer, room for ``capacity`` images, keeps its border."""
    if not geo.framed or geo.single:
        return x
    n = x.shape[0]
    frame = buffer(scratch, key, (max(n, capacity), x.shape[1]) + geo.frame, x.dtype,
                   fill)[:n]
    (H, W), (ph, pw) = geo.in_hw, geo.pad
    frame[:, :, ph:ph + H, pw:pw + W] = x
    return frame


# -- forward --------------------------------------------------------------------------------
def max_pool(xp, y, geo: Geometry, index=None, scratch=None, key="") -> None:
    """MAX over the windows of the framed images ``xp`` into ``y``, and the tap each
    window chose into ``index`` (``(n, C, Ho, Wo)`` int8/int32) if given.

    The first tap against -inf (``fmax`` turns a NaN into -inf, which any later value
    beats, as Caffe's ``>`` skips NaN); then, branch-free, the running maximum and, for
    the index, ``index = max(index, k * (tap k > running max))``: as taps come in order,
    the last tap that beat the running maximum is the largest k that did.
    """
    if geo.single:
        cells = xp.reshape(xp.shape[0], xp.shape[1], -1)
        best = cells.argmax(axis=2)[:, :, None]  # the first maximum, as Caffe's '>'
        y[...] = np.take_along_axis(cells, best, 2)[..., None]
        if index is not None:
            i, j = np.divmod(best[..., None], geo.in_hw[1])
            index[...] = i * geo.window[1] + j
    else:
        np.fmax(xp[geo.taps[0]], -np.inf, out=y)
        if index is None:
            for tap in geo.taps[1:]:
                np.fmax(y, xp[tap], out=y)
        else:
            v = buffer(scratch, f"tap{key}", y.shape, y.dtype)
            better = buffer(scratch, f"mask{key}", y.shape, bool)
            step = buffer(scratch, f"step{key}", y.shape, index.dtype)
            index[...] = 0
            wide = index.dtype != np.int8
            for k, tap in enumerate(geo.taps[1:], 1):
                np.copyto(v, xp[tap])  # one strided read, then contiguous work
                np.greater(v, y, out=better)
                np.fmax(y, v, out=y)
                if wide:
                    np.multiply(better, k, out=step)
                else:
                    np.multiply(better.view(np.int8), np.int8(k), out=step)
                np.maximum(index, step, out=index)
    # windows without a value > -inf (y never holds NaN): Caffe leaves -FLT_MAX, index -1
    if y.size and y.min() == -np.inf:
        empty = y == -np.inf
        y[empty] = -FLT_MAX
        if index is not None:
            index[empty] = -1


#: bytes of one tile of :func:`max_pool_values`: its phase planes and accumulator stay in
#: the core's cache through the kh*kw passes
MAX_TILE_BYTES = 1 << 20


def max_pool_values(x, y, geo: Geometry, scratch: dict, key) -> None:
    """MAX values only (no choices) of the images ``x (n, C, H, W)`` into ``y``.

    Per tile of images and channels the image is padded with -inf and split into phase
    planes (:func:`~protonet.kernels.im2col.phase_planes`), in which each tap's cells for
    all output rows are one contiguous run: ``acc = fmax over taps of run`` is one long
    vector operation per tap (the accumulator has the planes' width ``Wq``; columns past
    ``Wo`` are dropped). ``fmax`` starting from -inf skips NaN, as Caffe's ``>`` does.
    """
    n, C = x.shape[:2]
    (kh, kw), (sh, sw), (Ho, Wo) = geo.window, geo.stride, geo.out_hw
    Hq, Wq = -(-geo.frame[0] // sh), -(-geo.frame[1] // sw)
    per_channel = (Ho * Wq + sh * sw * (Hq + 1) * Wq) * x.itemsize
    step = max(1, MAX_TILE_BYTES // per_channel)
    if step >= C:
        tiles = [(slice(a, min(a + step // C, n)), slice(0, C))
                 for a in range(0, n, max(1, step // C))]
    else:
        tiles = [(slice(a, a + 1), slice(c, min(c + step, C)))
                 for a in range(n) for c in range(0, C, step)]
    for t, cb in tiles:
        m, c = t.stop - t.start, cb.stop - cb.start
        last = c > Ho * Wq  # numpy's inner loops run along the last axis: the longer one
        planes = phase_planes(x[t, cb], geo.pad, geo.stride, (Hq + 1, Wq), scratch,
                              f"maxplanes{key}", channels_last=last, fill=-np.inf)
        acc = buffer(scratch, f"maxacc{key}", (m, Ho * Wq, c) if last else (m, c, Ho * Wq),
                     x.dtype)
        for k in range(kh * kw):
            (pi, oi), (pj, oj) = divmod(k // kw, sh)[::-1], divmod(k % kw, sw)[::-1]
            start = oi * Wq + oj
            plane = planes[pi * sw + pj]
            run = plane[:, start:start + Ho * Wq] if last else plane[:, :, start:start + Ho * Wq]
            np.fmax(run, -np.inf, out=acc) if k == 0 else np.fmax(acc, run, out=acc)
        y[t, cb] = (acc.reshape(m, Ho, Wq, c)[:, :, :Wo].transpose(0, 3, 1, 2) if last
                    else acc.reshape(m, c, Ho, Wq)[..., :Wo])
    # windows without a value > -inf: Caffe leaves -FLT_MAX
    if y.size and y.min() == -np.inf:
        y[y == -np.inf] = -FLT_MAX


def ave_pool(xp, y, geo: Geometry) -> None:
    """AVE over the windows of the framed images ``xp`` (zero border) into ``y``."""
    if geo.single:
        y[..., 0, 0] = xp.reshape(xp.shape[0], xp.shape[1], -1).sum(axis=2)
    else:
        np.copyto(y, xp[geo.taps[0]])
        for tap in geo.taps[1:]:
            y += xp[tap]
    with np.errstate(divide="ignore", invalid="ignore"):  # empty windows give 0/0, as Caffe
        y /= geo.area.astype(y.dtype)


def stochastic_pool_train(xp, y, index, geo: Geometry, rng, hit) -> None:
    """STOCHASTIC (TRAIN): per window, the first cell (row-major) whose running sum
    reaches ``u * sum``, ``u`` uniform; ``hit`` is bool scratch of ``y``'s shape."""
    total = np.zeros_like(y)
    for tap in geo.taps:
        total += xp[tap]
    threshold = rng.random(y.shape).astype(y.dtype) * total
    running = np.zeros_like(y)
    index[...] = -1
    y[...] = 0
    for k, tap in enumerate(geo.taps):
        v = xp[tap]
        running += v
        np.greater_equal(running, threshold, out=hit)
        hit &= index < 0
        np.copyto(index, k, where=hit)
        np.copyto(y, v, where=hit)


def stochastic_pool_test(xp, y, geo: Geometry) -> None:
    """STOCHASTIC (TEST): ``sum(x^2) / sum(x)`` per window, the sum starting at FLT_MIN."""
    y[...] = FLT_MIN
    squares = np.zeros_like(y)
    for tap in geo.taps:
        v = xp[tap]
        y += v
        squares += v * v
    np.divide(squares, y, out=y)


def flat_index(index, geo: Geometry) -> np.ndarray:
    """The selected cells as Caffe's mask: ``h*W + w`` in the input channel, -1 for none."""
    W, kw = geo.in_hw[1], geo.window[1]
    k = index.astype(np.int64)
    i, j = np.divmod(k, kw)
    hs, ws = geo.starts
    flat = (hs[:, None] + i) * W + (ws[None, :] + j)
    return np.where(k < 0, -1, flat)


# -- backward -------------------------------------------------------------------------------
def route_selected(index, dy, dx, geo: Geometry, scratch: dict, key) -> None:
    """``dx`` (whole images) = the sum of ``dy`` over the windows that selected each cell.

    Every output's selected cell (always inside the image) has a flat position in ``dx``:
    its image and channel, its window's start and its tap's offset. One ``bincount`` sums
    ``dy`` by position (overlapping windows that chose the same cell add up), far faster
    than a masked add per tap, and no padded frame is needed.
    """
    n, C = dy.shape[:2]
    H, W = geo.in_hw
    flat = buffer(scratch, f"flat{key}", dy.shape, np.intp)
    np.take(geo.tap_offsets, index, out=flat)
    flat += geo.window_offsets
    flat += (np.arange(n * C, dtype=np.intp) * (H * W)).reshape(n, C, 1, 1)
    empty = index < 0
    weights = dy
    if empty.any():  # no selection: any position in range will do, with weight 0
        flat[empty] = 0
        weights = np.where(empty, 0, dy)
    dx.reshape(-1)[...] = np.bincount(flat.reshape(-1), weights.reshape(-1), minlength=dx.size)


def place_selected(index, dy, target, geo: Geometry, scratch: dict, key) -> None:
    """:func:`route_selected` for windows that do not overlap (stride >= kernel), into
    ``target`` (the framed bottom diff).

    Each cell then lies in at most one window, so tap ``k``'s cells are written once, as
    a strided view: ``dy`` where the window chose ``k``, else 0. The selection is a bitwise
    AND with an all-ones mask, which (unlike multiplying by 0/1) keeps a NaN elsewhere in
    ``dy`` out of ``dx``.
    """
    if not geo.tiled:
        target[...] = 0
    bits = np.dtype(f"i{dy.itemsize}")
    hit = buffer(scratch, f"hit{key}", dy.shape, bool)
    keep = buffer(scratch, f"keep{key}", dy.shape, bits)
    for k, tap in enumerate(geo.taps):
        np.equal(index, k, out=hit)
        np.negative(hit.view(np.int8), out=keep, casting="unsafe")  # 0 or all ones
        np.bitwise_and(dy.view(bits), keep, out=target[tap].view(bits))


def spread_average(dy, target, geo: Geometry) -> None:
    """AVE backward into ``target`` (the framed bottom diff): each window's ``dy`` over its
    pool size, added to every cell of the window."""
    target[...] = 0
    gs = dy / geo.area.astype(dy.dtype)
    for tap in geo.taps:
        view = target[tap]
        view += gs


# -- the definition -------------------------------------------------------------------------
def pool2d_reference(x, method: str, kernel, stride=(1, 1), pad=(0, 0), ceil=True):
    """MAX or AVE by Caffe's loops, window by window, in float64 (tests only)."""
    from .im2col import pool_out_size
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    Ho, Wo = (pool_out_size(n, k, p, s, ceil) for n, k, p, s in zip((H, W), kernel, pad,
                                                                      stride))
    y = np.empty((N, C, Ho, Wo))
    for a in range(Ho):
        for b in range(Wo):
            h0, w0 = a * sh - ph, b * sw - pw
            h1, w1 = min(h0 + kh, H + ph), min(w0 + kw, W + pw)
            area = (h1 - h0) * (w1 - w0)
            cells = x[:, :, max(h0, 0):min(h1, H), max(w0, 0):min(w1, W)]
            if method == "MAX":
                y[:, :, a, b] = (cells.reshape(N, C, -1).max(axis=2) if cells.size
                                 else -FLT_MAX)
            else:
                y[:, :, a, b] = cells.sum(axis=(2, 3)) / area
    return y
