"""pycaffe's process-wide switches: mode, device, random seed, solver count, logging.

protonet runs on the CPU only. ``set_mode_gpu()`` therefore warns once and keeps
computing on the CPU, so scripts written for a GPU machine still run unchanged;
``set_device`` records the id and does nothing else.

``set_random_seed(seed)`` makes every net built afterwards without an explicit
``seed=`` reproducible: each new net draws its own seed from one sequence started
at ``seed``, as Caffe's nets draw from its one global generator.

Several solvers training one model (Caffe's multi-GPU training) run as MPI
processes: ``set_solver_count(N)`` and ``set_solver_rank(r)`` before a solver is
built make its TRAIN data layers read rank r's share of every global batch of N
batches (and only rank 0 build test nets); ``NCCL(solver, uid)`` then averages
the gradients over the ranks (:class:`protonet.solvers.distributed.NCCL`).
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from .errors import ProtonetError

_state = {"mode": "CPU", "device": 0, "solver_count": 1, "solver_rank": 0,
          "multiprocess": False, "seeds": None, "gpu_warned": False}

_log = logging.getLogger("protonet")


def set_mode_cpu() -> None:
    """Compute on the CPU (the only backend protonet has)."""
    _state["mode"] = "CPU"


def set_mode_gpu() -> None:
    """pycaffe's GPU switch: protonet has no GPU backend, so this warns (once) and stays
    on the CPU."""
    _state["mode"] = "CPU"
    if not _state["gpu_warned"]:
        _state["gpu_warned"] = True
        warnings.warn("set_mode_gpu(): protonet has no GPU backend; computing on the CPU",
                      RuntimeWarning, stacklevel=2)


def get_mode() -> str:
    """``"CPU"`` -- where protonet computes."""
    return _state["mode"]


def set_device(device_id: int) -> None:
    """Record the GPU id pycaffe would use (no effect: protonet computes on the CPU)."""
    device_id = int(device_id)
    if device_id < 0:
        raise ProtonetError(f"set_device: device id must be non-negative, got {device_id}")
    _state["device"] = device_id


def set_random_seed(seed: int) -> None:
    """Seed the random numbers of nets created from now on (fillers, dropout, data
    shuffling), as Caffe's ``Caffe::set_random_seed``."""
    seed = int(seed)
    if seed < 0:
        raise ProtonetError(f"set_random_seed: the seed must be non-negative, got {seed}")
    _state["seeds"] = np.random.SeedSequence(seed)


def next_net_seed() -> int | None:
    """The seed for a net built without ``seed=``: drawn from :func:`set_random_seed`'s
    sequence, or ``None`` (fresh entropy) when no seed was set."""
    seeds = _state["seeds"]
    if seeds is None:
        return None
    return int(seeds.spawn(1)[0].generate_state(1, np.uint64)[0])


def solver_count() -> int:
    return _state["solver_count"]


def set_solver_count(count: int) -> None:
    """How many solvers (MPI ranks) train one model together, as Caffe's multi-GPU
    ``set_solver_count``: a solver built afterwards reads its share of every batch."""
    count = int(count)
    if count < 1:
        raise ProtonetError(f"set_solver_count: the count must be at least 1, got {count}")
    _state["solver_count"] = count


def solver_rank() -> int:
    return _state["solver_rank"]


def set_solver_rank(rank: int) -> None:
    """Which of the ``solver_count()`` solvers this process is (0 is the root solver, which
    alone tests and writes snapshots); its MPI rank."""
    rank = int(rank)
    if rank < 0:
        raise ProtonetError(f"set_solver_rank: the rank must be non-negative, got {rank}")
    _state["solver_rank"] = rank


def multiprocess() -> bool:
    return _state["multiprocess"]


def set_multiprocess(multiprocess: bool) -> None:
    """Caffe's switch for solvers in separate processes; protonet's always are (MPI ranks),
    so this is recorded only."""
    _state["multiprocess"] = bool(multiprocess)


def has_nccl() -> bool:
    """Whether ``caffe.NCCL`` can work: protonet's runs over MPI, so whether mpi4py is
    installed (``pip install 'protonet[mpi]'``)."""
    import importlib.util
    return importlib.util.find_spec("mpi4py") is not None


def init_log(level: int = 0, use_stderr: bool = True) -> None:
    """Route protonet's log (the ``protonet`` logger) to stderr at glog's ``level``
    (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL), as pycaffe's ``init_log``."""
    levels = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
    _log.setLevel(levels.get(int(level), logging.INFO))
    if use_stderr and not any(getattr(h, "_protonet", False) for h in _log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname).1s %(name)s] %(message)s"))
        handler._protonet = True
        _log.addHandler(handler)


def log(message: str) -> None:
    """pycaffe's ``caffe.log``: one INFO line in protonet's log."""
    _log.info("%s", message)


def __getattr__(name: str):
    # pycaffe defines Net in caffe.pycaffe; ``from caffe.pycaffe import Net`` keeps working
    if name == "Net":
        from .net import Net
        return Net
    if name == "NCCL":
        from .solvers.distributed import NCCL
        return NCCL
    raise AttributeError(f"module 'protonet.pycaffe' has no attribute {name!r}")
