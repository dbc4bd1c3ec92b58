"""Region pooling kernels of the R-CNN family, as pure functions.

* :func:`roi_max_pool` / :func:`roi_max_pool_backward` -- Fast R-CNN's ``ROIPooling``
  (rbgirshick/caffe-fast-rcnn ``roi_pooling_layer.cpp``): max over a ``pooled_h x
  pooled_w`` grid of bins laid on each region.
* :func:`psroi_avg_pool` / :func:`psroi_avg_pool_backward` -- R-FCN's ``PSROIPooling``
  (daijifeng001/caffe-rfcn ``psroi_pooling_layer.cu``): position-sensitive average pooling,
  bin ``(i, j)`` of output channel ``d`` reading input channel ``(d*g + i)*g + j``.

Regions are ``(R, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in input-image pixels; the
features ``(N, C, H, W)``. Bin boundaries are computed as the forks do, in the dtype of the
computation (float32 in a float32 net: ``floor``/``ceil`` of a float product can land on
either side of an integer, and the fork's result is the float32 one). ``round`` is C's
(halves away from zero). Each vectorised kernel has a ``*_reference`` beside it that follows
the fork's loops element by element, for tests.
"""
from __future__ import annotations

import numpy as np


def c_round(x) -> np.ndarray:
    """C's ``round``: halves away from zero (numpy's ``round`` sends them to even), as int64.
    Evaluated in float64, where adding 0.5 to a float32 value is exact."""
    x = np.asarray(x, np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def batch_indices(rois: np.ndarray, num: int) -> np.ndarray | None:
    """The regions' batch indices ``(R,)`` (float truncated toward zero, as C's cast), or
    None if one is outside ``[0, num)``."""
    b = np.trunc(np.asarray(rois[:, 0], np.float64)).astype(np.int64)
    return None if ((b < 0) | (b >= num)).any() else b


# -- ROIPooling ------------------------------------------------------------------------------
def roi_bins(rois: np.ndarray, pooled_h: int, pooled_w: int, spatial_scale: float,
             height: int, width: int, dtype=np.float32):
    """The bins of Fast R-CNN's ROIPooling.

    Returns ``(hstart, hend, wstart, wend, start_h, end_h, start_w, end_w)``: the bins'
    clipped ``[start, end)`` rows ``(R, pooled_h)`` and columns ``(R, pooled_w)``, and the
    regions' rounded, unclipped corners ``(R,)`` (feature-map cells, inclusive). A region's
    corners are ``round(coordinate * spatial_scale)``; its size ``max(end - start + 1, 1)``;
    bin ``p`` spans ``[floor(p * size/pooled), ceil((p+1) * size/pooled))`` from its start.
    """
    t = np.dtype(dtype).type
    scaled = np.asarray(rois[:, 1:5], dtype) * t(spatial_scale)
    start_w, start_h, end_w, end_h = c_round(scaled).T
    size_h = np.maximum(end_h - start_h + 1, 1).astype(dtype)
    size_w = np.maximum(end_w - start_w + 1, 1).astype(dtype)
    bin_h, bin_w = size_h / t(pooled_h), size_w / t(pooled_w)

    def edges(count, bin_size, start, limit):
        p = np.arange(count, dtype=dtype)[None, :]
        lo = np.floor(p * bin_size[:, None]).astype(np.int64) + start[:, None]
        hi = np.ceil((p + t(1)) * bin_size[:, None]).astype(np.int64) + start[:, None]
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit)

    hstart, hend = edges(pooled_h, bin_h, start_h, height)
    wstart, wend = edges(pooled_w, bin_w, start_w, width)
    return hstart, hend, wstart, wend, start_h, end_h, start_w, end_w


