"""CLI subcommands for training: ``solve`` (alias ``train``), ``test`` and ``plot``.

Caffe's flag spellings work as well as protonet's: ``--sigint-effect``,
``--sigint_effect``, ``-sigint_effect``; ``--flag=value`` and ``--flag value``.
"""
from __future__ import annotations

import argparse
import logging

from ..errors import ProtonetError
from .progress import BRIEF, LOGGER

log = logging.getLogger(LOGGER + ".tools")


def _flag(parser, name: str, **kwargs):
    """Add ``--name`` and, hidden from the help, Caffe's spellings ``--a_b``, ``-a_b``, ``-a-b``."""
    dashed, underscored = name.replace("_", "-"), name.replace("-", "_")
    kwargs.setdefault("dest", underscored)
    parser.add_argument(f"--{dashed}", **kwargs)
    aliases = []
    for extra in (f"--{underscored}", f"-{underscored}", f"-{dashed}"):
        if extra not in aliases and extra != f"--{dashed}":
            aliases.append(extra)
    hidden = {k: v for k, v in kwargs.items() if k not in ("help", "metavar", "default")}
    parser.add_argument(*aliases, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **hidden)


def _common(parser) -> None:
    _flag(parser, "level", type=int, default=0, help="net state level (default: 0)")
    _flag(parser, "stage", action="append", default=[],
          help="net state stage; repeat or comma-separate for several")
    _flag(parser, "gpu", default=None, help="accepted for Caffe compatibility: protonet has "
          "no GPU backend and runs on the CPU")
    parser.add_argument("--progress", choices=["auto", "bar", "log"], default="auto",
                        help="a live progress bar (bar), Caffe-format log lines (log), or the "
                        "bar on a terminal and log lines otherwise (auto, the default)")
    parser.add_argument("--log", metavar="FILE", default=None,
                        help="also write the Caffe-format log to FILE (for `protonet plot`)")


def _stages(args) -> list[str]:
    return [s for group in args.stage for s in group.split(",") if s]


def _warn(message: str) -> None:
    import warnings
    from ..io.prototxt import ProtonetWarning
    warnings.warn(message, ProtonetWarning, stacklevel=2)


def _gpu_note(args, solver_mode_gpu: bool) -> None:
    if args.gpu is not None:
        _warn(f"--gpu {args.gpu}: protonet has no GPU backend; running on the CPU")
    elif solver_mode_gpu:
        _warn("solver_mode is GPU (Caffe's default); protonet has no GPU backend, so it "
              "trains on the CPU (set `solver_mode: CPU` to silence this)")


