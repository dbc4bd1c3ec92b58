"""The ONNX graph under construction: nodes, constants, value names, and the last passes.

Values are named by string, as ONNX wants. Converters ask :class:`Graph` for
fresh names (:meth:`Graph.unique`), add nodes (:meth:`Graph.node`) and weights
(:meth:`Graph.const`); numpy arrays stay numpy until :meth:`Graph.to_model`
turns everything into an ``onnx.ModelProto``. Between the two,
:func:`fold_affine` merges per-channel ``Mul``/``Add`` constants (BatchNorm,
Scale, Bias) into the convolution or inner product that produces their input,
and :meth:`Graph.rename` gives values their final (Caffe blob) names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: ONNX element types of the arrays constants are made from
_ELEM = {np.dtype(np.float32): 1, np.dtype(np.int64): 7, np.dtype(np.bool_): 9}


@dataclass
class Node:
    """One ONNX node: ``op`` over named ``inputs`` ("" for a skipped optional one)."""

    op: str
    inputs: list[str]
    outputs: list[str]
    name: str
    attrs: dict = field(default_factory=dict)


class Graph:
    """Nodes and initializers of one model, with a name registry that keeps names unique."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.used: set[str] = set()
        self.inputs: list[tuple[str, tuple]] = []   # (name, shape)

    # -- names --------------------------------------------------------------------------------
    def unique(self, hint: str) -> str:
        """``hint``, or ``hint_2``, ``hint_3``... -- the first not yet taken (and now taken)."""
        name, k = hint, 1
        while name in self.used:
            k += 1
            name = f"{hint}_{k}"
        self.used.add(name)
        return name

    # -- building -----------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(Node(op, list(inputs), list(outputs), self.unique(name), attrs))

    def const(self, array, hint: str, dtype=np.float32) -> str:
        """An initializer holding ``array`` (cast to ``dtype``); returns its name."""
        name = self.unique(hint)
        self.consts[name] = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        return name

    def add_input(self, name: str, shape: tuple) -> None:
        self.used.add(name)
        self.inputs.append((name, tuple(shape)))

    # -- final passes -------------------------------------------------------------------------
    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                out.setdefault(v, []).append(node)
        return out

    def rename(self, mapping: dict[str, str]) -> None:
        """Rename values (node inputs and outputs) by ``mapping``."""
        for node in self.nodes:
            node.inputs = [mapping.get(v, v) for v in node.inputs]
            node.outputs = [mapping.get(v, v) for v in node.outputs]

    def prune(self, keep: set[str]) -> None:
        """Drop nodes whose outputs nothing needs (``keep``: the graph outputs), and
        initializers no node reads."""
        needed = set(keep)
        live = []
        for node in reversed(self.nodes):
            if any(v in needed for v in node.outputs):
                live.append(node)
                needed.update(v for v in node.inputs if v)
        self.nodes = live[::-1]
        self.consts = {k: v for k, v in self.consts.items() if k in needed}
        self.inputs = [(n, s) for n, s in self.inputs if n in needed]

    def to_model(self, outputs: list[tuple[str, tuple]], graph_name: str, dynamic_batch: bool,
                 producer: str):
        """The ``onnx.ModelProto``: ``outputs`` are (name, shape); with ``dynamic_batch``
        the inputs' first dimension is the symbol ``N`` (outputs get inferred shapes)."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        def value_info(name, shape, dynamic):
            dims = [("N" if dynamic and i == 0 else int(d)) for i, d in enumerate(shape)]
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

        nodes = [helper.make_node(n.op, n.inputs, n.outputs, name=n.name, **n.attrs)
                 for n in self.nodes]
        inits = [numpy_helper.from_array(a, name) for name, a in self.consts.items()]
        graph = helper.make_graph(
            nodes, graph_name or "caffe",
            [value_info(n, s, dynamic_batch) for n, s in self.inputs],
            [value_info(n, s, False) for n, s in outputs], initializer=inits)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="protonet",
                                  producer_version=producer)
        model.ir_version = helper.find_min_ir_version_for(opsets)
        if dynamic_batch:
            # declare the outputs by rank only, then keep what shape inference finds for
            # them (a graph output's inferred type lands in graph.output, not value_info)
            for out in model.graph.output:
                for d in out.type.tensor_type.shape.dim:
                    d.Clear()
            inferred = onnx.shape_inference.infer_shapes(model)
            shapes = {o.name: o.type for o in inferred.graph.output}
            shapes.update({o.name: o.type for o in inferred.graph.value_info})
            for out in model.graph.output:
                if out.name in shapes:
                    out.type.CopyFrom(shapes[out.name])
        return model


def _channel_vector(array: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``array`` as a length-``channels`` vector when it broadcasts along axis 1 only of a
    rank-``rank`` tensor (shape ``(C, 1, ...)``, ``(1, C, 1, ...)`` or a single value)."""
    a = np.asarray(array)
    if a.size == 1 and a.ndim <= rank:
        return np.full(channels, a.reshape(()), a.dtype)
    trailing = (1,) * (rank - 2)
    if rank >= 2 and a.shape in ((channels,) + trailing, (1, channels) + trailing):
        return a.reshape(channels)
    return None


