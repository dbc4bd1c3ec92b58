"""Walk a built :class:`~protonet.net.Net` and turn it into one ONNX model.

Layers run through their exporters (:mod:`protonet.export.registry`) in the
net's order. Caffe's in-place layers write one blob many times; ONNX values are
written once, so each write gets its own value (``blob@layer``) and the last
one carries the blob's name. Graph inputs and outputs keep Caffe's blob names:
inputs are the tops of data layers (``Input``, ``Data``, ``DummyData``, ...) that
exported layers read; outputs are the blobs left unconsumed once training-only
layers (losses, ``Accuracy``) are dropped -- Caffe's own rule for net outputs --
or the blobs asked for (``outputs=``: only the layers they need are exported, so a
net can be exported up to the inputs of a layer ONNX cannot express).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import ProtonetError
from ..layers import TRAIN
from .graph import Graph, fold_affine
from .registry import EXPORTERS, OPSET_LIMITS, LayerExport, Unexportable

#: dropped from an exported net: they need labels or produce nothing for inference
TRAINING_ONLY = {"Accuracy", "HDF5Output", "Silence"}
#: exporters that pass a bottom on unchanged (their writes do not take the blob's name);
#: Dropout only when its TEST pass is the identity (see :func:`_aliases`)
ALIASING = {"Dropout", "Split"}
#: modules whose exporters register themselves on import (add new layer families here)
EXPORTER_MODULES = ("protonet.export.common", "protonet.export.neuron",
                    "protonet.export.normalization", "protonet.export.sources",
                    "protonet.export.vision", "protonet.export.forks")
MIN_OPSET = 13
#: the default opset when onnxruntime is not installed
FALLBACK_OPSET = 17


@dataclass
class Exported:
    """An exported model and what it is made of.

    ``inputs``/``outputs``: (blob name, Caffe shape); ``kept``: indices of the net's
    layers in the model (for running the same computation in protonet);
    ``index_inputs``: input blob -> the bound of the integer indices it must hold.
    """

    model: object
    opset: int
    inputs: list[tuple[str, tuple]]
    outputs: list[tuple[str, tuple]]
    kept: list[int]
    notes: list[str] = field(default_factory=list)
    index_inputs: dict[str, int] = field(default_factory=dict)
    dynamic_batch: bool = False
    #: input blob -> ((height, width) in pixels, number of images) of the images its
    #: regions lie on
    region_inputs: dict[str, tuple] = field(default_factory=dict)


def onnx_module():
    try:
        import onnx
    except ImportError:
        raise ProtonetError("ONNX export needs the onnx package: pip install "
                            "'protonet[onnx]' (or pip install onnx)") from None
    return onnx


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    return int(onnx_module().defs.onnx_opset_version())


def resolve_opset(opset: int | None) -> int:
    """``opset``, checked; None: the newest the installed onnxruntime runs (see
    :func:`protonet.export.check.runtime_opset`), else 17."""
    newest = max_opset()
    if opset is None:
        from .check import runtime_opset
        found = runtime_opset(newest)
        return max(FALLBACK_OPSET, found) if found else min(FALLBACK_OPSET, newest)
    if not MIN_OPSET <= opset <= newest:
        raise ProtonetError(f"--opset {opset} is out of range: protonet writes opsets "
                            f"{MIN_OPSET} to {newest} (the newest the installed onnx "
                            "package knows)")
    return opset


class _Session:
    """State of one export: the graph, the current ONNX value of every blob, notes."""

    def __init__(self, net, opset: int, dynamic_batch: bool):
        self.net = net
        self.opset = opset
        self.dynamic_batch = dynamic_batch
        self.graph = Graph(opset)
        self.graph.used.update(net.blobs)  # blob names are given out only by claim()
        self.claimed: set[str] = set()
        self.notes: list[str] = []
        self.index_inputs: dict[str, int] = {}
        self.region_inputs: dict[str, tuple] = {}
        self.input_layer: dict[str, str] = {}
        self.shapes: dict[str, tuple] = {}

    def claim(self, blob: str) -> str | None:
        if blob in self.claimed:
            return None
        self.claimed.add(blob)
        return blob

    def add_input(self, blob: str, shape: tuple, layer: str) -> str:
        name = self.claim(blob)
        if name is None:
            raise ProtonetError(f"layer '{layer}': blob '{blob}' is written before it becomes "
                                "a graph input")
        self.graph.add_input(name, shape)
        self.input_layer[name] = layer
        return name


def export_net(net, opset: int | None = None, dynamic_batch: bool = False,
               outputs=None) -> Exported:
    """Build the ONNX model of ``net`` (a TEST-phase :class:`~protonet.net.Net`).

    ``opset``: None for the newest the installed onnxruntime runs, for every op the net
    needs (see :data:`~protonet.export.registry.OPSET_LIMITS`).
    ``outputs``: blob names that become the graph's outputs (each its last value in the
    net), in that order; only the layers they need are exported. Default: the blobs no
    exported layer reads, as Caffe's net outputs.

    Raises :class:`ProtonetError` naming every layer that cannot be exported, and why.
    """
    onnx = onnx_module()
    for module in EXPORTER_MODULES:
        importlib.import_module(module)
    if net.phase == TRAIN:
        raise ProtonetError(
            "ONNX export needs a TEST-phase net (Dropout, BatchNorm and pooling compute "
            "differently in TRAIN): build it with phase caffe.TEST")
    session = _Session(net, resolve_opset(opset), dynamic_batch)
    kept, consumers_only = _classify(net, session)
    wanted = None
    if outputs is not None:
        wanted = _wanted(net, kept, outputs)
        kept = _upstream(net, kept, wanted, session)
        consumers_only = []
    limits = [OPSET_LIMITS[net.layers[i].type] for i in kept
              if net.layers[i].type in OPSET_LIMITS]
    if opset is None and limits and min(limits) < session.opset:
        session.opset = session.graph.opset = max(MIN_OPSET, min(limits))
    errors: list[str] = []
    failed: set[str] = set()  # tops of layers that failed: their readers say nothing more
    current: dict[str, str] = {}
    last_writer = {}
    for i in kept:
        if not _aliases(net.layers[i]):
            for top in net.layer_tops[i][:len(net.top_vecs[i])]:
                last_writer[top] = i
    for i in kept:
        layer, lname = net.layers[i], net.layer_names[i]
        tops = net.layer_tops[i][:len(net.top_vecs[i])]
        fn = EXPORTERS.get(layer.type)
        missing = [b for b in net.layer_bottoms[i] if b not in current]
        if fn is None or missing:
            if fn is None:
                errors.append(f"layer '{lname}' ({layer.type}): no ONNX exporter for this type")
            elif not failed.intersection(missing):
                errors.append(f"layer '{lname}' ({layer.type}): reads '{missing[0]}', which "
                              "only dropped training layers produce")
            failed.update(tops)
            continue

        def name_for(j, i=i, tops=tops, lname=lname):
            return ((last_writer.get(tops[j]) == i and session.claim(tops[j]))
                    or session.graph.unique(f"{tops[j]}@{lname}"))
        L = LayerExport(session, i, [current[b] for b in net.layer_bottoms[i]], name_for)
        try:
            fn(L)
        except Unexportable as e:
            errors.append(f"layer '{lname}' ({layer.type}): {e}")
            failed.update(tops)
            continue
        for j, (top, value) in enumerate(zip(tops, L.results)):
            if value is None:
                raise RuntimeError(f"exporter of {layer.type} left top {j} unset")
            current[top] = value
            session.shapes.setdefault(value, L.out_shapes[j])
    if errors:
        raise ProtonetError("cannot export to ONNX: " + "; ".join(errors))
    outputs = wanted if wanted is not None else _outputs(net, kept, consumers_only, session)
    if not outputs:
        raise ProtonetError("nothing to export: no layer output is left once the training "
                            "layers are dropped")
    graph = session.graph
    values = {b: current[b] for b in outputs}
    shapes = session.shapes
    fold_affine(graph, {v: len(s) for v, s in shapes.items()},
                {v: (s[1] if len(s) > 1 else 1) for v, s in shapes.items()},
                set(values.values()))
    input_names = {name for name, _ in graph.inputs}
    for blob, value in values.items():
        if value != blob and blob in input_names:
            writer = f"layer '{net.layer_names[last_writer[blob]]}'" if blob in last_writer \
                else "a layer"
            raise ProtonetError(
                f"output '{blob}' is also a graph input, which {writer} overwrites in place: "
                f"ONNX cannot give the input and the output one name; give that layer a top "
                f"of its own, or leave '{blob}' out of the outputs")
    _name_outputs(graph, values, session)
    graph.prune(set(outputs))
    unused = [n for n in session.input_layer if n not in {name for name, _ in graph.inputs}]
    for name in unused:
        session.notes.append(f"blob '{name}' (from layer '{session.input_layer[name]}') is read "
                             "by no exported layer: not a graph input")
    if dynamic_batch:
        from .check import check_batch_free
        check_batch_free(net, graph.inputs, kept)
    out_shapes = [(b, tuple(net.blobs[b].shape)) for b in outputs]
    from .. import __version__
    model = graph.to_model(out_shapes, net.name, dynamic_batch, __version__)
    try:
        onnx.checker.check_model(model)
    except ValueError as e:  # larger than protobuf's 2 GB: checked by path only
        raise ProtonetError(f"the ONNX model cannot be checked in memory ({e})") from None
    names = {n for n, _ in graph.inputs}
    return Exported(model, session.opset, list(graph.inputs), out_shapes, kept,
                    session.notes, {k: v for k, v in session.index_inputs.items() if k in names},
                    dynamic_batch,
                    {k: v for k, v in session.region_inputs.items() if k in names})


def _aliases(layer) -> bool:
    """Whether ``layer``'s exporter passes its bottom on unchanged (Split; Dropout unless
    ``scale_train: false`` makes its TEST pass a multiplication)."""
    if layer.type == "Dropout":
        return getattr(layer, "test_scale", 1.0) == 1.0
    return layer.type in ALIASING


def _wanted(net, kept, outputs) -> list[str]:
    """``outputs`` checked: blob names of the net that an exported layer writes."""
    if isinstance(outputs, str):
        outputs = [outputs]
    wanted = list(dict.fromkeys(str(b) for b in outputs))
    if not wanted:
        raise ProtonetError("outputs: give at least one blob name")
    written = {t for i in kept for t in net.layer_tops[i][:len(net.top_vecs[i])]}
    for blob in wanted:
        if blob not in net.blobs:
            import difflib
            close = difflib.get_close_matches(blob, list(net.blobs), n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ProtonetError(f"outputs: the net has no blob '{blob}'{hint}")
        if blob not in written:
            raise ProtonetError(f"outputs: blob '{blob}' is written only by dropped "
                                "training layers")
    return wanted


def _upstream(net, kept, wanted, session) -> list[int]:
    """The layers of ``kept`` that the ``wanted`` blobs' last values depend on (a note
    names the others)."""
    needed = set(wanted)
    keep = []
    for i in reversed(kept):
        tops = set(net.layer_tops[i][:len(net.top_vecs[i])])
        if tops & needed:
            keep.append(i)
            needed -= tops
            needed.update(net.layer_bottoms[i])
    keep.reverse()
    chosen = set(keep)
    left = [f"'{net.layer_names[i]}' ({net.layers[i].type})" for i in kept
            if i not in chosen and net.bottom_vecs[i]]
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        session.notes.append(f"outputs {', '.join(wanted)}: layers they do not need are left "
                             f"out: {shown}")
    return keep


def _classify(net, session) -> tuple[list[int], list[int]]:
    """(layers to export, dropped layers whose bottoms still count as consumed)."""
    kept, silent = [], []
    for i, layer in enumerate(net.layers):
        name = net.layer_names[i]
        if layer.is_loss or layer.type in TRAINING_ONLY:
            if layer.type == "Silence":
                silent.append(i)
            session.notes.append(f"dropped training-only layer '{name}' ({layer.type})")
            continue
        kept.append(i)
    return kept, silent


def _outputs(net, kept, silent, session) -> list[str]:
    """Caffe's rule on the exported layers: blobs left unconsumed, alphabetically (tops of
    layers without bottoms excepted: those are inputs or constants)."""
    # a Split's tops are its bottom under other names: a blob read only through the Splits
    # Caffe inserted for dropped layers (a TRAIN/TEST net's logits) is an output
    canonical: dict[str, str] = {}
    available: set[str] = set()
    for i in sorted(kept + silent):
        bottoms = [canonical.get(b, b) for b in net.layer_bottoms[i]]
        tops = net.layer_tops[i][:len(net.top_vecs[i])]
        if net.layers[i].type == "Split" and i in kept:
            canonical.update((t, bottoms[0]) for t in tops)
            continue
        available.difference_update(bottoms)
        if i in kept and bottoms:  # what data layers give is input (or constant), not output
            available.update(tops)
    return sorted(available)


def _name_outputs(graph: Graph, values: dict[str, str], session) -> None:
    """Give each output's final value the blob's name (an Identity where it is an input or a
    constant, or the name is taken)."""
    produced = {v for n in graph.nodes for v in n.outputs}
    rename = {}
    for blob, value in values.items():
        if value == blob:
            continue
        if value in produced and blob not in produced and value not in rename:
            rename[value] = blob
        else:
            graph.node("Identity", [value], [blob], f"{blob}/output")
    graph.rename(rename)
