"""Utility layers: BatchReindex, Filter, Parameter, Reduction, Silence, ArgMax, Tile,
Embed, after Caffe's ``src/caffe/layers/<name>_layer.cpp``.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, elementwise_macc, register
from .common import canonical_axis


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
