"""Small layers of the Caffe forks that deployed models use.

- ``ReLU6`` (MobileNet v2 ports, NVIDIA Caffe): ``min(max(x, 0), 6)``.
- ``Axpy`` (SENet's Caffe, SE-ResNet/SE-ResNeXt deploy nets): ``a * x + y`` with ``a``
  one scale per image and channel.

The detection and segmentation families live in their own modules.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register
from .neuron import NeuronLayer


@register("ReLU6")
class ReLU6Layer(NeuronLayer):
    """``y = min(max(x, 0), 6) + negative_slope * min(x, 0)`` (``relu_param``, as the
    forks read it); the gradient passes where ``0 < x < 6`` and is ``negative_slope``
    where ``x <= 0``. Any shape; in place allowed (the input's mask is kept)."""

    def layer_setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        # in place the output overwrites x: keep the gradient's mask first
        self.scale = self._scale(x) if self.in_place else None
        negative = np.minimum(x, 0) if self.slope else None
        np.clip(x, 0, 6, out=y)
        if negative is not None:
            y += self.slope * negative

    def _scale(self, x: np.ndarray) -> np.ndarray:
        scale = ((x > 0) & (x < 6)).astype(x.dtype)
        if self.slope:
            scale[x <= 0] = self.slope
        return scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        scale = self.scale if self.in_place else self._scale(bottom[0].data)
        np.multiply(top[0].diff, scale, out=bottom[0].diff)


@register("Axpy")
class AxpyLayer(Layer):
    """``F = a * X + Y``: bottoms ``a`` ``(N, C)`` or ``(N, C, 1, 1)``, ``X`` and ``Y``
    ``(N, C, *spatial)``; top ``F`` like ``X``. Backward: ``da = sum_spatial(dF * X)``,
    ``dX = a * dF``, ``dY = dF``. The top may be ``Y`` (in place)."""

    exact_num_bottom = 3
    exact_num_top = 1

    def reshape(self, bottom, top):
        a, x, y = bottom
        if (a.num_axes < 2 or a.shape[:2] != x.shape[:2] or a.count != a.shape[0] * a.shape[1]
                or x.num_axes < 2):
            raise self.shape_error("the scale (bottom 0) must be N x C (x 1 x 1) with the "
                                   "N and C of X (bottom 1)", bottom)
        if y.shape != x.shape:
            raise self.shape_error("X and Y (bottoms 1 and 2) must have the same shape", bottom)
        if top[0] is bottom[1] or top[0] is bottom[0]:
            raise self.error("the top may replace Y (bottom 2) in place, not a or X")
        top[0].reshape(x.shape)

    def _scale(self, bottom) -> np.ndarray:
        a, x = bottom[0].data, bottom[1].data
        return a.reshape(a.shape[:2] + (1,) * (x.ndim - 2))

    def forward(self, bottom, top):
        a, x = self._scale(bottom), bottom[1].data
        out = top[0].data
        if top[0] is not bottom[2]:
            np.copyto(out, bottom[2].data)
        out += a * x

    def backward(self, top, propagate_down, bottom):
        dF = top[0].diff
        x = bottom[1].data
        if propagate_down[0]:
            n, c = x.shape[:2]
            bottom[0].diff.reshape(n, c)[...] = (dF * x).reshape(n, c, -1).sum(axis=2)
        if propagate_down[1]:
            np.multiply(dF, self._scale(bottom), out=bottom[1].diff)
        if propagate_down[2] and top[0] is not bottom[2]:
            np.copyto(bottom[2].diff, dF)

    def macc(self, bottom, top):
        return bottom[1].count
