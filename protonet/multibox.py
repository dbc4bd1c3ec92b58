"""Pure kernels of the SSD fork's training loss: ground truth, matching, encoding, mining.

The semantics are those of weiliu89/caffe, branch ``ssd``, ``src/caffe/util/bbox_util.cpp``
(``GetGroundTruth``, ``MatchBBox``, ``FindMatches``, ``EncodeBBox``,
``EncodeLocPrediction``, ``ComputeConfLoss``, ``MineHardExamples``, ``ApplyNMS``), used by
the ``MultiBoxLoss`` layer (:mod:`protonet.layers.multibox_loss`).

A box is ``xmin, ymin, xmax, ymax`` relative to the image; a set of boxes is ``(n, 4)``.
Box geometry (overlaps, matching, encoded targets) is computed in float32 in the fork's
order of operations, because the fork keeps every box in a ``NormalizedBBox`` of floats:
an overlap that sits exactly on ``overlap_threshold`` is decided as the fork decides it.

Every vectorised kernel has a plain loop twin (``*_reference``) written the way the fork
writes it; the tests hold each pair equal.
"""
from __future__ import annotations

import math

import numpy as np

from . import detection

# MultiBoxLossParameter enums
BIPARTITE, PER_PREDICTION = 0, 1
L2, SMOOTH_L1 = 0, 1
SOFTMAX, LOGISTIC = 0, 1
MINE_NONE, MAX_NEGATIVE, HARD_EXAMPLE = 0, 1, 2

FLT_MIN = float(np.finfo(np.float32).tiny)
_F = np.float32


# -- ground truth ---------------------------------------------------------------------------------
def ground_truth(label, use_difficult_gt: bool = True) -> dict:
    """The fork's ``GetGroundTruth``: label rows ``(num_gt, 8)`` ``[item_id, group_label,
    instance_id, xmin, ymin, xmax, ymax, difficult]`` -> ``{item_id: (boxes (G, 4) float32,
    labels (G,) int64)}``, each image's boxes in row order. Rows whose item_id is -1 (the
    data layer's "no box in this batch" row) are skipped, and difficult boxes too unless
    ``use_difficult_gt``. Ids and labels are truncated toward zero, as C++ casts them."""
    rows = np.asarray(label).reshape(-1, 8)
    items = np.trunc(rows[:, 0]).astype(np.int64)
    keep = items != -1
    if not use_difficult_gt:
        keep &= rows[:, 7] == 0
    rows, items = rows[keep], items[keep]
    out = {}
    for item in np.unique(items):          # ascending, as the fork's std::map
        mine = rows[items == item]
        out[int(item)] = (mine[:, 3:7].astype(_F), np.trunc(mine[:, 1]).astype(np.int64))
    return out


# -- overlaps -------------------------------------------------------------------------------------
def box_size(boxes) -> np.ndarray:
    """``(n,)`` float32 areas ``w * h`` of ``(n, 4)`` boxes; 0 for an invalid box (the fork's
    ``BBoxSize``)."""
    b = np.asarray(boxes, _F).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return np.where((w < 0) | (h < 0), _F(0), w * h)


def jaccard(a, b) -> np.ndarray:
    """``(n, m)`` float32 intersection over union of boxes ``a (n, 4)`` and ``b (m, 4)``, as
    the fork's ``JaccardOverlap(NormalizedBBox, ...)`` computes it in float."""
    a = np.asarray(a, _F).reshape(-1, 4)
    b = np.asarray(b, _F).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    hit = (iw > 0) & (ih > 0)
    inter = np.where(hit, iw * ih, _F(0))
    union = (box_size(a)[:, None] + box_size(b)[None, :]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hit, inter / np.where(hit, union, _F(1)), _F(0)).astype(_F)


