"""Data-parallel training on several processes, over MPI (mpi4py).

Caffe trains one model on several GPUs by running one solver per device and
summing the gradients every iteration; protonet does the same with one solver
per MPI rank, on one machine or several::

    mpiexec -n 4 protonet solve SOLVER            # any MPI launcher, any hosts
    protonet solve SOLVER --ranks 4               # starts mpiexec itself (one machine)

Every rank builds the train net with the prototxt's ``batch_size`` B; its data
layers read their share of every global batch of ``N * B`` records (see
:func:`protonet.layers.data.data_shard`). After backward, :class:`DataParallel`
packs every learnable parameter's gradient, the BatchNorm running statistics,
the net's outputs, the loss and the ranks' pending signal requests into one
buffer, sums it with **one allreduce per iteration** and divides by N; every rank then applies the same
update, so the weights stay identical. Every ``check_every`` iterations (and at
each snapshot) the ranks compare a CRC of their weights and stop, all of them,
if one differs.

Only rank 0 tests, logs and writes snapshots; a snapshot's sidecar holds the
data position of every rank. A rank that fails with an error prints it and
aborts the job (``MPI_Abort``), so no rank waits for it forever; one that is
killed is noticed by ``mpiexec``, which stops the others. Ctrl-C (SIGINT to
``mpiexec``, which forwards it to every rank) becomes, on rank 0, a stop
request that travels in the next allreduce: all stop after the same iteration,
and rank 0 writes one snapshot (SIGHUP likewise: one snapshot).

Nothing is pickled: only the buffer-based (upper-case) mpi4py calls are used.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
import zlib

import numpy as np

from ..errors import ProtonetError
from .progress import BRIEF, LOGGER
from .signals import NONE, SNAPSHOT, STOP

log = logging.getLogger(LOGGER + ".solver")

#: environment variables through which MPI launchers announce the world size
SIZE_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: set by ``--ranks``: the rank count the launcher asked for, and where ranks note their pid
RANKS_ENV, RUNDIR_ENV = "PROTONET_MPI_RANKS", "PROTONET_MPI_RUNDIR"
CHECK_ENV = "PROTONET_MPI_CHECK_EVERY"
DEFAULT_CHECK_EVERY = 100
#: seconds a rank waits after printing an uncaught exception before it aborts the job
ABORT_GRACE_S = 0.2
INSTALL_HINT = ("pip install 'protonet[mpi]' (mpi4py and the mpich wheel, which brings "
                "mpiexec), or mpi4py built against the machine's MPI")


class CollectiveError(ProtonetError):
    """An error every rank raises at the same point: rank 0 reports it, all exit cleanly."""


def mpi():
    """The ``mpi4py.MPI`` module (MPI initialised on first use), or a clear error."""
    if "mpi4py.MPI" not in sys.modules:
        try:
            import mpi4py
        except ImportError:
            raise ProtonetError(f"training on several processes needs mpi4py: "
                                f"{INSTALL_HINT}") from None
        mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_size() > 1:
            _abort_on_uncaught_exceptions(MPI)
    from mpi4py import MPI
    return MPI


def _abort_on_uncaught_exceptions(MPI) -> None:
    """An exception nobody catches ends this rank, and the others would wait for it in
    their next collective forever: after the traceback, abort the whole job."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if previous is sys.__excepthook__:
            # one write, then a moment for the launcher to forward it: an abort can end the
            # launcher's forwarding of this rank's output midway (seen under load)
            text = "".join(traceback.format_exception(kind, value, tb))
            try:
                sys.stderr.flush()
                os.write(sys.stderr.fileno(), text.encode(errors="replace"))
            except (OSError, ValueError, AttributeError):
                previous(kind, value, tb)
        else:
            previous(kind, value, tb)
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(1)
    sys.excepthook = hook


def launched_size() -> int:
    """The world size an MPI launcher announced in the environment (1 when none did)."""
    for name in (RANKS_ENV,) + SIZE_ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