def add_parsers(sub) -> None:
    """Add this module's subcommands to the ``protonet`` parser."""
    from .signals import EFFECTS
    for name in ("solve", "train"):
        caffe_name = name == "train"
        p = sub.add_parser(
            name, help=("train a net as `caffe train` does" if not caffe_name
                        else "the same as `solve`, under Caffe's name"),
            description="Train with a Caffe solver prototxt: Caffe's update rules, test "
            "intervals, log lines and snapshot files. Ctrl-C writes a snapshot and stops.")
        p.add_argument("solver_file", nargs="?", metavar="SOLVER",
                       help="solver definition (.prototxt)")
        _flag(p, "solver", default=None, help="solver definition (Caffe's spelling)")
        _flag(p, "weights", default=None, metavar="A.caffemodel[,B.caffemodel]",
              help="fine-tune: copy weights by layer name from these files first")
        _flag(p, "snapshot", default=None, metavar="S.solverstate",
              help="resume training from this solver state")
        _flag(p, "sigint-effect", choices=EFFECTS, default="stop",
              help="what Ctrl-C does: stop (after writing a snapshot; the default), "
              "snapshot (and go on), none")
        _flag(p, "sighup-effect", choices=EFFECTS, default="snapshot",
              help="what SIGHUP does (default: snapshot)")
        _flag(p, "ranks", type=int, default=None, metavar="N",
              help="train one model on N processes of this machine (started through "
              "mpiexec; needs mpi4py): each reads its share of every batch, gradients are "
              "averaged, the effective batch is N times the prototxt's. Across machines, "
              "start `mpiexec -n N protonet solve SOLVER` yourself")
        _common(p)
        p.set_defaults(func=cmd_solve)

    p = sub.add_parser("test", help="score a trained model as `caffe test` does",
                       description="Run the TEST phase of a net for some batches and print "
                       "each batch's outputs and their means (`caffe test`).")
    _flag(p, "model", default=None, help="net definition (.prototxt)")
    _flag(p, "weights", default=None, metavar="W.caffemodel[,...]",
          help="trained weights (.caffemodel or .caffemodel.h5)")
    _flag(p, "iterations", type=int, default=50, help="batches to run (default: 50)")
    _common(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("plot", help="plot the loss and accuracy curves of a training log",
                       description="Plot training loss, test loss and test accuracy against "
                       "iterations from a log written by `protonet solve` (or `caffe train`).")
    p.add_argument("log_file", metavar="LOG", help="training log")
    p.add_argument("-o", "--output", default=None, metavar="PNG",
                   help="image to write (default: LOG with .png)")
    p.set_defaults(func=cmd_plot)


def cmd_solve(args) -> int:
    from ..io import read_solver
    from ..proto import caffe_pb2
    from .progress import reporting
    from .sgd_solvers import solver_class
    from .signals import SignalHandler
    if args.solver_file and args.solver and args.solver_file != args.solver:
        raise ProtonetError("give the solver once: as SOLVER or as --solver")
    path = args.solver_file or args.solver
    if not path:
        raise ProtonetError("need a solver definition: protonet solve SOLVER "
                            "(or protonet train --solver=SOLVER)")
    if args.snapshot and args.weights:
        raise ProtonetError("give a snapshot to resume training or weights to fine-tune, "
                            "not both")
    param = read_solver(path)
    param.train_state.level = args.level
    param.train_state.stage.extend(_stages(args))
    if args.snapshot:
        param.ClearField("weights")
    elif args.weights:
        param.ClearField("weights")
        param.weights.append(args.weights)
    ranks = getattr(args, "ranks", None)
    if ranks is not None and ranks < 1:
        raise ProtonetError(f"--ranks must be at least 1, got {ranks}")
    from . import distributed
    world = distributed.launched_size()
    if world > 1:  # one rank of an MPI job
        if ranks not in (None, world):
            raise ProtonetError(f"--ranks {ranks} under an MPI launcher that started {world} "
                                "processes: leave --ranks out under mpiexec")
        if distributed.mpi().COMM_WORLD.Get_rank() == 0:
            _gpu_note(args, param.solver_mode == caffe_pb2.SolverParameter.GPU)
        return distributed.solve_as_rank(
            args, path, param, lambda prm, reporter: solver_class(prm.type)(
                prm, solver_path=path, reporter=reporter))
    if ranks is not None and ranks > 1:
        from .launch import launch
        return launch(args, path, param)
    _gpu_note(args, param.solver_mode == caffe_pb2.SolverParameter.GPU)
    with reporting(args.progress, args.log) as reporter:
        log.info("Use CPU.")
        solver = solver_class(param.type)(param, solver_path=path, reporter=reporter)
        log.info("Starting Optimization")
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
        with SignalHandler(args.sigint_effect, args.sighup_effect) as signals:
            solver.action_function = signals.requested_action
            solver.solve(resume=args.snapshot)
        log.info("Optimization Done.")
    return 0


def cmd_test(args) -> int:
    import numpy as np

    from ..net import Net
    from .progress import reporting
    from ..io.weights import copy_trained_layers
    from .solver import g
    if not args.model:
        raise ProtonetError("need a model definition to score: --model NET.prototxt")
    if not args.weights:
        raise ProtonetError("need model weights to score: --weights W.caffemodel")
    if args.iterations <= 0:
        raise ProtonetError(f"--iterations must be positive, got {args.iterations}")
    _gpu_note(args, False)
    with reporting(args.progress, args.log) as reporter:
        log.info("Use CPU.")
        net = Net(args.model, "TEST", level=args.level, stages=_stages(args))
        for weights in [w for w in args.weights.split(",") if w]:
            copy_trained_layers(net, weights)
        log.info("Running for %d iterations.", args.iterations)
        reporter.begin(0, args.iterations, label="Batch")
        scores, names = None, []
        loss = np.float32(0)
        for i in range(args.iterations):
            iter_loss = net.forward_from_to()
            loss += np.float32(iter_loss)
            values = [np.asarray(net.blobs[n].data, np.float32).ravel() for n in net.outputs]
            batch_names = [n for n, v in zip(net.outputs, values) for _ in range(v.size)]
            flat = np.concatenate(values) if values else np.zeros(0, np.float32)
            for name, value in zip(batch_names, flat):
                log.info("Batch %d, %s = %s", i, name, g(value))
            if scores is None:
                scores, names = flat.copy(), batch_names
            else:
                scores += flat
            reporter.iteration(i + 1, float(loss / np.float32(i + 1)))
        reporter.end()
        log.info("Loss: %s", g(loss / np.float32(args.iterations)), extra=BRIEF)
        for name, total in zip(names, scores):
            mean = total / np.float32(args.iterations)
            weight = net.blob_loss_weights.get(name, 0.0)
            suffix = f" (* {g(weight)} = {g(np.float32(weight) * mean)} loss)" if weight else ""
            log.info("%s = %s%s", name, g(mean), suffix, extra=BRIEF)
    return 0


def cmd_plot(args) -> int:
    from .plot import plot_log
    output = plot_log(args.log_file, args.output)
    print(f"wrote {output}")
    return 0
