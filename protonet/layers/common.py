"""Common layers.

InnerProduct, Split, Flatten, Dropout, Concat, Eltwise, Softmax, Slice, Reshape, after
Caffe's ``src/caffe/layers/<name>_layer.cpp`` (the utility layers are in
:mod:`protonet.layers.utility`, Bias and Scale in :mod:`protonet.layers.scale_bias`).
Shapes are NCHW by convention but every layer here works on any number of axes unless
stated.
"""
from __future__ import annotations

import numpy as np

from .. import parallel
from ..blob import Blob
from ..kernels.affine import Epilogue, finish_views
from .base import TRAIN, Layer, register, elementwise_macc

#: multiply-adds per thread below which an inner product is not cut over the threads: a
#: part's hand-over to a worker costs more than so small a product (LeNet's ip2, 64x500x10
#: in two parts: 0.30 ms at two threads, 0.03 ms on the calling thread)
SPLIT_MIN_MACS = 1 << 22


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
        macs = self.M * self.K * self.num_output
        if macs < 2 * SPLIT_MIN_MACS:  # on the calling thread, BLAS at one thread
            return parallel.Parts([slice(0, n)], small=True)
        return parallel.split(n, macs)

    def forward(self, bottom, top, epilogue: Epilogue | None = None):
        """``epilogue`` (from :mod:`protonet.fuse`) stands for the top: what to write from
        the bias-free product (:class:`~protonet.kernels.affine.Epilogue`)."""
        x = bottom[0].data.reshape(self.M, self.K)
        w = self._weights_kn(self.blobs[0].data)
        b = self.blobs[1].data if self.bias_term else None
        ep = epilogue or Epilogue([(top[0].data, None, b)])
        arrays = [a.reshape(self.M, self.num_output) for a, _, _ in ep.outputs]

        def outputs(k, c):  # y[:, c] = x @ W[:, c], then the epilogue (+ b[c])
            views = [a[:, c] for a in arrays]
            parallel.matmul(x, w[:, c], out=views[0])
            finish_views(views, ep, axis=1, channels=c)
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
    """Joins bottoms along ``axis`` (legacy ``concat_dim``); other dims must agree.

    Joining along an axis after the first is a copy per item of the first axis: it is cut
    into one part per thread (:mod:`protonet.parallel`).
    """

    min_num_bottom = 1
    exact_num_top = 1
    splits_work = True

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

    def _parts(self, top) -> list[slice]:
        """Slices of the first axis copied concurrently (the whole of it for axis 0)."""
        n = top[0].shape[0] if top[0].shape else 1
        if self.axis == 0:
            return parallel.Parts([slice(0, n)], small=True)
        return parallel.split(n, top[0].count)

    def forward(self, bottom, top):
        y = top[0].data
        xs = [b.data for b in bottom]  # here: a deferred bottom is computed on this thread

        def work(k, s):
            np.concatenate([x[s] for x in xs], axis=self.axis, out=y[s])
        parallel.run(work, self._parts(top))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff

        def work(k, s):
            start = 0
            index = [s] + [slice(None)] * (dy.ndim - 1)
            for b, size, down in zip(bottom, self.sizes, propagate_down):
                if down:
                    index[self.axis] = slice(start, start + size)
                    np.copyto(b.diff[s], dy[tuple(index)])
                start += size
        parallel.run(work, self._parts(top))


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
            if self.coeffs[:2] == [1.0, 1.0]:  # one pass for the usual a + b
                a, b = bottom[0].data, bottom[1].data
                if y.ndim:  # over the threads, image by image (ResNet's, MobileNet v2's)
                    parallel.run(lambda k, s: np.add(a[s], b[s], out=y[s]),
                                 parallel.split(y.shape[0], y.size))
                else:
                    np.add(a, b, out=y)
                rest = zip(bottom[2:], self.coeffs[2:])
            else:
                rest = zip(bottom, self.coeffs)
                y[...] = 0
            for b, c in rest:
                if c == 1.0:
                    y += b.data
                else:
                    y += b.data * c
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
