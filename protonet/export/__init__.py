"""ONNX export: write a Caffe net as an ONNX model and prove it computes the same numbers.

    report = net.to_onnx("model.onnx")               # Net.to_onnx calls to_onnx(net, ...)
    report = to_onnx(net, "model.onnx", opset=17, dynamic_batch=True, check=True)
    report = to_onnx(net, "ssd.onnx", outputs=["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"])

Every layer type with an exact ONNX expression exports (see the modules:
:mod:`~protonet.export.vision`, :mod:`~protonet.export.common`,
:mod:`~protonet.export.neuron`, :mod:`~protonet.export.normalization`,
:mod:`~protonet.export.sources`, and the forks' layers in
:mod:`~protonet.export.forks`), with Caffe's semantics written out: pooling's
round-up-then-clip output size and AVE divisor, BatchNorm's scale factor,
Bias/Scale broadcasting. Exporters are registered by Caffe type string
(:func:`~protonet.export.registry.exporter`). Training-only layers (losses,
Accuracy) are dropped with a note; data layers become graph inputs of their
shape. The graph keeps Caffe's blob names for its inputs and outputs.

Needs the ``onnx`` package (``pip install 'protonet[onnx]'``); the check needs
``onnxruntime`` as well (``pip install 'protonet[onnx-check]'``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ProtonetError
from .check import DEFAULT_TOLERANCE
from .driver import TRAINING_ONLY, export_net
from .registry import EXPORTERS, LayerExport, exporter

__all__ = ["EXPORTERS", "ExportReport", "LayerExport", "TRAINING_ONLY", "export",
           "export_net", "exporter", "to_onnx"]

#: protobuf's limit on one serialized message
_MAX_BYTES = 2 ** 31 - 1


@dataclass
class ExportReport:
    """What :func:`export` wrote: ``inputs``/``outputs`` as (blob, Caffe shape), the
    ``opset``, the number of ``nodes``, ``notes`` (dropped layers, unused inputs), and the
    check's ``rows`` (None when not checked; see :func:`protonet.export.check.compare`)."""

    path: str
    opset: int
    inputs: list
    outputs: list
    nodes: int
    notes: list = field(default_factory=list)
    rows: list | None = None
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def ok(self) -> bool:
        """False when the check found an output over tolerance."""
        return self.rows is None or all(r["ok"] for r in self.rows)


def export(net, path: str, *, opset: int | None = None, dynamic_batch: bool = False,
           check: bool | None = None, seed: int = 0,
           tolerance: float = DEFAULT_TOLERANCE, outputs=None) -> ExportReport:
    """Write ``net`` (a TEST-phase :class:`~protonet.net.Net`) to ``path`` as ONNX.

    ``opset``: default the newest the installed onnxruntime runs (at least 17);
    ``dynamic_batch``: the inputs' first dimension is the symbol ``N``; ``check``: run the
    model in onnxruntime and ``net`` in protonet on a random input (``seed``) and compare
    every output (default: when onnxruntime is installed; it runs ``net`` forward, so its
    blobs then hold that pass). Nothing is written when a layer cannot be exported. A check
    over ``tolerance`` is reported, not raised (``report.ok``); :func:`to_onnx` raises
    instead. ``outputs``: blob names to export up to (the graph's outputs, in that order;
    only the layers they need are exported) -- e.g. the inputs of a layer ONNX cannot
    express; default: the net's own outputs.
    """
    import os

    from ..io.atomic import atomic_write
    from .check import check as run_check
    from .check import have_runtime
    exported = export_net(net, opset=opset, dynamic_batch=dynamic_batch, outputs=outputs)
    try:
        data = exported.model.SerializeToString()
    except ValueError:
        data = None
    if data is None or len(data) > _MAX_BYTES:
        raise ProtonetError("the model is larger than the 2 GB protobuf limits one ONNX "
                            "file to")
    path = os.fspath(path)
    atomic_write(path, data)
    report = ExportReport(path, exported.opset, exported.inputs, exported.outputs,
                          len(exported.model.graph.node), list(exported.notes),
                          tolerance=tolerance)
    if check is None:
        check = have_runtime()
    if check:
        report.rows = run_check(net, exported, data, seed=seed, tolerance=tolerance)
    return report


def to_onnx(net, path: str, **options) -> ExportReport:
    """:func:`export`, raising :class:`ProtonetError` when the check finds an output over
    tolerance (the file stays, for inspection)."""
    report = export(net, path, **options)
    if not report.ok:
        bad = [r for r in report.rows if not r["ok"]]
        raise ProtonetError(
            f"{report.path}: the exported model differs from protonet: output "
            f"'{bad[0]['output']}' max difference {bad[0]['max_rel']:.3g} of its scale "
            f"(tolerance {report.tolerance:g}); {len(bad)} of {len(report.rows)} outputs differ")
    return report