# -- small collectives (buffers only, nothing pickled) -------------------------------------------
def gather_bytes(comm, data: bytes, root: int = 0) -> list[bytes] | None:
    """Every rank's ``data``, in rank order, on ``root`` (None elsewhere)."""
    MPI = mpi()
    size, rank = comm.Get_size(), comm.Get_rank()
    sizes = np.zeros(size, np.int64)
    comm.Gather(np.array([len(data)], np.int64), sizes, root=root)
    mine = np.frombuffer(data, np.uint8)
    if rank != root:
        comm.Gatherv(mine, None, root=root)
        return None
    counts = [int(n) for n in sizes]
    displs = [int(d) for d in np.concatenate([[0], np.cumsum(sizes)[:-1]])]
    out = np.empty(int(sizes.sum()), np.uint8)
    comm.Gatherv(mine, [out, counts, displs, MPI.BYTE], root=root)
    raw = out.tobytes()
    return [raw[d:d + n] for d, n in zip(displs, counts)]


def bcast_int(comm, value: int, root: int = 0) -> int:
    buf = np.array([value], np.int64)
    comm.Bcast(buf, root=root)
    return int(buf[0])


def agree_on_errors(comm, error: BaseException | None) -> None:
    """Collective: if any rank failed (``error``), raise :class:`CollectiveError` on every rank,
    rank 0's message naming the ranks whose messages differ."""
    flags = np.zeros(comm.Get_size(), np.int8)
    comm.Allgather(np.array([error is not None], np.int8), flags)
    if not flags.any():
        return
    text = "" if error is None else (str(error) if isinstance(error, ProtonetError)
                                     else f"{type(error).__name__}: {error}")
    messages = gather_bytes(comm, text.encode("utf-8"))
    if messages is None:
        raise CollectiveError("")
    failed = [(r, m.decode("utf-8")) for r, m in enumerate(messages) if flags[r]]
    distinct = {m for _, m in failed}
    if len(distinct) == 1 and len(failed) == comm.Get_size():
        raise CollectiveError(failed[0][1])
    raise CollectiveError("\n".join(f"rank {r}: {m}" for r, m in failed))


