"""Common layers: InnerProduct, Split, Flatten, Dropout, Concat, Eltwise, Softmax.

After Caffe's ``src/caffe/layers/{inner_product,split,flatten,dropout,concat,
eltwise,softmax}_layer.cpp``. Shapes are NCHW by convention but every layer
here works on any number of axes unless stated.
"""
from __future__ import annotations

import numpy as np

from ..blob import Blob
from .base import TRAIN, Layer, register


def canonical_axis(layer: Layer, bottom: list[Blob], axis: int, what: str = "axis") -> int:
    """``bottom[0]``'s axis index for ``axis`` (negative counts from the end),
    or an error naming the layer and the bottom shapes."""
    n = bottom[0].num_axes
    if not -n <= axis < n:
        raise layer.shape_error(f"{what} {axis} is out of range for a {n}-axis bottom", bottom)
    return axis % n


def softmax(x: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax of ``x`` along ``axis`` into ``out`` (may be ``x``)."""
    m = np.max(x, axis=axis, keepdims=True)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=axis, keepdims=True)
    return out


@register("InnerProduct")
class InnerProductLayer(Layer):
    """Fully connected: ``y = x W^T + b`` over inputs flattened from ``axis``.

    bottom (d0, ..., d_{axis-1}, ...) viewed as (M, K); top (d0, ..., d_{axis-1}, N).
    W is (N, K), or (K, N) with ``transpose: true``; b is (N,).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        if p.num_output < 1:
            raise self.error("inner_product_param.num_output must be given and positive")
        self.num_output = int(p.num_output)
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        axis = canonical_axis(self, bottom, p.axis)
        k = bottom[0].count_range(axis)
        self.add_param((k, self.num_output) if self.transpose else (self.num_output, k),
                       p.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), p.bias_filler)

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom, self.param.inner_product_param.axis)
        w = self.blobs[0].shape
        k_weights = w[0] if self.transpose else w[1]
        self.K = bottom[0].count_range(self.axis)
        if self.K != k_weights:
            raise self.shape_error(
                f"input size {self.K} (product of bottom dims from axis {self.axis}) does not "
                f"match the weights {list(w)}, which expect {k_weights}", bottom)
        self.M = bottom[0].count_range(0, self.axis)
        top[0].reshape(bottom[0].shape[:self.axis] + (self.num_output,))

    def _weights_kn(self, array: np.ndarray) -> np.ndarray:
        """A (K, N) view of a weight-shaped array."""
        return array if self.transpose else array.T

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        np.matmul(x, self._weights_kn(self.blobs[0].data), out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        # the net sets param_propagate_down (False for lr_mult 0); default: every param
        params_down = getattr(self, "param_propagate_down", None) or [True] * len(self.blobs)
        if params_down[0]:
            self.blobs[0].diff[...] += (x.T @ dy) if self.transpose else (dy.T @ x)
        if self.bias_term and params_down[1]:
            self.blobs[1].diff[...] += dy.sum(axis=0)
        if propagate_down[0]:
            np.matmul(dy, self._weights_kn(self.blobs[0].data).T,
                      out=bottom[0].diff.reshape(self.M, self.K))

    def macc(self, bottom, top):
        return self.M * self.K * self.num_output


@register("Split")
class SplitLayer(Layer):
    """One bottom to N tops of its shape (sharing its data, as Caffe does);
    backward sums the top diffs."""

    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom, top):
        for t in top:
            if t is bottom[0]:
                raise self.error("does not allow in-place computation")
            t.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        for t in top:
            t.share_data(bottom[0])

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        out = bottom[0].diff
        if len(top) == 1:
            np.copyto(out, top[0].diff)
            return
        np.add(top[0].diff, top[1].diff, out=out)
        for t in top[2:]:
            out += t.diff


