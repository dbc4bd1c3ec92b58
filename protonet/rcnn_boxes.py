"""Box kernels of Faster R-CNN's region proposal step (py-faster-rcnn ``lib/rpn`` and
``lib/fast_rcnn``), as pure functions.

Boxes are ``(K, 4)`` arrays of ``[x1, y1, x2, y2]`` in pixels with *inclusive* corners: a
box's width is ``x2 - x1 + 1``, as everywhere in py-faster-rcnn (and in OpenCV's
non-normalised boxes). Arithmetic happens in the dtype of the predictions (float32 in a
float32 net, as py-faster-rcnn casts its anchors to the deltas' dtype), so that rounding
matches the fork's.

* :func:`generate_anchors` -- the ``A = len(ratios) * len(scales)`` reference boxes of one
  feature-map cell (``generate_anchors.py``), :func:`shifted_anchors` -- all ``H*W*A``.
* :func:`bbox_transform_inv` -- apply predicted ``(dx, dy, dw, dh)`` deltas to boxes.
* :func:`clip_boxes`, :func:`min_size_keep` -- clip to the image, drop small boxes.
* :func:`nms` -- greedy non-maximum suppression (vectorised per kept box), with
  :func:`nms_reference`, the plain double loop, beside it.
"""
from __future__ import annotations

import numpy as np

#: py-faster-rcnn's anchor set: aspect ratios (h/w) and scales of a 16-pixel base box
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_SCALES = (8.0, 16.0, 32.0)


def _boxes_around(widths, heights, x_ctr, y_ctr) -> np.ndarray:
    """``(K, 4)`` boxes of the given sizes around a centre (inclusive corners)."""
    widths, heights = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    return np.stack([x_ctr - 0.5 * (widths - 1), y_ctr - 0.5 * (heights - 1),
                     x_ctr + 0.5 * (widths - 1), y_ctr + 0.5 * (heights - 1)], axis=1)


def generate_anchors(base_size: float = 16, ratios=DEFAULT_RATIOS,
                     scales=DEFAULT_SCALES) -> np.ndarray:
    """The reference anchors of one cell: ``(len(ratios) * len(scales), 4)`` float64.

    The base box ``[0, 0, base_size-1, base_size-1]`` keeps its centre; for each ratio
    ``r`` (outer loop) its area is reshaped to width ``round(sqrt(area / r))`` and height
    ``round(width * r)`` (numpy's round: halves to even, as the fork), and each such box is
    then multiplied by every scale (inner loop). The defaults give the fork's nine anchors,
    ``[-83, -39, 100, 56]`` first.
    """
    size = float(base_size)
    ctr = 0.5 * (size - 1)
    ratios = np.asarray(ratios, np.float64).reshape(-1)
    scales = np.asarray(scales, np.float64).reshape(-1)
    ws = np.round(np.sqrt(size * size / ratios))
    hs = np.round(ws * ratios)
    # each ratio box keeps the base centre, so scaling its sides is all that is left
    widths = (ws[:, None] * scales[None, :]).reshape(-1)
    heights = (hs[:, None] * scales[None, :]).reshape(-1)
    return _boxes_around(widths, heights, ctr, ctr)


def shifted_anchors(anchors: np.ndarray, height: int, width: int, stride: float) -> np.ndarray:
    """Anchors ``(A, 4)`` placed on every cell of an ``height x width`` map of the given
    stride: ``(height * width * A, 4)`` float64 in ``(y, x, anchor)`` order (anchor fastest),
    the order of a ``(1, A*k, H, W)`` prediction transposed to ``(H, W, A*k)``."""
    sx = np.arange(width, dtype=np.float64) * stride
    sy = np.arange(height, dtype=np.float64) * stride
    sx, sy = np.meshgrid(sx, sy)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    return (shifts[:, None, :] + np.asarray(anchors, np.float64)[None, :, :]).reshape(-1, 4)


