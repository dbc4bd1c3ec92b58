"""Pure kernels for object detection: prior boxes, box decoding, overlap, NMS.

A box is four numbers ``xmin, ymin, xmax, ymax``; a set of boxes is a float array
of shape ``(..., 4)``, most often ``(n, 4)``. Boxes are *normalized* (coordinates
relative to the image, width = ``xmax - xmin``) unless ``normalized=False``, which
counts pixels inclusively (width = ``xmax - xmin + 1``, R-CNN's convention). A box
with ``xmax < xmin`` or ``ymax < ymin`` is invalid and has area 0.

The semantics are those of the SSD fork of Caffe (weiliu89/caffe, branch ``ssd``,
``src/caffe/util/bbox_util.cpp`` and ``prior_box_layer.cpp``); each vectorised kernel
has a plain loop version (``*_reference``) beside it, and the tests hold them equal.
NMS is sequential by nature and has one simple version (:func:`nms`), with a
pure-Python twin (:func:`nms_reference`).
"""
from __future__ import annotations

import math

import numpy as np

#: ``PriorBoxParameter.CodeType`` values: how a location prediction encodes a box
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3
CODE_TYPES = {CORNER: "CORNER", CENTER_SIZE: "CENTER_SIZE", CORNER_SIZE: "CORNER_SIZE"}


# -- prior boxes -------------------------------------------------------------------------------
def aspect_ratio_list(aspect_ratios, flip: bool = True) -> list[float]:
    """The fork's aspect ratios: 1 first, then each given ratio not already present
    (within 1e-6) followed, with ``flip``, by its reciprocal. Values are float32, as
    the fork stores them."""
    ratios = [1.0]
    for ar in aspect_ratios:
        ar = float(np.float32(ar))
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if flip:
            ratios.append(float(np.float32(1.0 / ar)))
    return ratios


