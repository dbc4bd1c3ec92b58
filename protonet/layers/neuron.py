"""Neuron (elementwise) layers, after Caffe's ``src/caffe/layers/relu_layer.cpp``.

Top has the bottom's shape; ``top`` may be the bottom blob itself (in-place).
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register


@register("ReLU")
class ReLULayer(Layer):
    """``y = x`` for x > 0, ``negative_slope * x`` otherwise. Any shape; in-place safe."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.slope == 0.0:
            np.maximum(x, 0, out=y)
            return
        negative = x < 0
        if y is not x:
            np.copyto(y, x)
        np.multiply(y, self.slope, out=y, where=negative)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, bottom.data is the output; it has the input's sign (for slope >= 0),
        # which is what Caffe's backward then reads as well.
        x, dy, dx = bottom[0].data, top[0].diff, bottom[0].diff
        if self.slope == 0.0:
            np.multiply(dy, x > 0, out=dx)
            return
        non_positive = x <= 0
        if dx is not dy:
            np.copyto(dx, dy)
        np.multiply(dx, self.slope, out=dx, where=non_positive)
