"""The R-CNN family: the layers of Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn and
py-faster-rcnn) and R-FCN (daijifeng001/caffe-rfcn), with the forks' exact semantics.

- ``ROIPooling`` -- max pooling of each region ``[batch, x1, y1, x2, y2]`` onto a fixed grid.
- ``PSROIPooling`` -- R-FCN's position-sensitive average pooling.
- ``SmoothL1Loss`` -- Fast R-CNN's box-regression loss, with optional inside/outside weights.
- ``Proposal`` -- Faster R-CNN's region proposal step (py-faster-rcnn's
  ``rpn/proposal_layer.py``), with OpenCV's ``proposal_param``. A ``type: "Python"`` layer
  naming ``rpn.proposal_layer.ProposalLayer`` runs this layer too, with its ``param_str``
  (see :func:`protonet.layers.python_layer.native_layer_type`).

The array work is in :mod:`protonet.roi_pooling` and :mod:`protonet.rcnn_boxes`.
"""
from __future__ import annotations

import ast

import numpy as np

from .. import rcnn_boxes as boxes
from .. import roi_pooling as pool
from .base import TRAIN, Layer, elementwise_macc, register


def _check_rois(layer: Layer, bottom) -> int:
    """Bottom 1 holds ``(R, 5)`` regions (any shape with 5 values per item); returns R."""
    rois = bottom[1]
    if rois.num_axes < 1 or rois.count_range(1) != 5:
        raise layer.shape_error("the regions (bottom 1) must be R x 5 rows "
                                "[batch_index, x1, y1, x2, y2]", bottom)
    if bottom[0].num_axes != 4:
        raise layer.shape_error("the features (bottom 0) must be N x C x H x W", bottom)
    return rois.shape[0]


def _batch(layer: Layer, bottom) -> np.ndarray:
    rois = bottom[1].data.reshape(-1, 5)
    batch = pool.batch_indices(rois, bottom[0].shape[0])
    if batch is None:
        bad = rois[:, 0][(np.trunc(rois[:, 0]) < 0) | (np.trunc(rois[:, 0]) >= bottom[0].shape[0])]
        raise layer.error(f"region batch index {bad[0]:g} is outside the "
                          f"{bottom[0].shape[0]} image(s) of the features (bottom 0)")
    return batch


class _RegionPooling(Layer):
    """What ROIPooling and PSROIPooling share: features and regions in, one top; the
    regions get no gradient (zeros), nor may backward be forced to them."""

    exact_num_bottom = 2
    exact_num_top = 1

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self._features_gradient(top, bottom)
        if propagate_down[1]:
            bottom[1].diff[...] = 0

    def _features_gradient(self, top, bottom) -> np.ndarray:
        raise NotImplementedError

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def macc(self, bottom, top):
        return int(top[0].count)


@register("ROIPooling")
class ROIPoolingLayer(_RegionPooling):
    """Fast R-CNN's ROIPooling (``roi_pooling_param``: ``pooled_h``, ``pooled_w``,
    ``spatial_scale``).

    bottoms: features ``(N, C, H, W)``, regions ``(R, 5)`` in image pixels; top ``(R, C,
    pooled_h, pooled_w)``. A region's corners are rounded to feature cells
    (``round(v * spatial_scale)``), its bins are ``[floor(p * s), ceil((p+1) * s))`` with
    ``s = size / pooled`` (so neighbouring bins may share a row), clipped to the map; an
    empty bin gives 0. Backward adds each output's gradient to its argmax (the first maximum
    in row-major order); the regions get no gradient.
    """

    def layer_setup(self, bottom, top):
        p = self.param.roi_pooling_param
        for field in ("pooled_h", "pooled_w"):
            if getattr(p, field) <= 0:
                raise self.error(f"roi_pooling_param.{field} must be > 0, got {getattr(p, field)}")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.spatial_scale = float(p.spatial_scale)

    def reshape(self, bottom, top):
        r = _check_rois(self, bottom)
        top[0].reshape((r, bottom[0].shape[1]) + self.pooled)

    def forward(self, bottom, top):
        self.batch = _batch(self, bottom)
        out, self.argmax = pool.roi_max_pool(bottom[0].data, bottom[1].data.reshape(-1, 5),
                                             self.batch, *self.pooled, self.spatial_scale)
        top[0].data[...] = out

    def _features_gradient(self, top, bottom):
        return pool.roi_max_pool_backward(top[0].diff, self.argmax,
                                          bottom[1].data.reshape(-1, 5), self.batch,
                                          bottom[0].shape, self.spatial_scale, self.dtype)


