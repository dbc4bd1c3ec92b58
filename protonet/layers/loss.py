"""Loss and scoring layers, after Caffe's ``softmax_loss_layer.cpp`` and ``accuracy_layer.cpp``.

Scores are (outer, C, inner) around the class ``axis`` (e.g. (N, C) or (N, C, H, W));
labels hold outer*inner class indices stored as floats (cast to int toward zero).
"""
from __future__ import annotations

import numpy as np

from ..blob import Blob
from .base import Layer, register
from .common import canonical_axis, softmax

FLT_MIN = float(np.finfo(np.float32).tiny)  # Caffe clamps probabilities here: -log -> 87.3365


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

    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2
    is_loss = True
    FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3

    def layer_setup(self, bottom, top):
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = self.VALID if lp.normalize else self.BATCH_SIZE
        else:
            self.normalization = lp.normalization
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
        n = {self.FULL: self.outer * self.inner, self.VALID: valid_count,
             self.BATCH_SIZE: self.outer, self.NONE: 1}[self.normalization]
        return float(max(1, n))

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
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the label input (bottom 1)")
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

