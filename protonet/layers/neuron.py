"""Neuron (elementwise) layers, after Caffe's ``src/caffe/layers/<name>_layer.cpp`` for
ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL, Threshold, Clip and Swish.

Top has the bottom's shape. Except for AbsVal (which Caffe refuses), ``top`` may be the
bottom blob itself (in place). Caffe's backward reads ``bottom.data`` for several of these
layers, which in place holds the output; there these layers keep what backward needs (a
copy of the input, or a mask) during forward, so the gradient stays right in place.

Scalars are Python floats, so float32 blobs stay float32.
"""
from __future__ import annotations

import math

import numpy as np

from .. import parallel
from ..proto import caffe_pb2
from .base import Layer, register


class NeuronLayer(Layer):
    """One bottom, one top of the same shape (Caffe's ``NeuronLayer``)."""

    exact_num_bottom = 1
    exact_num_top = 1
    #: False where Caffe forbids ``top == bottom``
    allow_in_place = True

    def reshape(self, bottom, top):
        self.in_place = top[0] is bottom[0]
        if self.in_place and not self.allow_in_place:
            raise self.error("does not allow in-place computation")
        top[0].reshape(bottom[0].shape)

    def _keep_input(self, bottom) -> np.ndarray:
        """The input array backward will read: ``bottom.data``, or in place a copy of it
        (Caffe's ``bottom_memory_``), taken before forward overwrites it."""
        x = bottom[0].data
        if not self.in_place:
            return x
        self.bottom_memory = reuse_buffer(getattr(self, "bottom_memory", None), x)
        np.copyto(self.bottom_memory, x)
        return self.bottom_memory

    def _input(self, bottom) -> np.ndarray:
        return self.bottom_memory if self.in_place else bottom[0].data

    def macc(self, bottom, top):
        return bottom[0].count


def reuse_buffer(buffer, like: np.ndarray) -> np.ndarray:
    """``buffer`` if it has ``like``'s shape and dtype, else a new empty array like it."""
    if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype:
        return np.empty_like(like)
    return buffer


@register("ReLU")
class ReLULayer(NeuronLayer):
    """``y = x`` for x > 0, ``negative_slope * x`` otherwise. Any shape; in-place safe.

    Large blobs are cut into one flat run per thread (:mod:`protonet.parallel`).
    """

    splits_work = True

    def layer_setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    @staticmethod
    def _runs(n: int) -> list[slice]:
        return parallel.split(n, n)

    def forward(self, bottom, top):
        x, y = bottom[0].data.reshape(-1), top[0].data.reshape(-1)
        slope, in_place = self.slope, top[0].data is bottom[0].data

        def work(k, s):
            if slope == 0.0:
                np.maximum(x[s], 0, out=y[s])
                return
            negative = x[s] < 0
            if not in_place:
                np.copyto(y[s], x[s])
            np.multiply(y[s], slope, out=y[s], where=negative)
        parallel.run(work, self._runs(x.size))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place, bottom.data is the output; it has the input's sign (for slope >= 0),
        # which is what Caffe's backward then reads as well.
        x, dy, dx = (b.reshape(-1) for b in (bottom[0].data, top[0].diff, bottom[0].diff))
        slope, in_place = self.slope, top[0].diff is bottom[0].diff

        def work(k, s):
            if slope == 0.0:
                np.multiply(dy[s], x[s] > 0, out=dx[s])
                return
            non_positive = x[s] <= 0
            if not in_place:
                np.copyto(dx[s], dy[s])
            np.multiply(dx[s], slope, out=dx[s], where=non_positive)
        parallel.run(work, self._runs(x.size))


