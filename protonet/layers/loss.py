"""Loss and scoring layers, after Caffe's ``*_loss_layer.cpp`` and ``accuracy_layer.cpp``.

Scores are (outer, C, inner) around the class ``axis`` (e.g. (N, C) or (N, C, H, W));
labels hold outer*inner class indices stored as floats (cast to int toward zero).
Every loss writes a scalar top of shape () and scales its gradient by the loss
weight the net writes into ``top[0].diff``. Layers without a class axis (Euclidean,
Hinge, MultinomialLogistic, Contrastive) divide by N = ``bottom[0].shape[0]``.
"""
from __future__ import annotations

import numpy as np

from ..blob import Blob
from .base import Layer, register, elementwise_macc
from .common import canonical_axis, softmax
from .neuron import caffe_sigmoid

FLT_MIN = float(np.finfo(np.float32).tiny)  # Caffe clamps probabilities here: -log -> 87.3365
KLOG_THRESHOLD = 1e-20  # kLOG_THRESHOLD: the clamp of MultinomialLogistic and Infogain losses

# LossParameter.NormalizationMode
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


def normalization_mode(layer: Layer, default: int = VALID) -> int:
    """The layer's ``loss_param`` normalization: ``normalization`` if given, else the
    legacy ``normalize`` (true -> VALID, false -> BATCH_SIZE), else ``default``."""
    lp = layer.param.loss_param
    if lp.HasField("normalization"):
        return int(lp.normalization)
    if lp.HasField("normalize"):
        return VALID if lp.normalize else BATCH_SIZE
    return default


def normalizer(mode: int, outer: int, inner: int, valid_count: int) -> float:
    """Caffe's ``get_normalizer``: what the summed loss is divided by, floored at 1 so a
    batch whose labels are all ignored gives 0, not NaN."""
    n = {FULL: outer * inner, VALID: valid_count, BATCH_SIZE: outer, NONE: 1}[mode]
    return float(max(1, n))


def _ignore_label(layer: Layer):
    lp = layer.param.loss_param
    return lp.ignore_label if lp.HasField("ignore_label") else None


def _check_first_dim(layer: Layer, bottom: list[Blob]):
    """LossLayer::Reshape: data and labels share their first dimension."""
    if bottom[0].num_axes == 0 or bottom[1].num_axes == 0 \
            or bottom[0].shape[0] != bottom[1].shape[0]:
        raise layer.shape_error("the two bottoms must have the same first dimension", bottom)


def _refuse_label_gradient(layer: Layer, propagate_down, index: int = 1, what: str = "label"):
    if len(propagate_down) > index and propagate_down[index]:
        raise layer.error(f"cannot backpropagate to the {what} input (bottom {index})")


def _int_labels(label: Blob, outer: int, inner: int) -> np.ndarray:
    """Labels as (outer, inner) integers, truncated toward zero like Caffe's static_cast."""
    return label.data.reshape(outer, inner).astype(np.int64)


def _check_label_count(layer: Layer, bottom: list[Blob], outer: int, inner: int, axis: int):
    if bottom[1].count != outer * inner:
        raise layer.shape_error(
            f"the number of labels ({bottom[1].count}) must equal the number of predictions "
            f"({outer * inner}): for scores (N, C, H, W) with axis {axis}, give N*H*W labels",
            bottom)


