"""CLI subcommand ``export``: a Caffe model as ONNX, checked against protonet.

    protonet export deploy.prototxt weights.caffemodel model.onnx
    protonet export train_val.prototxt w.caffemodel m.onnx --input-shape data=1,3,227,227
    protonet export deploy.prototxt w.caffemodel m.onnx --opset 17 --dynamic-batch --no-check
    protonet export ssd.prototxt w.caffemodel m.onnx --outputs mbox_loc,mbox_priorbox

Exit status: 0 when written (and, with the check, every output agrees), 3 when the
check finds an output over tolerance (the file is kept), 1 on a user error (nothing
written when a layer cannot be exported).
"""
from __future__ import annotations

import sys

from ..errors import ProtonetError


def _strip_training_layers(param):
    """``param`` without losses, Accuracy and Silence (so that what they need -- labels,
    loss files -- is never built), and one note per layer dropped."""
    from ..layers import LAYER_REGISTRY
    from ..proto import caffe_pb2
    from .driver import TRAINING_ONLY
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    notes = []
    for layer in param.layer:
        cls = LAYER_REGISTRY.get(layer.type)
        if layer.type == "Silence":  # kept: what it silences is no output (the export notes it)
            out.layer.add().CopyFrom(layer)
        elif layer.type in TRAINING_ONLY or (cls is not None and cls.is_loss):
            notes.append(f"dropped training-only layer '{layer.name}' ({layer.type})")
        else:
            out.layer.add().CopyFrom(layer)
    return out, notes


def _python_layers(param, level: int, stages: list[str], outputs=None) -> list[str]:
    """Python layers with bottoms in the TEST phase (those the ``outputs`` need, when
    given): code ONNX cannot hold. py-faster-rcnn's proposal layer, which protonet runs
    natively, is left to its exporter."""
    from ..graph import filter_net
    from ..layers.python_layer import native_layer_type
    from ..proto import caffe_pb2
    state = caffe_pb2.NetState(phase=caffe_pb2.TEST, level=level, stage=stages)
    layers = list(filter_net(param, state).layer)
    if outputs:
        needed, kept = set(outputs), []
        for l in reversed(layers):
            if needed.intersection(l.top):
                kept.append(l)
                needed.difference_update(l.top)
                needed.update(l.bottom)
        layers = kept[::-1]
    return [f"layer '{l.name}' (Python): a Python layer runs the module "
            f"'{l.python_param.module}', which ONNX cannot hold"
            for l in layers if l.type == "Python" and len(l.bottom)
            and native_layer_type(l) is None]


def cmd_export(args) -> int:
    import os

    from ..cli import _stages
    from ..io import read_net
    from ..net import Net
    from . import export
    from .check import format_rows, have_runtime
    from .driver import onnx_module
    onnx_module()  # before any work: say what to install
    if args.check and not have_runtime():
        from .check import ort_module
        ort_module()
    if not os.path.exists(args.weights):
        raise ProtonetError(f"{args.weights}: no such file")
    param = read_net(args.net, lenient=args.lenient)
    stages = _stages(args)
    outputs = [b for arg in args.outputs for b in arg.split(",") if b] or None
    python = _python_layers(param, args.level, stages, outputs)
    if python:
        raise ProtonetError("cannot export to ONNX: " + "; ".join(python))
    param, notes = _strip_training_layers(param)
    net = Net(param, "TEST", level=args.level, stages=stages, weights=args.weights, seed=0,
              shape_overrides=dict(args.input_shape), opaque_python_layers=True)
    try:
        report = export(net, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                        check=args.check, seed=args.seed, tolerance=args.tolerance,
                        outputs=outputs)
    finally:
        net.close()
    for note in notes + report.notes:
        print(f"protonet: note: {note}", file=sys.stderr)

    def shapes(pairs):
        return ", ".join(f"{name} {'x'.join(map(str, shape)) or 'scalar'}"
                         for name, shape in pairs)
    batch = " (batch: any)" if args.dynamic_batch else ""
    print(f"wrote {args.output}: opset {report.opset}, {report.nodes} nodes; inputs: "
          f"{shapes(report.inputs)}{batch}; outputs: {shapes(report.outputs)}")
    if report.rows is None:
        return 0
    import onnxruntime
    print(f"check against onnxruntime {onnxruntime.__version__} on a random input "
          f"(seed {args.seed}):")
    print(format_rows(report.rows, args.tolerance))
    return 0 if report.ok else 3


def add_parsers(sub) -> None:
    """Add ``export`` to the ``protonet`` parser."""
    from ..cli import _shape_arg
    from .check import DEFAULT_TOLERANCE
    p = sub.add_parser(
        "export", help="write a Caffe model as ONNX, checked number for number",
        description="Write NET with WEIGHTS as an ONNX model (needs the onnx package: pip "
        "install 'protonet[onnx]'). Losses and Accuracy are dropped; data layers become "
        "graph inputs; inputs and outputs keep Caffe's blob names. With onnxruntime "
        "installed the model is checked: run in onnxruntime and in protonet on a random "
        "input, every output must agree within the tolerance (exit 3 otherwise).")
    p.add_argument("net", help="network definition (.prototxt)")
    p.add_argument("weights", help="trained weights (.caffemodel or .caffemodel.h5)")
    p.add_argument("output", metavar="OUT.onnx", help="the ONNX model to write")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the newest the installed onnxruntime runs, "
                   "at least 17)")
    p.add_argument("--input-shape", action="append", default=[], type=_shape_arg,
                   metavar="TOP=N,C,H,W",
                   help="shape of an input or data layer's top (repeatable)")
    p.add_argument("--outputs", action="append", default=[], metavar="BLOB[,BLOB...]",
                   help="export up to these blobs (the graph's outputs, in this order; only "
                   "the layers they need are exported), e.g. the inputs of a layer ONNX "
                   "cannot express; repeatable (default: the net's outputs)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="let the inputs' first dimension be any batch size")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--check", dest="check", action="store_true", default=None,
                       help="compare onnxruntime with protonet (default when onnxruntime is "
                       "installed)")
    check.add_argument("--no-check", dest="check", action="store_false",
                       help="write the model without running it")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest difference allowed, relative to each output's largest "
                   f"value (default: {DEFAULT_TOLERANCE:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the check's random input")
    p.add_argument("--level", type=int, default=0, help="net state level (default: 0)")
    p.add_argument("--stage", action="append", default=[],
                   help="net state stage; repeat for several (or comma-separate)")
    p.add_argument("--lenient", action="store_true",
                   help="accept Netscope's lenient dialect, warning on each dropped item")
    p.set_defaults(func=cmd_export)