@register("PReLU")
class PReLULayer(NeuronLayer):
    """``y = max(x, 0) + a_c * min(x, 0)`` with a learned slope per channel (axis 1).

    bottom (N, C, ...) with at least 2 axes; blob ``a`` is (C,), or with
    ``channel_shared`` a single value of shape () as in Caffe. Default filler: constant 0.25.
    """

    def layer_setup(self, bottom, top):
        self._check_axes(bottom)
        p = self.param.prelu_param
        self.channel_shared = bool(p.channel_shared)
        channels = bottom[0].shape[1]
        if not self.blobs:  # set up once, as Caffe skips an existing blob
            if p.HasField("filler"):
                filler = p.filler
            else:
                filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
            self.add_param(() if self.channel_shared else (channels,), filler)
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            raise self.shape_error(
                f"negative slope blob has {self.blobs[0].count} values, "
                f"channel_shared {str(self.channel_shared).lower()} needs {want}", bottom)

    def _check_axes(self, bottom):
        if bottom[0].num_axes < 2:
            raise self.shape_error("bottom must have at least 2 axes (num, channels, ...)",
                                   bottom)

    def reshape(self, bottom, top):
        self._check_axes(bottom)
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.shape_error(
                f"bottom has {bottom[0].shape[1]} channels, the slopes were made for "
                f"{self.blobs[0].count}", bottom)
        super().reshape(bottom, top)

    def _slope(self, ndim: int) -> np.ndarray:
        a = self.blobs[0].data
        return a.reshape(()) if self.channel_shared else a.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, bottom, top):
        x = self._keep_input(bottom)
        negative = np.minimum(x, 0)
        negative *= self._slope(x.ndim)
        y = top[0].data
        np.maximum(x, 0, out=y)
        y += negative

    def backward(self, top, propagate_down, bottom):
        x, dy = self._input(bottom), top[0].diff
        # in place dy and bottom.diff are one array: take the slope gradient first
        if self.param_propagate_down[0]:
            contribution = dy * np.minimum(x, 0)  # dy * x where x <= 0
            if self.channel_shared:
                self.blobs[0].diff[...] += contribution.sum()
            else:
                axes = (0,) + tuple(range(2, x.ndim))
                self.blobs[0].diff[...] += contribution.sum(axis=axes)
        if propagate_down[0]:
            # Caffe's (x > 0) + a * (x <= 0): exact (one term is 0), 4x faster than np.where
            gain = np.multiply(x <= 0, self._slope(x.ndim))
            gain += x > 0
            np.multiply(dy, gain, out=bottom[0].diff)


@register("ELU")
class ELULayer(NeuronLayer):
    """``y = x`` for x > 0, ``alpha * (exp(x) - 1)`` otherwise (Caffe's exp - 1, not expm1)."""

    def layer_setup(self, bottom, top):
        self.alpha = float(self.param.elu_param.alpha)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        # in place with alpha >= 0, y > 0 exactly where x > 0, so backward can read the
        # output (as Caffe does); with alpha < 0 it cannot, so keep the mask
        self.positive = (x > 0) if (self.in_place and self.alpha < 0) else None
        negative = np.minimum(x, 0)
        np.exp(negative, out=negative)
        negative -= 1
        negative *= self.alpha
        np.maximum(x, 0, out=y)
        y += negative

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        positive = self.positive
        if positive is None:
            positive = (y > 0) if self.in_place else (bottom[0].data > 0)
        # Caffe's (x > 0) + (alpha + y) * (x <= 0); masked numpy ops (where=) are 3x slower
        gain = y + self.alpha
        gain *= ~positive
        gain += positive
        np.multiply(dy, gain, out=bottom[0].diff)