# -- threads -------------------------------------------------------------------------------------
def configure_threads(comm) -> int:
    """Unless a thread count is set in the environment, give each of the ranks that share
    this machine its share of the cores (at least one); returns the count used."""
    from .. import parallel
    if any(os.environ.get(n, "").strip().isdigit() for n in parallel._ENV):
        return parallel.num_threads()
    MPI = mpi()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        ranks_here = local.Get_size()
    finally:
        local.Free()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    threads = max(1, min(parallel.DEFAULT_MAX_THREADS, cpus // ranks_here))
    parallel.set_num_threads(threads)
    blas = parallel._blas()
    if blas is not None:
        blas[1](threads)
    return threads


# -- the engine ----------------------------------------------------------------------------------
def _merge(a: str, b: str) -> str:
    """Two pending requests as one: stop wins over snapshot wins over none."""
    for action in (STOP, SNAPSHOT):
        if action in (a, b):
            return action
    return NONE


class DataParallel:
    """Averages gradients over the ranks of ``comm`` every iteration (one allreduce).

    ``DataParallel(solver, comm=None, check_every=None)`` checks that every rank built the
    same net, makes the ranks' weights and solver history identical (rank 0's,
    :meth:`bcast`) and attaches itself to ``solver`` (``solver.parallel``; with
    ``attach=False`` and ``broadcast=False`` it leaves both to the caller). The solver must
    have been built after ``caffe.set_solver_count(N)`` and ``set_solver_rank(r)`` with
    ``N, r`` this rank's place in ``comm``, so that its data layers read their share.

    The buffer is ``P + S + K + 3`` values of the parameters' dtype: the P gradient values
    of every learnable parameter, the S running statistics of the BatchNorm layers (which
    forward updates from each rank's own batch: averaged, they stay identical), the K
    values of the net's outputs, the loss, and two counters (ranks asking to stop, ranks
    asking for a snapshot).
    """

    def __init__(self, solver, comm=None, check_every: int | None = None, *,
                 attach: bool = True, broadcast: bool = True):
        from .. import pycaffe
        MPI = mpi()
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.root = self.rank == 0
        self.solver = solver
        if self.size == 1 and pycaffe.solver_count() > 1:
            raise ProtonetError(
                f"caffe.set_solver_count({pycaffe.solver_count()}) asks for "
                f"{pycaffe.solver_count()} solvers, but this process is not one of an MPI "
                "job's processes (MPI sees 1): protonet's solvers train together over MPI, "
                "so start one process per solver with mpiexec (`mpiexec -n N python "
                "script.py`, each process one rank) rather than with multiprocessing")
        if (pycaffe.solver_count(), pycaffe.solver_rank()) != (self.size, self.rank):
            raise ProtonetError(
                f"this process is rank {self.rank} of {self.size}, but the solver was built "
                f"with solver count {pycaffe.solver_count()} and rank "
                f"{pycaffe.solver_rank()}: call caffe.set_solver_count({self.size}) and "
                f"caffe.set_solver_rank({self.rank}) before building the solver, so its data "
                "layers read this rank's share of every batch")
        if check_every is None:
            value = os.environ.get(CHECK_ENV, "").strip()
            check_every = int(value) if value.isdigit() else DEFAULT_CHECK_EVERY
        self.check_every = int(check_every)
        net = solver.net
        self.params = list(net.learnable_params)
        dtypes = {b.dtype for b in self.params}
        if len(dtypes) > 1:
            raise ProtonetError(f"the net's parameters mix dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        self.sizes = [b.count for b in self.params]
        self.grad_count = sum(self.sizes)
        owned = {id(b) for b in self.params}
        self.stats = [b for layer in net.layers if layer.type == "BatchNorm"
                      for b in layer.blobs if id(b) in owned]
        # the values averaged after the gradients: statistics, then outputs
        self.averaged = self.stats + [net.blobs[name] for name in net.outputs]
        self.output_count = sum(b.count for b in self.averaged)
        self.buffer = np.zeros(self.grad_count + self.output_count + 3, self.dtype)
        self.scale = self.dtype.type(1.0 / self.size)
        self.gathered_states = None
        self.reduce_seconds, self.reduce_count = 0.0, 0  # in Allreduce, waits included
        self._agreed: str | None = None
        self._pending = NONE
        self._check_due = True
        self._check_layout(solver)
        self._decorrelate(solver)
        self.threads = configure_threads(self.comm)
        if broadcast:
            self.bcast()
        if attach:
            solver.add_callback(self)

    # -- set-up ----------------------------------------------------------------------------
    def _check_layout(self, solver) -> None:
        """Every rank must have built the same parameters (same shapes, same order)."""
        shapes = ",".join(solver.net.layer_names) + ";" + \
            ";".join(str(list(b.shape)) for b in self.params)
        digests = np.zeros(self.size, np.uint32)
        self.comm.Allgather(np.array([zlib.crc32(shapes.encode())], np.uint32), digests)
        bad = [r for r in range(self.size) if digests[r] != digests[0]]
        if bad:
            raise CollectiveError(
                f"rank(s) {bad} built a train net whose parameters differ from rank 0's; "
                "every rank must build the same net from the same files")

    def _decorrelate(self, solver) -> None:
        """Give ranks other than 0 their own random streams in the layers that compute
        (Dropout masks, stochastic pooling), in place. Data layers keep the shared stream
        their sharding relies on; weights come from rank 0 anyway."""
        if self.root:
            return
        seed = solver.param.random_seed
        entropy = [seed, self.rank] if seed >= 0 else [np.random.SeedSequence().entropy,
                                                       self.rank]
        for i, layer in enumerate(solver.net.layers):
            if solver.net.bottom_vecs[i]:
                bit_generator = layer.rng.bit_generator
                fresh = type(bit_generator)(np.random.SeedSequence(entropy + [i]))
                bit_generator.state = fresh.state

    def bcast(self) -> None:
        """Rank 0's weights and solver history on every rank (Caffe's ``NCCL::Broadcast``)."""
        arrays = [b.data for b in self.params] + list(self.solver.history)
        if not arrays:
            return
        flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(self.dtype, copy=False)
        self.comm.Bcast(flat, root=0)
        offset = 0
        for a in arrays:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size
        self._check_due = True

    # -- the iteration ---------------------------------------------------------------------
    def on_start(self) -> None:
        pass

    def on_gradients_ready(self) -> None:
        pass

    def reduce(self, solver, loss: float) -> float:
        """Sum the gradients, BatchNorm statistics, outputs, loss and requests of all ranks;
        divide by N. Returns the mean loss; leaves the means in the diffs, the statistics and
        the output blobs."""
        buf, n, m = self.buffer, self.grad_count, self.output_count
        if self.params:
            np.concatenate([b.diff.reshape(-1) for b in self.params], out=buf[:n])
        offset = n
        for blob in self.averaged:
            buf[offset:offset + blob.count] = np.asarray(blob.data).reshape(-1)
            offset += blob.count
        buf[n + m] = loss
        local = self._local_action(solver)
        buf[n + m + 1] = local == STOP
        buf[n + m + 2] = local == SNAPSHOT
        started = time.perf_counter()
        self.comm.Allreduce(mpi().IN_PLACE, buf)
        self.reduce_seconds += time.perf_counter() - started
        self.reduce_count += 1
        buf[:n + m + 1] *= self.scale
        offset = 0
        for blob, size in zip(self.params, self.sizes):
            blob.diff[...] = buf[offset:offset + size].reshape(blob.shape)
            offset += size
        for blob in self.averaged:
            blob.data[...] = buf[offset:offset + blob.count].reshape(blob.shape)
            offset += blob.count
        stop, snap = buf[n + m + 1] > 0, buf[n + m + 2] > 0
        self._agreed = STOP if stop else SNAPSHOT if snap else NONE
        if self._check_due or (self.check_every and solver.iter % self.check_every == 0):
            self.check_weights(solver)
        return float(buf[n + m])

    def _local_action(self, solver) -> str:
        """Rank 0's pending request (mpiexec hands a signal to every rank at slightly
        different moments: the others' copies are dropped, so one signal makes one
        snapshot)."""
        action = solver.action_function() if solver.action_function is not None else NONE
        action, self._pending = _merge(action, self._pending), NONE
        return action if self.root else NONE

    def requested_action(self, solver) -> str:
        """The action all ranks agreed on in this iteration's allreduce. Polled at any other
        time (rank 0's test passes), a signal is kept for the next allreduce instead."""
        if self._agreed is not None:
            action, self._agreed = self._agreed, None
            return action
        if solver.action_function is not None:
            self._pending = _merge(self._pending, solver.action_function())
        return NONE

    def mean_scalar(self, value: float) -> float:
        buf = np.array([value], np.float64)
        self.comm.Allreduce(mpi().IN_PLACE, buf)
        return float(buf[0] / self.size)

    def check_weights(self, solver) -> None:
        """Collective: fail on every rank if any rank's weights differ from rank 0's."""
        self._check_due = False
        crc = 0
        for blob in self.params:
            crc = zlib.crc32(np.ascontiguousarray(blob.data).view(np.uint8), crc)
        digests = np.zeros(self.size, np.uint32)
        self.comm.Allgather(np.array([crc], np.uint32), digests)
        bad = [r for r in range(self.size) if digests[r] != digests[0]]
        if bad:
            last = (f"the last snapshot, {solver.last_snapshot}, is intact" if
                    solver.last_snapshot else "no snapshot was written by this run")
            raise CollectiveError(
                f"iteration {solver.iter}: the weights of rank(s) {bad} differ from rank 0's "
                f"(compared every {self.check_every} iterations): the ranks no longer train "
                f"one model. Training stopped; {last}. Something updates the weights on some "
                "ranks only (a Python layer, a callback, a rank-dependent solver setting)")

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self, solver) -> str | None:
        """Collective: rank 0 writes the snapshot, with every rank's data position."""
        from . import snapshot as snap
        states = {name: layer.get_state()
                  for name, layer in zip(solver.net.layer_names, solver.net.layers)}
        text = json.dumps(states, default=snap._jsonable, allow_nan=True, separators=(",", ":"))
        gathered = gather_bytes(self.comm, text.encode("utf-8"))
        self.check_weights(solver)
        h5 = solver.param.snapshot_format == type(solver.param).HDF5
        path = solver.snapshot_filename(".solverstate.h5" if h5 else ".solverstate")
        if self.root:
            self.gathered_states = [json.loads(g.decode("utf-8"), object_hook=snap._from_json)
                                    for g in gathered]
            try:
                path = solver._write_snapshot()
            finally:
                self.gathered_states = None
        solver.last_snapshot, solver._last_snapshot_iter = path, solver.iter
        return path if self.root else None


# -- `protonet solve` as one rank --------------------------------------------------------------
def _note_pid(rank: int) -> None:
    """Tell the ``--ranks`` launcher which pid and host this rank has."""
    rundir = os.environ.get(RUNDIR_ENV)
    if not rundir:
        return
    from ..io.atomic import atomic_write
    note = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname()}
    try:
        atomic_write(os.path.join(rundir, f"rank-{rank}.json"), json.dumps(note).encode())
    except (OSError, ProtonetError):
        pass


def solve_as_rank(args, path: str, param, make_solver) -> int:
    """``protonet solve`` in one rank of an MPI job. ``make_solver(param, reporter)``
    builds the solver. Returns the exit status; an error on one rank aborts the job."""
    import contextlib
    import warnings

    from .. import pycaffe
    from .progress import reporting
    from .signals import SignalHandler
    MPI = mpi()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    expected = launched_size()
    if size != expected:
        raise ProtonetError(
            f"the launcher started {expected} processes, but MPI sees a world of {size}: "
            "the mpiexec that started them belongs to another MPI library than the one "
            f"mpi4py uses ({_library(MPI)}). Use that "
            "library's mpiexec (for the mpich wheel: the mpiexec installed beside this "
            "Python), or --ranks, which finds it")
    _note_pid(rank)
    root = rank == 0
    logger = logging.getLogger(LOGGER)
    if not root:  # rank 0 logs and warns for all
        logger.disabled = True
        warnings.simplefilter("ignore")
    try:
        with (reporting(args.progress, args.log) if root else
              contextlib.nullcontext(None)) as reporter:
            solver = engine = None
            error = None
            try:
                pycaffe.set_solver_count(size)
                pycaffe.set_solver_rank(rank)
                pycaffe.set_multiprocess(True)
                if param.random_seed < 0:  # one seed, so that every rank shuffles alike
                    seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
                    param.random_seed = bcast_int(comm, seed)
                log.info("Use CPU.")
                solver = make_solver(param, reporter)
                if args.snapshot:
                    log.info("Resuming from %s", args.snapshot)
                    log.info("Restoring previous solver status from %s", args.snapshot,
                             extra=BRIEF)
                    solver.restore(args.snapshot)
            except Exception as e:  # reported once, by rank 0, below
                error = e
            agree_on_errors(comm, error)
            engine = DataParallel(solver, comm)
            hosts = gather_bytes(comm, f"{os.getpid()}@{socket.gethostname()}".encode())
            if root:
                batch = _train_batch(solver.net)
                log.info("Training on %d ranks (MPI, %s): global batch %s = %d x %s; "
                         "%d thread(s) per rank; allreduce of %d values (%.1f MiB) per "
                         "iteration", size, _library(MPI),
                         batch * size if batch else "?", size, batch or "?", engine.threads,
                         engine.buffer.size, engine.buffer.nbytes / 2 ** 20, extra=BRIEF)
                log.info("Ranks: %s", ", ".join(f"rank {r} pid {h.decode()}"
                                                for r, h in enumerate(hosts)))
            log.info("Starting Optimization")
            started = time.perf_counter()
            with SignalHandler(args.sigint_effect, args.sighup_effect) as signals:
                solver.action_function = signals.requested_action
                solver.solve()
            if engine.reduce_count:
                wall = time.perf_counter() - started
                log.info("Rank 0 spent %.2f ms per iteration in the allreduce (%.1f%% of %.1f s; "
                         "waiting for the slowest rank included)", 1e3 * engine.reduce_seconds /
                         engine.reduce_count, 100 * engine.reduce_seconds / max(wall, 1e-9),
                         wall, extra=BRIEF)
            log.info("Optimization Done.")
    except CollectiveError as e:
        if root:
            for line in str(e).splitlines():
                print(f"protonet: error: {line}", file=sys.stderr, flush=True)
        return 1
    except BaseException as e:  # this rank alone: stop every rank now
        what = (str(e) if isinstance(e, ProtonetError) else "interrupted"
                if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}")
        print(f"protonet: error: rank {rank}: {what}", file=sys.stderr, flush=True)
        if not isinstance(e, (ProtonetError, KeyboardInterrupt)):
            traceback.print_exc()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)  # let the launcher forward the line before the abort
        comm.Abort(1)
    return 0