@register("PSROIPooling")
class PSROIPoolingLayer(_RegionPooling):
    """R-FCN's PSROIPooling (``psroi_pooling_param``: ``spatial_scale``, ``output_dim``,
    ``group_size``).

    bottoms: score maps ``(N, output_dim * g * g, H, W)`` with ``g = group_size``, regions
    ``(R, 5)``; top ``(R, output_dim, g, g)``. Bin ``(i, j)`` of output channel ``d`` is the
    mean of input channel ``(d*g + i)*g + j`` over the bin. The region spans
    ``round(x1) * scale`` to ``(round(x2) + 1) * scale`` (not rounded to cells), at least 0.1;
    bin edges are floored/ceiled; an empty bin gives 0. Backward spreads each gradient
    evenly over its bin; the regions get zeros.
    """

    def layer_setup(self, bottom, top):
        p = self.param.psroi_pooling_param
        for field in ("output_dim", "group_size"):
            if getattr(p, field) <= 0:
                raise self.error(f"psroi_pooling_param.{field} must be > 0, "
                                 f"got {getattr(p, field)}")
        self.output_dim, self.group = int(p.output_dim), int(p.group_size)
        self.spatial_scale = float(p.spatial_scale)

    def reshape(self, bottom, top):
        r = _check_rois(self, bottom)
        want = self.output_dim * self.group * self.group
        if bottom[0].shape[1] != want:
            raise self.shape_error(
                f"the score maps (bottom 0) must have psroi_pooling_param.output_dim x "
                f"group_size^2 = {self.output_dim} x {self.group}^2 = {want} channels", bottom)
        top[0].reshape((r, self.output_dim, self.group, self.group))

    def forward(self, bottom, top):
        self.batch = _batch(self, bottom)
        top[0].data[...] = pool.psroi_avg_pool(bottom[0].data, bottom[1].data.reshape(-1, 5),
                                               self.batch, self.output_dim, self.group,
                                               self.spatial_scale)

    def _features_gradient(self, top, bottom):
        return pool.psroi_avg_pool_backward(top[0].diff, bottom[1].data.reshape(-1, 5),
                                            self.batch, bottom[0].shape, self.group,
                                            self.spatial_scale, self.dtype)


def _legacy_dims(blob) -> tuple | None:
    """Caffe's (channels, height, width) of a blob of at most 4 axes, else None."""
    if blob.num_axes > 4:
        return None
    shape = tuple(blob.shape) + (1,) * (4 - blob.num_axes)
    return shape[1:]