def caffe_sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Caffe's CPU sigmoid, ``0.5 * tanh(0.5 * x) + 0.5`` (no overflow, keeps the dtype),
    into ``out`` (may be ``x``; a new array when None)."""
    out = np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """``y = 1 / (1 + exp(-x))``, computed as Caffe does: ``0.5 * tanh(0.5 x) + 0.5``."""

    def forward(self, bottom, top):
        caffe_sigmoid(bottom[0].data, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        gain = 1 - y
        gain *= y
        np.multiply(top[0].diff, gain, out=bottom[0].diff)


@register("TanH")
class TanHLayer(NeuronLayer):
    """``y = tanh(x)``; backward from the output: ``dx = dy (1 - y^2)``."""

    def forward(self, bottom, top):
        np.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        gain = np.square(y)
        np.subtract(1, gain, out=gain)
        np.multiply(top[0].diff, gain, out=bottom[0].diff)


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """``y = |x|``; ``dx = sign(x) dy`` (0 at x = 0). Caffe forbids it in place."""

    allow_in_place = False

    def forward(self, bottom, top):
        np.abs(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        np.sign(bottom[0].data, out=dx)
        dx *= top[0].diff


@register("Power")
class PowerLayer(NeuronLayer):
    """``y = (shift + scale * x) ^ power``.

    As Caffe: with ``power * scale == 0`` the output is the constant ``1`` (power 0) or
    ``shift ^ power`` and the gradient is 0; with power 1 the gradient is ``scale``; with
    shift 0 and power not 1 or 2 the gradient is ``power * y / x`` (NaN at x = 0, as in Caffe).
    """

    def layer_setup(self, bottom, top):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale

    @property
    def _gradient_needs_input(self) -> bool:
        return not (self.diff_scale == 0 or self.power == 1)

    def forward(self, bottom, top):
        y = top[0].data
        if self.diff_scale == 0:
            if self.power == 0:
                y.fill(1)
            else:  # pow in the blob's precision: NaN (not complex) for (-1) ^ 0.5
                with np.errstate(all="ignore"):
                    y.fill(np.power(self.dtype.type(self.shift), self.dtype.type(self.power)))
            return
        x = self._keep_input(bottom) if self._gradient_needs_input else bottom[0].data
        if self.scale != 1:
            np.multiply(x, self.scale, out=y)
        elif y is not x:
            np.copyto(y, x)
        if self.shift != 0:
            y += self.shift
        if self.power != 1:
            np.power(y, self.power, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if not self._gradient_needs_input:
            if self.diff_scale == 0:
                dx.fill(0)
            else:
                np.multiply(top[0].diff, self.diff_scale, out=dx)
            return
        x, y = self._input(bottom), top[0].data
        if self.power == 2:
            # 2 * scale * (shift + scale * x)
            gain = x * (self.diff_scale * self.scale)
            if self.shift != 0:
                gain += self.diff_scale * self.shift
        elif self.shift == 0:
            gain = y / x
            gain *= self.power
        else:
            gain = x * self.scale if self.scale != 1 else x.copy()
            gain += self.shift
            np.divide(y, gain, out=gain)
            if self.diff_scale != 1:
                gain *= self.diff_scale
        np.multiply(top[0].diff, gain, out=dx)


def _log_base(layer: Layer, base: float) -> float:
    """``ln(base)``, 1 exactly for Caffe's ``base: -1`` (meaning e)."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base:g}")
    value = math.log(base)
    if not math.isfinite(value):
        raise layer.error(f"log(base) = log({base:g}) is not finite")
    return value


@register("Exp")
class ExpLayer(NeuronLayer):
    """``y = base ^ (shift + scale * x)`` (base -1 means e), computed as Caffe does:
    ``exp(ln(base) * scale * x) * base ^ shift``; ``dx = dy * y * ln(base) * scale``."""

    def layer_setup(self, bottom, top):
        p = self.param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        self.inner_scale = _log_base(self, base) * scale
        if shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1 else base ** shift

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.inner_scale == 1:
            np.exp(x, out=y)
        else:
            np.multiply(x, self.inner_scale, out=y)
            np.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        np.multiply(top[0].data, top[0].diff, out=dx)
        if self.inner_scale != 1:
            dx *= self.inner_scale