def jaccard_reference(box1, box2) -> float:
    """One overlap of :func:`jaccard`, as the fork writes it (float32 scalars)."""
    box1, box2 = [_F(v) for v in box1], [_F(v) for v in box2]
    if box2[0] > box1[2] or box2[2] < box1[0] or box2[1] > box1[3] or box2[3] < box1[1]:
        return 0.0
    iw = min(box1[2], box2[2]) - max(box1[0], box2[0])
    ih = min(box1[3], box2[3]) - max(box1[1], box2[1])
    if not (iw > 0 and ih > 0):
        return 0.0

    def size(b):
        return _F(0) if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0]) * (b[3] - b[1])

    inter = iw * ih
    return float(inter / ((size(box1) + size(box2)) - inter))


def is_cross_boundary(boxes) -> np.ndarray:
    """``(n,)``: boxes with a coordinate outside [0, 1] (``IsCrossBoundaryBBox``)."""
    b = np.asarray(boxes).reshape(-1, 4)
    return np.any((b < 0) | (b > 1), axis=1)


# -- matching -------------------------------------------------------------------------------------
def match_boxes(gt_boxes, pred_boxes, match_type: int = PER_PREDICTION,
                overlap_threshold: float = 0.5, ignore_cross_boundary: bool = False):
    """The fork's ``MatchBBox`` of ``pred_boxes (P, 4)`` (priors or decoded predictions)
    against ``gt_boxes (G, 4)``.

    Returns ``(indices (P,) int64, overlaps (P,) float32)``: the matched ground-truth
    index or -1 (unmatched) or -2 (ignored: crosses the image border, with
    ``ignore_cross_boundary``), and for a matched prediction its overlap with that box,
    for an unmatched one its largest overlap with any box (overlaps of 1e-6 and below count
    as none). BIPARTITE: repeatedly the largest remaining overlap between an unmatched
    prediction and a ground-truth box not yet taken is matched (ties: the lowest
    prediction, then the lowest box), until no overlap is left. PER_PREDICTION then also
    gives every still unmatched prediction its best box when that overlap is at least
    ``overlap_threshold`` (ties: the lowest box).
    """
    gt = np.asarray(gt_boxes, _F).reshape(-1, 4)
    pred = np.asarray(pred_boxes, _F).reshape(-1, 4)
    indices = np.full(len(pred), -1, np.int64)
    overlaps = np.zeros(len(pred), _F)
    if len(gt) == 0:
        return indices, overlaps
    if ignore_cross_boundary:
        indices[is_cross_boundary(pred)] = -2
    ov = jaccard(pred, gt)
    valid = (ov > _F(1e-6)) & (indices != -2)[:, None]
    overlaps[:] = np.where(valid, ov, _F(0)).max(axis=1)
    work = np.where(valid, ov, -np.inf)
    for _ in range(len(gt)):
        flat = int(np.argmax(work))
        i, j = divmod(flat, work.shape[1])
        if work[i, j] == -np.inf:
            break
        indices[i] = j
        overlaps[i] = ov[i, j]
        work[i, :] = -np.inf
        work[:, j] = -np.inf
    if match_type == PER_PREDICTION:
        cand = np.where(valid & (ov >= _F(overlap_threshold)), ov, -np.inf)
        best = np.argmax(cand, axis=1)
        best_ov = cand[np.arange(len(pred)), best]
        take = (indices == -1) & (best_ov > -np.inf)
        indices[take] = best[take]
        overlaps[take] = best_ov[take]
    elif match_type != BIPARTITE:
        raise ValueError(f"unknown match type {match_type}")
    return indices, overlaps