def roi_max_pool(x: np.ndarray, rois: np.ndarray, batch: np.ndarray, pooled_h: int,
                 pooled_w: int, spatial_scale: float):
    """Forward of ROIPooling: ``x (N, C, H, W)``, ``rois (R, 5)``, ``batch (R,)`` (from
    :func:`batch_indices`) -> ``(top (R, C, pooled_h, pooled_w), argmax (R, C, pooled_h,
    pooled_w))``. ``argmax`` holds ``h*W + w`` of the maximum in its image plane, the first
    in row-major order on ties (the fork's strict ``>`` scan); an empty bin gives 0 and -1.
    Per region, one max over each column band and one over each row band."""
    n, c, h, w = x.shape
    r = rois.shape[0]
    hs, he, ws, we = roi_bins(rois, pooled_h, pooled_w, spatial_scale, h, w, x.dtype)[:4]
    top = np.zeros((r, c, pooled_h, pooled_w), x.dtype)
    argmax = np.full((r, c, pooled_h, pooled_w), -1, np.int64)
    for k in range(r):
        lo, hi = int(hs[k].min()), int(he[k].max())
        if hi <= lo:
            continue
        plane = x[batch[k], :, lo:hi]                      # (C, rows, W)
        col_val = np.empty((c, hi - lo, pooled_w), x.dtype)
        col_arg = np.empty((c, hi - lo, pooled_w), np.int64)
        for j in range(pooled_w):
            a, b = ws[k, j], we[k, j]
            if b > a:
                seg = plane[:, :, a:b]
                col_arg[:, :, j] = a + seg.argmax(axis=2)
                col_val[:, :, j] = np.take_along_axis(seg, col_arg[:, :, j:j + 1] - a, 2)[..., 0]
        for i in range(pooled_h):
            a, b = hs[k, i] - lo, he[k, i] - lo
            if b <= a:
                continue
            band = col_val[:, a:b]                        # (C, rows, pooled_w)
            row = band.argmax(axis=1)                       # (C, pooled_w): first max row
            val = np.take_along_axis(band, row[:, None], 1)[:, 0]
            cols = np.take_along_axis(col_arg[:, a:b], row[:, None], 1)[:, 0]
            full = we[k] > ws[k]
            top[k, :, i] = np.where(full, val, 0)
            argmax[k, :, i] = np.where(full, (row + a + lo) * w + cols, -1)
    return top, argmax


def roi_max_pool_backward(dtop: np.ndarray, argmax: np.ndarray, rois: np.ndarray,
                          batch: np.ndarray, x_shape, spatial_scale: float,
                          dtype=np.float32) -> np.ndarray:
    """Backward of ROIPooling: ``dtop (R, C, ph, pw)`` -> ``dx`` of ``x_shape``, each output's
    gradient added to its argmax. As in the fork, a maximum outside the region's rounded
    corners (a bin rounded past the region's edge, or a region with end < start forced to
    one cell) passes nothing."""
    n, c, h, w = x_shape
    r, _, ph, pw = dtop.shape
    _, _, _, _, start_h, end_h, start_w, end_w = roi_bins(rois, ph, pw, spatial_scale, h, w,
                                                          dtype)
    row, col = argmax // w, argmax % w
    sel = ((argmax >= 0)
           & (row >= np.maximum(start_h, 0)[:, None, None, None])
           & (row < np.minimum(end_h + 1, h)[:, None, None, None])
           & (col >= np.maximum(start_w, 0)[:, None, None, None])
           & (col < np.minimum(end_w + 1, w)[:, None, None, None]))
    plane = (batch[:, None] * c + np.arange(c)[None, :]) * (h * w)      # (R, C)
    index = plane[:, :, None, None] + argmax
    dx = np.bincount(index[sel], weights=dtop[sel], minlength=n * c * h * w)
    return dx.reshape(x_shape).astype(dtype, copy=False)


def roi_max_pool_reference(x, rois, pooled_h, pooled_w, spatial_scale):
    """:func:`roi_max_pool` as the fork's loops (batch indices read from ``rois``)."""
    n, c, h, w = x.shape
    t = x.dtype.type
    r = rois.shape[0]
    top = np.zeros((r, c, pooled_h, pooled_w), x.dtype)
    argmax = np.full(top.shape, -1, np.int64)
    for k in range(r):
        b = int(rois[k, 0])
        sw, sh, ew, eh = (int(c_round(t(v) * t(spatial_scale))) for v in rois[k, 1:5])
        bin_h = t(max(eh - sh + 1, 1)) / t(pooled_h)
        bin_w = t(max(ew - sw + 1, 1)) / t(pooled_w)
        for ch in range(c):
            for i in range(pooled_h):
                for j in range(pooled_w):
                    h0 = min(max(int(np.floor(t(i) * bin_h)) + sh, 0), h)
                    h1 = min(max(int(np.ceil(t(i + 1) * bin_h)) + sh, 0), h)
                    w0 = min(max(int(np.floor(t(j) * bin_w)) + sw, 0), w)
                    w1 = min(max(int(np.ceil(t(j + 1) * bin_w)) + sw, 0), w)
                    if h1 <= h0 or w1 <= w0:
                        continue
                    best = -np.inf
                    for y in range(h0, h1):
                        for xx in range(w0, w1):
                            if x[b, ch, y, xx] > best:
                                best = x[b, ch, y, xx]
                                argmax[k, ch, i, j] = y * w + xx
                    top[k, ch, i, j] = best
    return top, argmax


