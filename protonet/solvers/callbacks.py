"""The solver's hooks for callbacks and for training on several processes.

pycaffe's ``solver.add_callback(on_start, on_gradients_ready)`` (or
``solver.add_callback(nccl)``) registers functions the loop calls at the start
of every iteration and once the gradients are complete, before the update, as
Caffe's ``Solver::Callback``. A callback object that has a ``reduce(solver,
loss) -> loss`` method (protonet's data-parallel engine,
:class:`protonet.solvers.distributed.DataParallel`) becomes ``solver.parallel``:
it averages the gradients and the loss over the ranks and decides, for all of
them, when to snapshot and stop.

With ``caffe.solver_count() > 1`` only the root solver (rank 0) builds test
nets, tests and writes snapshot files, as in Caffe; a snapshot's sidecar then
holds the data position of every rank (``rank_train_nets``) and the rank count,
and a snapshot is resumed only with as many ranks as wrote it.
"""
from __future__ import annotations

from ..errors import ProtonetError


def _pycaffe():
    from .. import pycaffe
    return pycaffe


class SolverCallbacks:
    """Mixed into :class:`protonet.solvers.Solver`."""

    parallel = None  # the data-parallel engine, once one is added as a callback
    _callbacks: tuple = ()

    def add_callback(self, on_start, on_gradients_ready=None) -> None:
        """pycaffe's ``add_callback``: two callables, or one object with ``on_start()`` and
        ``on_gradients_ready()`` methods (``caffe.NCCL``)."""
        if on_gradients_ready is None:
            obj = on_start
            if not (callable(getattr(obj, "on_start", None))
                    and callable(getattr(obj, "on_gradients_ready", None))):
                raise ProtonetError("add_callback takes on_start and on_gradients_ready "
                                    "callables, or one object with on_start() and "
                                    "on_gradients_ready() methods (such as caffe.NCCL)")
            if callable(getattr(obj, "reduce", None)):
                if self.parallel is not None and self.parallel is not obj:
                    raise ProtonetError("this solver already has a data-parallel callback")
                self.parallel = obj
                return
            pair = (obj.on_start, obj.on_gradients_ready)
        else:
            if not (callable(on_start) and callable(on_gradients_ready)):
                raise ProtonetError("add_callback: on_start and on_gradients_ready must be "
                                    "callable")
            pair = (on_start, on_gradients_ready)
        self._callbacks = self._callbacks + (pair,)

    def _callbacks_start(self) -> None:
        for on_start, _ in self._callbacks:
            on_start()
        if self.parallel is not None:
            self.parallel.on_start()

    def _callbacks_gradients(self, loss: float) -> float:
        """Gradients are complete: the callbacks, then the average over the ranks."""
        for _, ready in self._callbacks:
            ready()
        if self.parallel is not None:
            loss = self.parallel.reduce(self, loss)
        return loss

    # -- the root solver -------------------------------------------------------------------
    @staticmethod
    def _is_root() -> bool:
        return _pycaffe().solver_rank() == 0

    def _init_test_nets_if_root(self) -> None:
        if self._is_root():
            self._init_test_nets()
        else:
            self.test_nets, self.test_scores = [], []

    def _writes_snapshots(self) -> bool:
        return self.parallel is None or self.parallel.root

    def _mean_over_ranks(self, value: float) -> float:
        return value if self.parallel is None else self.parallel.mean_scalar(value)

    # -- snapshot content ------------------------------------------------------------------
    def _with_ranks(self, state: dict) -> dict:
        count = _pycaffe().solver_count()
        if count > 1:
            state["ranks"] = count
            if self.parallel is not None:
                state["rank_train_nets"] = self.parallel.gathered_states
        return state

    def _rank_extra(self, state_file: str, extra: dict) -> dict:
        """The sidecar ``extra`` as this rank restores it; refuses another rank count."""
        count, rank = _pycaffe().solver_count(), _pycaffe().solver_rank()
        written = int(extra.get("ranks", 1))
        if written != count:
            raise rank_count_error(state_file, extra, count)
        if written > 1:
            states = extra.get("rank_train_nets") or []
            extra = dict(extra, train_net=states[rank] if rank < len(states) else {})
        return extra


def rank_count_error(state_file: str, extra: dict, count: int) -> ProtonetError:
    """The refusal of a snapshot written by ``extra["ranks"]`` ranks in a run of ``count``."""
    written = int(extra.get("ranks", 1))

    def runs(n):
        return "a single process" if n == 1 else f"{n} ranks"
    how = ("Resume it without --ranks (and not under mpiexec)" if written == 1 else
           f"Resume it with --ranks {written} (or mpiexec -n {written})")
    return ProtonetError(
        f"{state_file}: this snapshot was written by training on {runs(written)}, but this "
        f"run has {runs(count)}, and each rank's data position belongs to that count. {how}, "
        f"or start afresh from its weights with --weights "
        f"{extra.get('learned_net') or 'X.caffemodel'}")
