"""The ``protonet`` command line: Caffe's tools under one roof.

``main(argv=None) -> int`` runs in-process (tests call it directly). User
errors (:class:`ProtonetError`) print one or two lines and exit 1; warnings
about dropped or guessed input print as ``protonet: warning: ...``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from .errors import ProtonetError


def _shape_arg(text: str):
    try:
        name, dims = text.split("=", 1)
        shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not TOP=N,C,H,W (e.g. data=64,1,28,28)") from None
    if not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"'{text}' is not TOP=N,C,H,W with positive dims")
    return name, shape


def _add_net_args(p, lenient_default: bool, runs_layers: bool = True, phase: str = "TEST",
                  phase_note: str = ""):
    p.add_argument("net", help="network definition (.prototxt)")
    p.add_argument("--phase", default=phase, type=str.upper, choices=["TRAIN", "TEST"],
                   help=f"net phase for include/exclude rules (default: {phase}{phase_note})")
    p.add_argument("--level", type=int, default=0, help="net state level (default: 0)")
    p.add_argument("--stage", action="append", default=[],
                   help="net state stage; repeat for several (or comma-separate)")
    if runs_layers:
        _add_run_args(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lenient", dest="lenient", action="store_true", default=lenient_default,
                      help="accept Netscope's lenient dialect, warning on each dropped item"
                      + (" (default)" if lenient_default else ""))
    mode.add_argument("--strict", dest="lenient", action="store_false",
                      help="accept exactly what Caffe accepts" + ("" if lenient_default
                                                                  else " (default)"))


def _add_run_args(p):
    p.add_argument("--allow-python-layers", action="store_true",
                   help="let `type: \"Python\"` layers import and run their modules")
    add_fuse_arg(p)
    p.add_argument("--memory-limit", metavar="SIZE", default=None,
                   help="refuse nets whose blobs need more (e.g. 8G; 0 = no limit; default: "
                   "$PROTONET_MEMORY_LIMIT, else the memory available)")


def add_fuse_arg(p):
    p.add_argument("--no-fuse", dest="fuse", action="store_false", default=None,
                   help="run BatchNorm/Scale/Bias layers and ReLUs one by one instead of "
                   "folded into the convolution before them (folding is the TEST phase's "
                   "default)")


def _memory_limit(args):
    from .memory import parse_bytes
    return None if args.memory_limit is None else parse_bytes(args.memory_limit)


def _stages(args) -> list[str]:
    return [s for group in args.stage for s in group.split(",") if s]


def cmd_summary(args) -> int:
    from .tools.summary import format_table, to_json
    if args.lenient:
        # a net that cannot be built still gets every shape its definition determines
        from .io import read_net
        from .io.prototxt import ProtonetWarning
        from .tools.shapes import summarize_param
        summary = summarize_param(read_net(args.net, lenient=True), args.phase, args.level,
                                  _stages(args), dict(args.input_shape), source=args.net)
        for note in summary["notes"]:
            warnings.warn(note, ProtonetWarning)
    else:
        from .net import Net
        from .tools.summary import summarize
        # shapes only: nothing is allocated, so no memory limit; Python layers stay opaque
        net = Net(args.net, args.phase, level=args.level, stages=_stages(args),
                  lenient=False, init_weights=False, memory_limit=0,
                  opaque_python_layers=True, shape_overrides=dict(args.input_shape))
        summary = summarize(net)
        net.close()
    print(to_json(summary) if args.json else format_table(summary))
    return 0


def cmd_time(args) -> int:
    import json

    from .net import Net
    from .tools.timing import format_timing, time_net
    if args.iterations < 1:
        raise ProtonetError("--iterations must be at least 1")
    net = Net(args.net, args.phase, level=args.level, stages=_stages(args),
              lenient=args.lenient, seed=0, shape_overrides=dict(args.input_shape),
              allow_python_layers=args.allow_python_layers, memory_limit=_memory_limit(args),
              fuse=args.fuse)
    result = time_net(net, args.iterations, warmup=args.warmup)
    print(json.dumps(result, indent=1) if args.json else format_timing(result))
    return 0


def cmd_compare(args) -> int:
    import json

    import numpy as np

    from .net import Net
    from .tools.compare import compare, format_rows, load_reference, opencv_reference
    net = Net(args.net, args.phase, weights=args.weights, lenient=args.lenient,
              allow_python_layers=args.allow_python_layers, memory_limit=_memory_limit(args),
              fuse=args.fuse)
    inputs = {}
    for spec in args.input:
        name, _, path = spec.partition("=")
        if not path:
            raise ProtonetError(f"--input '{spec}' is not NAME=file.npy")
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ProtonetError(f"{path}: cannot read input array ({e})") from None
    if args.backend == "opencv":
        if not inputs:
            rng = np.random.default_rng(args.seed)
            inputs = {n: rng.standard_normal(net.blobs[n].shape).astype(np.float32)
                      for n in net.inputs}
        reference = opencv_reference(args.net, args.weights, net, inputs)
    else:
        if not args.reference:
            raise ProtonetError("give --reference REF.npz (or --backend opencv)")
        reference = load_reference(args.reference)
        for name in net.inputs:
            if name not in inputs:
                if name not in reference:
                    raise ProtonetError(f"the reference has no values for input '{name}'; "
                                        f"give --input {name}=file.npy")
                inputs[name] = reference[name]
    rows = compare(net, reference, inputs, args.atol, args.rtol)
    if not rows:
        raise ProtonetError("the reference shares no blob names with the net")
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows, args.atol, args.rtol))
    return 0 if all(r["ok"] for r in rows) else 3


def cmd_upgrade(args) -> int:
    from .io import prototxt
    from .io.atomic import atomic_write
    from .proto import caffe_pb2
    if prototxt.is_binary_proto(args.input):
        message = prototxt.read_net_binary(args.input)
    else:
        text = prototxt.read_text(args.input)
        if args.solver or (not args.net and _looks_like_solver(text)):
            message = prototxt.parse_solver(text, args.input, args.lenient)
        else:
            message = prototxt.parse_net(text, args.input, args.lenient)
    if args.output.endswith((".caffemodel", ".binaryproto")):
        data = message.SerializeToString()
        atomic_write(args.output, data)
    else:
        atomic_write(args.output, prototxt.write_text(message).encode("utf-8"))
    kind = "solver" if isinstance(message, caffe_pb2.SolverParameter) else "net"
    print(f"wrote upgraded {kind} to {args.output}", file=sys.stderr)
    return 0


def _looks_like_solver(text: str) -> bool:
    """Whether the top-level fields are a SolverParameter's rather than a NetParameter's."""
    from .io.lenient import parse_tree
    from .proto import caffe_pb2
    try:
        keys = {entry.key for entry in parse_tree(text, "<input>")}
    except ProtonetError:
        return False
    solver_only = set(caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name) - \
        set(caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name)
    return bool(keys & solver_only)


#: Modules that add their own subcommands through ``add_parsers(subparsers)``;
#: each sets ``func`` (args -> exit status) on its parsers.
SUBCOMMAND_MODULES = ("protonet.tools.data_commands", "protonet.solvers.commands",
                      "protonet.tools.draw_commands", "protonet.export.commands",
                      "protonet.tools.inference_commands")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="protonet", description="Caffe, re-made in Python and numpy.")
    parser.add_argument("--version", action="version", version=f"protonet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("summary", help="per-layer shapes, parameters, MACCs and memory",
                       description="Print one row per layer: bottoms -> tops, top shapes, "
                       "parameter count, multiply-accumulates and activation memory.")
    _add_net_args(p, lenient_default=True, runs_layers=False)
    p.add_argument("--input-shape", action="append", default=[], type=_shape_arg,
                   metavar="TOP=N,C,H,W",
                   help="shape of a data layer's top, instead of reading its source "
                   "(repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("time", help="benchmark forward/backward, layer by layer (caffe time)",
                       description="Average forward, backward and forward-backward "
                       "milliseconds per iteration and per layer, after a warm-up.")
    _add_net_args(p, lenient_default=False, phase="TRAIN",
                  phase_note=", as caffe time; TEST times the deploy path, BatchNorm/Scale/"
                  "Bias and ReLU folded into the layer before them")
    p.add_argument("--iterations", "-iterations", type=int, default=50,
                   help="timed iterations (default: 50, as Caffe)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default: 1)")
    p.add_argument("--input-shape", action="append", default=[], type=_shape_arg,
                   metavar="TOP=N,C,H,W", help="override an input layer's top shape")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("compare", help="check every blob against reference values",
                       description="Run the net on the reference's inputs and print, for every "
                       "blob the reference has, its shape and max absolute/relative error; "
                       "exit 3 when a blob is over tolerance.")
    p.add_argument("net", help="network definition (.prototxt)")
    p.add_argument("weights", help="trained weights (.caffemodel or .caffemodel.h5)")
    p.add_argument("--reference", help="reference blobs: .npz (np.savez of net.blobs data) or .h5")
    p.add_argument("--input", action="append", default=[], metavar="NAME=file.npy",
                   help="input values (default: taken from the reference)")
    p.add_argument("--backend", choices=["file", "opencv"], default="file",
                   help="where the reference comes from (opencv: OpenCV's Caffe importer)")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="random inputs for --backend opencv")
    p.add_argument("--phase", default="TEST", type=str.upper, choices=["TRAIN", "TEST"])
    p.add_argument("--lenient", action="store_true")
    _add_run_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("upgrade", help="rewrite a legacy (V0/V1) net or solver in today's format",
                       description="Like Caffe's upgrade_net_proto_text / _binary and "
                       "upgrade_solver_proto_text.")
    p.add_argument("input", help="net or solver (.prototxt), or weights (.caffemodel)")
    p.add_argument("output", help="where to write (.prototxt text; .caffemodel binary)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--solver", action="store_true", help="the input is a solver")
    kind.add_argument("--net", action="store_true", help="the input is a net")
    p.add_argument("--lenient", action="store_true", help="accept Netscope's lenient dialect")
    p.set_defaults(func=cmd_upgrade)

    import importlib
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parsers(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            from .io.prototxt import ProtonetWarning
            if issubclass(category, ProtonetWarning):
                print(f"protonet: warning: {message}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return args.func(args)
        except ProtonetError as e:
            print(f"protonet: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("protonet: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (`protonet time ... | head`)
            _silence_stdout()
            return 141
        finally:
            warnings.showwarning = previous


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