def roi_max_pool_backward_reference(dtop, argmax, rois, x_shape, spatial_scale):
    """The fork's CPU backward: for every input cell inside a region, the bins that could
    have pooled it (bin edges inverted) whose argmax is that cell."""
    n, c, h, w = x_shape
    t = dtop.dtype.type
    r, _, ph, pw = dtop.shape
    dx = np.zeros(x_shape, dtop.dtype)
    for k in range(r):
        b = int(rois[k, 0])
        sw, sh, ew, eh = (int(c_round(t(v) * t(spatial_scale))) for v in rois[k, 1:5])
        bin_h = t(max(eh - sh + 1, 1)) / t(ph)
        bin_w = t(max(ew - sw + 1, 1)) / t(pw)
        for ch in range(c):
            for y in range(max(0, sh), min(h, eh + 1)):
                for xx in range(max(0, sw), min(w, ew + 1)):
                    p0 = min(max(int(np.floor(t(y - sh) / bin_h)), 0), ph)
                    p1 = min(max(int(np.ceil(t(y - sh + 1) / bin_h)), 0), ph)
                    q0 = min(max(int(np.floor(t(xx - sw) / bin_w)), 0), pw)
                    q1 = min(max(int(np.ceil(t(xx - sw + 1) / bin_w)), 0), pw)
                    for i in range(p0, p1):
                        for j in range(q0, q1):
                            if argmax[k, ch, i, j] == y * w + xx:
                                dx[b, ch, y, xx] += dtop[k, ch, i, j]
    return dx


# -- PSROIPooling ----------------------------------------------------------------------------
def psroi_bins(rois: np.ndarray, group: int, spatial_scale: float, height: int, width: int,
               dtype=np.float32):
    """The bins of R-FCN's PSROIPooling: ``(hstart, hend, wstart, wend)``, each ``(R,
    group)``, clipped ``[start, end)`` cells. A region spans ``round(x1) * scale`` to
    ``(round(x2) + 1) * scale`` (floats), at least 0.1 wide; bin ``p`` spans
    ``[floor(p * bin + start), ceil((p+1) * bin + start))`` with ``bin = size / group``."""
    t = np.dtype(dtype).type
    r = c_round(rois[:, 1:5]).astype(dtype)
    scale = t(spatial_scale)
    start_w, start_h = r[:, 0] * scale, r[:, 1] * scale
    end_w, end_h = (r[:, 2] + t(1)) * scale, (r[:, 3] + t(1)) * scale
    bin_w = np.maximum(end_w - start_w, t(0.1)) / t(group)
    bin_h = np.maximum(end_h - start_h, t(0.1)) / t(group)
    p = np.arange(group, dtype=dtype)[None, :]

    def edges(bin_size, start, limit):
        lo = np.floor(p * bin_size[:, None] + start[:, None]).astype(np.int64)
        hi = np.ceil((p + t(1)) * bin_size[:, None] + start[:, None]).astype(np.int64)
        return np.clip(lo, 0, limit), np.clip(hi, 0, limit)

    hstart, hend = edges(bin_h, start_h, height)
    wstart, wend = edges(bin_w, start_w, width)
    return hstart, hend, wstart, wend


def _ps_index(batch, rois_bins, output_dim: int, group: int, channels: int):
    """Broadcast index arrays ``(R, D, g, g)`` of PSROI's bins: batch*C + channel, rows, cols."""
    hs, he, ws, we = rois_bins
    d = np.arange(output_dim)[None, :, None, None]
    i = np.arange(group)[None, None, :, None]
    j = np.arange(group)[None, None, None, :]
    plane = batch[:, None, None, None] * channels + (d * group + i) * group + j
    return (plane, hs[:, None, :, None], he[:, None, :, None],
            ws[:, None, None, :], we[:, None, None, :])


def psroi_avg_pool(x: np.ndarray, rois: np.ndarray, batch: np.ndarray, output_dim: int,
                   group: int, spatial_scale: float) -> np.ndarray:
    """Forward of PSROIPooling: ``x (N, D*g*g, H, W)`` -> ``(R, D, g, g)``, each bin the mean
    of its cells in its own channel (0 for an empty bin), read from a summed-area table."""
    n, c, h, w = x.shape
    bins = psroi_bins(rois, group, spatial_scale, h, w, x.dtype)
    plane, hs, he, ws, we = _ps_index(batch, bins, output_dim, group, c)
    table = np.zeros((n * c, h + 1, w + 1), np.float64)
    np.cumsum(np.cumsum(x.reshape(n * c, h, w), axis=1, dtype=np.float64), axis=2,
              out=table[:, 1:, 1:])
    total = table[plane, he, we] - table[plane, hs, we] - table[plane, he, ws] \
        + table[plane, hs, ws]
    area = (he - hs) * (we - ws)
    empty = (he <= hs) | (we <= ws)
    out = np.where(empty, 0.0, total / np.where(empty, 1, area))
    return out.astype(x.dtype)