@register("Log")
class LogLayer(NeuronLayer):
    """``y = log_base(shift + scale * x)`` (base -1 means e);
    ``dx = dy * scale / (ln(base) * (shift + scale * x))``."""

    def layer_setup(self, bottom, top):
        p = self.param.log_param
        log_base = _log_base(self, float(p.base))
        if log_base == 0:
            raise self.error(f"base {p.base:g} gives 1/log(base) = inf")
        self.base_scale = 1.0 / log_base
        self.scale, self.shift = float(p.scale), float(p.shift)
        self.backward_num_scale = self.scale / log_base

    def _affine(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``shift + scale * x`` into ``out``, in Caffe's order of operations."""
        if self.scale != 1:
            np.multiply(x, self.scale, out=out)
        elif out is not x:
            np.copyto(out, x)
        if self.shift != 0:
            out += self.shift
        return out

    def forward(self, bottom, top):
        x, y = self._keep_input(bottom), top[0].data
        np.log(self._affine(x, y), out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self._input(bottom)
        gain = self._affine(x, np.empty_like(x))
        np.reciprocal(gain, out=gain)
        if self.backward_num_scale != 1:
            gain *= self.backward_num_scale
        np.multiply(top[0].diff, gain, out=bottom[0].diff)


#: Caffe's kBNLL_THRESHOLD: backward evaluates exp(min(x, 50))
BNLL_THRESHOLD = 50.0


@register("BNLL")
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood, ``y = log(1 + exp(x))``.

    Caffe evaluates ``x + log(1 + exp(-x))`` for x > 0 and ``log(1 + exp(x))`` otherwise
    with the ``1 +`` and the log in double precision; ``max(x, 0) + log1p(exp(-|x|))`` is
    that same value without the double-precision detour. Backward as Caffe:
    ``e = exp(min(x, 50))``, ``dx = dy * e / (e + 1)``.
    """

    def forward(self, bottom, top):
        x, y = self._keep_input(bottom), top[0].data
        tail = np.abs(x)
        np.negative(tail, out=tail)
        np.exp(tail, out=tail)
        np.log1p(tail, out=tail)
        np.maximum(x, 0, out=y)
        y += tail

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        e = np.minimum(self._input(bottom), BNLL_THRESHOLD)
        np.exp(e, out=e)
        denominator = e + 1
        np.divide(e, denominator, out=e)
        np.multiply(top[0].diff, e, out=bottom[0].diff)


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """``y = 1`` where ``x > threshold``, else 0. No gradient (Caffe: not implemented)."""

    has_backward = False

    def layer_setup(self, bottom, top):
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, bottom, top):
        np.greater(bottom[0].data, self.threshold, out=top[0].data, casting="unsafe")


@register("Clip")
class ClipLayer(NeuronLayer):
    """``y = max(min, min(x, max))`` (``min`` wins if min > max, as in Caffe); the gradient
    passes where ``min <= x <= max``, both ends inclusive (``clip_layer.cpp``)."""

    def layer_setup(self, bottom, top):
        p = self.param.clip_param
        missing = [f for f in ("min", "max") if not p.HasField(f)]
        if missing:
            raise self.error(f"clip_param.{' and clip_param.'.join(missing)} must be given "
                             "(both min and max are required)")
        self.min, self.max = float(p.min), float(p.max)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        # in place the output is always within [min, max]: keep the input's mask
        self.inside = self._inside(x) if self.in_place else None
        np.minimum(x, self.max, out=y)
        np.maximum(y, self.min, out=y)

    def _inside(self, x: np.ndarray) -> np.ndarray:
        inside = x >= self.min
        inside &= x <= self.max
        return inside

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        inside = self.inside if self.in_place else self._inside(bottom[0].data)
        np.multiply(top[0].diff, inside, out=bottom[0].diff)


@register("Swish")
class SwishLayer(NeuronLayer):
    """``y = x * sigmoid(beta * x)`` (Caffe's tanh-form sigmoid);
    ``dx = dy * (beta y + s (1 - beta y))`` with ``s = sigmoid(beta x)``."""

    def layer_setup(self, bottom, top):
        self.beta = float(self.param.swish_param.beta)

    def forward(self, bottom, top):
        x = bottom[0].data
        s = np.multiply(x, self.beta)
        self.sigmoid = caffe_sigmoid(s, s)
        np.multiply(x, s, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        beta_y = top[0].data * self.beta
        gain = 1 - beta_y
        gain *= self.sigmoid
        gain += beta_y
        np.multiply(top[0].diff, gain, out=bottom[0].diff)
