"""Common layers: InnerProduct, Split, Dropout (``scale_train: false`` included), Flatten,
Reshape, Concat, Slice, Eltwise, Softmax, Tile, Reduction, ArgMax, Embed, Bias, Scale,
BatchReindex, Filter.

Shapes written into the graph copy the batch dimension (ONNX ``Reshape``'s 0) or
infer it (-1) rather than fix it, so a model exported with a dynamic batch runs
at any batch size. Caffe's operands that line up with axes ``axis ..`` (Bias,
Scale) are reshaped with trailing 1s for ONNX's right-aligned broadcasting.
"""
from __future__ import annotations

import math

import numpy as np

from .registry import INT64_MAX, exporter


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@exporter("InnerProduct")
def inner_product(L):
    """``Gemm`` (``transB=1``) over ``(N, K)`` when ``axis`` is 1; else ``MatMul`` over
    the input viewed as ``(d0, .., d_{axis-1}, K)``."""
    p = L.layer
    shape, axis = L.in_shapes[0], p.axis
    w = L.weight(0)
    w = w.T if p.transpose else w  # (O, K)
    x = L.inputs[0]
    bias = [L.const(L.weight(1), "bias")] if p.bias_term else []
    if axis == 1:
        if len(shape) != 2:
            x = L.node("Flatten", [x], axis=1)
        L.node("Gemm", [x, L.const(w, "weight")] + bias, [L.out(0)], transB=1)
        return
    if len(shape) != axis + 1:
        x = L.reshape(x, [0] * axis + [-1])
    if bias:
        y = L.node("MatMul", [x, L.const(w.T, "weight")])
        L.node("Add", [y] + bias, [L.out(0)])
    else:
        L.node("MatMul", [x, L.const(w.T, "weight")], [L.out(0)])


@exporter("Split")
def identity(L):
    """Split's tops share the bottom."""
    for j in range(len(L.tops)):
        L.alias(j, L.inputs[0])


@exporter("Dropout")
def dropout(L):
    """Dropout in TEST is the identity -- or, with ``scale_train: false`` (caffe-fast-rcnn,
    py-faster-rcnn's nets), a multiplication by ``1 - dropout_ratio``."""
    factor = getattr(L.layer, "test_scale", 1.0)
    if factor == 1.0:
        L.alias(0, L.inputs[0])
    else:
        L.binary("Mul", L.inputs[0], np.float32(factor), "keep", out=L.out(0))


@exporter("Flatten")
def flatten(L):
    p = L.param.flatten_param
    shape = L.in_shapes[0]
    start, end = _axis(p.axis, len(shape)), _axis(p.end_axis, len(shape))
    if start == 1 and end == len(shape) - 1:
        L.node("Flatten", [L.inputs[0]], [L.out(0)], axis=1)
        return
    L.reshape(L.inputs[0], [0] * start + [-1] + list(shape[end + 1:]), L.out(0))


@exporter("Reshape")
def reshape(L):
    """Caffe's ``shape`` over axes ``[axis, axis + num_axes)``: the axes before are copied
    (0), a 0 in ``shape`` copies the same input axis in both Caffe and ONNX, -1 is inferred
    in both, and the axes after are written out."""
    p = L.param.reshape_param
    shape = L.in_shapes[0]
    n = len(shape)
    start = p.axis if p.axis >= 0 else n + p.axis + 1
    end = n if p.num_axes == -1 else start + p.num_axes
    dims = list(L.layer.dims)
    if L.dynamic and start == 0 and dims and dims[0] > 0:
        L.fail(f"its shape {dims} fixes the batch size ({dims[0]}), so the model cannot "
               "take a dynamic batch")
    L.reshape(L.inputs[0], [0] * start + dims + list(shape[end:]), L.out(0))


@exporter("Concat")
def concat(L):
    L.node("Concat", L.inputs, [L.out(0)], axis=L.layer.axis)


@exporter("Slice")
def slice_layer(L):
    p = L.layer
    if len(L.tops) == 1:
        L.alias(0, L.inputs[0])
        return
    outs = [L.out(j) for j in range(len(L.tops))]
    even = not p.points
    if L.dynamic and p.axis == 0:
        if not even:
            L.fail(f"it cuts the batch axis at fixed points {p.points}, so the model cannot "
                   "take a dynamic batch")
        if L.opset >= 18:
            L.node("Split", [L.inputs[0]], outs, axis=0, num_outputs=len(outs))
        else:
            L.node("Split", [L.inputs[0]], outs, axis=0)
        return
    L.node("Split", [L.inputs[0], L.ints(p.sizes, "split")], outs, axis=p.axis)


@exporter("Eltwise")
def eltwise(L):
    p = L.layer
    xs = L.inputs
    if p.op == p.SUM:
        xs = [x if c == 1 else L.binary("Mul", x, c, f"coeff{i}")
              for i, (x, c) in enumerate(zip(L.inputs, p.coeffs))]
        L.node("Add" if len(xs) == 2 else "Sum", xs, [L.out(0)])
    elif p.op == p.PROD:
        y = xs[0]
        for i, x in enumerate(xs[1:], 1):
            y = L.node("Mul", [y, x], [L.out(0)] if i == len(xs) - 1 else None)
    else:
        L.node("Max", xs, [L.out(0)])


@exporter("Softmax")
def softmax(L):
    L.node("Softmax", [L.inputs[0]], [L.out(0)], axis=L.layer.axis)


@exporter("Tile")
def tile(L):
    repeats = [1] * len(L.in_shapes[0])
    repeats[L.layer.axis] = L.layer.tiles
    L.node("Tile", [L.inputs[0], L.ints(repeats, "repeats")], [L.out(0)])