def psroi_avg_pool_backward(dtop: np.ndarray, rois: np.ndarray, batch: np.ndarray, x_shape,
                            group: int, spatial_scale: float, dtype=np.float32) -> np.ndarray:
    """Backward of PSROIPooling: ``dtop (R, D, g, g)`` -> ``dx`` of ``x_shape``, each bin's
    gradient spread evenly over its cells (corner updates of a difference table, then two
    cumulative sums)."""
    n, c, h, w = x_shape
    output_dim = dtop.shape[1]
    bins = psroi_bins(rois, group, spatial_scale, h, w, dtype)
    plane, hs, he, ws, we = _ps_index(batch, bins, output_dim, group, c)
    area = (he - hs) * (we - ws)
    empty = (he <= hs) | (we <= ws)
    val = np.where(empty, 0.0, dtop / np.where(empty, 1, area))
    shape = (n * c, h + 1, w + 1)
    size = int(np.prod(shape))
    parts = []
    for rows, cols, sign in ((hs, ws, 1.0), (hs, we, -1.0), (he, ws, -1.0), (he, we, 1.0)):
        index = np.broadcast_to((plane * (h + 1) + rows) * (w + 1) + cols, val.shape)
        parts.append(np.bincount(index.ravel(), weights=sign * val.ravel(), minlength=size))
    delta = (parts[0] + parts[1] + parts[2] + parts[3]).reshape(shape)
    dx = np.cumsum(np.cumsum(delta, axis=1), axis=2)[:, :h, :w]
    return dx.reshape(x_shape).astype(dtype)


def psroi_avg_pool_reference(x, rois, output_dim, group, spatial_scale):
    """:func:`psroi_avg_pool` as the fork's per-output loop."""
    n, c, h, w = x.shape
    t = x.dtype.type
    r = rois.shape[0]
    top = np.zeros((r, output_dim, group, group), x.dtype)
    for k in range(r):
        b = int(rois[k, 0])
        x1, y1, x2, y2 = (t(int(c_round(v))) for v in rois[k, 1:5])
        sw, sh = x1 * t(spatial_scale), y1 * t(spatial_scale)
        ew, eh = (x2 + t(1)) * t(spatial_scale), (y2 + t(1)) * t(spatial_scale)
        bin_w = max(ew - sw, t(0.1)) / t(group)
        bin_h = max(eh - sh, t(0.1)) / t(group)
        for d in range(output_dim):
            for i in range(group):
                for j in range(group):
                    h0 = min(max(int(np.floor(t(i) * bin_h + sh)), 0), h)
                    h1 = min(max(int(np.ceil(t(i + 1) * bin_h + sh)), 0), h)
                    w0 = min(max(int(np.floor(t(j) * bin_w + sw)), 0), w)
                    w1 = min(max(int(np.ceil(t(j + 1) * bin_w + sw)), 0), w)
                    if h1 <= h0 or w1 <= w0:
                        continue
                    ch = (d * group + i) * group + j
                    acc = 0.0
                    for y in range(h0, h1):
                        for xx in range(w0, w1):
                            acc += float(x[b, ch, y, xx])
                    top[k, d, i, j] = acc / ((h1 - h0) * (w1 - w0))
    return top


def psroi_avg_pool_backward_reference(dtop, rois, x_shape, group, spatial_scale):
    """:func:`psroi_avg_pool_backward` as the fork's per-output loop (``dtop / area`` added
    to every cell of the bin)."""
    n, c, h, w = x_shape
    r, output_dim = dtop.shape[:2]
    dx = np.zeros(x_shape, np.float64)
    hs, he, ws, we = psroi_bins(rois, group, spatial_scale, h, w, dtop.dtype)
    for k in range(r):
        b = int(rois[k, 0])
        for d in range(output_dim):
            for i in range(group):
                for j in range(group):
                    area = (he[k, i] - hs[k, i]) * (we[k, j] - ws[k, j])
                    if he[k, i] <= hs[k, i] or we[k, j] <= ws[k, j]:
                        continue
                    ch = (d * group + i) * group + j
                    dx[b, ch, hs[k, i]:he[k, i], ws[k, j]:we[k, j]] += dtop[k, d, i, j] / area
    return dx.astype(dtop.dtype)