def bbox_transform_inv(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Boxes ``(K, 4)`` moved by deltas ``(K, 4*m)`` -> ``(K, 4*m)`` in the deltas' dtype.

    With ``w = x2 - x1 + 1`` and centre ``cx = x1 + w/2`` (the fork's centre, half a pixel
    right of the corners' midpoint): ``cx' = dx*w + cx``, ``w' = exp(dw)*w`` and the box
    ``[cx' - w'/2, cy' - h'/2, cx' + w'/2, cy' + h'/2]`` (no ``- 1`` on the far corner).
    """
    deltas = np.asarray(deltas)
    if boxes.shape[0] == 0:
        return np.zeros((0, deltas.shape[1]), deltas.dtype)
    boxes = boxes.astype(deltas.dtype, copy=False)
    one, half = deltas.dtype.type(1), deltas.dtype.type(0.5)
    widths = boxes[:, 2] - boxes[:, 0] + one
    heights = boxes[:, 3] - boxes[:, 1] + one
    ctr_x = (boxes[:, 0] + half * widths)[:, None]
    ctr_y = (boxes[:, 1] + half * heights)[:, None]
    widths, heights = widths[:, None], heights[:, None]
    pred_ctr_x = deltas[:, 0::4] * widths + ctr_x
    pred_ctr_y = deltas[:, 1::4] * heights + ctr_y
    pred_w = np.exp(deltas[:, 2::4]) * widths
    pred_h = np.exp(deltas[:, 3::4]) * heights
    out = np.empty_like(deltas)
    out[:, 0::4] = pred_ctr_x - half * pred_w
    out[:, 1::4] = pred_ctr_y - half * pred_h
    out[:, 2::4] = pred_ctr_x + half * pred_w
    out[:, 3::4] = pred_ctr_y + half * pred_h
    return out


def clip_boxes(boxes: np.ndarray, im_height, im_width) -> np.ndarray:
    """Clip ``(K, 4*m)`` boxes in place to ``[0, im_width-1] x [0, im_height-1]``; returns
    them. The bounds are taken in the boxes' dtype (``im_info`` is float in the fork)."""
    t = boxes.dtype.type
    xmax, ymax = t(im_width) - t(1), t(im_height) - t(1)
    for k, top in ((0, xmax), (1, ymax), (2, xmax), (3, ymax)):
        part = boxes[:, k::4]
        np.maximum(np.minimum(part, top), t(0), out=part)
    return boxes


def min_size_keep(boxes: np.ndarray, min_size) -> np.ndarray:
    """Indices of the ``(K, 4)`` boxes whose width and height (``x2 - x1 + 1``) are both at
    least ``min_size`` (the fork's ``_filter_boxes``)."""
    t = boxes.dtype.type
    ws = boxes[:, 2] - boxes[:, 0] + t(1)
    hs = boxes[:, 3] - boxes[:, 1] + t(1)
    m = t(min_size)
    return np.flatnonzero((ws >= m) & (hs >= m))


def _overlaps(box: np.ndarray, area, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Intersection over union of one box with ``boxes`` (inclusive corners), in their dtype."""
    one, zero = boxes.dtype.type(1), boxes.dtype.type(0)
    w = np.maximum(zero, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + one)
    h = np.maximum(zero, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + one)
    inter = w * h
    return inter / (area + areas - inter)


def nms(boxes: np.ndarray, thresh: float, limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression of ``(K, 4)`` boxes given in priority order (highest
    score first): a box is kept unless its IoU with an already kept box is ``> thresh``
    (py-faster-rcnn's GPU NMS and OpenCV; its Cython CPU NMS suppresses at ``>=``).
    Returns the kept indices ``(k,)`` in order, at most ``limit`` of them (the first
    ``limit`` of the full result). IoU is computed in the boxes' dtype, ``thresh`` too."""
    boxes = np.asarray(boxes)
    t = boxes.dtype.type
    thresh = t(thresh)
    one = t(1)
    areas = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
    alive = np.ones(len(boxes), bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        if limit is not None and len(keep) >= limit:
            break
        rest = i + 1 + np.flatnonzero(alive[i + 1:])
        if rest.size:
            ovr = _overlaps(boxes[i], areas[i], boxes[rest], areas[rest])
            alive[rest[ovr > thresh]] = False
    return np.asarray(keep, np.int64)


def nms_reference(boxes: np.ndarray, thresh: float, limit: int | None = None) -> np.ndarray:
    """:func:`nms` as the textbook double loop, one pair at a time."""
    boxes = np.asarray(boxes)
    t = boxes.dtype.type
    one, zero = t(1), t(0)
    suppressed = [False] * len(boxes)
    keep = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        ix1, iy1, ix2, iy2 = boxes[i]
        iarea = (ix2 - ix1 + one) * (iy2 - iy1 + one)
        for j in range(i + 1, len(boxes)):
            if suppressed[j]:
                continue
            x1, y1, x2, y2 = boxes[j]
            w = max(zero, min(ix2, x2) - max(ix1, x1) + one)
            h = max(zero, min(iy2, y2) - max(iy1, y1) + one)
            inter = w * h
            area = (x2 - x1 + one) * (y2 - y1 + one)
            if inter / (iarea + area - inter) > t(thresh):
                suppressed[j] = True
    keep = keep[:limit] if limit is not None else keep
    return np.asarray(keep, np.int64)