def fold_affine(graph: Graph, ranks: dict[str, int], channels: dict[str, int],
                protected: set[str]) -> int:
    """Fold ``Mul``/``Add`` by per-channel constants into the ``Conv``, ``ConvTranspose`` or
    ``Gemm`` (``transB=1``) whose output they alone read. Returns the number folded.

    ``ranks``/``channels``: rank and channel count (axis 1) of each producer's output;
    ``protected``: values that must survive (graph outputs). BatchNorm in inference
    becomes ``Mul(s) -> Add(t)`` and Scale ``Mul(s) -> Add(b)``, so a Conv + BatchNorm +
    Scale chain, in place as Caffe writes it, ends as one Conv with new weights.
    """
    folded = 0
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        producers = {v: n for n in graph.nodes for v in n.outputs}
        for node in list(graph.nodes):
            if node.op not in ("Mul", "Add") or len(node.inputs) != 2:
                continue
            x, c = node.inputs
            if c not in graph.consts and x in graph.consts:
                x, c = c, x
            src = producers.get(x)
            if (c not in graph.consts or src is None or x in protected
                    or src.op not in ("Conv", "ConvTranspose", "Gemm")
                    or len(consumers.get(x, [])) != 1 or x not in ranks):
                continue
            if src.op == "Gemm" and (src.attrs.get("transB") != 1 or src.attrs.get("transA")
                                     or src.attrs.get("alpha", 1.0) != 1.0
                                     or src.attrs.get("beta", 1.0) != 1.0):
                continue
            vec = _channel_vector(graph.consts[c], channels[x], ranks[x])
            if vec is None or any(len(consumers.get(v, [])) != 1 for v in src.inputs[1:]):
                continue
            _fold(graph, src, node.op, vec.astype(np.float64))
            src.outputs = [node.outputs[0]]
            ranks[node.outputs[0]], channels[node.outputs[0]] = ranks[x], channels[x]
            graph.nodes.remove(node)
            folded += 1
            changed = True
            break
    return folded


def _fold(graph: Graph, src: Node, op: str, vec: np.ndarray) -> None:
    """Scale (``Mul``) or shift (``Add``) the output channels of ``src`` by ``vec``."""
    out_channels = len(vec)
    if len(src.inputs) < 3 or not src.inputs[2]:
        bias_name = graph.const(np.zeros(out_channels), f"{src.name}/bias")
        src.inputs = src.inputs[:2] + [bias_name]
    w_name, b_name = src.inputs[1], src.inputs[2]
    b = graph.consts[b_name].astype(np.float64)
    if op == "Add":
        graph.consts[b_name] = (b + vec).astype(np.float32)
        return
    w = graph.consts[w_name].astype(np.float64)
    if src.op == "ConvTranspose":  # weight (C_in, O/group, k...): output o = g*(O/g) + j
        group = src.attrs.get("group", 1)
        view = w.reshape((group, w.shape[0] // group, w.shape[1]) + w.shape[2:])
        view *= vec.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
    else:  # Conv (O, C/group, k...) and Gemm with transB (O, K): output o is row o
        w *= vec.reshape((-1,) + (1,) * (w.ndim - 1))
    graph.consts[w_name] = w.astype(np.float32)
    graph.consts[b_name] = (b * vec).astype(np.float32)