def _check_label_range(layer: Layer, labels: np.ndarray, valid: np.ndarray, classes: int):
    used = labels[valid]
    if used.size and (used.min() < 0 or used.max() >= classes):
        bad = used[(used < 0) | (used >= classes)][0]
        raise layer.error(f"label {bad} is out of range for {classes} classes")


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(Layer):
    """Multinomial logistic loss of the softmax of bottom[0] along ``softmax_param.axis``.

    bottom: scores (outer, C, inner...), labels (outer*inner values); top[0]: loss ();
    optional top[1]: the softmax probabilities (shape of the scores).
    ``loss = -sum log(max(p[label], FLT_MIN)) / normalizer`` over non-ignored labels.
    """
    macc = elementwise_macc

    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2
    is_loss = True

    def layer_setup(self, bottom, top):
        self.ignore_label = _ignore_label(self)
        self.normalization = normalization_mode(self, VALID)
        self._prob = Blob((), self.dtype, name=f"{self.name}.prob")

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom, self.param.softmax_param.axis)
        shape = bottom[0].shape
        if bottom[1].num_axes == 0 or bottom[1].shape[0] != shape[0]:
            raise self.shape_error("scores and labels must have the same first dimension", bottom)
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        _check_label_count(self, bottom, self.outer, self.inner, self.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(shape)
        else:
            self._prob.reshape(shape)

    def _normalizer(self, valid_count: int) -> float:
        return normalizer(self.normalization, self.outer, self.inner, valid_count)

    def _labels(self, bottom):
        labels = _int_labels(bottom[1], self.outer, self.inner)
        if self.ignore_label is None:
            valid = np.ones(labels.shape, bool)
        else:
            valid = labels != self.ignore_label
        _check_label_range(self, labels, valid, bottom[0].shape[self.axis])
        return np.where(valid, labels, 0), valid

    def forward(self, bottom, top):
        # with a second top the probabilities are computed straight into it
        self.prob = top[1].data if len(top) > 1 else self._prob.data
        softmax(bottom[0].data, self.axis, self.prob)
        labels, valid = self._labels(bottom)
        prob = self.prob.reshape(self.outer, -1, self.inner)
        p = np.take_along_axis(prob, labels[:, None, :], axis=1)[:, 0, :]
        log_p = np.log(np.maximum(p, FLT_MIN))
        count = int(valid.sum())
        loss = -np.sum(log_p, where=valid)
        top[0].data[...] = loss / self._normalizer(count)

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        labels, valid = self._labels(bottom)
        dx = bottom[0].diff
        np.copyto(dx, self.prob)
        d = dx.reshape(self.outer, -1, self.inner)
        outer_idx, inner_idx = np.nonzero(valid)
        d[outer_idx, labels[outer_idx, inner_idx], inner_idx] -= 1
        if self.ignore_label is not None:
            d *= valid[:, None, :]
        loss_weight = float(top[0].diff.flat[0])
        dx *= loss_weight / self._normalizer(len(outer_idx))

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("Accuracy")
class AccuracyLayer(Layer):
    """Top-k accuracy of scores bottom[0] (outer, C, inner...) against labels bottom[1].

    A position counts as correct iff fewer than ``top_k`` *other* classes score >= the
    true class (ties count against it, as in Caffe). top[0]: accuracy (); optional
    top[1]: per-class accuracy (C,). Positions labelled ``ignore_label`` are skipped.
    """
    macc = elementwise_macc

    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        if self.top_k < 1:
            raise self.error("accuracy_param.top_k must be at least 1")
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom, self.param.accuracy_param.axis)
        self.classes = bottom[0].shape[self.axis]
        if self.top_k > self.classes:
            raise self.shape_error(
                f"top_k ({self.top_k}) must not exceed the number of classes "
                f"({self.classes})", bottom)
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        _check_label_count(self, bottom, self.outer, self.inner, self.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.classes,))

    def forward(self, bottom, top):
        labels = _int_labels(bottom[1], self.outer, self.inner)
        valid = (np.ones(labels.shape, bool) if self.ignore_label is None
                 else labels != self.ignore_label)
        _check_label_range(self, labels, valid, self.classes)
        labels = np.where(valid, labels, 0)
        scores = bottom[0].data.reshape(self.outer, self.classes, self.inner)
        true_score = np.take_along_axis(scores, labels[:, None, :], axis=1)
        # the true class itself is among those >= its score, hence "- 1"
        better = np.count_nonzero(scores >= true_score, axis=1) - 1
        correct = (better < self.top_k) & valid
        count = int(valid.sum())
        top[0].data[...] = correct.sum() / count if count else 0.0
        if len(top) > 1:
            seen = np.bincount(labels[valid], minlength=self.classes)
            hits = np.bincount(labels[correct], minlength=self.classes)
            top[1].data[...] = np.divide(hits, seen, out=np.zeros(self.classes),
                                         where=seen > 0)


# -- the other losses --------------------------------------------------------------------------

