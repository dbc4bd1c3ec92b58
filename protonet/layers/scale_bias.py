"""Bias and Scale: per-channel (or per-block) shifts and factors broadcast over a bottom,
after Caffe's ``src/caffe/layers/{bias,scale}_layer.cpp``. In the TEST phase a Net folds
them, with BatchNorm, into the convolution before them (:mod:`protonet.fuse`).
"""
from __future__ import annotations

import numpy as np

from ..blob import Blob
from ..proto import caffe_pb2
from .base import Layer, register, elementwise_macc
from .common import canonical_axis


def _operand_span(layer: Layer, bottom: list[Blob], axis_param: int, operand_shape,
                  what: str) -> tuple[int, int, int]:
    """``(outer, dim, inner)``: bottom[0] viewed so that an operand of ``operand_shape``
    lines up with its axes from ``axis_param`` (a scalar operand lines up anywhere)."""
    n = len(operand_shape)
    axis = 0 if n == 0 else canonical_axis(layer, bottom, axis_param)
    shape = bottom[0].shape
    if shape[axis:axis + n] != tuple(operand_shape):
        raise layer.shape_error(
            f"the {what} of shape {list(operand_shape)} does not match bottom[0]'s axes "
            f"{axis}..{axis + n - 1} {list(shape[axis:axis + n])}", bottom)
    return (bottom[0].count_range(0, axis), int(np.prod(operand_shape, dtype=np.int64)),
            bottom[0].count_range(axis + n))


def _learned_shape(layer: Layer, bottom: list[Blob], axis_param: int, num_axes: int,
                   what: str) -> tuple[int, ...]:
    """Shape of a learned Bias/Scale blob: bottom[0]'s axes ``[axis, axis + num_axes)``."""
    axis = canonical_axis(layer, bottom, axis_param)
    if num_axes < -1:
        raise layer.error(f"num_axes must be >= 0, or -1 for all remaining axes, got {num_axes}")
    if num_axes >= 0 and bottom[0].num_axes < axis + num_axes:
        raise layer.shape_error(f"the {what} ({num_axes} axes from axis {axis}) extends past "
                                "bottom[0]'s shape", bottom)
    return bottom[0].shape[axis:] if num_axes == -1 else bottom[0].shape[axis:axis + num_axes]


@register("Bias")
class BiasLayer(Layer):
    """``y = x + b`` with b (bottom[1], or a learned blob) broadcast over bottom[0].

    b's shape matches bottom[0]'s axes ``axis .. axis+b.ndim-1`` (a scalar b matches
    anything); the learned b spans ``num_axes`` axes (-1: all the rest) and is
    filled by ``filler`` (default 0). In-place safe.
    """
    macc = elementwise_macc

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.bias_param
        if len(bottom) == 1:
            self.add_param(_learned_shape(self, bottom, p.axis, p.num_axes, "bias"), p.filler)

    def _bias(self, bottom) -> Blob:
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        self.span = _operand_span(self, bottom, self.param.bias_param.axis,
                                  self._bias(bottom).shape, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        outer, dim, inner = self.span
        b = self._bias(bottom).data.reshape(1, dim, 1)
        y = top[0].data.reshape(self.span)
        if top[0] is bottom[0]:
            y += b
        else:
            np.add(bottom[0].data.reshape(self.span), b, out=y)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and top[0] is not bottom[0]:
            np.copyto(bottom[0].diff, top[0].diff)
        learned = len(bottom) == 1
        if learned and self.param_propagate_down[0]:
            self.blobs[0].diff += _sum_outer_inner(top[0].diff, self.span, self.blobs[0].shape)
        elif not learned and propagate_down[1]:
            bottom[1].diff[...] = _sum_outer_inner(top[0].diff, self.span, bottom[1].shape)



def _sum_outer_inner(array: np.ndarray, span, shape) -> np.ndarray:
    """``array`` viewed as ``(outer, dim, inner)``, summed to ``(dim,)``, shaped ``shape``."""
    return array.reshape(span).sum(axis=(0, 2)).reshape(shape)


@register("Scale")
class ScaleLayer(Layer):
    """``y = x * s (+ b)`` with s (bottom[1], or a learned blob) broadcast over bottom[0].

    s lines up with bottom[0]'s axes from ``axis`` as in Bias; the learned s spans
    ``num_axes`` axes and is filled by ``filler`` (default 1). ``bias_term`` adds a
    learned bias of s's shape (filled by ``bias_filler``, default 0), the last blob.
    In place (``bottom: "x" top: "x"``) the layer keeps a copy of x for the
    gradient of s, as Caffe does.
    """

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        if len(bottom) == 1:
            filler = p.filler
            if not p.HasField("filler"):
                filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
            self.add_param(_learned_shape(self, bottom, p.axis, p.num_axes, "scale"), filler)
        self.bias_term = p.bias_term
        if self.bias_term:
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            self.add_param(_learned_shape(self, bottom, p.axis, num_axes, "bias"),
                           p.bias_filler)
        self._copy = None

    def _scale(self, bottom) -> Blob:
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        axis = self.param.scale_param.axis
        self.span = _operand_span(self, bottom, axis, self._scale(bottom).shape, "scale")
        if self.bias_term:
            self.bias_span = _operand_span(self, bottom, axis, self.blobs[-1].shape, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if top[0] is bottom[0]:  # keep x for the gradient of the scale
            if self._copy is None or self._copy.shape != x.shape or self._copy.dtype != x.dtype:
                self._copy = np.empty_like(x)
            np.copyto(self._copy, x)
        s = self._scale(bottom).data.reshape(1, self.span[1], 1)
        y = top[0].data
        np.multiply(x.reshape(self.span), s, out=y.reshape(self.span))
        if self.bias_term:
            y.reshape(self.bias_span)[...] += self.blobs[-1].data.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if self.bias_term and self.param_propagate_down[-1]:
            self.blobs[-1].diff += _sum_outer_inner(dy, self.bias_span, self.blobs[-1].shape)
        learned = len(bottom) == 1
        scale = self._scale(bottom)
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            x = self._copy if top[0] is bottom[0] else bottom[0].data
            g = _sum_outer_inner(dy * x, self.span, scale.shape)
            if learned:
                scale.diff += g
            else:
                scale.diff[...] = g
        if propagate_down[0]:  # in place, dx and dy are one array: scaled after use above
            s = scale.data.reshape(1, self.span[1], 1)
            np.multiply(dy.reshape(self.span), s, out=bottom[0].diff.reshape(self.span))

    def macc(self, bottom, top):
        return top[0].count