def prior_sizes(min_sizes, max_sizes=(), aspect_ratios=(), flip: bool = True,
                truncate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights ``(S,)`` of the priors of one cell, in the fork's order: for
    each ``min_size`` a square of that size, then (when ``max_sizes`` is given, one per
    min size) a square of ``sqrt(min * max)``, then for each aspect ratio ``ar != 1``
    of :func:`aspect_ratio_list` a box ``min * sqrt(ar)`` wide and ``min / sqrt(ar)``
    high. ``truncate``: the fork reads the sizes into ``int``s (21.5 -> 21), as
    its PriorBox does; OpenCV keeps them as floats."""
    if max_sizes and len(max_sizes) != len(min_sizes):
        raise ValueError("max_sizes must be empty or as many as min_sizes")
    ratios = [r for r in aspect_ratio_list(aspect_ratios, flip) if abs(r - 1.0) >= 1e-6]
    widths, heights = [], []
    for s, low in enumerate(min_sizes):
        low = float(int(low)) if truncate else float(low)
        widths.append(low)
        heights.append(low)
        if max_sizes:
            high = float(int(max_sizes[s])) if truncate else float(max_sizes[s])
            side = math.sqrt(low * high)
            widths.append(side)
            heights.append(side)
        for ar in ratios:
            widths.append(low * math.sqrt(ar))
            heights.append(low / math.sqrt(ar))
    return np.array(widths), np.array(heights)


def prior_boxes(layer_h: int, layer_w: int, img_h: float, img_w: float, step_h: float,
                step_w: float, widths, heights, offsets_x=(0.5,), offsets_y=(0.5,),
                clip: bool = False) -> np.ndarray:
    """Prior boxes of a ``layer_h x layer_w`` feature map, normalized by the image size.

    Cell ``(h, w)`` with offset ``j`` is centred at ``((w + offsets_x[j]) * step_w,
    (h + offsets_y[j]) * step_h)`` pixels; each of the ``S`` sizes ``(widths[i],
    heights[i])`` gives the box ``centre -+ size / 2``, divided by ``(img_w, img_h)``.
    Returns ``(layer_h * layer_w * S * J, 4)`` in ``(h, w, i, j)`` order (row-major);
    ``clip`` clamps every coordinate into ``[0, 1]``.
    """
    widths = np.asarray(widths, np.float64)
    heights = np.asarray(heights, np.float64)
    ox = np.asarray(offsets_x, np.float64)
    oy = np.asarray(offsets_y, np.float64)
    cx = (np.arange(layer_w)[:, None] + ox[None, :]) * step_w          # (W, J)
    cy = (np.arange(layer_h)[:, None] + oy[None, :]) * step_h          # (H, J)
    shape = (layer_h, layer_w, len(widths), len(ox))
    cx = np.broadcast_to(cx[None, :, None, :], shape)
    cy = np.broadcast_to(cy[:, None, None, :], shape)
    half_w = (widths / 2.0)[None, None, :, None]
    half_h = (heights / 2.0)[None, None, :, None]
    boxes = np.stack([(cx - half_w) / img_w, (cy - half_h) / img_h,
                      (cx + half_w) / img_w, (cy + half_h) / img_h], axis=-1)
    boxes = boxes.reshape(-1, 4)
    return np.clip(boxes, 0.0, 1.0) if clip else boxes


def prior_boxes_reference(layer_h, layer_w, img_h, img_w, step_h, step_w, widths, heights,
                          offsets_x=(0.5,), offsets_y=(0.5,), clip=False) -> np.ndarray:
    """:func:`prior_boxes` as nested loops over cells, sizes and offsets."""
    out = []
    for h in range(layer_h):
        for w in range(layer_w):
            for bw, bh in zip(widths, heights):
                for ox, oy in zip(offsets_x, offsets_y):
                    cx, cy = (w + ox) * step_w, (h + oy) * step_h
                    box = [(cx - bw / 2.0) / img_w, (cy - bh / 2.0) / img_h,
                           (cx + bw / 2.0) / img_w, (cy + bh / 2.0) / img_h]
                    if clip:
                        box = [min(max(v, 0.0), 1.0) for v in box]
                    out.append(box)
    return np.array(out, np.float64).reshape(-1, 4)


# -- box decoding -------------------------------------------------------------------------------
def decode_boxes(priors, variances, deltas, code_type: int = CORNER,
                 variance_encoded_in_target: bool = False) -> np.ndarray:
    """Boxes from location predictions relative to priors (the fork's ``DecodeBBox``).

    ``priors (..., 4)``, ``variances (..., 4)`` (ignored when the variance is encoded in
    the target) and ``deltas (..., 4)`` broadcast together; returns ``(..., 4)``. With
    ``v`` the variances (or 1) and ``pw, ph`` the prior's width and height:

    - CORNER: ``prior + v * delta``;
    - CENTER_SIZE: centre ``prior_centre + v[:2] * delta[:2] * (pw, ph)``, size
      ``exp(v[2:] * delta[2:]) * (pw, ph)``;
    - CORNER_SIZE: ``prior + v * delta * (pw, ph, pw, ph)``.
    """
    priors = np.asarray(priors, np.float64)
    deltas = np.asarray(deltas, np.float64)
    if not variance_encoded_in_target:
        deltas = deltas * np.asarray(variances, np.float64)
    if code_type == CORNER:
        return priors + deltas
    pw = priors[..., 2] - priors[..., 0]
    ph = priors[..., 3] - priors[..., 1]
    if code_type == CENTER_SIZE:
        cx = deltas[..., 0] * pw + (priors[..., 0] + priors[..., 2]) / 2.0
        cy = deltas[..., 1] * ph + (priors[..., 1] + priors[..., 3]) / 2.0
        w = np.exp(deltas[..., 2]) * pw
        h = np.exp(deltas[..., 3]) * ph
        return np.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], axis=-1)
    if code_type == CORNER_SIZE:
        size = np.stack([pw, ph, pw, ph], axis=-1)
        return priors + deltas * size
    raise ValueError(f"unknown code type {code_type}")


def decode_box_reference(prior, variance, delta, code_type: int = CORNER,
                         variance_encoded_in_target: bool = False) -> list[float]:
    """One box of :func:`decode_boxes`, written out as the fork's ``DecodeBBox``."""
    v = [1.0] * 4 if variance_encoded_in_target else [float(x) for x in variance]
    xmin, ymin, xmax, ymax = (float(x) for x in prior)
    d = [float(x) for x in delta]
    if code_type == CORNER:
        return [xmin + v[0] * d[0], ymin + v[1] * d[1], xmax + v[2] * d[2], ymax + v[3] * d[3]]
    pw, ph = xmax - xmin, ymax - ymin
    if code_type == CENTER_SIZE:
        cx = v[0] * d[0] * pw + (xmin + xmax) / 2.0
        cy = v[1] * d[1] * ph + (ymin + ymax) / 2.0
        w, h = math.exp(v[2] * d[2]) * pw, math.exp(v[3] * d[3]) * ph
        return [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
    if code_type == CORNER_SIZE:
        return [xmin + v[0] * d[0] * pw, ymin + v[1] * d[1] * ph,
                xmax + v[2] * d[2] * pw, ymax + v[3] * d[3] * ph]
    raise ValueError(f"unknown code type {code_type}")


# -- areas and overlaps -------------------------------------------------------------------------
def box_area(boxes, normalized: bool = True) -> np.ndarray:
    """Areas ``(...)`` of boxes ``(..., 4)``: ``w * h``, or ``(w + 1) * (h + 1)`` in
    pixels (``normalized=False``); 0 for an invalid box (``xmax < xmin`` or
    ``ymax < ymin``)."""
    boxes = np.asarray(boxes, np.float64)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    invalid = (w < 0) | (h < 0)
    if not normalized:
        w, h = w + 1.0, h + 1.0
    return np.where(invalid, 0.0, w * h)


def jaccard_overlap(a, b, normalized: bool = True) -> np.ndarray:
    """Intersection over union of every box of ``a (n, 4)`` with every box of
    ``b (m, 4)``: ``(n, m)``. Boxes whose intersection has no positive width and height
    overlap 0 (the fork's ``JaccardOverlap``)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    if not normalized:
        iw, ih = iw + 1.0, ih + 1.0
    overlapping = (iw > 0) & (ih > 0)
    inter = np.where(overlapping, iw * ih, 0.0)
    union = box_area(a, normalized)[:, None] + box_area(b, normalized)[None, :] - inter
    return np.where(overlapping, inter / np.where(overlapping, union, 1.0), 0.0)


def jaccard_overlap_reference(box1, box2, normalized: bool = True) -> float:
    """The overlap of two boxes, as the textbook (and the fork) writes it."""
    ix1, iy1 = max(box1[0], box2[0]), max(box1[1], box2[1])
    ix2, iy2 = min(box1[2], box2[2]), min(box1[3], box2[3])
    extra = 0.0 if normalized else 1.0
    iw, ih = ix2 - ix1 + extra, iy2 - iy1 + extra
    if iw <= 0 or ih <= 0:
        return 0.0

    def area(box):
        if box[2] < box[0] or box[3] < box[1]:
            return 0.0
        return (box[2] - box[0] + extra) * (box[3] - box[1] + extra)

    inter = iw * ih
    return float(inter / (area(box1) + area(box2) - inter))


# -- non-maximum suppression --------------------------------------------------------------------
def top_score_indices(scores, score_threshold: float = -np.inf, top_k: int = -1) -> np.ndarray:
    """Indices of the scores above ``score_threshold`` (strictly), by descending score,
    ties in index order; at most ``top_k`` of them when ``top_k > -1`` (the fork's
    ``GetMaxScoreIndex``: ``top_k = 0`` keeps none)."""
    scores = np.asarray(scores)
    candidates = np.flatnonzero(scores > score_threshold)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        order = order[:top_k]
    return order


def nms(boxes, scores, nms_threshold: float, score_threshold: float = -np.inf,
        top_k: int = -1, eta: float = 1.0, normalized: bool = True) -> np.ndarray:
    """Greedy non-maximum suppression (the fork's ``ApplyNMSFast``).

    ``boxes (n, 4)``, ``scores (n,)``. The candidates are :func:`top_score_indices`; in
    that order a candidate is kept when its overlap with every box kept so far is at
    most the threshold. Adaptive NMS: after each kept box, while ``eta < 1`` and the
    threshold is above 0.5, the threshold is multiplied by ``eta`` (in float32, as the
    fork does). Returns the kept indices ``(k,)`` in the order they were kept.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    threshold = np.float32(nms_threshold)
    kept: list[int] = []
    for idx in top_score_indices(scores, score_threshold, top_k):
        if kept:
            overlap = jaccard_overlap(boxes[idx], boxes[kept], normalized)[0]
            if np.any(overlap > threshold):
                continue
        kept.append(int(idx))
        if eta < 1 and threshold > 0.5:
            threshold = np.float32(threshold * np.float32(eta))
    return np.array(kept, np.int64)


def nms_reference(boxes, scores, nms_threshold, score_threshold=-math.inf, top_k=-1, eta=1.0,
                  normalized=True) -> list[int]:
    """:func:`nms` with lists and :func:`jaccard_overlap_reference`."""
    boxes = [[float(v) for v in box] for box in np.asarray(boxes).reshape(-1, 4)]
    scores = [float(s) for s in np.asarray(scores).reshape(-1)]
    pairs = [(s, i) for i, s in enumerate(scores) if s > score_threshold]
    pairs.sort(key=lambda pair: -pair[0])         # stable: ties keep index order
    if top_k > -1:
        pairs = pairs[:top_k]
    threshold = np.float32(nms_threshold)
    kept = []
    for _, idx in pairs:
        keep = True
        for k in kept:
            if jaccard_overlap_reference(boxes[idx], boxes[k], normalized) > threshold:
                keep = False
                break
        if keep:
            kept.append(idx)
            if eta < 1 and threshold > 0.5:
                threshold = np.float32(threshold * np.float32(eta))
    return kept


def detect(boxes, scores, nms_threshold: float, score_threshold: float = -np.inf,
           top_k: int = -1, eta: float = 1.0, keep_top_k: int = -1,
           background_label: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """One image's detections: NMS per class, then the best ``keep_top_k`` overall.

    ``scores (P, C)``; ``boxes (P, 4)`` shared by all classes or ``(P, C, 4)`` one set
    per class. Every class but ``background_label`` goes through :func:`nms`; when
    ``keep_top_k > -1`` and more boxes survive, only the ``keep_top_k`` best scores
    (ties: lower class, then the NMS order) are kept. Returns ``(labels, indices)``,
    each ``(k,)``, in the fork's output order: by class, and within a class by
    descending score.
    """
    scores = np.asarray(scores)
    boxes = np.asarray(boxes)
    labels, indices = [], []
    for c in range(scores.shape[1]):
        if c == background_label:
            continue
        class_boxes = boxes if boxes.ndim == 2 else boxes[:, c]
        kept = nms(class_boxes, scores[:, c], nms_threshold, score_threshold, top_k, eta)
        labels.append(np.full(len(kept), c, np.int64))
        indices.append(kept)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    if keep_top_k > -1 and len(indices) > keep_top_k:
        best = np.argsort(-scores[indices, labels], kind="stable")[:keep_top_k]
        best = best[np.lexsort((best, labels[best]))]   # back to class order, NMS order within
        labels, indices = labels[best], indices[best]
    return labels, indices