@exporter("Reduction")
def reduction(L):
    """SUM, ASUM (``ReduceL1``), SUMSQ (``ReduceSumSquare``), MEAN (a sum times
    ``coeff / count``, as Caffe) over the axes from ``axis`` on, times ``coeff``."""
    p = L.layer
    op = {p.SUM: "ReduceSum", p.ASUM: "ReduceL1", p.SUMSQ: "ReduceSumSquare",
          p.MEAN: "ReduceSum"}[p.op]
    axes = range(p.axis, len(L.in_shapes[0]))
    if p.coeff == 1.0:
        L.reduce(op, L.inputs[0], axes, L.out(0))
    else:
        L.binary("Mul", L.reduce(op, L.inputs[0], axes), p.coeff, "coeff", out=L.out(0))


@exporter("ArgMax")
def argmax(L):
    """``TopK`` over the reversed axis, so that among equal values the larger index comes
    first, as Caffe's sort of (value, index) pairs has it; indices as float."""
    p = L.layer
    shape = L.in_shapes[0]
    x = L.inputs[0]
    if p.has_axis:
        axis, dim = p.axis, shape[p.axis]
    else:
        axis, dim = 1, math.prod(shape[1:])
        if len(shape) != 2:
            x = L.reshape(x, [0, -1])
    flipped = L.node("Slice", [x, L.ints([-1], "start"), L.ints([-INT64_MAX], "end"),
                               L.ints([axis], "axis"), L.ints([-1], "step")])
    values, picked = L.node("TopK", [flipped, L.ints([p.top_k], "k")],
                            [L.tmp("values"), L.tmp("picked")], axis=axis, largest=1, sorted=1)
    index = L.node("Sub", [L.ints([dim - 1], "last"), picked])
    if p.has_axis:
        if p.out_max_val:
            L.node("Identity", [values], [L.out(0)])
        else:
            L.node("Cast", [index], [L.out(0)], to=1)
        return
    parts = [L.node("Cast", [index], to=1)] + ([values] if p.out_max_val else [])
    rank = len(L.out_shapes[0])
    if rank == 3:
        parts = [L.unsqueeze(v, [1]) for v in parts]
    else:
        parts = [L.reshape(v, [0, 1, p.top_k] + [1] * (rank - 3)) for v in parts]
    if len(parts) == 1:
        L.node("Identity", parts, [L.out(0)])
    else:
        L.node("Concat", parts, [L.out(0)], axis=1)


@exporter("Embed")
def embed(L):
    p = L.layer
    L.index_input(0, p.input_dim)
    index = L.node("Cast", [L.inputs[0]], to=7)
    if p.bias_term:
        rows = L.node("Gather", [L.const(L.weight(0), "weight"), index], axis=0)
        L.node("Add", [rows, L.const(L.weight(1), "bias")], [L.out(0)])
    else:
        L.node("Gather", [L.const(L.weight(0), "weight"), index], [L.out(0)], axis=0)


@exporter("BatchReindex")
def batch_reindex(L):
    L.index_input(1, L.in_shapes[0][0])
    index = L.node("Cast", [L.inputs[1]], to=7)
    L.node("Gather", [L.inputs[0], index], [L.out(0)], axis=0)


@exporter("Filter")
def filter_layer(L):
    """``Compress`` along axis 0 by the selector's non-zero items (the count of kept
    items depends on the data, as in Caffe)."""
    keep = L.node("Cast", [L.reshape(L.inputs[-1], [-1])], to=9)
    for j, x in enumerate(L.inputs[:-1]):
        L.node("Compress", [x, keep], [L.out(j)], axis=0)


def _lined_up(L, value: str, operand_shape: tuple, axis: int, learned: np.ndarray | None):
    """An operand spanning axes ``axis .. axis+len(operand_shape)-1`` of bottom 0, shaped to
    broadcast over it: a constant with trailing 1s, or the bottom reshaped so."""
    rank = len(L.in_shapes[0])
    n = len(operand_shape)
    trailing = rank - axis - n if n else 0
    if learned is not None:
        return L.const(learned.reshape(tuple(operand_shape) + (1,) * trailing), "operand")
    if not trailing:
        return value
    return L.reshape(value, [0] * n + [1] * trailing)


def _operand_axis(L, axis_param: int, operand_shape) -> int:
    return 0 if not len(operand_shape) else _axis(axis_param, len(L.in_shapes[0]))


def _second_operand(L, axis_param: int):
    """Bias's or Scale's operand, the learned blob or bottom 1, lined up with bottom 0."""
    learned = L.weight(0) if len(L.inputs) == 1 else None
    shape = learned.shape if learned is not None else L.in_shapes[1]
    return _lined_up(L, L.inputs[-1], shape, _operand_axis(L, axis_param, shape), learned)


@exporter("Bias")
def bias(L):
    L.node("Add", [L.inputs[0], _second_operand(L, L.param.bias_param.axis)], [L.out(0)])


@exporter("Scale")
def scale(L):
    p = L.param.scale_param
    s = _second_operand(L, p.axis)
    if not L.layer.bias_term:
        L.node("Mul", [L.inputs[0], s], [L.out(0)])
        return
    b = L.weight(len(L.layer.blobs) - 1)
    bias_value = _lined_up(L, "", b.shape, _operand_axis(L, p.axis, b.shape), b)
    L.node("Add", [L.node("Mul", [L.inputs[0], s]), bias_value], [L.out(0)])


@exporter("RNN", "LSTM", "LSTMUnit")
def recurrent(L):
    L.fail("Caffe's recurrent layers (with their sequence-continuation input) have no "
           "exact ONNX counterpart")
