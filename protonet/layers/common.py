"""Common and utility layers.

InnerProduct, Split, Flatten, Dropout, Concat, Eltwise, Softmax, Slice, Reshape,
BatchReindex, Filter, Parameter, Reduction, Silence, ArgMax, Tile, Embed, Bias,
Scale, after Caffe's ``src/caffe/layers/<name>_layer.cpp``. Shapes are NCHW by
convention but every layer here works on any number of axes unless stated.
"""
from __future__ import annotations

import numpy as np

from .. import parallel
from ..blob import Blob
from ..proto import caffe_pb2
from .base import TRAIN, Layer, register, elementwise_macc


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
    splits_work = True

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

    def _parts(self, n: int) -> list[slice]:
        """Slices of ``n`` weight rows or columns that threads work on (each reads its own).

        One input row is a matrix-vector product: BLAS's own threads do it best.
        """
        if self.M == 1:
            return [slice(0, n)]
        return parallel.split(n, self.M * self.K * self.num_output)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        w = self._weights_kn(self.blobs[0].data)
        b = self.blobs[1].data if self.bias_term else None

        def outputs(k, c):  # y[:, c] = x @ W[:, c] (+ b[c])
            parallel.matmul(x, w[:, c], out=y[:, c])
            if b is not None:
                y[:, c] += b[c]
        parallel.run(outputs, self._parts(self.num_output))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        # the net sets param_propagate_down (False for lr_mult 0); default: every param
        params_down = getattr(self, "param_propagate_down", None) or [True] * len(self.blobs)
        dw = self.blobs[0].diff
        db = self.blobs[1].diff if self.bias_term and params_down[1] else None

        def param_grads(k, c):  # dW for outputs c: x^T @ dy[:, c]; db[c] += sum of dy[:, c]
            if params_down[0] and self.transpose:
                dw[:, c] += parallel.matmul(x.T, dy[:, c])
            elif params_down[0]:
                dw[c] += parallel.matmul(dy[:, c].T, x)
            if db is not None:
                db[c] += dy[:, c].sum(axis=0)
        if params_down[0] or db is not None:
            parallel.run(param_grads, self._parts(self.num_output))
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            w = self._weights_kn(self.blobs[0].data)

            def input_grads(k, r):  # dx[:, r] = dy @ W[r, :]^T
                parallel.matmul(dy, w[r].T, out=dx[:, r])
            parallel.run(input_grads, self._parts(self.K))

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
    TEST: ``y = x``. Any shape; in-place safe (the scaled mask is kept for backward).
    ``scale_train: false`` (caffe-fast-rcnn's field, py-faster-rcnn's nets) moves the
    scaling to test time: TRAIN ``y = x * mask``, TEST ``y = x * (1 - ratio)``."""
    macc = elementwise_macc

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.scale_train = bool(self.param.dropout_param.scale_train)
        # the factor at test time: 1, or 1 - ratio when training did not scale
        self.test_scale = 1.0 if self.scale_train else 1.0 - self.ratio
        self.mask: np.ndarray | None = None

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.phase != TRAIN:
            if self.test_scale != 1.0:
                np.multiply(x, self.dtype.type(self.test_scale), out=top[0].data)
            elif top[0] is not bottom[0]:
                np.copyto(top[0].data, x)
            return
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.ratio
        # the mask holds 0 or 1/(1 - ratio), so forward and backward are one multiply
        self.mask = keep.astype(self.dtype)
        if self.scale_train:
            self.mask *= self.scale
        np.multiply(x, self.mask, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase != TRAIN:
            if self.test_scale != 1.0:
                np.multiply(top[0].diff, self.dtype.type(self.test_scale), out=bottom[0].diff)
            elif top[0] is not bottom[0]:
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
    macc = elementwise_macc

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


def _scatter_add_rows(dst: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
    """``dst[index[m]] += rows[m]`` for every m, repeated indices summed in order of m.

    A stable sort groups equal indices and one ``add.reduceat`` sums each group
    (about twice as fast as ``np.add.at``). ``dst`` is (K, D), ``rows`` (M, D).
    """
    if index.size == 0:
        return
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_index[1:] != sorted_index[:-1])))
    dst[sorted_index[starts]] += np.add.reduceat(rows[order], starts, axis=0)


def _indices(layer: Layer, values: np.ndarray, limit: int, what: str) -> np.ndarray:
    """Float-coded indices as int64 (truncated, as Caffe's static_cast), checked to lie in
    ``[0, limit)``."""
    flat = values.reshape(-1)
    bad = ~((flat >= 0) & (flat < limit))  # catches NaN too
    if bad.any():
        first = flat[np.argmax(bad)]
        raise layer.error(f"{what} must lie in [0, {limit}), got {first:g}")
    return flat.astype(np.int64)


@register("Slice")
class SliceLayer(Layer):
    """Cuts bottom along ``axis`` (legacy ``slice_dim``) at ``slice_point``s into the tops;
    without points the axis is split evenly among the tops."""

    exact_num_bottom = 1
    min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("give either slice_param.axis or slice_dim, not both")
        self.points = [int(v) for v in p.slice_point]

    def reshape(self, bottom, top):
        p = self.param.slice_param
        shape = bottom[0].shape
        if p.HasField("slice_dim"):
            if p.slice_dim >= len(shape):
                raise self.shape_error(
                    f"slice_dim {p.slice_dim} is out of range for a {len(shape)}-axis bottom",
                    bottom)
            axis = int(p.slice_dim)
        else:
            axis = canonical_axis(self, bottom, p.axis)
        size, n = shape[axis], len(top)
        if self.points:
            if len(self.points) != n - 1:
                raise self.error(f"{len(self.points)} slice_point(s) make {len(self.points) + 1} "
                                 f"pieces, but the layer has {n} top(s)")
            if n > size:
                raise self.shape_error(f"cannot cut axis {axis} of size {size} into {n} pieces",
                                       bottom)
            bounds = [0] + self.points + [size]
            if any(b <= a for a, b in zip(bounds[:-2], bounds[1:-1])) or bounds[-2] > size:
                raise self.shape_error(
                    f"slice_point {self.points} must increase strictly, start above 0 and not "
                    f"pass the size {size} of axis {axis}", bottom)
            sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            if size % n:
                raise self.shape_error(
                    f"{n} tops do not divide axis {axis} of size {size} evenly", bottom)
            sizes = [size // n] * n
        self.axis, self.sizes = axis, sizes
        for t, s in zip(top, sizes):
            t.reshape(shape[:axis] + (s,) + shape[axis + 1:])

    def forward(self, bottom, top):
        if len(top) == 1:  # the whole bottom: share it, as Caffe does
            if top[0] is not bottom[0]:
                top[0].share_data(bottom[0])
            return
        x = bottom[0].data
        index = [slice(None)] * x.ndim
        start = 0
        for t, size in zip(top, self.sizes):
            index[self.axis] = slice(start, start + size)
            np.copyto(t.data, x[tuple(index)])
            start += size

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if len(top) == 1:
            if top[0] is not bottom[0]:
                np.copyto(bottom[0].diff, top[0].diff)
            return
        np.concatenate([t.diff for t in top], axis=self.axis, out=bottom[0].diff)


@register("Reshape")
class ReshapeLayer(Layer):
    """Gives bottom a new shape without copying: the top shares the bottom's data.

    ``reshape_param.shape`` replaces bottom axes ``[axis, axis + num_axes)``
    (``num_axes: -1``: through the last axis; negative ``axis`` counts from one
    past the end); a 0 copies the bottom dim at that position, one -1 is
    inferred from the element count. The diff is copied in backward (so that
    backward, like every layer's, overwrites the bottom diff).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        dims = [int(d) for d in self.param.reshape_param.shape.dim]
        if any(d < -1 for d in dims):
            raise self.error(f"shape {dims}: dims must be positive, 0 (copy) or -1 (infer)")
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise self.error(f"shape {dims} has {len(inferred)} -1 dims; at most one can be "
                             "inferred")
        self.dims = dims
        self.inferred = inferred[0] if inferred else None
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]

    def reshape(self, bottom, top):
        p = self.param.reshape_param
        shape, n = bottom[0].shape, bottom[0].num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.shape_error(f"axis {p.axis} is out of range for a {n}-axis bottom",
                                   bottom)
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= 0, or -1 for all, got {p.num_axes}")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.shape_error(f"axis {start} + num_axes {p.num_axes} runs past the "
                                   f"{n}-axis bottom", bottom)
        new = list(self.dims)
        for i in self.copy_axes:
            if start + i >= n:
                raise self.shape_error(
                    f"shape {self.dims}: the 0 at position {i} has no bottom axis "
                    f"{start + i} to copy", bottom)
            new[i] = shape[start + i]
        if self.inferred is not None:
            known = int(np.prod([d for i, d in enumerate(new) if i != self.inferred],
                                dtype=np.int64))
            known *= bottom[0].count_range(0, start) * bottom[0].count_range(end)
            if known == 0 or bottom[0].count % known:
                raise self.shape_error(
                    f"shape {self.dims}: bottom count {bottom[0].count} is not divisible by "
                    f"the product of the other dims ({known})", bottom)
            new[self.inferred] = bottom[0].count // known
        new_shape = shape[:start] + tuple(new) + shape[end:]
        count = int(np.prod(new_shape, dtype=np.int64))
        if count != bottom[0].count:
            raise self.shape_error(
                f"shape {self.dims} gives top shape {list(new_shape)} of {count} elements; "
                f"the bottom has {bottom[0].count}", bottom)
        top[0].reshape(new_shape)
        top[0].share_data(bottom[0])

    def forward(self, bottom, top):
        top[0].share_data(bottom[0])  # again, in case the bottom's memory was replaced

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.copyto(bottom[0].diff, top[0].diff.reshape(bottom[0].shape))


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """top[m] = bottom[0][index[m]] with the 1-D bottom[1] holding (float) indices into
    axis 0; backward sums the top diffs of repeated indices. No gradient to the indices."""

    exact_num_bottom = 2
    exact_num_top = 1

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.shape_error("the index bottom (bottom[1]) must be 1-D", bottom)
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom[0] needs a batch axis", bottom)
        top[0].reshape(bottom[1].shape[:1] + bottom[0].shape[1:])

    def forward(self, bottom, top):
        self.index = _indices(self, bottom[1].data, bottom[0].shape[0], "reindex indices")
        np.take(bottom[0].data, self.index, axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            _scatter_add_rows(dx.reshape(dx.shape[0], -1), self.index,
                              top[0].diff.reshape(len(self.index), -1))
        if propagate_down[1]:
            bottom[1].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("Filter")
class FilterLayer(Layer):
    """Keeps the items (axis-0 rows) whose selector is non-zero.

    The last bottom is the selector ``(N, 1, ...)``; top ``k`` holds the selected
    rows of bottom ``k``. As in Caffe, the first reshape (at setup, before any
    data) sizes the tops with all ``N`` rows; later passes use the selection.
    Backward copies the diffs back and zero-fills the rows that were dropped;
    the selector gets no gradient.
    """

    min_num_bottom = 2
    min_num_top = 1

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error(f"needs one top per filtered bottom ({len(bottom) - 1}), "
                             f"got {len(top)}")
        self.first_reshape = True
        self.num_bottom = len(bottom)

    def _select(self, bottom):
        self.keep = np.flatnonzero(bottom[-1].data.reshape(-1))  # (N, 1, ...): one per item

    def reshape(self, bottom, top):
        selector = bottom[-1]
        if selector.num_axes < 1 or any(d != 1 for d in selector.shape[1:]):
            raise self.shape_error("the selector (last bottom) must have shape (N, 1, ...)",
                                   bottom)
        n = selector.shape[0]
        if any(b.num_axes < 1 or b.shape[0] != n for b in bottom[:-1]):
            raise self.shape_error(f"every bottom needs the selector's {n} items on axis 0",
                                   bottom)
        if self.first_reshape:
            self.first_reshape = False
            self.keep = np.arange(n)
        else:
            self._select(bottom)
        for b, t in zip(bottom, top):
            t.reshape((len(self.keep),) + b.shape[1:])

    def forward(self, bottom, top):
        self._select(bottom)  # from the selector's current data (the net reshaped already)
        for b, t in zip(bottom, top):
            t.reshape((len(self.keep),) + b.shape[1:])
            np.take(b.data, self.keep, axis=0, out=t.data)

    def backward(self, top, propagate_down, bottom):
        for b, t, down in zip(bottom, top, propagate_down):
            if down:
                dx = b.diff
                dx[...] = 0
                dx[self.keep] = t.diff
        if propagate_down[-1]:
            bottom[-1].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index < self.num_bottom - 1


@register("Parameter")
class ParameterLayer(Layer):
    """One learnable blob of ``parameter_param.shape``, exposed as the top (sharing its data).

    The blob starts at zero (Caffe gives it no filler). Backward adds the top diff
    to the blob's diff.
    """

    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error(f"parameter_param.shape {list(shape)} has a negative dim")
        self.add_param(shape, None)

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        top[0].share_data(self.blobs[0])

    def forward(self, bottom, top):
        top[0].share_data(self.blobs[0])

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff


@register("Reduction")
class ReductionLayer(Layer):
    """SUM, ASUM (sum of |x|), SUMSQ or MEAN over all axes from ``axis`` on, times ``coeff``.

    Top keeps the axes before ``axis`` (``axis: 0``, the default, gives a scalar).
    """

    exact_num_bottom = 1
    exact_num_top = 1
    SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4

    def layer_setup(self, bottom, top):
        self.op = self.param.reduction_param.operation
        if self.op not in (self.SUM, self.ASUM, self.SUMSQ, self.MEAN):
            raise self.error(f"unknown reduction operation {self.op}")

    def reshape(self, bottom, top):
        p = self.param.reduction_param
        self.axis = canonical_axis(self, bottom, p.axis)
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        top[0].reshape(bottom[0].shape[:self.axis])
        coeff = self.dtype.type(p.coeff)
        if self.op == self.MEAN:  # Caffe divides in the layer's precision
            coeff = coeff / self.dtype.type(self.dim)
        self.coeff = float(coeff)  # a Python float keeps float32 arrays float32

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        y = top[0].data.reshape(self.num)
        if self.op in (self.SUM, self.MEAN):
            np.sum(x, axis=1, out=y)
        elif self.op == self.ASUM:
            np.sum(np.abs(x), axis=1, out=y)
        else:
            np.einsum("ij,ij->i", x, x, out=y)
        if self.coeff != 1.0:
            y *= self.coeff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = top[0].diff.reshape(self.num, 1) * self.coeff
        dx = bottom[0].diff.reshape(self.num, self.dim)
        x = bottom[0].data.reshape(self.num, self.dim)
        if self.op in (self.SUM, self.MEAN):
            dx[...] = g
        elif self.op == self.ASUM:
            np.sign(x, out=dx)
            dx *= g
        else:
            np.multiply(x, 2 * g, out=dx)

    def macc(self, bottom, top):
        return bottom[0].count


@register("Silence")
class SilenceLayer(Layer):
    """Consumes any number of bottoms and produces nothing (keeps them from being outputs);
    backward zero-fills the bottom diffs."""

    min_num_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0


@register("ArgMax")
class ArgMaxLayer(Layer):
    """The ``top_k`` largest entries, as indices (float) and optionally values.

    Without ``axis``: over each item's flattened non-batch axes; top
    ``(N, 1, top_k)`` of indices, or ``(N, 2, top_k)`` with ``out_max_val`` (indices
    then values), padded with 1-dims to the bottom's axis count. With ``axis``:
    that axis becomes ``top_k`` long and holds indices, or only the values with
    ``out_max_val``. Order as Caffe's ``partial_sort`` with ``greater`` on
    (value, index) pairs: larger values first, and among equal values the
    larger index first. No backward.
    """
    macc = elementwise_macc

    exact_num_bottom = 1
    exact_num_top = 1
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.argmax_param
        self.out_max_val = p.out_max_val
        self.top_k = int(p.top_k)
        if self.top_k < 1:
            raise self.error("argmax_param.top_k must be at least 1")
        self.has_axis = p.HasField("axis")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if self.has_axis:
            self.axis = canonical_axis(self, bottom, self.param.argmax_param.axis)
            dim = shape[self.axis]
            out = shape[:self.axis] + (self.top_k,) + shape[self.axis + 1:]
        else:
            if not shape:
                raise self.shape_error("the bottom needs a batch axis", bottom)
            dim = bottom[0].count_range(1)
            out = [1] * max(3, len(shape))
            out[0], out[1], out[2] = shape[0], 2 if self.out_max_val else 1, self.top_k
            out = tuple(out)
        if self.top_k > dim:
            where = f"axis {self.axis}" if self.has_axis else "each item"
            raise self.shape_error(f"top_k ({self.top_k}) exceeds the {dim} entries of {where}",
                                   bottom)
        top[0].reshape(out)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.has_axis:
            outer = bottom[0].count_range(0, self.axis)
            inner = bottom[0].count_range(self.axis + 1)
            rows = x.reshape(outer, -1, inner).transpose(0, 2, 1)  # (outer, inner, dim)
        else:
            rows = x.reshape(x.shape[0], 1, -1)
        dim = rows.shape[-1]
        flipped = rows[..., ::-1]  # the first hit in reversed order is the largest index
        if self.top_k == 1:
            order = np.argmax(flipped, axis=-1)[..., None]
        else:
            order = np.argsort(-flipped, axis=-1, kind="stable")[..., :self.top_k]
        index = (dim - 1) - order
        y = top[0].data
        if self.has_axis:
            picked = np.take_along_axis(rows, index, -1) if self.out_max_val else index
            y.reshape(outer, self.top_k, inner)[...] = picked.transpose(0, 2, 1)
        else:
            y = y.reshape(x.shape[0], -1, self.top_k)
            y[:, 0] = index[:, 0]
            if self.out_max_val:
                y[:, 1] = np.take_along_axis(rows, index, -1)[:, 0]


@register("Tile")
class TileLayer(Layer):
    """Repeats the bottom ``tiles`` times along ``axis`` (whole blocks, like np.tile);
    backward sums the copies."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles must be given")
        if p.tiles < 1:
            raise self.error(f"tile_param.tiles must be positive, got {p.tiles}")
        self.tiles = int(p.tiles)

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom, self.param.tile_param.axis)
        shape = bottom[0].shape
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)
        top[0].reshape(shape[:self.axis] + (shape[self.axis] * self.tiles,)
                       + shape[self.axis + 1:])

    def forward(self, bottom, top):
        y = top[0].data.reshape(self.outer, self.tiles, self.inner)
        y[...] = bottom[0].data.reshape(self.outer, 1, self.inner)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.sum(top[0].diff.reshape(self.outer, self.tiles, self.inner), axis=1,
                   out=bottom[0].diff.reshape(self.outer, self.inner))


@register("Embed")
class EmbedLayer(Layer):
    """Table lookup: bottom holds integer indices (as float) in ``[0, input_dim)``;
    top ``bottom.shape + (num_output,)`` = ``W[index] (+ b)``.

    W is ``(input_dim, num_output)`` (transposed from InnerProduct), b ``(num_output,)``.
    Backward adds each top row's diff into its W row; the indices get no gradient.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.embed_param
        if p.num_output < 1:
            raise self.error("embed_param.num_output must be given and positive")
        if p.input_dim < 1:
            raise self.error("embed_param.input_dim must be given and positive")
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        self.bias_term = p.bias_term
        self.add_param((self.input_dim, self.num_output), p.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), p.bias_filler)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def forward(self, bottom, top):
        x = bottom[0].data
        self.index = _indices(self, x, self.input_dim, "embed indices")
        if not np.array_equal(self.index, x.reshape(-1)):
            raise self.error("embed indices must be integers")
        y = top[0].data.reshape(-1, self.num_output)
        np.take(self.blobs[0].data, self.index, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            _scatter_add_rows(self.blobs[0].diff, self.index, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:  # indices: zero gradient (Caffe refuses)
            bottom[0].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return False


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