def match_boxes_reference(gt_boxes, pred_boxes, match_type=PER_PREDICTION,
                          overlap_threshold=0.5, ignore_cross_boundary=False):
    """:func:`match_boxes` with the fork's loops, maps and pools."""
    gt = [list(b) for b in np.asarray(gt_boxes, _F).reshape(-1, 4)]
    pred = [list(b) for b in np.asarray(pred_boxes, _F).reshape(-1, 4)]
    indices = [-1] * len(pred)
    match_ov = [0.0] * len(pred)
    if not gt:
        return np.array(indices, np.int64), np.array(match_ov, _F)
    overlaps: dict = {}
    for i, p in enumerate(pred):
        if ignore_cross_boundary and any(v < 0 or v > 1 for v in p):
            indices[i] = -2
            continue
        for j, g in enumerate(gt):
            o = jaccard_reference(p, g)
            if o > _F(1e-6):
                match_ov[i] = max(match_ov[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gt)))
    while pool:
        best_i, best_j, best = -1, -1, -1.0
        for i in sorted(overlaps):
            if indices[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > best:
                    best_i, best_j, best = i, j, overlaps[i][j]
        if best_i == -1:
            break
        indices[best_i] = best_j
        match_ov[best_i] = best
        pool.remove(best_j)
    if match_type == PER_PREDICTION:
        for i in sorted(overlaps):
            if indices[i] != -1:
                continue
            best_j, best = -1, -1.0
            for j in range(len(gt)):
                o = overlaps[i].get(j)
                if o is not None and o >= _F(overlap_threshold) and o > best:
                    best_j, best = j, o
            if best_j != -1:
                indices[i] = best_j
                match_ov[i] = best
    return np.array(indices, np.int64), np.array(match_ov, _F)


# -- encoding -------------------------------------------------------------------------------------
def encode_boxes(priors, variances, boxes, code_type: int = detection.CORNER,
                 encode_variance_in_target: bool = False) -> np.ndarray:
    """The fork's ``EncodeBBox``, inverse of :func:`protonet.detection.decode_boxes`:
    ``boxes (n, 4)`` relative to ``priors (n, 4)`` with ``variances (n, 4)``, float32.

    - CORNER: ``(box - prior) / v``;
    - CENTER_SIZE: ``(centre - prior centre) / (pw, ph) / v[:2]``, ``log(size / (pw,
      ph)) / v[2:]``;
    - CORNER_SIZE: ``(box - prior) / (pw, ph, pw, ph) / v``,

    with ``v`` the variances, or 1 when ``encode_variance_in_target``. CENTER_SIZE needs
    boxes of positive width and height (the fork aborts otherwise; here they give inf/nan).
    """
    p = np.asarray(priors, _F).reshape(-1, 4)
    b = np.asarray(boxes, _F).reshape(-1, 4)
    v = np.ones_like(p) if encode_variance_in_target else \
        np.broadcast_to(np.asarray(variances, _F).reshape(-1, 4), p.shape)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        if code_type == detection.CORNER:
            return ((b - p) / v).astype(_F)
        if code_type == detection.CENTER_SIZE:
            pcx, pcy = (p[:, 0] + p[:, 2]) / _F(2), (p[:, 1] + p[:, 3]) / _F(2)
            bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            bcx, bcy = (b[:, 0] + b[:, 2]) / _F(2), (b[:, 1] + b[:, 3]) / _F(2)
            out = np.stack([(bcx - pcx) / pw / v[:, 0], (bcy - pcy) / ph / v[:, 1],
                            np.log(bw / pw) / v[:, 2], np.log(bh / ph) / v[:, 3]], axis=1)
            return out.astype(_F)
        if code_type == detection.CORNER_SIZE:
            size = np.stack([pw, ph, pw, ph], axis=1)
            return ((b - p) / size / v).astype(_F)
    raise ValueError(f"unknown code type {code_type}")


def encode_box_reference(prior, variance, box, code_type=detection.CORNER,
                         encode_variance_in_target=False) -> list[float]:
    """One box of :func:`encode_boxes`, written out as the fork's ``EncodeBBox``."""
    p = [_F(x) for x in prior]
    b = [_F(x) for x in box]
    v = [_F(1)] * 4 if encode_variance_in_target else [_F(x) for x in variance]
    if code_type == detection.CORNER:
        return [float((b[k] - p[k]) / v[k]) for k in range(4)]
    pw, ph = p[2] - p[0], p[3] - p[1]
    if code_type == detection.CENTER_SIZE:
        pcx, pcy = (p[0] + p[2]) / _F(2), (p[1] + p[3]) / _F(2)
        bw, bh = b[2] - b[0], b[3] - b[1]
        bcx, bcy = (b[0] + b[2]) / _F(2), (b[1] + b[3]) / _F(2)
        return [float((bcx - pcx) / pw / v[0]), float((bcy - pcy) / ph / v[1]),
                float(_F(math.log(bw / pw)) / v[2]), float(_F(math.log(bh / ph)) / v[3])]
    if code_type == detection.CORNER_SIZE:
        size = [pw, ph, pw, ph]
        return [float((b[k] - p[k]) / size[k] / v[k]) for k in range(4)]
    raise ValueError(f"unknown code type {code_type}")


def inside_mask(boxes) -> np.ndarray:
    """``(n, 4)``: which coordinates of ``boxes`` lie inside [0, 1] (``bp_inside``)."""
    b = np.asarray(boxes)
    return (b >= 0) & (b <= 1)


# -- losses ---------------------------------------------------------------------------------------
def smooth_l1(d) -> np.ndarray:
    """Elementwise ``0.5 d^2`` where ``|d| < 1``, else ``|d| - 0.5`` (the fork's SmoothL1Loss)."""
    a = np.abs(d)
    return np.where(a < 1, 0.5 * d * d, a - 0.5)


def smooth_l1_grad(d) -> np.ndarray:
    """Derivative of :func:`smooth_l1`: ``d`` where ``|d| < 1``, else ``sign(d)``."""
    return np.where(np.abs(d) < 1, d, np.sign(d))


def loc_losses(d, loss_type: int = SMOOTH_L1) -> np.ndarray:
    """``(n,)`` losses of ``(n, 4)`` differences prediction - target: SmoothL1 summed over
    the four coordinates, or ``0.5 * sum d^2`` (L2, the fork's EuclideanLoss on one item)."""
    d = np.asarray(d)
    if loss_type == SMOOTH_L1:
        return smooth_l1(d).sum(axis=-1)
    if loss_type == L2:
        return 0.5 * np.sum(d * d, axis=-1)
    raise ValueError(f"unknown loc loss type {loss_type}")


def loc_grad(d, loss_type: int = SMOOTH_L1) -> np.ndarray:
    """Elementwise derivative of :func:`loc_losses` with respect to ``d``."""
    return smooth_l1_grad(d) if loss_type == SMOOTH_L1 else np.asarray(d)


def log_softmax(scores) -> np.ndarray:
    """``log(softmax)`` over the last axis, shifted by the max for stability."""
    s = np.asarray(scores)
    shifted = s - s.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def conf_losses(scores, labels, loss_type: int = SOFTMAX) -> np.ndarray:
    """Per-row confidence losses of ``scores (..., C)`` against class ``labels (...)``
    (the fork's ``ComputeConfLoss``): SOFTMAX ``-log(max(p[label], FLT_MIN))``; LOGISTIC the
    sigmoid cross-entropy summed over the classes, target 1 at ``label`` and 0 elsewhere."""
    s = np.asarray(scores)
    labels = np.asarray(labels, np.int64)
    if loss_type == SOFTMAX:
        prob = np.exp(np.take_along_axis(log_softmax(s), labels[..., None], axis=-1)[..., 0])
        return -np.log(np.maximum(prob, FLT_MIN))
    if loss_type == LOGISTIC:
        target = np.arange(s.shape[-1]) == labels[..., None]
        return logistic_losses(s, target).sum(axis=-1)
    raise ValueError(f"unknown conf loss type {loss_type}")


def logistic_losses(x, target) -> np.ndarray:
    """Elementwise sigmoid cross-entropy ``-[t log s(x) + (1 - t) log(1 - s(x))]``, in the
    stable form Caffe's SigmoidCrossEntropyLoss uses."""
    x = np.asarray(x)
    pos = (x >= 0).astype(x.dtype)
    target = np.asarray(target, x.dtype)
    return -(x * (target - pos) - np.log1p(np.exp(x - 2 * x * pos)))


def conf_losses_reference(scores, labels, loss_type=SOFTMAX) -> list[float]:
    """:func:`conf_losses` for ``(n, C)`` scores, row by row as the fork's loop."""
    out = []
    for row, label in zip(np.asarray(scores, np.float64), labels):
        label = int(label)
        if loss_type == SOFTMAX:
            m = max(row)
            total = sum(math.exp(v - m) for v in row)
            prob = math.exp(row[label] - m) / total
            out.append(-math.log(max(prob, FLT_MIN)))
        else:
            loss = 0.0
            for c, v in enumerate(row):
                t = 1 if c == label else 0
                loss -= v * (t - (v >= 0)) - math.log(1 + math.exp(v - 2 * v * (v >= 0)))
            out.append(loss)
    return out


# -- mining ---------------------------------------------------------------------------------------
def mine_max_negative(losses, indices, overlaps, neg_pos_ratio: float = 3.0,
                      neg_overlap: float = 0.5, nms_boxes=None, nms_threshold: float = 0.0,
                      top_k: int = -1) -> np.ndarray:
    """Negatives of one image, MAX_NEGATIVE mining: among the priors that are unmatched
    (index -1) and overlap every box by less than ``neg_overlap``, the
    ``int(num_positives * neg_pos_ratio)`` with the largest confidence ``losses (P,)``
    (compared as float32, as the fork stores them; equal losses: the lower prior first --
    the fork's unstable sort leaves that order open). With ``nms_boxes (P, 4)`` and
    ``nms_threshold > 0`` the eligible priors first go through :func:`nms_by_loss` and the
    first ones it keeps are taken. Returns prior indices, ascending."""
    indices = np.asarray(indices)
    eligible = np.flatnonzero((indices == -1) & (np.asarray(overlaps, _F) < _F(neg_overlap)))
    num_pos = int(np.count_nonzero(indices > -1))
    num_sel = min(int(_F(num_pos) * _F(neg_pos_ratio)), len(eligible))
    if num_sel <= 0:
        return np.zeros(0, np.int64)
    loss = np.asarray(losses).astype(_F)[eligible]
    if nms_boxes is not None and nms_threshold > 0:
        kept = nms_by_loss(np.asarray(nms_boxes)[eligible], loss, nms_threshold, top_k)
        chosen = eligible[kept[:num_sel]]
    else:
        chosen = eligible[np.argsort(-loss, kind="stable")[:num_sel]]
    return np.sort(chosen).astype(np.int64)


def mine_max_negative_reference(losses, indices, overlaps, neg_pos_ratio=3.0,
                                neg_overlap=0.5, nms_boxes=None, nms_threshold=0.0,
                                top_k=-1) -> list[int]:
    """:func:`mine_max_negative` with the fork's loops and a stable sort."""
    pairs = [(float(_F(losses[m])), m) for m in range(len(indices))
             if indices[m] == -1 and _F(overlaps[m]) < _F(neg_overlap)]
    num_pos = sum(1 for m in indices if m > -1)
    num_sel = min(int(_F(num_pos) * _F(neg_pos_ratio)), len(pairs))
    if nms_boxes is not None and nms_threshold > 0:
        kept = nms_by_loss([nms_boxes[m] for _, m in pairs], [v for v, _ in pairs],
                           nms_threshold, top_k)
        chosen = {pairs[k][1] for k in kept[:num_sel]}
        return [m for m in range(len(indices)) if m in chosen]
    pairs.sort(key=lambda pair: -pair[0])
    chosen = {m for _, m in pairs[:num_sel]}
    return [m for m in range(len(indices)) if m in chosen]


def nms_by_loss(boxes, scores, threshold: float, top_k: int = -1) -> np.ndarray:
    """The fork's ``ApplyNMS`` (used by HARD_EXAMPLE mining): candidates by descending
    score (stable; only the first ``top_k`` when ``top_k > -1``), boxes of area below
    1e-5 dropped, a box kept unless it overlaps a kept one by more than ``threshold``;
    stops after ``top_k`` kept. Returns the kept indices in the order kept."""
    boxes = np.asarray(boxes, _F).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, _F), kind="stable")
    if top_k > -1:
        order = order[:top_k]
    order = order[box_size(boxes[order]) >= _F(1e-5)]
    kept: list[int] = []
    alive = np.ones(len(order), bool)
    for k, idx in enumerate(order):
        if not alive[k]:
            continue
        kept.append(int(idx))
        if top_k > -1 and len(kept) >= top_k:
            break
        rest = np.flatnonzero(alive[k + 1:]) + k + 1
        if len(rest):
            over = jaccard(boxes[idx], boxes[order[rest]])[0] > _F(threshold)
            alive[rest[over]] = False
    return np.array(kept, np.int64)