@register("SmoothL1Loss")
class SmoothL1LossLayer(Layer):
    """Fast R-CNN's SmoothL1Loss (``smooth_l1_loss_param.sigma``, default 1).

    bottoms: predictions ``x``, targets ``t`` and optionally inside and outside weights
    ``w_in``, ``w_out`` (both or neither), all with the same channels/height/width and first
    dimension N. With ``d = w_in * (x - t)`` and ``s2 = sigma^2``::

        f(d) = 0.5 * s2 * d^2   if |d| < 1 / s2,   |d| - 0.5 / s2   otherwise
        loss = sum(w_out * f(d)) / N          (N = x.shape[0], the fork's num)

    Backward reaches ``x`` and ``t`` (``+-`` ``f'(d) * w_in * w_out / N`` times the loss
    weight, ``f'(d) = s2 * d`` or ``sign(d)``); the weights get no gradient.
    """

    macc = elementwise_macc

    min_num_bottom = 2
    max_num_bottom = 4
    exact_num_top = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        t = self.dtype.type
        sigma = t(self.param.smooth_l1_loss_param.sigma)
        self.sigma2 = float(sigma * sigma)  # the fork keeps sigma^2 in the net's precision
        if self.sigma2 == 0:
            raise self.error("smooth_l1_loss_param.sigma must not be 0")
        self.has_weights = len(bottom) >= 3
        if len(bottom) == 3:
            raise self.error("with weights, give both the inside and the outside weights "
                             "(4 bottoms), got 3 bottoms")

    def reshape(self, bottom, top):
        if bottom[0].num_axes == 0 or any(
                b.num_axes == 0 or b.shape[0] != bottom[0].shape[0] for b in bottom[1:2]):
            raise self.shape_error("the two bottoms must have the same first dimension", bottom)
        dims = _legacy_dims(bottom[0])
        if dims is None or any(_legacy_dims(b) != dims for b in bottom[1:]):
            raise self.shape_error("every bottom must have the channels, height and width "
                                   "of the predictions (bottom 0)", bottom)
        top[0].reshape(())

    def forward(self, bottom, top):
        x, target = bottom[0].data, bottom[1].data.reshape(bottom[0].shape)
        d = x.astype(np.float64) - target
        if self.has_weights:
            d *= bottom[2].data.reshape(d.shape)
        self.d = d
        a = np.abs(d)
        s2 = self.sigma2
        err = np.where(a < 1.0 / s2, 0.5 * s2 * d * d, a - 0.5 / s2)
        if self.has_weights:
            err *= bottom[3].data.reshape(d.shape)
        top[0].data[...] = err.sum() / bottom[0].shape[0]

    def backward(self, top, propagate_down, bottom):
        s2 = self.sigma2
        grad = np.where(np.abs(self.d) < 1.0 / s2, s2 * self.d, np.sign(self.d))
        if self.has_weights:
            grad = grad * bottom[2].data.reshape(grad.shape) * bottom[3].data.reshape(grad.shape)
        loss_weight = float(top[0].diff.flat[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * loss_weight / bottom[i].shape[0]
                bottom[i].diff[...] = (alpha * grad).reshape(bottom[i].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2


# -- Proposal ---------------------------------------------------------------------------------
#: py-faster-rcnn's ``cfg.TEST`` / ``cfg.TRAIN`` RPN settings (fast_rcnn/config.py):
#: pre-NMS top N, post-NMS top N, NMS threshold, minimum size at the original image scale
RPN_CONFIG = {"TEST": (6000, 300, 0.7, 16), "TRAIN": (12000, 2000, 0.7, 16)}
#: the ``param_str`` keys of py-faster-rcnn's ProposalLayer (and of forks that add ratios)
PARAM_STR_KEYS = ("feat_stride", "scales", "ratios", "base_size")


def parse_param_str(text: str) -> dict:
    """A Python layer's ``param_str`` written as py-faster-rcnn writes it, a YAML mapping
    (``"'feat_stride': 16"``), read without YAML or ``eval``: :func:`ast.literal_eval` of the
    text wrapped in braces, else of one ``key: value`` per line (a ``!!python/tuple`` tag
    dropped). Raises ValueError if it is neither."""
    text = text.strip()
    if not text:
        return {}
    try:
        value = ast.literal_eval(text if text.startswith("{") else "{" + text + "}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            key, colon, rest = line.partition(":")
            if not colon:
                raise ValueError(f"cannot read {line.strip()!r} as 'key: value'")
            key = key.strip().strip("'\"")
            rest = rest.strip()
            if rest.startswith("!!python/tuple"):
                rest = rest[len("!!python/tuple"):].strip()
            try:
                value[key] = ast.literal_eval(rest)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise ValueError(f"cannot read the value of {key!r}: {rest!r}") from None
    if not isinstance(value, dict):
        raise ValueError("it is not a mapping of keys to values")
    return value


@register("Proposal")
class ProposalLayer(Layer):
    """Faster R-CNN's region proposals at test time (py-faster-rcnn's ProposalLayer).

    bottoms: ``rpn_cls_prob_reshape (1, 2A, H, W)`` (background probabilities, then
    foreground), ``rpn_bbox_pred (1, 4A, H, W)``, ``im_info`` ``[height, width, scale]``;
    tops: ``rois (R, 5)`` rows ``[0, x1, y1, x2, y2]`` and optionally ``scores (R, 1)``.
    ``A = len(ratio) * len(scale)`` anchors per cell of stride ``feat_stride``, then:
    anchors moved by the deltas, clipped to the image, boxes narrower or lower than
    ``min_size * scale`` dropped, the rest sorted by foreground probability (ties: the
    earlier anchor first), the best ``pre_nms_topn`` kept, NMS at ``nms_thresh``, the best
    ``post_nms_topn`` kept (a top-N of 0 keeps all). ``R`` varies per forward; before the
    first one the tops are shaped for ``post_nms_topn`` rows, as OpenCV's.

    Parameters: ``proposal_param`` (OpenCV's; ratio/scale default to py-faster-rcnn's
    0.5, 1, 2 and 8, 16, 32), or, for py-faster-rcnn's Python layer, ``param_str`` keys
    ``feat_stride`` (required), ``scales``, ``ratios``, ``base_size`` with the top-N and
    NMS settings of py-faster-rcnn's config for the layer's phase (TEST: 6000, 300, 0.7,
    min size 16; TRAIN: 12000, 2000).
    """

    exact_num_bottom = 3
    min_num_top = 1
    max_num_top = 2
    has_backward = False

    def layer_setup(self, bottom, top):
        if self.param.type == "Python":
            self._from_param_str()
        else:
            p = self.param.proposal_param
            self.feat_stride, self.base_size = float(p.feat_stride), float(p.base_size)
            self.ratios = tuple(p.ratio) or boxes.DEFAULT_RATIOS
            self.scales = tuple(p.scale) or boxes.DEFAULT_SCALES
            self.pre_nms, self.post_nms = int(p.pre_nms_topn), int(p.post_nms_topn)
            self.nms_thresh, self.min_size = float(p.nms_thresh), float(p.min_size)
        if self.feat_stride <= 0 or self.base_size <= 0:
            raise self.error("feat_stride and base_size must be > 0")
        if any(r <= 0 for r in self.ratios) or any(s <= 0 for s in self.scales):
            raise self.error("anchor ratios and scales must be > 0")
        self.anchors = boxes.generate_anchors(self.base_size, self.ratios, self.scales)

    def _from_param_str(self):
        """py-faster-rcnn's ``python_param.param_str`` and config (see the class docstring)."""
        text = self.param.python_param.param_str
        try:
            cfg = parse_param_str(text)
        except ValueError as e:
            raise self.error(f"python_param.param_str {text!r} cannot be read: {e}") from None
        unknown = sorted(set(cfg) - set(PARAM_STR_KEYS))
        if unknown:
            raise self.error(f"python_param.param_str has key(s) {', '.join(map(repr, unknown))} "
                             f"that py-faster-rcnn's ProposalLayer does not take "
                             f"(it takes {', '.join(PARAM_STR_KEYS)})")
        if "feat_stride" not in cfg:
            raise self.error("python_param.param_str must give 'feat_stride' "
                             "(e.g. param_str: \"'feat_stride': 16\")")
        try:
            self.feat_stride = float(cfg["feat_stride"])
            self.base_size = float(cfg.get("base_size", 16))
            self.ratios = tuple(float(v) for v in np.ravel(cfg.get("ratios", boxes.DEFAULT_RATIOS)))
            self.scales = tuple(float(v) for v in np.ravel(cfg.get("scales", boxes.DEFAULT_SCALES)))
        except (TypeError, ValueError):
            raise self.error(f"python_param.param_str {text!r}: feat_stride and base_size must "
                             "be numbers, scales and ratios numbers or lists of them") from None
        key = "TRAIN" if self.phase == TRAIN else "TEST"
        self.pre_nms, self.post_nms, self.nms_thresh, self.min_size = RPN_CONFIG[key]

    def reshape(self, bottom, top):
        a = len(self.anchors)
        scores, deltas, info = bottom
        if scores.num_axes != 4 or scores.shape[1] != 2 * a:
            raise self.shape_error(f"the probabilities (bottom 0) must be 1 x {2 * a} x H x W "
                                   f"(background, then foreground, for {a} anchors)", bottom)
        if scores.shape[0] != 1:
            raise self.shape_error("only single-image batches are supported (as in "
                                   "py-faster-rcnn and OpenCV)", bottom)
        h, w = scores.shape[2:]
        if deltas.shape != (1, 4 * a, h, w):
            raise self.shape_error(f"the box deltas (bottom 1) must be 1 x {4 * a} x {h} x {w}",
                                   bottom)
        if info.count < 3:
            raise self.shape_error("im_info (bottom 2) must hold [height, width, scale]", bottom)
        most = h * w * a
        for n in (self.pre_nms, self.post_nms):
            if n > 0:
                most = min(most, n)
        top[0].reshape((most, 5))
        if len(top) > 1:
            top[1].reshape((most, 1))

    def forward(self, bottom, top):
        a = len(self.anchors)
        scores = bottom[0].data[0, a:]                         # (A, H, W) foreground
        deltas = bottom[1].data[0]                             # (4A, H, W)
        info = bottom[2].data.reshape(-1)
        h, w = scores.shape[1:]
        anchors = boxes.shifted_anchors(self.anchors, h, w, self.feat_stride)
        # predictions in (y, x, anchor) order, the anchors' order
        d = deltas.transpose(1, 2, 0).reshape(-1, 4)
        s = scores.transpose(1, 2, 0).reshape(-1)
        proposals = boxes.clip_boxes(boxes.bbox_transform_inv(anchors, d), info[0], info[1])
        keep = boxes.min_size_keep(proposals, info.dtype.type(self.min_size) * info[2])
        proposals, s = proposals[keep], s[keep]
        order = np.argsort(-s, kind="stable")
        if self.pre_nms > 0:
            order = order[:self.pre_nms]
        proposals, s = proposals[order], s[order]
        keep = boxes.nms(proposals, self.nms_thresh,
                         limit=self.post_nms if self.post_nms > 0 else None)
        r = len(keep)
        top[0].reshape((r, 5))
        top[0].data[:, 0] = 0
        top[0].data[:, 1:] = proposals[keep]
        if len(top) > 1:
            top[1].reshape((r, 1))
            top[1].data[:, 0] = s[keep]