def _library(MPI) -> str:
    """"MPICH Version: 5.0.2": the first line of the MPI library's version, spaces squeezed."""
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def _train_batch(net) -> int | None:
    """The batch size of the train net's first data top (its first axis)."""
    for i, layer in enumerate(net.layers):
        if not net.bottom_vecs[i] and net.top_vecs[i]:
            shape = net.top_vecs[i][0].shape
            return int(shape[0]) if shape else None
    return None


# -- pycaffe's caffe.NCCL ------------------------------------------------------------------------
class NCCL(DataParallel):
    """``caffe.NCCL``, backed by MPI: Caffe's ``python/train.py`` pattern on CPU ranks.

    Each solver is one MPI process (started by ``mpiexec -n N python script.py``), which
    calls ``caffe.set_solver_count(N)``, ``caffe.set_solver_rank(r)`` (its MPI rank,
    ``NCCL.world_rank()``) and ``caffe.set_multiprocess(True)`` before building its solver;
    then ``nccl = caffe.NCCL(solver, uid)``, ``nccl.bcast()`` (rank 0's weights everywhere),
    ``solver.add_callback(nccl)`` and ``solver.step(n)``: gradients are averaged over the
    ranks every iteration, only rank 0 tests and writes snapshots.

    ``uid`` (from :meth:`new_uid`) is accepted for Caffe's signature; MPI's world is the
    communicator, so the ranks need not share it. ``solver.net.after_backward(nccl)``
    (train.py calls it when ``layer_wise_reduce`` is set) is accepted and changes nothing:
    the gradients go in one allreduce after backward either way.
    """

    def __init__(self, solver, uid=b""):
        super().__init__(solver, attach=False, broadcast=False)
        self.uid = uid
        if not self.root:  # the root solver logs, as in Caffe
            logging.getLogger(LOGGER + ".solver").setLevel(logging.WARNING)
        net = solver.net
        if not hasattr(net, "after_backward"):
            net.after_backward = self._after_backward

    def _after_backward(self, callback) -> None:
        if callback is not self:
            raise ProtonetError("net.after_backward: protonet calls no per-layer hooks; "
                                "only the caffe.NCCL of this net's solver is accepted")

    @staticmethod
    def new_uid() -> bytes:
        """128 random bytes, as Caffe's ``ncclUniqueId`` (not needed by MPI)."""
        return os.urandom(128)

    @staticmethod
    def world_rank() -> int:
        """This process's MPI rank (initialises MPI)."""
        return mpi().COMM_WORLD.Get_rank()

    @staticmethod
    def world_size() -> int:
        """The number of processes in this MPI job (initialises MPI)."""
        return mpi().COMM_WORLD.Get_size()
