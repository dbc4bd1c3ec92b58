"""The inference layers of the SSD fork of Caffe (weiliu89/caffe, branch ``ssd``).

- ``Normalize``: L2 normalization over channels (per position) or over the whole
  item, times a learned scale (one, or one per channel). ParseNet's and SSD's
  ``conv4_3_norm``.
- ``Permute``: reorders the axes (``permute_param.order``; unnamed axes follow in
  their order).
- ``PriorBox``: the default boxes of a feature map, ``(1, 2, H*W*num_priors*4)``:
  corners normalized by the image size, then their variances.
- ``DetectionOutput``: decodes location predictions against the priors, runs NMS
  per class and keeps the best boxes: ``(1, 1, N_det, 7)`` rows ``[image_id, label,
  score, xmin, ymin, xmax, ymax]``.

The box arithmetic is in :mod:`protonet.detection`. Where the fork and OpenCV's
re-implementation differ, these layers follow the fork; the docstrings say where.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import detection
from ..proto import caffe_pb2
from .base import Layer, register


# -- Normalize ------------------------------------------------------------------------------------
@register("Normalize")
class NormalizeLayer(Layer):
    """``y = s * x / sqrt(sum(x^2) + eps)``, the sum over the channels at each position
    (``across_spatial: false``) or over all of an item's values (``true``, the
    default). Bottom ``(N, C, ...)`` with at least 2 axes; top alike. Blob ``s``:
    shape ``()`` with ``channel_shared`` (the default), else ``(C,)``; its filler is
    ``scale_filler`` (constant 1 when unset).

    Backward is the exact gradient. The fork's bottom gradient multiplies by the
    scale after the normalization's projection, which is exact only when all
    channels share one scale value (as in its tests); with different per-channel
    scales protonet's gradient is the true one, not the fork's.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.norm_param
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(p.eps)
        self._check(bottom, top)
        channels = bottom[0].shape[1]
        if not self.blobs:
            filler = (p.scale_filler if p.HasField("scale_filler")
                      else caffe_pb2.FillerParameter(type="constant", value=1.0))
            self.add_param(() if self.channel_shared else (channels,), filler)
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            raise self.shape_error(
                f"the scale blob has {self.blobs[0].count} values, norm_param.channel_shared "
                f"{str(self.channel_shared).lower()} needs {want}", bottom)

    def _check(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise self.shape_error("bottom must have at least 2 axes (num, channels, ...)",
                                   bottom)
        if top[0] is bottom[0]:
            raise self.error("cannot run in place (backward needs the input)")

    def reshape(self, bottom, top):
        self._check(bottom, top)
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.shape_error(f"bottom has {bottom[0].shape[1]} channels, the scale was "
                                   f"made for {self.blobs[0].count}", bottom)
        top[0].reshape(bottom[0].shape)

    def _items(self, array: np.ndarray) -> np.ndarray:
        """``(N, C, S)`` view of an ``(N, C, ...)`` array."""
        return array.reshape(array.shape[0], array.shape[1], -1)

    def _scale(self) -> np.ndarray:
        s = self.blobs[0].data
        return s.reshape(()) if self.channel_shared else s.reshape(1, -1, 1)

    def _sum(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``(N, C, S)`` values over each normalization set, kept broadcastable."""
        if self.across_spatial:
            return values.sum(axis=(1, 2), keepdims=True)
        return values.sum(axis=1, keepdims=True)

    def forward(self, bottom, top):
        x = self._items(bottom[0].data)
        self.norm = np.sqrt(self._sum(x * x) + self.eps)      # (N, 1, 1) or (N, 1, S)
        y = self._items(top[0].data)
        np.divide(x, self.norm, out=y)
        y *= self._scale()

    def backward(self, top, propagate_down, bottom):
        x = self._items(bottom[0].data)
        dy = self._items(top[0].diff)
        norm = getattr(self, "norm", None)
        if norm is None or norm.shape[0] != x.shape[0]:
            norm = self.norm = np.sqrt(self._sum(x * x) + self.eps)
        if self.param_propagate_down[0]:
            contribution = dy * (x / norm)
            if self.channel_shared:
                self.blobs[0].diff[...] += contribution.sum()
            else:
                self.blobs[0].diff[...] += contribution.sum(axis=(0, 2))
        if propagate_down[0]:
            g = dy * self._scale()
            dx = self._items(bottom[0].diff)
            np.subtract(g, x * (self._sum(x * g) / (norm * norm)), out=dx)
            dx /= norm

    def macc(self, bottom, top):
        return 2 * int(bottom[0].count)


# -- Permute --------------------------------------------------------------------------------------
@register("Permute")
class PermuteLayer(Layer):
    """Top axis ``i`` is bottom axis ``order[i]``; ``permute_param.order`` names the
    first axes, the rest follow in their original order. ``order: 0 2 3 1`` turns
    NCHW into NHWC. Backward permutes the gradient back."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        n = bottom[0].num_axes
        order: list[int] = []
        for axis in self.param.permute_param.order:
            if axis >= n:
                raise self.shape_error(f"permute_param.order: axis {axis} is out of range for "
                                       f"a bottom of {n} axes", bottom)
            if axis in order:
                raise self.error(f"permute_param.order: axis {axis} is given twice "
                                 f"(order {list(self.param.permute_param.order)})")
            order.append(int(axis))
        self.order = order + [a for a in range(n) if a not in order]
        self.inverse = list(np.argsort(self.order))
        if top[0] is bottom[0] and self.order != list(range(n)):
            raise self.error("cannot permute in place")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != len(self.order):
            raise self.shape_error(f"was set up for {len(self.order)} axes", bottom)
        top[0].reshape(tuple(shape[a] for a in self.order))

    def forward(self, bottom, top):
        if top[0] is not bottom[0]:
            np.copyto(top[0].data, bottom[0].data.transpose(self.order))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and top[0] is not bottom[0]:
            np.copyto(bottom[0].diff, top[0].diff.transpose(self.inverse))


# -- PriorBox -------------------------------------------------------------------------------------
@register("PriorBox")
class PriorBoxLayer(Layer):
    """Prior (default) boxes for the feature map ``bottom[0]`` ``(N, C, H, W)`` of the
    image ``bottom[1]`` (``(N, C, img_h, img_w)``; optional when ``img_size`` or
    ``img_h``/``img_w`` is given). Top ``(1, 2, H*W*num_priors*4)``: channel 0 holds
    each prior's corners divided by the image size (clamped into [0, 1] with
    ``clip``), in the order cell row, cell column, prior; channel 1 the 4 variances of
    each prior (``variance``: one value for all four, or four; default 0.1).

    Per cell, centred at ``((w + offset) * step_w, (h + offset) * step_h)`` pixels
    (``step`` defaults to image size / map size): for each ``min_size`` a square of
    that side, a square of ``sqrt(min_size * max_size)`` when ``max_size`` is given,
    and one box per further aspect ratio (``aspect_ratio``, and with ``flip`` their
    reciprocals). As in the fork, sizes are truncated to integers.

    OpenCV's extensions are honoured too: ``width``/``height`` (explicit box sizes in
    pixels, instead of ``min_size``/``max_size``/``aspect_ratio``) and
    ``offset_w``/``offset_h`` (several centres per cell: each box is repeated for each
    offset pair). OpenCV itself does not truncate sizes, reads the image size only
    from the second bottom, and clips by default; the fork's default is no clipping.
    No gradient flows: backward leaves zeros.
    """

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.prior_box_param
        has = p.HasField
        widths, heights = self._sizes(p)
        # offsets
        if len(p.offset_w) or len(p.offset_h):
            if has("offset"):
                raise self.error("prior_box_param: give either offset or offset_w/offset_h, "
                                 "not both")
            if len(p.offset_w) != len(p.offset_h):
                raise self.error(f"prior_box_param.offset_w and offset_h must be as many "
                                 f"({len(p.offset_w)} vs {len(p.offset_h)})")
            self.offsets_x, self.offsets_y = list(p.offset_w), list(p.offset_h)
        else:
            self.offsets_x = self.offsets_y = [float(p.offset)]
        self.widths, self.heights = widths, heights
        self.num_priors = len(widths) * len(self.offsets_x)
        # variances
        variance = list(p.variance)
        if len(variance) > 1 and len(variance) != 4:
            raise self.error(f"prior_box_param.variance: give one value or four, got "
                             f"{len(variance)}")
        if any(v <= 0 for v in variance):
            raise self.error(f"prior_box_param.variance must be positive, got {variance}")
        self.variance = variance or [0.1]
        # image size and step
        self.img_h, self.img_w = self._pair(p, "img_size", "img_h", "img_w", int)
        self.step_h, self.step_w = self._pair(p, "step", "step_h", "step_w", float)
        self.clip = bool(p.clip)
        self._cache = None

    def _sizes(self, p):
        if len(p.width) or len(p.height):
            if len(p.width) != len(p.height):
                raise self.error(f"prior_box_param.width and height must be as many "
                                 f"({len(p.width)} vs {len(p.height)})")
            if len(p.min_size) or len(p.max_size) or len(p.aspect_ratio):
                raise self.error("prior_box_param.width/height (explicit sizes) exclude "
                                 "min_size, max_size and aspect_ratio")
            if any(v <= 0 for v in list(p.width) + list(p.height)):
                raise self.error("prior_box_param.width and height must be positive")
            return np.array(p.width, np.float64), np.array(p.height, np.float64)
        if not len(p.min_size):
            raise self.error("prior_box_param.min_size is required (at least one)")
        for size in p.min_size:
            if size <= 0:
                raise self.error(f"prior_box_param.min_size must be positive, got {size:g}")
        if len(p.max_size):
            if len(p.max_size) != len(p.min_size):
                raise self.error(f"prior_box_param.max_size: give one per min_size "
                                 f"({len(p.min_size)}), got {len(p.max_size)}")
            for low, high in zip(p.min_size, p.max_size):
                if high <= low:
                    raise self.error(f"prior_box_param.max_size {high:g} must be greater than "
                                     f"min_size {low:g}")
        return detection.prior_sizes(list(p.min_size), list(p.max_size),
                                     list(p.aspect_ratio), bool(p.flip))

    def _pair(self, p, both: str, h: str, w: str, kind):
        """``(h, w)`` from ``both`` or the ``h``/``w`` fields; (0, 0) when unset."""
        has = p.HasField
        if has(h) or has(w):
            if has(both):
                raise self.error(f"prior_box_param: give either {both} or {h}/{w}, not both")
            values = (kind(getattr(p, h)), kind(getattr(p, w)))
            if min(values) <= 0:
                raise self.error(f"prior_box_param.{h} and {w} must both be positive, got "
                                 f"{values[0]:g} and {values[1]:g}")
            return values
        if has(both):
            value = kind(getattr(p, both))
            if value <= 0:
                raise self.error(f"prior_box_param.{both} must be positive, got {value:g}")
            return value, value
        return 0, 0

    def reshape(self, bottom, top):
        if bottom[0].num_axes > 4 or (len(bottom) > 1 and bottom[1].num_axes > 4):
            raise self.shape_error("bottoms must have at most 4 axes (N, C, H, W)", bottom)
        if not (self.img_h and self.img_w) and len(bottom) < 2:
            raise self.shape_error("needs the image as a second bottom, or prior_box_param."
                                   "img_size (or img_h and img_w)", bottom)
        top[0].reshape((1, 2, bottom[0].height * bottom[0].width * self.num_priors * 4))

    def forward(self, bottom, top):
        layer_h, layer_w = bottom[0].height, bottom[0].width
        if self.img_h and self.img_w:
            img_h, img_w = self.img_h, self.img_w
        else:
            img_h, img_w = bottom[1].height, bottom[1].width
        if self.step_h and self.step_w:
            step_h, step_w = self.step_h, self.step_w
        else:
            step_h, step_w = img_h / layer_h, img_w / layer_w
        key = (layer_h, layer_w, img_h, img_w, step_h, step_w)
        if self._cache is None or self._cache[0] != key:
            boxes = detection.prior_boxes(layer_h, layer_w, img_h, img_w, step_h, step_w,
                                          self.widths, self.heights, self.offsets_x,
                                          self.offsets_y, self.clip)
            variances = np.broadcast_to(np.resize(np.array(self.variance), 4), boxes.shape)
            self._cache = (key, np.stack([boxes.reshape(-1), variances.reshape(-1)]))
        top[0].data[0] = self._cache[1]

    def backward(self, top, propagate_down, bottom):
        for down, blob in zip(propagate_down, bottom):
            if down:
                blob.diff[...] = 0


# -- DetectionOutput ------------------------------------------------------------------------------
@register("DetectionOutput")
class DetectionOutputLayer(Layer):
    """Detections from SSD's heads. Bottoms: location predictions ``(N, P*L*4)``
    (``L`` = 1 with ``share_location``, else ``num_classes``), class confidences
    ``(N, P*num_classes)`` (already soft-maxed), priors ``(1, 2, P*4)`` (a 4th bottom,
    the image for the fork's visualization, is accepted and unused).

    Each image's boxes are decoded (``code_type``, ``variance_encoded_in_target``);
    every class but ``background_label_id`` keeps the boxes scoring above
    ``confidence_threshold`` (all when unset), at most ``nms_param.top_k`` of them,
    through NMS (``nms_threshold``, adaptive ``eta``); then, if more than
    ``keep_top_k`` survive, only the ``keep_top_k`` best. Top ``(1, 1, N_det, 7)``:
    rows ``[image_id, label, score, xmin, ymin, xmax, ymax]`` by image, then class,
    then descending score. With no detection at all the top is ``(1, 1, N, 7)``, one
    row ``[i, -1, -1, -1, -1, -1, -1]`` per image, as in the fork.

    OpenCV differs: its top always has ``keep_top_k * N`` rows, zero-padded (all
    zeros with no detection), sorted by score across classes; it reads CORNER_SIZE as
    CORNER, ignores ``eta``, and defaults ``confidence_threshold`` to 0.
    ``save_output_param`` and ``visualize`` (result files, drawings) are ignored with
    a warning. ``share_location`` with ``background_label_id: -1`` works here (the
    fork and OpenCV both fail on it: they skip decoding the shared boxes).
    """

    min_num_bottom = 3
    max_num_bottom = 4
    exact_num_top = 1
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.detection_output_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error("detection_output_param.num_classes is required (a positive "
                             "number of classes, background included)")
        self.num_classes = int(p.num_classes)
        self.share_location = bool(p.share_location)
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.code_type = int(p.code_type)
        if self.code_type not in detection.CODE_TYPES:
            raise self.error(f"detection_output_param.code_type {self.code_type} is unknown")
        self.variance_encoded = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = (float(p.confidence_threshold)
                                     if p.HasField("confidence_threshold") else -np.inf)
        nms = p.nms_param
        self.nms_threshold = float(nms.nms_threshold)
        if self.nms_threshold < 0:
            raise self.error(f"detection_output_param.nms_param.nms_threshold must be "
                             f"non-negative, got {self.nms_threshold:g}")
        self.eta = float(nms.eta)
        if not 0 < self.eta <= 1:
            raise self.error(f"detection_output_param.nms_param.eta must be in (0, 1], "
                             f"got {self.eta:g}")
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        ignored = [name for name, used in (
            ("save_output_param", p.save_output_param.output_directory != ""),
            ("visualize", p.visualize)) if used]
        if ignored:
            from ..io.prototxt import ProtonetWarning
            warnings.warn(f"layer '{self.name}': detection_output_param {' and '.join(ignored)} "
                          "ignored (protonet writes no result files and draws nothing)",
                          ProtonetWarning, stacklevel=3)

    def reshape(self, bottom, top):
        loc, conf, prior = bottom[:3]
        if loc.num_axes < 1 or conf.num_axes < 1 or loc.shape[0] != conf.shape[0]:
            raise self.shape_error("location and confidence predictions (bottoms 0 and 1) "
                                   "must have the same number of images", bottom)
        if prior.num_axes < 3 or prior.num_axes > 4:
            raise self.shape_error("priors (bottom 2) must be 1 x 2 x P*4", bottom)
        self.num_priors = prior.shape[2] // 4
        channels = prior.shape[1]
        if channels < (1 if self.variance_encoded else 2):
            raise self.shape_error("priors (bottom 2) need a second channel of variances",
                                   bottom)
        n = max(loc.shape[0], 1)
        want_loc = self.num_priors * self.num_loc_classes * 4
        if loc.count // n != want_loc:
            raise self.shape_error(
                f"location predictions (bottom 0) must hold {want_loc} values per image: "
                f"{self.num_priors} priors x {self.num_loc_classes} x 4", bottom)
        want_conf = self.num_priors * self.num_classes
        if conf.count // n != want_conf:
            raise self.shape_error(
                f"confidences (bottom 1) must hold {want_conf} values per image: "
                f"{self.num_priors} priors x num_classes {self.num_classes}", bottom)
        top[0].reshape((1, 1, 1, 7))   # the fork's placeholder; forward sets the real count

    def decoded_boxes(self, bottom) -> np.ndarray:
        """Every image's decoded boxes, ``(N, P, L, 4)``."""
        n, count = bottom[0].shape[0], self.num_priors
        prior = bottom[2].data.reshape(bottom[2].shape[0], bottom[2].shape[1], -1)[0]
        priors = prior[0, :count * 4].reshape(count, 4)
        variances = (prior[1, :count * 4].reshape(count, 4) if prior.shape[0] > 1
                     else np.ones((count, 4)))
        if self.code_type != detection.CORNER:
            sizes = np.stack([priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]])
            if count and sizes.min() <= 0:
                bad = int(np.argmin(sizes.min(axis=0)))
                raise self.error(f"prior {bad} has no positive width and height "
                                 f"({priors[bad].tolist()}); code_type "
                                 f"{detection.CODE_TYPES[self.code_type]} needs them")
        loc = bottom[0].data.reshape(n, count, self.num_loc_classes, 4)
        return detection.decode_boxes(priors[None, :, None], variances[None, :, None], loc,
                                      self.code_type, self.variance_encoded)

    def forward(self, bottom, top):
        n = bottom[0].shape[0]
        boxes = self.decoded_boxes(bottom)
        conf = bottom[1].data.reshape(n, self.num_priors, self.num_classes)
        rows = []
        for i in range(n):        # NMS is sequential per image and class
            image_boxes = boxes[i, :, 0] if self.share_location else boxes[i]
            labels, idx = detection.detect(
                image_boxes, conf[i], self.nms_threshold, self.confidence_threshold,
                self.top_k, self.eta, self.keep_top_k, self.background)
            kept = image_boxes[idx] if self.share_location else image_boxes[idx, labels]
            block = np.empty((len(idx), 7))
            block[:, 0], block[:, 1], block[:, 2] = i, labels, conf[i, idx, labels]
            block[:, 3:] = kept
            rows.append(block)
        rows = np.concatenate(rows) if rows else np.zeros((0, 7))
        if not len(rows):
            rows = np.full((n, 7), -1.0)
            rows[:, 0] = np.arange(n)
        top[0].reshape((1, 1, len(rows), 7))
        top[0].data[0, 0] = rows
