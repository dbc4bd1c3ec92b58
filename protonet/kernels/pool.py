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

from .scratch import buffer, image_channel_tiles

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


#: bytes of input in one tile of :func:`tiles`: it, its frame and the kernels' scratch stay
#: in the core's cache through the passes over it
TILE_BYTES = 1 << 21


def tiles(s: slice, C: int, geo: Geometry, itemsize: int) -> list[tuple[slice, slice]]:
    """``(images, channels)`` tiles of images ``s`` with about :data:`TILE_BYTES` of
    framed input each: several whole images, or blocks of one image's channels."""
    return image_channel_tiles(s, C, geo.frame[0] * geo.frame[1] * itemsize, TILE_BYTES)


def frame_tile(x, geo: Geometry, fill: float, scratch: dict, key: str, largest) -> np.ndarray:
    """A tile ``x (m, c, H, W)`` inside a frame whose border holds ``fill`` (``x`` itself
    when no frame is needed); the frame buffer is kept for tiles up to ``largest``
    ``(m, c)``, its border written once."""
    if not geo.framed or geo.single:
        return x
    m, c = x.shape[:2]
    frame = buffer(scratch, key, tuple(largest) + geo.frame, x.dtype, fill)[:m, :c]
    (H, W), (ph, pw) = geo.in_hw, geo.pad
    frame[:, :, ph:ph + H, pw:pw + W] = x
    return frame


def frame_images(x, geo: Geometry, fill: float, scratch: dict, key: str, capacity: int):
    """``x (n, C, H, W)`` inside a frame whose border holds ``fill`` (``x`` itself when no
    frame is needed). The frame buffer, room for ``capacity`` images, keeps its border."""
    return frame_tile(x, geo, fill, scratch, key, (max(x.shape[0], capacity), x.shape[1]))


# -- forward --------------------------------------------------------------------------------
def max_separable(xp, y, geo: Geometry, scratch: dict, key) -> None:
    """MAX values of the framed images ``xp`` into ``y``, rows then columns.

    A window's maximum is the maximum over its ``kh`` rows of each row's maximum over
    ``kw`` columns: ``h[n, c, r, b] = max_j xp[n, c, r, b*sw + j]`` for the rows the
    windows read, then ``y[n, c, a, b] = max_i h[n, c, a*sh + i, b]`` --
    ``(kw-1)`` passes over ``rows x Wo`` and ``(kh-1)`` over ``Ho x Wo`` instead of
    ``kh*kw`` over ``Ho x Wo``. ``fmax`` skips NaN, as Caffe's ``>`` does; a window of NaN
    only is left NaN (:func:`fix_empty` makes it -FLT_MAX).
    """
    (kh, kw), (sh, sw), (Ho, Wo) = geo.window, geo.stride, geo.out_hw
    rows = (Ho - 1) * sh + kh
    cols = [xp[..., :rows, j:j + (Wo - 1) * sw + 1:sw] for j in range(kw)]
    h = cols[0] if kw == 1 else buffer(scratch, f"hmax{key}", cols[0].shape, xp.dtype)
    if kw > 1:
        np.fmax(cols[0], cols[1], out=h)
        for c in cols[2:]:
            np.fmax(h, c, out=h)
    taps = [h[..., i:i + (Ho - 1) * sh + 1:sh, :] for i in range(kh)]
    if kh == 1:
        np.copyto(y, taps[0])
        return
    np.fmax(taps[0], taps[1], out=y)
    for t in taps[2:]:
        np.fmax(y, t, out=y)


def fix_empty(y, index=None) -> None:
    """Windows with no value above -inf (NaN or -inf only): Caffe leaves -FLT_MAX, and
    index -1."""
    if y.size and not y.min() > -np.inf:  # min is NaN if any is
        empty = ~(y > -np.inf)
        y[empty] = -FLT_MAX
        if index is not None:
            index[empty] = -1


def max_pool(xp, y, geo: Geometry, index=None, scratch=None, key="") -> None:
    """MAX over the windows of the framed images ``xp`` into ``y``: values only
    (:func:`max_separable`), or also the tap each window chose into ``index``
    (``(n, C, Ho, Wo)`` int8/int32, :func:`running_max_index`)."""
    scratch = {} if scratch is None else scratch
    if geo.single:
        cells = xp.reshape(xp.shape[0], xp.shape[1], -1)
        y[..., 0, 0] = np.fmax.reduce(cells, axis=2)  # NaN skipped
        if index is not None:  # the first cell holding it, as Caffe's '>'
            best = (cells == y.reshape(y.shape[0], y.shape[1], 1)).argmax(axis=2)
            i, j = np.divmod(best, geo.in_hw[1])
            index[..., 0, 0] = i * geo.window[1] + j
    elif index is None:
        max_separable(xp, y, geo, scratch, key)
    else:
        running_max_index(xp, y, index, geo, scratch, key)
    fix_empty(y, index)


def running_max_index(xp, y, index, geo: Geometry, scratch: dict, key) -> None:
    """MAX values and choices, tap by tap: the first tap against -inf (``fmax`` turns a NaN
    into -inf, which any later value beats, as Caffe's ``>`` skips NaN); then, branch-free,
    the running maximum and ``index = max(index, k * (tap k > running max))``: as taps
    come in order, the last tap that beat the running maximum is the largest k that did."""
    np.fmax(xp[geo.taps[0]], -np.inf, out=y)
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