def mine_hard_examples(losses, indices, sample_size: int, nms_boxes=None,
                       nms_threshold: float = 0.0, top_k: int = -1):
    """HARD_EXAMPLE mining of one image: every prior is eligible; the ``sample_size``
    with the largest ``losses (P,)`` (confidence + localisation) are selected -- after
    :func:`nms_by_loss` over ``nms_boxes`` when those are given and ``nms_threshold > 0``.
    Returns ``(indices, negatives)``: the match indices with every matched prior that was
    not selected set to -1, and the selected unmatched (-1) priors, ascending."""
    indices = np.array(indices, np.int64)
    losses = np.asarray(losses).astype(_F)
    num_sel = min(int(sample_size), len(indices))
    if nms_boxes is not None and nms_threshold > 0:
        kept = nms_by_loss(nms_boxes, losses, nms_threshold, top_k)
        chosen = kept[:min(len(kept), num_sel)]
    else:
        chosen = np.argsort(-losses, kind="stable")[:num_sel]
    selected = np.zeros(len(indices), bool)
    selected[chosen] = True
    indices[(indices > -1) & ~selected] = -1
    # a matched prior that was not selected is unmatched now, but not selected either
    return indices, np.flatnonzero((indices == -1) & selected)


def mine_hard_examples_reference(losses, indices, sample_size, nms_boxes=None,
                                 nms_threshold=0.0, top_k=-1):
    """:func:`mine_hard_examples` with the fork's loops (and a stable sort)."""
    indices = [int(m) for m in indices]
    pairs = [(float(_F(losses[m])), m) for m in range(len(indices))]
    num_sel = min(int(sample_size), len(pairs))
    if nms_boxes is not None and nms_threshold > 0:
        kept = [int(k) for k in nms_by_loss(nms_boxes, losses, nms_threshold, top_k)]
        chosen = {pairs[k][1] for k in kept[:min(len(kept), num_sel)]}
    else:
        chosen = {m for _, m in sorted(pairs, key=lambda pair: -pair[0])[:num_sel]}
    negatives = []
    for m in range(len(indices)):
        if indices[m] > -1:
            if m not in chosen:
                indices[m] = -1
        elif indices[m] == -1 and m in chosen:
            negatives.append(m)
    return np.array(indices, np.int64), np.array(negatives, np.int64)


def normalizer(mode: int, num: int, num_priors: int, num_matches: int) -> float:
    """Caffe's ``GetNormalizer`` with the loss's counts: FULL ``num * num_priors``, VALID
    the number of matches, BATCH_SIZE ``num``, NONE 1; at least 1."""
    from .layers.loss import BATCH_SIZE, FULL, NONE, VALID
    n = {FULL: num * num_priors, VALID: num_matches, BATCH_SIZE: num, NONE: 1}[mode]
    return float(max(1, n))
