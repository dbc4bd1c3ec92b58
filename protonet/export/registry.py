"""Exporters by Caffe type string, and :class:`LayerExport`, what each one is given.

An exporter is a function of one :class:`LayerExport` registered for one or more
Caffe ``type:`` strings::

    @exporter("ReLU")
    def relu(L):
        slope = L.layer.slope
        if slope == 0:
            L.node("Relu", [L.inputs[0]], [L.out(0)])
        else:
            L.node("LeakyRelu", [L.inputs[0]], [L.out(0)], alpha=slope)

It writes ONNX nodes that compute top ``j`` into ``L.out(j)`` (or passes an
existing value on with :meth:`LayerExport.alias`), reading the bottoms
``L.inputs`` whose Caffe shapes are ``L.in_shapes``; the built protonet layer
(``L.layer``: parsed parameters, learned ``blobs``) says everything else. A
layer ONNX cannot express calls :meth:`LayerExport.fail` with the reason.
Types added later (the fork layers) register the same way, in a module that
:mod:`protonet.export` imports.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: Caffe type string -> exporter
EXPORTERS: dict[str, Callable] = {}

INT64_MAX = 2 ** 63 - 1
#: Caffe type -> the newest opset whose version of its ONNX op onnxruntime runs, where
#: that is below what it runs otherwise: the default opset of a net holding one stops there
OPSET_LIMITS: dict[str, int] = {}


def exporter(*types: str):
    """Decorator: register ``fn`` as the exporter of the Caffe layer ``types``."""
    def decorate(fn):
        for t in types:
            if t in EXPORTERS and EXPORTERS[t] is not fn:
                raise RuntimeError(f"ONNX exporter for '{t}' registered twice")
            EXPORTERS[t] = fn
        return fn
    return decorate


class Unexportable(Exception):
    """Raised by an exporter: ONNX has no exact expression for this layer (the reason)."""


class LayerExport:
    """One layer of the net being exported, as its exporter sees it.

    ``layer`` (the protonet layer, set up: parameters parsed, ``blobs`` learned),
    ``param`` (its ``LayerParameter``), ``name``, ``type``; ``bottoms``/``tops``
    (Caffe blob names); ``inputs`` (the ONNX values holding the bottoms) and
    ``in_shapes``/``out_shapes`` (Caffe shapes, batch included); ``opset``;
    ``dynamic`` (the batch dimension is symbolic: shapes written into the graph
    must not fix it); ``bottom_blobs`` (the built net's bottom blobs, for a layer
    whose output depends on shapes only: it can be run at export time).
    """

    def __init__(self, session, index: int, inputs: list[str], name_for):
        net = session.net
        self._session = session
        self.graph = session.graph
        self.layer = net.layers[index]
        self.param = self.layer.param
        self.name = net.layer_names[index]
        self.type = self.layer.type
        self.bottoms = list(net.layer_bottoms[index])
        self.tops = list(net.layer_tops[index])[:len(net.top_vecs[index])]
        self.inputs = list(inputs)
        self.in_shapes = [tuple(b.shape) for b in net.bottom_vecs[index]]
        #: the built net's bottom blobs (for layers whose output depends on shapes only)
        self.bottom_blobs = list(net.bottom_vecs[index])
        self.out_shapes = [tuple(t.shape) for t in net.top_vecs[index]]
        self.opset = session.opset
        self.dynamic = session.dynamic_batch
        self._name_for = name_for  # j -> the ONNX name of top j's new value
        self._out_names: dict[int, str] = {}
        self.results: list[str | None] = [None] * len(self.tops)

    # -- values -------------------------------------------------------------------------------
    def out(self, j: int) -> str:
        """The ONNX name that top ``j`` is to be computed into."""
        if self._out_names.get(j) is None:
            self._out_names[j] = self._name_for(j)
        self.results[j] = self._out_names[j]
        return self._out_names[j]

    def alias(self, j: int, value: str) -> None:
        """Top ``j`` is the existing value ``value`` (Split, Dropout, a constant)."""
        self.results[j] = value

    def tmp(self, hint: str = "t") -> str:
        """A fresh name for an intermediate value."""
        return self.graph.unique(f"{self.name}/{hint}")

    def weight(self, k: int) -> np.ndarray:
        """Learned blob ``k`` (float64 copy, for exact arithmetic before the cast)."""
        return np.array(self.layer.blobs[k].data, dtype=np.float64)

    def const(self, array, hint: str, dtype=np.float32) -> str:
        return self.graph.const(array, f"{self.name}/{hint}", dtype)

    def ints(self, values, hint: str = "shape") -> str:
        """A 1-D int64 constant (shapes, axes, pads, indices)."""
        return self.graph.const(np.asarray(values, np.int64).reshape(-1), f"{self.name}/{hint}",
                                np.int64)

    def node(self, op: str, inputs: list[str], outputs=None, **attrs):
        """Add ``op``; ``outputs``: names, or None for one fresh name. Returns the first
        output's name (or all of them, for several)."""
        if outputs is None:
            outputs = [self.tmp(op.lower())]
        self.graph.node(op, inputs, outputs, f"{self.name}/{op}", **attrs)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    # -- what the driver needs to know ----------------------------------------------------------
    def graph_input(self, j: int) -> None:
        """Top ``j`` becomes a graph input, named after its blob (kept only if used)."""
        self.results[j] = self._session.add_input(self.tops[j], self.out_shapes[j], self.name)

    def index_input(self, j: int, limit: int) -> None:
        """Bottom ``j`` holds integer indices in ``[0, limit)``: when it is a graph input,
        the check draws such indices for it."""
        self._session.index_inputs.setdefault(self.inputs[j], limit)

    def region_input(self, j: int, image_hw: tuple[float, float]) -> None:
        """Bottom ``j`` holds regions ``[batch_index, x1, y1, x2, y2]`` on images of
        ``image_hw`` pixels whose batch is bottom 0's: when it is a graph input, the check
        draws such regions for it."""
        images = self.in_shapes[0][0] if self.in_shapes[0] else 1
        self._session.region_inputs.setdefault(self.inputs[j], (tuple(image_hw), images))

    def note(self, text: str) -> None:
        self._session.notes.append(f"layer '{self.name}' ({self.type}): {text}")

    def fail(self, reason: str):
        raise Unexportable(reason)

    # -- ops whose form changed between opsets --------------------------------------------------
    def reduce(self, op: str, x: str, axes, out: str | None = None, keepdims: int = 0) -> str:
        """``ReduceSum``/``ReduceMean``/``ReduceL1``/``ReduceSumSquare``/``ReduceMax`` over
        ``axes`` (an input from opset 18 on -- 13 for ReduceSum -- an attribute before)."""
        axes = [int(a) for a in axes]
        as_input = self.opset >= 18 or op == "ReduceSum"
        if as_input:
            return self.node(op, [x, self.ints(axes, "axes")], None if out is None else [out],
                             keepdims=keepdims)
        return self.node(op, [x], None if out is None else [out], axes=axes, keepdims=keepdims)

    def unsqueeze(self, x: str, axes, out: str | None = None) -> str:
        return self.node("Unsqueeze", [x, self.ints(axes, "axes")],
                         None if out is None else [out])

    def reshape(self, x: str, shape, out: str | None = None) -> str:
        """Reshape to ``shape`` (ONNX rules: 0 copies the input dim at that index, -1 infers)."""
        return self.node("Reshape", [x, self.ints(shape)], None if out is None else [out])

    def reshape_keep_batch(self, x: str, shape, out: str | None = None) -> str:
        """Reshape to the Caffe ``shape``, its first dim copied from ``x`` when the batch is
        dynamic (``shape[0]`` must then be ``x``'s batch)."""
        shape = list(shape)
        if self.dynamic and shape:
            shape[0] = 0
        return self.reshape(x, shape, out)

    def binary(self, op: str, x: str, value, hint: str, out: str | None = None) -> str:
        """``op(x, constant value)``."""
        return self.node(op, [x, self.const(value, hint)], None if out is None else [out])