@register("Flatten")
class FlattenLayer(Layer):
    """Merges axes ``axis..end_axis``: (d0, .., da, .., de, ..) -> (d0, .., da*..*de, ..)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        p = self.param.flatten_param
        start = canonical_axis(self, bottom, p.axis)
        end = canonical_axis(self, bottom, p.end_axis, "end_axis")
        shape = bottom[0].shape
        if end < start:
            raise self.shape_error(f"end_axis {p.end_axis} comes before axis {p.axis}", bottom)
        top[0].reshape(shape[:start] + (bottom[0].count_range(start, end + 1),) + shape[end + 1:])

    def forward(self, bottom, top):
        np.copyto(top[0].data, bottom[0].data.reshape(top[0].shape))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.copyto(bottom[0].diff, top[0].diff.reshape(bottom[0].shape))


@register("Dropout")
class DropoutLayer(Layer):
    """TRAIN: ``y = x * mask / (1 - ratio)``, mask ~ Bernoulli(1 - ratio) from ``self.rng``;
    TEST: ``y = x``. Any shape; in-place safe (the scaled mask is kept for backward)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.mask: np.ndarray | None = None

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.phase != TRAIN:
            if top[0] is not bottom[0]:
                np.copyto(top[0].data, x)
            return
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.ratio
        # the mask holds 0 or 1/(1 - ratio), so forward and backward are one multiply
        self.mask = keep.astype(self.dtype)
        self.mask *= self.scale
        np.multiply(x, self.mask, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase != TRAIN:
            if top[0] is not bottom[0]:
                np.copyto(bottom[0].diff, top[0].diff)
            return
        np.multiply(top[0].diff, self.mask, out=bottom[0].diff)


@register("Concat")
class ConcatLayer(Layer):
    """Joins bottoms along ``axis`` (legacy ``concat_dim``); other dims must agree."""

    min_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("give either concat_param.axis or concat_dim, not both")

    def reshape(self, bottom, top):
        p = self.param.concat_param
        first = bottom[0].shape
        if p.HasField("concat_dim"):
            if p.concat_dim >= len(first):
                raise self.shape_error(
                    f"concat_dim {p.concat_dim} is out of range for a {len(first)}-axis bottom",
                    bottom)
            axis = int(p.concat_dim)
        else:
            axis = canonical_axis(self, bottom, p.axis)
        for b in bottom[1:]:
            if len(b.shape) != len(first) or any(
                    d != e for i, (d, e) in enumerate(zip(b.shape, first)) if i != axis):
                raise self.shape_error(
                    f"all bottoms must have the same shape except along axis {axis}", bottom)
        self.axis = axis
        self.sizes = [b.shape[axis] for b in bottom]
        top[0].reshape(first[:axis] + (sum(self.sizes),) + first[axis + 1:])

    def forward(self, bottom, top):
        np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        start = 0
        index = [slice(None)] * dy.ndim
        for b, size, down in zip(bottom, self.sizes, propagate_down):
            if down:
                index[self.axis] = slice(start, start + size)
                np.copyto(b.diff, dy[tuple(index)])
            start += size


@register("Eltwise")
class EltwiseLayer(Layer):
    """Elementwise SUM (with per-bottom ``coeff``), PROD or MAX of equally shaped bottoms."""

    min_num_bottom = 2
    exact_num_top = 1
    PROD, SUM, MAX = 0, 1, 2

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottom):
            raise self.error(f"takes one coeff per bottom ({len(bottom)}), got {len(p.coeff)}")
        if p.coeff and self.op == self.PROD:
            raise self.error("coeff is only allowed for operation SUM")
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self.argmax: np.ndarray | None = None

    def reshape(self, bottom, top):
        for b in bottom[1:]:
            if b.shape != bottom[0].shape:
                raise self.shape_error("all bottoms must have the same shape", bottom)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        y = top[0].data
        if self.op == self.SUM:
            for i, (b, c) in enumerate(zip(bottom, self.coeffs)):
                term = b.data if c == 1.0 else b.data * c
                if i == 0:
                    np.copyto(y, term)
                else:
                    y += term
        elif self.op == self.PROD:
            np.multiply(bottom[0].data, bottom[1].data, out=y)
            for b in bottom[2:]:
                y *= b.data
        else:
            # Caffe's tie rule (it decides who gets the gradient): bottom 1 wins a tie
            # with bottom 0, a later bottom must be strictly greater
            a, b = bottom[0].data, bottom[1].data
            self.argmax = np.logical_not(a > b).astype(np.int32)
            np.maximum(a, b, out=y)
            for i, other in enumerate(bottom[2:], start=2):
                greater = other.data > y
                self.argmax += greater * (i - self.argmax)  # arithmetic beats masked writes
                np.maximum(y, other.data, out=y)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for i, (b, down) in enumerate(zip(bottom, propagate_down)):
            if not down:
                continue
            dx = b.diff
            if self.op == self.SUM:
                np.multiply(dy, self.coeffs[i], out=dx)
            elif self.op == self.PROD:
                if self.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != i]
                    np.copyto(dx, others[0])
                    for o in others[1:]:
                        dx *= o
                    dx *= dy
                else:
                    np.divide(top[0].data, b.data, out=dx)
                    dx *= dy
            else:
                np.multiply(dy, self.argmax == i, out=dx)

    def macc(self, bottom, top):
        return top[0].count * (len(bottom) - 1)


@register("Softmax")
class SoftmaxLayer(Layer):
    """Softmax along ``axis`` (max-subtracted); top has the bottom's shape. In-place safe."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom, self.param.softmax_param.axis)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        softmax(bottom[0].data, self.axis, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        # dx = y * (dy - <dy, y>) along the softmax axis
        dot = np.sum(dy * y, axis=self.axis, keepdims=True)
        dx = bottom[0].diff
        np.subtract(dy, dot, out=dx)
        dx *= y
