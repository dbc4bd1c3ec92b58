"""Annotated images for SSD training: the box and sampling kernels, the per-image
augmentation and the ``AnnotatedDatum`` database writer of the SSD fork (weiliu89/caffe,
branch ``ssd``: ``src/caffe/util/sampler.cpp``, the annotation half of
``src/caffe/data_transformer.cpp``, ``bbox_util.cpp``'s box helpers, and
``tools/convert_annoset.cpp``). The pixel kernels are in :mod:`protonet.data.im_transforms`.

Boxes are ``xmin, ymin, xmax, ymax`` relative to the image, ``(n, 4)`` float32: the fork
keeps them in ``NormalizedBBox`` floats, and these kernels repeat its float operations in
its order, so the geometry of a given crop, expansion, resize and mirror comes out as the
fork's. An image's annotations are an :class:`Annotations` (its boxes in group order, then
annotation order).

Per image, as the fork's ``AnnotatedDataLayer::load_batch``: :meth:`AnnotatedTransformer.
distort` (random brightness, contrast, saturation, hue and channel order), ``expand``
(zoom out onto a canvas of the mean colour), ``sample_crop`` (the batch samplers' random
crops satisfying their overlap constraints; one of the crops found is taken), then
``transform`` (resize, crop_size crop, mirror, mean and scale) -- the annotations follow
every step, and boxes whose centre leaves the crop (``emit_constraint``) or that end up
empty are dropped.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from ..errors import ProtonetError
from ..multibox import jaccard, jaccard_reference
from . import im_transforms as imt

_F = np.float32
BBOX = 0                                      # AnnotatedDatum.AnnotationType
WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD = 1, 2, 3
CENTER, MIN_OVERLAP = 0, 1                    # EmitConstraint.EmitType


class Annotations(NamedTuple):
    """One image's boxes ``(n, 4)`` float32 with their group labels, instance ids and
    difficult flags ``(n,)``."""
    boxes: np.ndarray
    group_label: np.ndarray
    instance_id: np.ndarray
    difficult: np.ndarray

    def take(self, keep) -> "Annotations":
        return Annotations(*(a[keep] for a in self))

    @property
    def count(self) -> int:
        return len(self.boxes)


def annotations_of(anno_datum) -> Annotations:
    """The boxes of an ``AnnotatedDatum``, group by group."""
    boxes, groups, ids, difficult = [], [], [], []
    for group in anno_datum.annotation_group:
        for a in group.annotation:
            b = a.bbox
            boxes.append((b.xmin, b.ymin, b.xmax, b.ymax))
            groups.append(group.group_label)
            ids.append(a.instance_id)
            difficult.append(b.difficult)
    return Annotations(np.array(boxes, _F).reshape(-1, 4), np.array(groups, np.int64),
                       np.array(ids, np.int64), np.array(difficult, bool))


def label_rows(items: list) -> np.ndarray:
    """The AnnotatedData label top's rows ``(num_boxes, 8)``: ``[item_id, group_label,
    instance_id, xmin, ymin, xmax, ymax, difficult]`` for every box of every item (an
    :class:`Annotations` per item), or one row of -1s when the batch has no box."""
    rows = [np.column_stack([np.full(a.count, i), a.group_label, a.instance_id, a.boxes,
                             a.difficult]) for i, a in enumerate(items) if a.count]
    if not rows:
        return np.full((1, 8), -1.0)
    return np.concatenate(rows).astype(np.float64)


# -- boxes ----------------------------------------------------------------------------------------
def box_size(b) -> np.ndarray:
    """float32 areas ``w * h`` of ``(..., 4)`` boxes; 0 for invalid ones (``BBoxSize``)."""
    b = np.asarray(b, _F)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), _F(0), w * h)


def clip_boxes(b) -> np.ndarray:
    """``ClipBBox``: every coordinate into [0, 1]."""
    return np.clip(np.asarray(b, _F), _F(0), _F(1))


def coverage(a, b) -> np.ndarray:
    """``(n, m)`` ``BBoxCoverage(a_i, b_j)``: the part of ``a_i`` that ``b_j`` covers."""
    a = np.asarray(a, _F).reshape(-1, 4)[:, None]
    b = np.asarray(b, _F).reshape(-1, 4)[None]
    apart = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | \
        (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    inter = np.concatenate([np.maximum(a[..., :2], b[..., :2]),
                            np.minimum(a[..., 2:], b[..., 2:])], axis=-1)
    size = np.where(apart, _F(0), box_size(inter))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(size > 0, size / box_size(a), _F(0)).astype(_F)


def coverage_reference(box1, box2) -> float:
    """One value of :func:`coverage`, as the fork's ``IntersectBBox`` + ``BBoxCoverage``."""
    a, b = [_F(v) for v in box1], [_F(v) for v in box2]

    def size(x):
        return _F(0) if x[2] < x[0] or x[3] < x[1] else (x[2] - x[0]) * (x[3] - x[1])

    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    inter = size([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    return float(inter / size(a)) if inter > 0 else 0.0


def project_boxes(src, boxes):
    """``ProjectBBox``: ``boxes (n, 4)`` in the coordinates of the window ``src (4,)``,
    clipped. Returns ``(projected (n, 4), kept (n,))``: a box is kept when it overlaps the
    window and keeps a positive area."""
    s = np.asarray(src, _F)
    b = np.asarray(boxes, _F).reshape(-1, 4)
    overlaps = ~((b[:, 0] >= s[2]) | (b[:, 2] <= s[0]) | (b[:, 1] >= s[3]) | (b[:, 3] <= s[1]))
    sw, sh = s[2] - s[0], s[3] - s[1]
    proj = clip_boxes(np.stack([(b[:, 0] - s[0]) / sw, (b[:, 1] - s[1]) / sh,
                                (b[:, 2] - s[0]) / sw, (b[:, 3] - s[1]) / sh], axis=1))
    return proj, overlaps & (box_size(proj) > 0)


def meet_emit_constraint(src, boxes, emit_type: int = CENTER, emit_overlap: float = 0.0):
    """``MeetEmitConstraint`` for ``boxes (n, 4)`` against the window ``src (4,)``: CENTER,
    the box's centre lies in the window (borders included); MIN_OVERLAP, the window covers
    more than ``emit_overlap`` of the box."""
    s = np.asarray(src, _F)
    b = np.asarray(boxes, _F).reshape(-1, 4)
    if emit_type == CENTER:
        cx, cy = (b[:, 0] + b[:, 2]) / _F(2), (b[:, 1] + b[:, 3]) / _F(2)
        return (cx >= s[0]) & (cx <= s[2]) & (cy >= s[1]) & (cy <= s[3])
    if emit_type == MIN_OVERLAP:
        return coverage(b, s)[:, 0] > _F(emit_overlap)
    raise ProtonetError(f"emit_constraint.emit_type {emit_type} is not CENTER or MIN_OVERLAP")


def resize_boxes(boxes, resize_param, old_w: int, old_h: int) -> np.ndarray:
    """``UpdateBBoxByResizePolicy``: where the boxes of an ``old_w x old_h`` image lie in
    the image ``resize_param`` makes of it (WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD)."""
    nh, nw = _F(resize_param.height), _F(resize_param.width)
    ow, oh = _F(old_w), _F(old_h)
    orig_aspect, new_aspect = ow / oh, nw / nh
    b = np.asarray(boxes, _F).reshape(-1, 4)
    x0, y0, x1, y1 = b[:, 0] * ow, b[:, 1] * oh, b[:, 2] * ow, b[:, 3] * oh
    zero = _F(0)
    mode = resize_param.resize_mode
    if mode == FIT_SMALL_SIZE:
        if orig_aspect < new_aspect:
            nh = nw / orig_aspect
        else:
            nw = orig_aspect * nh
    if mode in (WARP, FIT_SMALL_SIZE) or (mode == FIT_LARGE_SIZE_AND_PAD
                                          and orig_aspect > new_aspect):
        x0, x1 = np.maximum(zero, x0 * nw / ow), np.minimum(nw, x1 * nw / ow)
    if mode in (WARP, FIT_SMALL_SIZE) or (mode == FIT_LARGE_SIZE_AND_PAD
                                          and orig_aspect <= new_aspect):
        y0, y1 = np.maximum(zero, y0 * nh / oh), np.minimum(nh, y1 * nh / oh)
    if mode == FIT_LARGE_SIZE_AND_PAD:
        if orig_aspect > new_aspect:
            pad = (nh - nw / orig_aspect) / _F(2)
            y0 = pad + np.maximum(zero, y0 * (nh - _F(2) * pad) / oh)
            y1 = pad + np.minimum(nh, y1 * (nh - _F(2) * pad) / oh)
        else:
            pad = (nw - orig_aspect * nh) / _F(2)
            x0 = pad + np.maximum(zero, x0 * (nw - _F(2) * pad) / ow)
            x1 = pad + np.minimum(nw, x1 * (nw - _F(2) * pad) / ow)
    elif mode not in (WARP, FIT_SMALL_SIZE):
        raise ProtonetError(f"resize_param.resize_mode {mode} is not WARP, FIT_SMALL_SIZE or "
                            "FIT_LARGE_SIZE_AND_PAD")
    return np.stack([x0 / nw, y0 / nh, x1 / nw, y1 / nh], axis=1).astype(_F)


def new_size(resize_param, old_w: int, old_h: int) -> tuple[int, int]:
    """``InferNewSize``: (height, width) of the image ``resize_param`` makes."""
    h, w = int(resize_param.height), int(resize_param.width)
    if resize_param.resize_mode == FIT_SMALL_SIZE:
        orig_aspect, aspect = _F(old_w) / _F(old_h), _F(w) / _F(h)
        if orig_aspect < aspect:
            h = int(_F(w) / orig_aspect)
        else:
            w = int(orig_aspect * _F(h))
    return h, w


def extrapolate_boxes(boxes, resize_param, height: int, width: int, crop) -> np.ndarray:
    """``ExtrapolateBBox``: FIT_SMALL_SIZE with height_scale/width_scale rescales the
    boxes from the crop to the scale grid; otherwise the boxes are unchanged."""
    hs, ws = _F(resize_param.height_scale), _F(resize_param.width_scale)
    if not (hs > 0 and ws > 0 and resize_param.resize_mode == FIT_SMALL_SIZE):
        return boxes
    orig_aspect = _F(width) / _F(height)
    rh, rw = _F(resize_param.height), _F(resize_param.width)
    if orig_aspect < rw / rh:
        rh = rw / orig_aspect
    else:
        rw = rh * orig_aspect
    ch, cw = rh * (_F(crop[3]) - _F(crop[1])), rw * (_F(crop[2]) - _F(crop[0]))
    b = np.asarray(boxes, _F).copy()
    b[:, [0, 2]] = b[:, [0, 2]] * cw / ws
    b[:, [1, 3]] = b[:, [1, 3]] * ch / hs
    return b


def transform_annotations(ann: Annotations, crop, mirror: bool = False, emit=None,
                          resize=None) -> Annotations:
    """``TransformAnnotation``: the annotations of the window ``crop (4,)`` of the image
    (mirrored when ``mirror``). ``emit``: an ``EmitConstraint`` or None; ``resize``:
    ``(resize_param, width, height)`` of the image before its resize, or None."""
    boxes = ann.boxes
    if resize is not None:
        boxes = resize_boxes(boxes, *resize)
    keep = np.ones(len(boxes), bool)
    if emit is not None:
        keep &= meet_emit_constraint(crop, boxes, emit.emit_type, emit.emit_overlap)
    proj, kept = project_boxes(crop, boxes)
    keep &= kept
    out = ann._replace(boxes=proj).take(keep)
    if mirror:
        b = out.boxes.copy()
        b[:, 0], b[:, 2] = _F(1) - out.boxes[:, 2], _F(1) - out.boxes[:, 0]
        out = out._replace(boxes=b)
    if resize is not None:
        param, width, height = resize
        out = out._replace(boxes=extrapolate_boxes(out.boxes, param, height, width, crop))
    return out


def transform_box_reference(box, crop, mirror=False, emit=None, resize=None):
    """:func:`transform_annotations` for one box, step by step as the fork's
    ``TransformAnnotation`` (float32 scalars): the new box, or None when it is dropped."""
    f = [_F(v) for v in box]
    c = [_F(v) for v in crop]
    if resize is not None:
        f = [_F(v) for v in resize_boxes([f], *resize)[0]]
    if emit is not None:
        if emit.emit_type == CENTER:
            cx, cy = (f[0] + f[2]) / _F(2), (f[1] + f[3]) / _F(2)
            if not (c[0] <= cx <= c[2] and c[1] <= cy <= c[3]):
                return None
        elif not coverage_reference(f, c) > _F(emit.emit_overlap):
            return None
    if f[0] >= c[2] or f[2] <= c[0] or f[1] >= c[3] or f[3] <= c[1]:
        return None
    w, h = c[2] - c[0], c[3] - c[1]
    p = [(f[0] - c[0]) / w, (f[1] - c[1]) / h, (f[2] - c[0]) / w, (f[3] - c[1]) / h]
    p = [min(max(v, _F(0)), _F(1)) for v in p]
    if not (p[2] >= p[0] and p[3] >= p[1] and (p[2] - p[0]) * (p[3] - p[1]) > 0):
        return None
    if mirror:
        p = [_F(1) - p[2], p[1], _F(1) - p[0], p[3]]
    if resize is not None:
        param, width, height = resize
        p = list(extrapolate_boxes(np.array([p], _F), param, height, width, crop)[0])
    return [float(v) for v in p]


# -- batch samplers -------------------------------------------------------------------------------
def sample_boxes(sampler, u) -> np.ndarray:
    """``SampleBBox`` for uniform draws ``u (T, 4)`` in [0, 1) (scale, aspect ratio, x and y
    offset): ``(T, 4)`` boxes of area ``scale^2``, aspect ratio within the sampler's
    range (and within ``[scale^2, 1 / scale^2]``, so the box fits), inside [0, 1]."""
    u = np.asarray(u, np.float64).reshape(-1, 4)

    def uniform(a, b, x):
        return (_F(a) + (_F(b) - _F(a)) * x).astype(_F)

    scale = uniform(sampler.min_scale, sampler.max_scale, u[:, 0])
    ratio = uniform(sampler.min_aspect_ratio, sampler.max_aspect_ratio, u[:, 1])
    sq = scale.astype(np.float64) ** 2
    ratio = np.minimum(np.maximum(ratio, sq.astype(_F)), (1.0 / sq).astype(_F))
    w, h = scale * np.sqrt(ratio), scale / np.sqrt(ratio)
    x0 = uniform(0, 1, u[:, 2]) * (_F(1) - w)
    y0 = uniform(0, 1, u[:, 3]) * (_F(1) - h)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(_F)


def check_sampler(sampler, where: str) -> None:
    """The fork's CHECKs on a ``Sampler``, as errors naming ``where``."""
    s = sampler
    if not (0 < s.min_scale <= s.max_scale <= 1):
        raise ProtonetError(f"{where}: sampler needs 0 < min_scale <= max_scale <= 1 (got "
                            f"{s.min_scale:g}, {s.max_scale:g})")
    if not (0 < s.min_aspect_ratio <= s.max_aspect_ratio < np.finfo(_F).max):
        raise ProtonetError(f"{where}: sampler needs 0 < min_aspect_ratio <= max_aspect_ratio "
                            f"(got {s.min_aspect_ratio:g}, {s.max_aspect_ratio:g})")


def satisfy_constraint(samples, objects, constraint) -> np.ndarray:
    """``SatisfySampleConstraint`` for ``samples (T, 4)`` and the image's ``objects (n, 4)``:
    ``(T,)``. With no bound set every sample passes; otherwise a sample passes when some
    object meets the bounds of the *first* family set (jaccard overlap, then sample
    coverage, then object coverage) -- the fork returns as soon as one family's test has
    passed for one object, so the later families never decide."""
    c = constraint
    samples = np.asarray(samples, _F).reshape(-1, 4)
    families = [("jaccard", "min_jaccard_overlap", "max_jaccard_overlap"),
                ("sample", "min_sample_coverage", "max_sample_coverage"),
                ("object", "min_object_coverage", "max_object_coverage")]
    present = [f for f in families if c.HasField(f[1]) or c.HasField(f[2])]
    if not present:
        return np.ones(len(samples), bool)
    kind, low, high = present[0]
    if kind == "jaccard":
        value = jaccard(samples, objects)
    elif kind == "sample":
        value = coverage(samples, objects)
    else:
        value = coverage(objects, samples).T
    ok = np.ones(value.shape, bool)
    if c.HasField(low):
        ok &= ~(value < _F(getattr(c, low)))
    if c.HasField(high):
        ok &= ~(value > _F(getattr(c, high)))
    return ok.any(axis=1)


def satisfy_constraint_reference(sample, objects, constraint) -> bool:
    """:func:`satisfy_constraint` for one sample, with the fork's loop."""
    c = constraint
    tests = [(c.HasField("min_jaccard_overlap") or c.HasField("max_jaccard_overlap"),
              "min_jaccard_overlap", "max_jaccard_overlap",
              lambda o: jaccard_reference(sample, o)),
             (c.HasField("min_sample_coverage") or c.HasField("max_sample_coverage"),
              "min_sample_coverage", "max_sample_coverage",
              lambda o: coverage_reference(sample, o)),
             (c.HasField("min_object_coverage") or c.HasField("max_object_coverage"),
              "min_object_coverage", "max_object_coverage",
              lambda o: coverage_reference(o, sample))]
    if not any(t[0] for t in tests):
        return True
    found = False
    for obj in np.asarray(objects, _F).reshape(-1, 4):
        failed = False
        for has, low, high, measure in tests:
            if not has:
                continue
            value = measure(obj)
            if (c.HasField(low) and value < _F(getattr(c, low))) or \
                    (c.HasField(high) and value > _F(getattr(c, high))):
                failed = True
                break
            found = True
        if found and not failed:
            return True
    return found


def generate_samples(objects, batch_sampler, rng: np.random.Generator) -> np.ndarray:
    """``GenerateSamples`` of one ``BatchSampler``: ``max_trials`` random boxes (all drawn
    at once), the first ``max_sample`` of them (all, when unset) that satisfy the
    constraint: ``(k, 4)``."""
    trials = int(batch_sampler.max_trials)
    u = rng.random((trials, 4))
    samples = sample_boxes(batch_sampler.sampler, u)
    ok = satisfy_constraint(samples, objects, batch_sampler.sample_constraint)
    chosen = np.flatnonzero(ok)
    if batch_sampler.HasField("max_sample"):
        chosen = chosen[:int(batch_sampler.max_sample)]
    return samples[chosen]


def generate_batch_samples(objects, batch_samplers, rng) -> np.ndarray:
    """``GenerateBatchSamples``: the samples of every batch sampler, in order ``(k, 4)``.
    As in the fork, a sampler with ``use_original_image: false`` yields nothing."""
    found = [generate_samples(objects, s, rng) for s in batch_samplers if s.use_original_image]
    return np.concatenate(found) if found else np.zeros((0, 4), _F)


# -- image geometry -------------------------------------------------------------------------------
def crop_window(bbox, height: int, width: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` pixels of the window ``bbox`` clipped to an image (``CropImage``:
    scaled in float, offsets and sizes truncated; at least one pixel)."""
    b = clip_boxes(bbox)
    x0, y0, x1, y1 = b[0] * _F(width), b[1] * _F(height), b[2] * _F(width), b[3] * _F(height)
    return int(x0), int(y0), max(1, int(x1 - x0)), max(1, int(y1 - y0))


def expansion(height: int, width: int, ratio: float, u) -> tuple:
    """``ExpandImage``'s geometry for uniform draws ``u (2,)``: the canvas ``(H, W)``, the
    image's offset ``(y, x)`` on it and the canvas as a box in image coordinates."""
    ch, cw = int(_F(height) * _F(ratio)), int(_F(width) * _F(ratio))
    h_off = math.floor(_F(_F(ch - height) * _F(u[0])))
    w_off = math.floor(_F(_F(cw - width) * _F(u[1])))
    hf, wf = _F(h_off), _F(w_off)
    box = np.array([-wf / _F(width), -hf / _F(height), (_F(cw) - wf) / _F(width),
                    (_F(ch) - hf) / _F(height)], _F)
    return (ch, cw), (h_off, w_off), box


# -- the per-image pipeline -----------------------------------------------------------------------
class AnnotatedTransformer:
    """The fork's annotated data path for one ``TransformationParameter`` (+ batch samplers).

    ``mean``: per-channel values ``(C,)`` or a mean image ``(C, H, W)`` (of the resized
    image) or None, as :class:`protonet.transform.DataTransformer` reads them.
    """

    def __init__(self, tp, samplers, phase: int, mean, where: str):
        from ..layers.base import TRAIN
        self.tp, self.samplers, self.train, self.mean = tp, list(samplers), phase == TRAIN, mean
        self.where = where
        self.crop_h = int(tp.crop_size or tp.crop_h)
        self.crop_w = int(tp.crop_size or tp.crop_w)
        self.emit = tp.emit_constraint if tp.HasField("emit_constraint") else None
        self.resize = tp.resize_param if tp.HasField("resize_param") else None
        if self.resize is not None and (self.resize.height <= 0 or self.resize.width <= 0):
            raise ProtonetError(f"{where}: transform_param.resize_param needs positive height "
                                f"and width (got {self.resize.height}x{self.resize.width})")
        if tp.HasField("expand_param") and not tp.expand_param.max_expand_ratio > 1:
            raise ProtonetError(f"{where}: transform_param.expand_param.max_expand_ratio must "
                                f"be above 1 (got {tp.expand_param.max_expand_ratio:g})")
        for k, s in enumerate(self.samplers):
            check_sampler(s.sampler, f"{where}: annotated_data_param.batch_sampler[{k}]")

    def output_shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        """``InferBlobShape``: the (C, H, W) an image of this size becomes."""
        if self.resize is not None:
            h, w = new_size(self.resize, w, h)
        if self.crop_h > h or self.crop_w > w:
            raise ProtonetError(f"{self.where}: the crop ({self.crop_h}x{self.crop_w}) is "
                                f"larger than the {h}x{w} image")
        return c, self.crop_h or h, self.crop_w or w

    def _fill(self, c: int) -> np.ndarray:
        if self.mean is None or np.ndim(self.mean) != 1:
            return np.zeros(c)
        return np.resize(np.asarray(self.mean, np.float64), c)

    def distort(self, image, rng):
        """``ApplyDistort``: each effect with its probability, in one of the fork's two
        orders (chosen by a coin)."""
        p = self.tp.distort_param

        def brightness(im):
            if rng.random() < p.brightness_prob:
                return imt.adjust_brightness(im, _uniform(rng, -p.brightness_delta,
                                                          p.brightness_delta))
            return im

        def contrast(im):
            if rng.random() < p.contrast_prob:
                return imt.adjust_contrast(im, _uniform(rng, p.contrast_lower,
                                                        p.contrast_upper))
            return im

        def saturation(im):
            if rng.random() < p.saturation_prob:
                self._need_color(im, "saturation")
                return imt.adjust_saturation(im, _uniform(rng, p.saturation_lower,
                                                          p.saturation_upper))
            return im

        def hue(im):
            if rng.random() < p.hue_prob:
                self._need_color(im, "hue")
                return imt.adjust_hue(im, _uniform(rng, -p.hue_delta, p.hue_delta))
            return im

        def order(im):
            if rng.random() < p.random_order_prob:
                self._need_color(im, "random_order")
                return im[rng.permutation(3)]
            return im

        steps = [brightness, contrast, saturation, hue] if rng.random() > 0.5 else \
            [brightness, saturation, hue, contrast]
        for step in steps + [order]:
            image = step(image)
        return image

    def _need_color(self, image, what):
        if image.shape[0] != 3:
            raise ProtonetError(f"{self.where}: distort_param's {what} needs 3-channel colour "
                                f"images, got {image.shape[0]} channel(s)")

    def expand(self, image, ann: Annotations, rng):
        """``ExpandImage``: with probability ``prob``, the image on a canvas up to
        ``max_expand_ratio`` times its size filled with the mean colour (rounded)."""
        p = self.tp.expand_param
        if rng.random() > p.prob or abs(p.max_expand_ratio - 1.0) < 1e-2:
            return image, ann
        ratio = _uniform(rng, 1.0, p.max_expand_ratio)
        c, h, w = image.shape
        (ch, cw), (y, x), box = expansion(h, w, ratio, rng.random(2))
        canvas = np.empty((c, ch, cw), np.uint8)
        canvas[...] = np.clip(np.rint(self._fill(c)), 0, 255).astype(np.uint8)[:, None, None]
        canvas[:, y:y + h, x:x + w] = image
        return canvas, transform_annotations(ann, box, emit=self.emit)

    def sample_crop(self, image, ann: Annotations, rng):
        """The batch samplers' crops of the image; one of them, taken at random, crops it."""
        samples = generate_batch_samples(ann.boxes, self.samplers, rng)
        if not len(samples):
            return image, ann
        bbox = samples[int(rng.integers(len(samples)))]
        x, y, w, h = crop_window(bbox, image.shape[1], image.shape[2])
        return (image[:, y:y + h, x:x + w].copy(),
                transform_annotations(ann, clip_boxes(bbox), emit=self.emit))

    def transform(self, image, ann: Annotations, out: np.ndarray, rng) -> Annotations:
        """``Transform(AnnotatedDatum)``: resize, crop, mirror, ``(pixel - mean) * scale``
        into ``out (C, H', W')``; returns the annotations of the result."""
        tp = self.tp
        c, h0, w0 = image.shape
        mirror = bool(tp.mirror) and bool(rng.integers(2))
        resized = image
        if self.resize is not None:
            modes = list(self.resize.interp_mode)
            interp = modes[int(rng.integers(len(modes)))] if modes else imt.LINEAR
            resized = apply_resize(image, self.resize, interp)
        _, h, w = resized.shape
        ch, cw = (self.crop_h, self.crop_w) if self.crop_h and self.crop_w else (h, w)
        if ch > h or cw > w:
            raise ProtonetError(f"{self.where}: the crop ({ch}x{cw}) is larger than the "
                                f"{h}x{w} image")
        if out.shape != (c, ch, cw):
            raise ProtonetError(f"{self.where}: an image became {c}x{ch}x{cw}, the batch is "
                                f"{'x'.join(map(str, out.shape))}; give transform_param a "
                                "resize_param (or crop_size) so that every image has one size")
        if self.crop_h and self.crop_w:
            if self.train:
                y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
        else:
            y = x = 0
        crop = np.array([_F(x) / _F(w), _F(y) / _F(h), _F(x + cw) / _F(w), _F(y + ch) / _F(h)],
                        _F)
        pixels = resized[:, y:y + ch, x:x + cw]
        mean = self.mean
        if mean is not None and np.ndim(mean) == 3:
            if mean.shape != (c, h, w):
                raise ProtonetError(f"{self.where}: the mean_file image is "
                                    f"{'x'.join(map(str, mean.shape))}, the (resized) images "
                                    f"{c}x{h}x{w}")
            mean = mean[:, y:y + ch, x:x + cw]
        elif mean is not None:
            if len(mean) not in (1, c):
                raise ProtonetError(f"{self.where}: give 1 mean_value or one per channel ({c}), "
                                    f"got {len(mean)}")
            mean = np.resize(np.asarray(mean, np.float32), c).astype(out.dtype)[:, None, None]
        if mean is not None:
            np.subtract(pixels, mean, out=out, dtype=out.dtype)
        else:
            out[...] = pixels
        if mirror:
            out[...] = out[..., ::-1]
        if tp.scale != 1:
            out *= out.dtype.type(tp.scale)
        resize = (self.resize, w0, h0) if self.resize is not None else None
        return transform_annotations(ann, crop, mirror, self.emit, resize)


def _uniform(rng, a: float, b: float) -> float:
    """``caffe_rng_uniform(1, a, b)`` in float."""
    return float(_F(_F(a) + (_F(b) - _F(a)) * _F(rng.random())))


def apply_resize(image, resize_param, interp: int) -> np.ndarray:
    """``ApplyResize``: WARP to height x width; FIT_SMALL_SIZE scales the short side to
    fit; FIT_LARGE_SIZE_AND_PAD scales the long side to fit and pads the rest
    (``pad_mode``, ``pad_value``)."""
    p = resize_param
    c, h, w = image.shape
    nh, nw = int(p.height), int(p.width)
    if p.resize_mode == WARP:
        return imt.resize(image, nh, nw, interp)
    orig_aspect, new_aspect = _F(w) / _F(h), _F(nw) / _F(nh)
    if p.resize_mode == FIT_SMALL_SIZE:
        if orig_aspect < new_aspect:
            return imt.resize(image, math.floor(_F(nw) / orig_aspect), nw, interp)
        return imt.resize(image, nh, math.floor(orig_aspect * _F(nh)), interp)
    if p.resize_mode != FIT_LARGE_SIZE_AND_PAD:
        raise ProtonetError(f"resize_param.resize_mode {p.resize_mode} is not WARP, "
                            "FIT_SMALL_SIZE or FIT_LARGE_SIZE_AND_PAD")
    values = list(p.pad_value) or [0.0]
    if len(values) not in (1, c):
        raise ProtonetError(f"resize_param: give 1 pad_value or one per channel ({c}), got "
                            f"{len(values)}")
    if orig_aspect > new_aspect:
        rh = math.floor(_F(nw) / orig_aspect)
        small = imt.resize(image, rh, nw, interp)
        top = math.floor((nh - rh) / 2.0)
        return imt.pad(small, top, nh - rh - top, 0, 0, p.pad_mode, values)
    rw = math.floor(orig_aspect * _F(nh))
    small = imt.resize(image, nh, rw, interp)
    left = math.floor((nw - rw) / 2.0)
    return imt.pad(small, 0, 0, left, nw - rw - left, p.pad_mode, values)


# -- reading and writing databases --------------------------------------------------------------
def parse_annotated_datum(value: bytes, what: str = "record"):
    from ..proto import caffe_pb2
    try:
        return caffe_pb2.AnnotatedDatum.FromString(value)
    except Exception:
        raise ProtonetError(f"{what} is not an AnnotatedDatum (write one with "
                            "protonet.data.annotated.write_annotated_lmdb, or the fork's "
                            "convert_annoset)") from None


def datum_image(datum, mode: str = "native", what: str = "record") -> np.ndarray:
    """The ``(C, H, W)`` uint8 pixels of an AnnotatedDatum's Datum (raw or encoded)."""
    from .lmdb_source import datum_to_array
    image = datum_to_array(datum, mode, what)
    if image.dtype != np.uint8:
        raise ProtonetError(f"{what}: AnnotatedData needs 8-bit pixels (data or an encoded "
                            "image), not float_data")
    return image


def make_annotated_datum(image, boxes=(), encode: str | None = "png", normalized: bool = False):
    """An ``AnnotatedDatum`` as ``convert_annoset --anno_type=detection`` writes it.

    ``image``: ``(C, H, W)`` uint8 BGR pixels, or an image file's path. ``boxes``: rows
    ``(label, xmin, ymin, xmax, ymax[, difficult])`` in pixels (as the fork's txt label
    files; divided by the image size) or, with ``normalized``, in [0, 1]. Boxes of one
    label form one group, groups in order of first appearance, instance ids counting up
    within a group. ``encode``: store the image encoded in this format (``"png"``,
    ``"jpg"``) or, with None, as raw pixels. The Datum's label is -1, the type BBOX."""
    from ..proto import caffe_pb2
    from .images import decode_image, encode_image
    raw = None
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            raw = f.read()
        ext = os.path.splitext(str(image))[1].lower().lstrip(".")
        pixels = decode_image(raw, "color", str(image))
        if not (encode and (ext == encode.lower() or {ext, encode.lower()} == {"jpg", "jpeg"})):
            raw = None
    else:
        pixels = np.asarray(image)
        if pixels.ndim != 3 or pixels.dtype != np.uint8:
            raise ProtonetError(f"an image is a (C, H, W) uint8 array, got "
                                f"{pixels.dtype} {list(pixels.shape)}")
    anno = caffe_pb2.AnnotatedDatum()
    anno.type = caffe_pb2.AnnotatedDatum.BBOX
    d = anno.datum
    d.channels, d.height, d.width = (int(v) for v in pixels.shape)
    d.label = -1
    if encode:
        d.data = raw if raw is not None else encode_image(pixels, encode)
        d.encoded = True
    else:
        d.data = np.ascontiguousarray(pixels).tobytes()
        d.encoded = False
    h, w = pixels.shape[1:]
    groups: dict = {}
    for row in boxes:
        label, x0, y0, x1, y1 = (float(v) for v in row[:5])
        difficult = bool(row[5]) if len(row) > 5 else False
        group = groups.get(int(label))
        if group is None:
            group = groups[int(label)] = anno.annotation_group.add()
            group.group_label = int(label)
        instance = group.annotation[-1].instance_id + 1 if len(group.annotation) else 0
        a = group.annotation.add()
        a.instance_id = instance
        sx, sy = (1.0, 1.0) if normalized else (float(w), float(h))
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = x0 / sx, y0 / sy, x1 / sx, y1 / sy
        a.bbox.difficult = difficult
    return anno


def write_annotated_lmdb(path: str, items, *, encode: str | None = "png",
                         normalized: bool = False, backend: str = "lmdb") -> int:
    """Write a new database of AnnotatedDatum records, as the fork's ``convert_annoset``.

    ``items``: ``(image, boxes)`` or ``(name, image, boxes)`` tuples (see
    :func:`make_annotated_datum`); keys are ``%08d`` of the item's position, then ``_name``
    when a name is given. Returns the number of records."""
    from .db import open_writer
    count = 0
    with open_writer(path, backend) as db:
        for i, item in enumerate(items):
            name, image, boxes = item if len(item) == 3 else (None, *item)
            key = f"{i:08d}" + (f"_{name}" if name else "")
            datum = make_annotated_datum(image, boxes, encode, normalized)
            db.put(key.encode(), datum.SerializeToString())
            count += 1
    return count