@register("EuclideanLoss")
class EuclideanLossLayer(Layer):
    """``loss = sum((a - b)^2) / (2 N)``, N = ``a.shape[0]``.

    bottom: a (N, ...), b (N, ...) with as many values per item; top[0]: loss ().
    Backward reaches both inputs: ``+-(a - b) / N`` times the loss weight.
    """
    macc = elementwise_macc

    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        _check_first_dim(self, bottom)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.shape_error("inputs must have the same dimension "
                                   "(the same count of values per item)", bottom)
        top[0].reshape(())

    def forward(self, bottom, top):
        self.diff = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        d = self.diff.reshape(-1)
        top[0].data[...] = float(np.dot(d, d)) / bottom[0].shape[0] / 2.0

    def backward(self, top, propagate_down, bottom):
        loss_weight = float(top[0].diff.flat[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                np.multiply(self.diff.reshape(bottom[i].shape),
                            sign * loss_weight / bottom[i].shape[0], out=bottom[i].diff)

    def allow_force_backward(self, bottom_index):
        return True


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(Layer):
    """Cross-entropy of ``sigmoid(x)`` against targets ``t`` in [0, 1], summed and normalized.

    bottom: scores x (N, ...), targets t (as many values); top[0]: loss ().
    Per element, in Caffe's overflow-free form:
    ``max(x, 0) - x t + log(1 + exp(-|x|))``. Targets whose integer part equals
    ``loss_param.ignore_label`` are skipped. The normalization defaults to
    BATCH_SIZE (divide by N) for this layer, unlike SoftmaxWithLoss.
    """
    macc = elementwise_macc

    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        self.ignore_label = _ignore_label(self)
        self.normalization = normalization_mode(self, BATCH_SIZE)

    def reshape(self, bottom, top):
        _check_first_dim(self, bottom)
        if bottom[0].count != bottom[1].count:
            raise self.shape_error("scores and targets must have the same count", bottom)
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count_range(1)
        top[0].reshape(())

    def _valid(self, target: np.ndarray):
        if self.ignore_label is None:
            return None
        return target.astype(np.int64) != self.ignore_label

    def forward(self, bottom, top):
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        loss = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
        valid = self._valid(t)
        if valid is None:
            total, count = float(np.sum(loss)), x.size
        else:
            total, count = float(np.sum(loss, where=valid)), int(valid.sum())
        self.norm = normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = total / self.norm

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down, what="target")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        t = bottom[1].data.reshape(dx.shape)
        np.subtract(caffe_sigmoid(bottom[0].data), t, out=dx)
        valid = self._valid(t)
        if valid is not None:
            dx *= valid
        dx *= float(top[0].diff.flat[0]) / self.norm

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1


def _item_labels(layer: Layer, bottom: list[Blob], classes: int) -> np.ndarray:
    """One integer label per item (N = bottom[0].shape[0]), range-checked."""
    labels = bottom[1].data.reshape(-1).astype(np.int64)
    _check_label_range(layer, labels, np.ones(labels.shape, bool), classes)
    return labels


def _check_item_labels(layer: Layer, bottom: list[Blob]):
    _check_first_dim(layer, bottom)
    if bottom[1].count != bottom[0].shape[0]:
        raise layer.shape_error(
            f"needs one label per item: {bottom[0].shape[0]} labels, got {bottom[1].count}",
            bottom)


@register("HingeLoss")
class HingeLossLayer(Layer):
    """One-vs-all hinge loss: with ``s = -1`` at the true class and ``+1`` elsewhere,
    ``t = max(0, 1 + s x)`` and ``loss = sum(t) / N`` (L1) or ``sum(t^2) / N`` (L2).

    bottom: scores (N, C...) (C = all values per item), labels (N); top[0]: loss ().
    """
    macc = elementwise_macc

    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True
    L1, L2 = 1, 2

    def layer_setup(self, bottom, top):
        self.norm = int(self.param.hinge_loss_param.norm)
        if self.norm not in (self.L1, self.L2):
            raise self.error(f"unknown hinge_loss_param.norm {self.norm}")

    def reshape(self, bottom, top):
        _check_item_labels(self, bottom)
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count_range(1)
        top[0].reshape(())

    def _signs(self, bottom) -> np.ndarray:
        labels = _item_labels(self, bottom, self.dim)
        sign = np.ones((self.num, self.dim), self.dtype)
        sign[np.arange(self.num), labels] = -1
        return sign

    def forward(self, bottom, top):
        self.sign = self._signs(bottom)
        margin = bottom[0].data.reshape(self.num, self.dim) * self.sign
        margin += 1
        np.maximum(margin, 0, out=margin)
        self.margin = margin
        flat = margin.reshape(-1)
        total = float(np.sum(flat)) if self.norm == self.L1 else float(np.dot(flat, flat))
        top[0].data[...] = total / self.num

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        scale = float(top[0].diff.flat[0]) / self.num
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.norm == self.L1:
            np.sign(self.margin, out=dx)   # 0 where the margin is met, as caffe_cpu_sign
        else:
            np.multiply(self.margin, 2.0, out=dx)
        dx *= self.sign
        dx *= scale

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(Layer):
    """``loss = -sum log(max(p[n, label_n], 1e-20)) / N`` for probabilities p (N, C...).

    bottom: probabilities (N, C...) (C = all values per item), labels (N); top[0]: loss ().
    """
    macc = elementwise_macc

    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        _check_item_labels(self, bottom)
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count_range(1)
        top[0].reshape(())

    def _picked(self, bottom):
        labels = _item_labels(self, bottom, self.dim)
        prob = bottom[0].data.reshape(self.num, self.dim)[np.arange(self.num), labels]
        return labels, np.maximum(prob, KLOG_THRESHOLD)

    def forward(self, bottom, top):
        _, prob = self._picked(bottom)
        top[0].data[...] = -float(np.sum(np.log(prob))) / self.num

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        if not propagate_down[0]:
            return
        labels, prob = self._picked(bottom)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        dx[...] = 0
        dx[np.arange(self.num), labels] = (-float(top[0].diff.flat[0]) / self.num) / prob

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1


def read_blob_proto_file(path: str, what: str, layer: Layer) -> np.ndarray:
    """The array in a binary BlobProto file (a ``.binaryproto``)."""
    from ..io.blobs import blob_proto_to_array
    from ..proto import caffe_pb2
    from google.protobuf.message import DecodeError
    proto = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except OSError as e:
        raise layer.error(f"cannot read {what} '{path}': {e.strerror}") from None
    except DecodeError:
        raise layer.error(f"{what} '{path}' is not a binary BlobProto file") from None
    return blob_proto_to_array(proto)


@register("InfogainLoss")
class InfogainLossLayer(Layer):
    """Infogain loss of the softmax of bottom[0] along ``infogain_loss_param.axis``:
    ``loss = -sum_{valid} sum_l H[label, l] log(max(p_l, 1e-20)) / normalizer``.

    bottom: scores (outer, C, inner...), labels (outer*inner values) and optionally the
    C x C matrix H (else read from ``infogain_loss_param.source``, a binary BlobProto);
    top[0]: loss (); optional top[1]: the softmax probabilities. As in current Caffe the
    scores go through a softmax first (old Caffe took probabilities). ``ignore_label``
    and ``normalization`` (default VALID) follow ``loss_param``; the deprecated
    ``normalize`` is refused, as Caffe refuses it for this layer.
    With H = identity this is SoftmaxWithLoss (up to the clamp).
    """
    macc = elementwise_macc

    min_num_bottom = 2
    max_num_bottom = 3
    min_num_top = 1
    max_num_top = 2
    is_loss = True

    def layer_setup(self, bottom, top):
        lp = self.param.loss_param
        if lp.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated for this layer; '
                             'use loss_param.normalization')
        self.ignore_label = _ignore_label(self)
        self.normalization = normalization_mode(self, VALID)
        self.infogain = None
        if len(bottom) < 3:
            p = self.param.infogain_loss_param
            if not p.HasField("source"):
                raise self.error("give the infogain matrix as infogain_loss_param.source "
                                 "(a binaryproto) or as a third bottom")
            self.infogain = read_blob_proto_file(p.source, "infogain matrix",
                                                 self).astype(self.dtype)
        self._prob = Blob((), self.dtype, name=f"{self.name}.prob")

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom, self.param.infogain_loss_param.axis)
        shape = bottom[0].shape
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis + 1)
        self.classes = shape[self.axis]
        _check_label_count(self, bottom, self.outer, self.inner, self.axis)
        h_count = bottom[2].count if len(bottom) > 2 else self.infogain.size
        if h_count != self.classes ** 2:
            raise self.shape_error(
                f"the infogain matrix must be {self.classes}x{self.classes} "
                f"({self.classes ** 2} values) for {self.classes} classes, got {h_count} "
                "values", bottom)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(shape)
        else:
            self._prob.reshape(shape)

    def _matrix(self, bottom) -> np.ndarray:
        h = bottom[2].data if len(bottom) > 2 else self.infogain
        return h.reshape(self.classes, self.classes)

    def _labels(self, bottom):
        labels = _int_labels(bottom[1], self.outer, self.inner)
        valid = (np.ones(labels.shape, bool) if self.ignore_label is None
                 else labels != self.ignore_label)
        _check_label_range(self, labels, valid, self.classes)
        return np.where(valid, labels, 0), valid

    def forward(self, bottom, top):
        self.prob = top[1].data if len(top) > 1 else self._prob.data
        softmax(bottom[0].data, self.axis, self.prob)
        labels, valid = self._labels(bottom)
        prob = self.prob.reshape(self.outer, self.classes, self.inner)
        log_p = np.log(np.maximum(prob, KLOG_THRESHOLD))
        rows = self._matrix(bottom)[labels]                   # (outer, inner, C): H[label]
        per_item = np.einsum("ojc,ocj->oj", rows, log_p)       # sum_l H[label, l] log p_l
        count = int(valid.sum())
        top[0].data[...] = -float(np.sum(per_item, where=valid)) / normalizer(
            self.normalization, self.outer, self.inner, count)

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down)
        _refuse_label_gradient(self, propagate_down, 2, "infogain matrix")
        if not propagate_down[0]:
            return
        labels, valid = self._labels(bottom)
        h = self._matrix(bottom)
        # d/dx_k of -sum_l H[y, l] log p_l  =  p_k * sum_l H[y, l] - H[y, k]
        row_sums = h.sum(axis=1)[labels]                      # (outer, inner)
        dx = bottom[0].diff.reshape(self.outer, self.classes, self.inner)
        prob = self.prob.reshape(self.outer, self.classes, self.inner)
        np.multiply(prob, row_sums[:, None, :], out=dx)
        dx -= h[labels].transpose(0, 2, 1)
        if self.ignore_label is not None:
            dx *= valid[:, None, :]
        dx *= float(top[0].diff.flat[0]) / normalizer(
            self.normalization, self.outer, self.inner, int(valid.sum()))

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("ContrastiveLoss")
class ContrastiveLossLayer(Layer):
    """Siamese contrastive loss over pairs (a_n, b_n) with similarity labels y_n:
    ``loss = sum_n [y_n d_n^2 + (1 - y_n) max(margin - d_n, 0)^2] / (2 N)``,
    d_n = ||a_n - b_n||; with ``legacy_version`` the dissimilar term is
    ``max(margin - d_n^2, 0)`` (Caffe's original form).

    bottom: a (N, C...), b (N, C...), y (N) (similar iff int(y) != 0); top[0]: loss ().
    Gradients go to a and b; as Caffe, the non-legacy dissimilar gradient divides by
    ``d + 1e-4``.
    """
    macc = elementwise_macc

    exact_num_bottom = 3
    exact_num_top = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)

    def reshape(self, bottom, top):
        _check_first_dim(self, bottom)
        if bottom[0].count != bottom[1].count:
            raise self.shape_error("the two feature bottoms must have the same shape", bottom)
        self.num = bottom[0].shape[0]
        if bottom[2].count != self.num:
            raise self.shape_error(
                f"needs one similarity label per pair: {self.num} pairs, got "
                f"{bottom[2].count} labels", bottom)
        top[0].reshape(())

    def forward(self, bottom, top):
        a = bottom[0].data.reshape(self.num, -1)
        self.diff = a - bottom[1].data.reshape(a.shape)
        self.dist_sq = np.einsum("nc,nc->n", self.diff, self.diff)
        self.similar = bottom[2].data.reshape(-1).astype(np.int64) != 0
        if self.legacy:
            apart = np.maximum(self.margin - self.dist_sq, 0)
        else:
            apart = np.maximum(self.margin - np.sqrt(self.dist_sq), 0)
            apart *= apart
        loss = float(np.sum(np.where(self.similar, self.dist_sq, apart)))
        top[0].data[...] = loss / self.num / 2.0

    def backward(self, top, propagate_down, bottom):
        _refuse_label_gradient(self, propagate_down, 2, "similarity label")
        if not (propagate_down[0] or propagate_down[1]):
            return
        # per pair: coefficient of (a - b) in d loss / d a, before the loss weight and 1/N
        if self.legacy:
            mdist = self.margin - self.dist_sq
            apart = -np.ones_like(mdist)
        else:
            dist = np.sqrt(self.dist_sq)
            mdist = self.margin - dist
            apart = -mdist / (dist + self.dtype.type(1e-4))
        coeff = np.where(self.similar, 1, np.where(mdist > 0, apart, 0)).astype(self.dtype)
        grad = self.diff * coeff[:, None]
        scale = float(top[0].diff.flat[0]) / self.num
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                np.multiply(grad.reshape(bottom[i].shape), sign * scale, out=bottom[i].diff)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2
