"""The training loop, after Caffe's ``solver.cpp`` and ``sgd_solver.cpp``.

One iteration of :meth:`Solver.step` does, in Caffe's order::

    clear parameter diffs
    test all test nets     if test_interval and iter % test_interval == 0
                           and (iter > 0 or test_initialization)
    iter_size x forward+backward (diffs accumulate; loss averaged)
    smoothed loss          (window of average_loss iterations)
    display                if display and iter % display == 0
    apply_update           learning rate -> clip gradients -> per param:
                           normalize (/iter_size), regularize (L2/L1), update rule;
                           then w -= diff
    iter += 1
    snapshot               if snapshot and iter % snapshot == 0, or a signal asked
    stop                   if a signal asked

:meth:`Solver.solve` runs that to ``max_iter``, snapshots at the end
(``snapshot_after_train``), then a last forward pass to display the loss and a
last test when on the interval. Log lines are Caffe's, word for word.

Beyond Caffe: a loss that becomes NaN or infinite stops training with an error
naming the iteration and the first layer whose output went non-finite (no
snapshot of the broken weights is written); a snapshot also stores, in a
sidecar file, what Caffe forgets (data positions, random generators, the
smoothed-loss window), so a resumed run continues the same trajectory exactly.
"""
from __future__ import annotations

import logging
import math
import os
import time
import warnings

import numpy as np

from ..errors import ProtonetError
from ..io.weights import copy_trained_layers
from ..proto import caffe_pb2
from . import lr_policy, snapshot as snap
from .callbacks import SolverCallbacks
from .progress import BRIEF, LOGGER
from .signals import NONE, SNAPSHOT, STOP
from .updates import f32

log = logging.getLogger(LOGGER + ".solver")


def g(x) -> str:
    """A number as C++'s ``ostream <<`` prints a float (6 significant digits)."""
    return "%g" % x


def _warn(message: str) -> None:
    from ..io.prototxt import ProtonetWarning
    warnings.warn(message, ProtonetWarning, stacklevel=3)


def resolve_path(path: str, base_dir: str | None, what: str) -> str:
    """``path`` as Caffe opens it (relative to the working directory); if it is not
    there but is beside the solver file, use that, with a warning."""
    if os.path.exists(path) or os.path.isabs(path) or not base_dir:
        return path
    candidate = os.path.join(base_dir, path)
    if os.path.exists(candidate):
        _warn(f"{what} '{path}' is not in the working directory; using '{candidate}' "
              "(relative to the solver file)")
        return candidate
    raise ProtonetError(f"{what} '{path}' not found (looked in the working directory and "
                        f"in '{base_dir}', the solver file's directory)")


def _derived_seed(seed: int, index: int) -> int | None:
    """Independent, deterministic seed number ``index`` from the solver's random_seed."""
    if seed < 0:
        return None
    words = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


class Solver(SolverCallbacks):
    """Base of the six solvers: net setup, the loop, testing, snapshots and restore.

    ``Solver(path_or_param)`` -- a solver prototxt path or a ``SolverParameter`` (then
    ``solver_path`` names the file it came from, for resolving relative net paths).
    pycaffe surface: ``net``, ``test_nets``, ``iter``, ``param``, ``step(n)``,
    ``solve(resume=None)``, ``restore(state)``, ``snapshot()``, ``apply_update()``.

    ``action_function`` (callable -> ``"none"|"stop"|"snapshot"``) is polled between
    iterations; ``reporter`` gets ``begin/iteration/end`` calls (progress bar).
    Several processes training one model: :mod:`protonet.solvers.callbacks`.
    """

    type = ""

    def __init__(self, param, *, solver_path: str | None = None, action_function=None,
                 reporter=None):
        from ..io import read_solver
        if isinstance(param, caffe_pb2.SolverParameter):
            self.param = caffe_pb2.SolverParameter()
            self.param.CopyFrom(param)
            self.solver_dir = (os.path.dirname(solver_path) or ".") if solver_path else None
            self.source = solver_path or "<SolverParameter>"
        else:
            path = os.fspath(param)
            self.param = read_solver(path)
            self.solver_dir = os.path.dirname(path) or "."
            self.source = path
        self.action_function = action_function
        self.reporter = reporter
        self.iter = 0
        self.current_step = 0
        self.lr = 0.0
        self.requested_early_exit = False
        self._stopped_by_signal = False
        self.test_scores: list = []
        self.last_snapshot: str | None = None
        self._last_snapshot_iter: int | None = None
        self._losses: list[float] = []
        self._smoothed_loss = 0.0
        self._window_start = 0
        self._resumed_window = None
        self._check_param()
        log.info("Initializing solver from parameters: \n%s", self.param)
        self._init_train_net()
        self._init_test_nets_if_root()
        self._multipliers()
        self.pre_solve()
        log.info("Solver scaffolding done.")

    # -- setup -------------------------------------------------------------------------------
    def _check_param(self) -> None:
        p = self.param
        if p.average_loss < 1:
            raise ProtonetError(f"average_loss must be at least 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise ProtonetError(f"iter_size must be at least 1, got {p.iter_size}")
        if p.regularization_type not in ("L2", "L1"):
            raise ProtonetError(f"unknown regularization_type '{p.regularization_type}' "
                                "(use L2 or L1)")
        if p.snapshot < 0 or p.display < 0 or p.test_interval < 0:
            raise ProtonetError("snapshot, display and test_interval must not be negative")
        lr_policy.check_policy(p)
        self.check_param()

    def check_param(self) -> None:
        """Solver-type-specific checks (subclasses)."""

    def _read_net(self, path: str):
        from ..io import read_net
        return read_net(resolve_path(path, self.solver_dir, "net file"))

    def _build_net(self, net_param, phase: int, state_override, index: int):
        """Caffe's NetState precedence: phase default < the net's own state < the solver's."""
        from ..net import Net
        state = caffe_pb2.NetState(phase=phase)
        state.MergeFrom(net_param.state)
        if state_override is not None:
            state.MergeFrom(state_override)
        net_param.state.CopyFrom(state)
        return Net(net_param, state.phase, level=state.level, stages=[],
                   seed=_derived_seed(self.param.random_seed, index))

    def _init_train_net(self) -> None:
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if not given:
            raise ProtonetError("the solver must give a train net in one of net, net_param, "
                                "train_net, train_net_param")
        if len(given) > 1:
            raise ProtonetError(f"the solver gives more than one train net ({', '.join(given)}); "
                                "keep one")
        field = given[0]
        if field in ("net_param", "train_net_param"):
            log.info("Creating training net specified in %s.", field)
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(getattr(p, field))
        else:
            log.info("Creating training net from %s file: %s", field, getattr(p, field))
            net_param = self._read_net(getattr(p, field))
        self.net = self._build_net(net_param, caffe_pb2.TRAIN, p.train_state, 0)
        for weights in p.weights:
            self.load_weights(weights, test_nets=False)

    def _init_test_nets(self) -> None:
        p = self.param
        if p.HasField("net") and p.HasField("net_param"):
            raise ProtonetError("the solver gives both net and net_param; keep one")
        generic = p.HasField("net") or p.HasField("net_param")
        specific = len(p.test_net_param) + len(p.test_net)
        if (generic and len(p.test_iter) < specific) or \
                (not generic and len(p.test_iter) != specific):
            raise ProtonetError(f"test_iter must be given once per test net: {specific} test "
                                f"net(s), {len(p.test_iter)} test_iter value(s)")
        count = len(p.test_iter) if generic else specific
        if len(p.test_state) and len(p.test_state) != count:
            raise ProtonetError(f"test_state must be given not at all or once per test net "
                                f"({count}), got {len(p.test_state)}")
        if count and p.test_interval <= 0:
            raise ProtonetError(f"{count} test net(s) but test_interval is {p.test_interval}; "
                                "set a positive test_interval (or remove test_iter)")
        sources = []
        for net_param in p.test_net_param:
            copy = caffe_pb2.NetParameter()
            copy.CopyFrom(net_param)
            sources.append(("test_net_param", copy))
        for path in p.test_net:
            sources.append((f"test_net file: {path}", self._read_net(path)))
        for _ in range(count - len(sources)):
            if p.HasField("net_param"):
                copy = caffe_pb2.NetParameter()
                copy.CopyFrom(p.net_param)
                sources.append(("net_param", copy))
            else:
                sources.append((f"net file: {p.net}", self._read_net(p.net)))
        self.test_nets = []
        for i, (source, net_param) in enumerate(sources):
            log.info("Creating test net (#%d) specified by %s", i, source)
            state = p.test_state[i] if len(p.test_state) else None
            net = self._build_net(net_param, caffe_pb2.TEST, state, i + 1)
            self.test_nets.append(net)
            self._share_trained_layers(net)
            for weights in p.weights:
                self._load_into(net, weights)
        self.test_scores = [None] * len(self.test_nets)

    def _multipliers(self) -> None:
        """Effective lr_mult/decay_mult per learnable param, as Caffe's AppendParam sets them:
        the owner's value, else the first sharer that gives one, else 1."""
        net = self.net
        specs = net.param_specs
        lr = [s.lr_mult if s is not None and s.HasField("lr_mult") else None for s in specs]
        decay = [s.decay_mult if s is not None and s.HasField("decay_mult") else None
                 for s in specs]
        owner_by_name = getattr(net, "_param_owner_by_name", {})
        for lp in net.param.layer:
            for spec in lp.param:
                owner = owner_by_name.get(spec.name) if spec.name else None
                if owner is None:
                    continue
                if lr[owner] is None and spec.HasField("lr_mult"):
                    lr[owner] = spec.lr_mult
                if decay[owner] is None and spec.HasField("decay_mult"):
                    decay[owner] = spec.decay_mult
        self.params_lr = [1.0 if v is None else float(v) for v in lr]
        self.params_weight_decay = [1.0 if v is None else float(v) for v in decay]

    def pre_solve(self) -> None:
        """Allocate the history (zeros, one blob per param; two for AdaDelta and Adam)."""
        params = self.net.learnable_params
        self.history = [np.zeros(b.shape, b.dtype) for _ in range(self.history_factor)
                        for b in params]
        self._scratch = [None] * len(params)

    history_factor = 1

    def scratch(self, param_id: int, n: int = 1):
        """``n`` temporary arrays shaped like parameter ``param_id`` (reused)."""
        bufs = self._scratch[param_id]
        if bufs is None or len(bufs) < n:
            blob = self.net.learnable_params[param_id]
            bufs = [np.empty(blob.shape, blob.dtype) for _ in range(n)]
            self._scratch[param_id] = bufs
        return bufs

    # -- weights ------------------------------------------------------------------------------
    def _weight_files(self, weights: str) -> list[str]:
        return [resolve_path(n, self.solver_dir, "weights file") for n in weights.split(",") if n]

    def _load_into(self, net, weights: str) -> None:
        for name in self._weight_files(weights):
            copy_trained_layers(net, name)

    def load_weights(self, weights: str, test_nets: bool = True) -> None:
        """Fine-tune: copy weights by layer name from comma-separated .caffemodel files into
        the train net (and the test nets), as ``caffe train --weights`` does."""
        for name in self._weight_files(weights):
            log.info("Finetuning from %s", name)
            copy_trained_layers(self.net, name)
            if test_nets:
                for net in getattr(self, "test_nets", []):
                    copy_trained_layers(net, name)

    def _share_trained_layers(self, test_net) -> None:
        """Net::ShareTrainedLayersWith: the test net uses the train net's weights by layer name
        (and, as the nets never run at once, its layers' scratch buffers)."""
        test_net.share_with(self.net)
        test_net.share_scratch_with(self.net)

    # -- the loop -----------------------------------------------------------------------------
    def _requested_action(self) -> str:
        if self.parallel is not None:  # the ranks' agreed action
            return self.parallel.requested_action(self)
        return self.action_function() if self.action_function is not None else NONE

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        if self._resumed_window is not None:
            self._losses, self._smoothed_loss, self._window_start = self._resumed_window
            self._resumed_window = None
        else:
            self._losses, self._smoothed_loss, self._window_start = [], 0.0, start_iter
        self._timer = time.perf_counter()
        self._iterations_last = self.iter
        # a diverging net overflows: the loss check below reports it, numpy need not warn
        with np.errstate(all="ignore"):
            self._run(stop_iter)

    def _run(self, stop_iter: int) -> None:
        p = self.param
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 \
                    and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            self._callbacks_start()
            display = bool(p.display) and self.iter % p.display == 0
            debug = display and p.debug_info
            loss = np.float32(0)
            for _ in range(p.iter_size):
                one = self._forward_backward(debug)
                if not math.isfinite(one):
                    self._diverged(one)
                loss += np.float32(one)
            loss = self._callbacks_gradients(float(loss / np.float32(p.iter_size)))
            self._update_smoothed_loss(loss)
            if display:
                self._display()
            self.apply_update()
            self.iter += 1
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT:
                self.snapshot()
            if self.reporter is not None:
                self.reporter.iteration(self.iter, self._smoothed_loss, self.lr)
            if request == STOP:
                self.requested_early_exit = True
                self._stopped_by_signal = True
                break

    def solve(self, resume: str | None = None) -> None:
        """Train to ``max_iter`` (Caffe's Solver::Solve), resuming from a solverstate if given."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        self._stopped_by_signal = False
        if p.snapshot or p.snapshot_after_train:
            self.check_snapshot_prefix()
        if resume:
            log.info("Restoring previous solver status from %s", resume, extra=BRIEF)
            self.restore(resume)
        if self.reporter is not None:
            self.reporter.begin(self.iter, p.max_iter)
        try:
            self.step(p.max_iter - self.iter)
            just_snapshotted = self._last_snapshot_iter == self.iter
            if (p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0)) or \
                    (self._stopped_by_signal and not just_snapshotted):
                self.snapshot()
            if self.requested_early_exit:
                log.info("Optimization stopped early.", extra=BRIEF)
                return
            if p.display and self.iter % p.display == 0:
                loss = self._mean_over_ranks(self.net.forward_from_to())
                self._update_smoothed_loss(float(loss))
                log.info("Iteration %d, loss = %s", self.iter, g(self._smoothed_loss))
            if p.test_interval and self.iter % p.test_interval == 0:
                self.test_all()
            log.info("Optimization Done.", extra=BRIEF)
        finally:
            if self.reporter is not None:
                self.reporter.end()

    def _forward_backward(self, debug: bool) -> float:
        if not debug:
            return self.net.forward_backward()
        return self._debug_forward_backward(self.net)

    def _update_smoothed_loss(self, loss: float) -> None:
        """Caffe's UpdateSmoothedLoss, in float32: mean of the last ``average_loss`` losses."""
        average = self.param.average_loss
        loss32 = np.float32(loss)
        if len(self._losses) < average:
            self._losses.append(float(loss32))
            size = len(self._losses)
            smoothed = (np.float32(self._smoothed_loss) * np.float32(size - 1) + loss32) \
                / np.float32(size)
        else:
            idx = (self.iter - self._window_start) % average
            smoothed = np.float32(self._smoothed_loss) + \
                (loss32 - np.float32(self._losses[idx])) / np.float32(average)
            self._losses[idx] = float(loss32)
        self._smoothed_loss = float(smoothed)

    def _display(self) -> None:
        p = self.param
        lapse = time.perf_counter() - self._timer
        per_s = (self.iter - self._iterations_last) / (lapse if lapse else 1.0)
        log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, g(f32(per_s)),
                 g(f32(lapse)), p.display, g(self._smoothed_loss))
        self._timer = time.perf_counter()
        self._iterations_last = self.iter
        index = 0
        for name in self.net.outputs:
            weight = self.net.blob_loss_weights.get(name, 0.0)
            for value in np.asarray(self.net.blobs[name].data, np.float32).ravel():
                suffix = f" (* {g(weight)} = {g(f32(weight * float(value)))} loss)" \
                    if weight else ""
                log.info("    Train net output #%d: %s = %s%s", index, name, g(value), suffix)
                index += 1

    # -- the update ---------------------------------------------------------------------------
    def apply_update(self) -> None:
        """Learning rate, clipping, then per parameter normalize/regularize/update; w -= diff."""
        p = self.param
        before = self.current_step
        self.lr, self.current_step = lr_policy.learning_rate(p, self.iter, self.current_step)
        if p.lr_policy == "multistep" and self.current_step != before:
            log.info("MultiStep Status: Iteration %d, step = %d", self.iter, self.current_step)
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, g(self.lr))
        self.clip_gradients()
        for param_id in range(len(self.net.learnable_params)):
            self.normalize(param_id)
            self.regularize(param_id)
            self.compute_update_value(param_id, self.lr)
        for blob in self.net.learnable_params:
            blob.data -= blob.diff

    def clip_gradients(self) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = np.float32(0)
        for blob in self.net.learnable_params:
            d = blob.diff.ravel()
            sumsq += np.float32(np.dot(d, d))
        norm = np.sqrt(sumsq)
        if norm > clip:
            scale = float(np.float32(clip) / norm)
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale "
                     "factor %s", g(norm), g(clip), g(scale))
            for blob in self.net.learnable_params:
                blob.diff *= scale

    def normalize(self, param_id: int) -> None:
        if self.param.iter_size == 1:
            return
        self.net.learnable_params[param_id].diff *= f32(1.0 / self.param.iter_size)

    def regularize(self, param_id: int) -> None:
        local_decay = f32(self.param.weight_decay * self.params_weight_decay[param_id])
        if not local_decay:
            return
        blob = self.net.learnable_params[param_id]
        tmp = self.scratch(param_id)[0]
        if self.param.regularization_type == "L2":
            np.multiply(blob.data, local_decay, out=tmp)
        else:
            np.sign(blob.data, out=tmp)
            tmp *= local_decay
        blob.diff += tmp

    def local_rate(self, param_id: int, rate: float) -> float:
        return f32(rate * self.params_lr[param_id])

    def compute_update_value(self, param_id: int, rate: float) -> None:
        raise NotImplementedError

    # -- testing ------------------------------------------------------------------------------
    def test_all(self) -> None:
        for test_net_id in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(test_net_id)

    def test(self, test_net_id: int = 0):
        """Run test net ``test_net_id`` for its test_iter batches; log and return mean outputs."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id, extra=BRIEF)
        net = self.test_nets[test_net_id]
        self._share_trained_layers(net)
        iterations = p.test_iter[test_net_id]
        scores = None
        names: list[str] = []
        loss = np.float32(0)
        for _ in range(iterations):
            request = self._requested_action()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self.requested_early_exit = True
                    self._stopped_by_signal = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            if p.debug_info:
                iter_loss = self._debug_forward(net)
            else:
                iter_loss = net.forward_from_to()
            if p.test_compute_loss:
                loss += np.float32(iter_loss)
            values = [np.asarray(net.blobs[n].data, np.float32).ravel() for n in net.outputs]
            if scores is None:
                names = [n for n, v in zip(net.outputs, values) for _ in range(v.size)]
                scores = np.concatenate(values) if values else np.zeros(0, np.float32)
            else:
                scores += np.concatenate(values)
        if self.requested_early_exit:
            log.info("Test interrupted.", extra=BRIEF)
            return None
        if p.test_compute_loss:
            log.info("Test loss: %s", g(loss / np.float32(iterations)), extra=BRIEF)
        means = (scores / np.float32(iterations)) if scores is not None \
            else np.zeros(0, np.float32)
        result = []
        for i, (name, mean) in enumerate(zip(names, means)):
            weight = net.blob_loss_weights.get(name, 0.0)
            suffix = f" (* {g(weight)} = {g(f32(weight * float(mean)))} loss)" if weight else ""
            log.info("    Test net output #%d: %s = %s%s", i, name, g(mean), suffix, extra=BRIEF)
            result.append((name, float(mean)))
        self.test_scores[test_net_id] = result
        net.settle_deferred()  # its parameters are the training net's, about to change
        return result

    # -- debug_info -----------------------------------------------------------------------------
    @staticmethod
    def _abs_mean(array) -> float:
        return float(np.abs(array).sum(dtype=np.float32) / np.float32(max(array.size, 1)))

    def _param_display_name(self, layer, j: int) -> str:
        spec = layer.param.param[j] if j < len(layer.param.param) else None
        return spec.name if spec is not None and spec.name else str(j)

    def _debug_forward(self, net) -> float:
        loss = 0.0
        for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            loss += net.forward_from_to(i, i)
            for top_name, blob in zip(net.layer_tops[i], net.top_vecs[i]):
                log.info("    [Forward] Layer %s, top blob %s data: %s", name, top_name,
                         g(self._abs_mean(blob.data)))
            for j, blob in enumerate(layer.blobs):
                log.info("    [Forward] Layer %s, param blob %s data: %s", name,
                         self._param_display_name(layer, j), g(self._abs_mean(blob.data)))
        return loss

    def _debug_forward_backward(self, net) -> float:
        loss = self._debug_forward(net)
        for i in reversed(range(len(net.layers))):
            net.backward_from_to(i, i)
            if not net.layer_need_backward[i]:
                continue
            name, layer = net.layer_names[i], net.layers[i]
            for bottom_name, blob, need in zip(net.layer_bottoms[i], net.bottom_vecs[i],
                                               net.bottom_need_backward[i]):
                if need:
                    log.info("    [Backward] Layer %s, bottom blob %s diff: %s", name,
                             bottom_name, g(self._abs_mean(blob.diff)))
            for j, blob in enumerate(layer.blobs):
                if j < len(layer.param_propagate_down) and layer.param_propagate_down[j]:
                    log.info("    [Backward] Layer %s, param blob %d diff: %s", name, j,
                             g(self._abs_mean(blob.diff)))
        asum = [np.float32(0)] * 4
        for blob in net.learnable_params:
            d, df = blob.data.ravel(), blob.diff.ravel()
            asum[0] += np.abs(d).sum(dtype=np.float32)
            asum[1] += np.abs(df).sum(dtype=np.float32)
            asum[2] += np.float32(np.dot(d, d))
            asum[3] += np.float32(np.dot(df, df))
        log.info("    [Backward] All net params (data, diff): L1 norm = (%s, %s); "
                 "L2 norm = (%s, %s)", g(asum[0]), g(asum[1]), g(np.sqrt(asum[2])),
                 g(np.sqrt(asum[3])))
        return loss

    # -- divergence ---------------------------------------------------------------------------
    def _diverged(self, loss: float) -> None:
        """Stop with an error naming the first layer whose output is not finite."""
        net = self.net
        culprit = None
        for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            for top_name, blob in zip(net.layer_tops[i], net.top_vecs[i]):
                if blob.count and not np.isfinite(blob.data).all():
                    culprit = (name, layer, top_name)
                    break
            if culprit:
                break
        where = ""
        if culprit:
            name, layer, top_name = culprit
            where = (f"; the first layer whose output is not finite is '{name}' "
                     f"({layer.type}, top '{top_name}')")
            bad = [j for j, b in enumerate(layer.blobs) if not np.isfinite(b.data).all()]
            if bad:
                where += f", and its own param(s) {bad} are already non-finite"
        last = (f"the last snapshot, {self.last_snapshot}, is intact"
                if self.last_snapshot else "no snapshot was written by this run")
        raise ProtonetError(
            f"iteration {self.iter}: the loss is {loss}{where}. Training stopped; {last}. "
            "Try a lower base_lr, or clip_gradients")

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot_filename(self, extension: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def check_snapshot_prefix(self) -> None:
        """Fail now, not after hours of training, if snapshots cannot be written. A missing
        directory is created (Caffe would stop with "Cannot write to snapshot prefix")."""
        if not self._writes_snapshots():
            return
        prefix = self.param.snapshot_prefix
        if not prefix:
            raise ProtonetError("snapshots are requested but snapshot_prefix is not set")
        directory = os.path.dirname(prefix) or "."
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                raise ProtonetError(f"cannot write snapshots to prefix '{prefix}': cannot create "
                                    f"directory '{directory}' ({e.strerror})") from None
            log.info("Created directory %s for snapshots", directory)
        if not os.access(directory, os.W_OK):
            raise ProtonetError(f"cannot write snapshots to prefix '{prefix}': directory "
                                f"'{directory}' is not writable")
        if self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            snap.check_hdf5_snapshot(self.net)

    def snapshot(self) -> str | None:
        """Write the weights, the solver state and the sidecar; returns the state's path
        (None on the ranks other than 0, which only hand their data positions over)."""
        if self.parallel is not None:
            return self.parallel.snapshot(self)
        return self._write_snapshot()

    def _write_snapshot(self) -> str:
        p = self.param
        self.check_snapshot_prefix()
        snap.remove_stale_temps(p.snapshot_prefix)
        h5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        if h5:
            model = self.snapshot_filename(".caffemodel.h5")
            log.info("Snapshotting to HDF5 file %s", model, extra=BRIEF)
            snap.write_caffemodel_h5(self.net, model, p.snapshot_diff)
            state = self.snapshot_filename(".solverstate.h5")
            log.info("Snapshotting solver state to HDF5 file %s", state, extra=BRIEF)
        else:
            model = self.snapshot_filename(".caffemodel")
            log.info("Snapshotting to binary proto file %s", model, extra=BRIEF)
            snap.write_caffemodel(self.net, model, p.snapshot_diff)
            state = self.snapshot_filename(".solverstate")
            log.info("Snapshotting solver state to binary proto file %s", state, extra=BRIEF)
        snap.write_sidecar(snap.sidecar_path(state), self.extra_state(model))
        writer = snap.write_solverstate_h5 if h5 else snap.write_solverstate
        writer(state, self.iter, model, self.current_step, self.history)
        self.last_snapshot = state
        self._last_snapshot_iter = self.iter
        return state

    def extra_state(self, model: str = "") -> dict:
        """What a .solverstate lacks for an exact resume (written to the sidecar)."""
        def layer_states(net):
            return {name: layer.get_state() for name, layer in zip(net.layer_names, net.layers)}
        return self._with_ranks({
            "iter": self.iter, "type": self.type, "learned_net": model,
            "train_net": layer_states(self.net),
            "test_nets": [layer_states(n) for n in self.test_nets],
            "loss_window": {"losses": list(self._losses), "smoothed": self._smoothed_loss,
                            "start": self._window_start},
        })

    def restore(self, state_file: str) -> None:
        """Continue from a .solverstate or .solverstate.h5 (and its sidecar, if present)."""
        state = snap.read_solverstate(state_file)
        if state.learned_net:
            model = state.learned_net
            if not os.path.exists(model):
                beside = os.path.join(os.path.dirname(state_file), os.path.basename(model))
                if not os.path.exists(beside):
                    raise ProtonetError(f"{state_file}: its weights file '{model}' is missing "
                                        f"(also looked for '{beside}')")
                model = beside
            copy_trained_layers(self.net, model)
        if len(state.history) != len(self.history):
            raise ProtonetError(
                f"{state_file}: holds {len(state.history)} history blobs, but this "
                f"{self.type} solver keeps {len(self.history)} for this net; was it written by "
                "another solver type or for another net?")
        for i, (h, saved) in enumerate(zip(self.history, state.history)):
            if h.size != saved.size:
                raise ProtonetError(f"{state_file}: history blob {i} has shape "
                                    f"{list(saved.shape)}, the net's param has {list(h.shape)}")
            h[...] = saved.reshape(h.shape)
        self.iter = state.iter
        self.current_step = state.current_step
        self._restore_extra(state_file, state)

    def _restore_extra(self, state_file: str, state) -> None:
        extra = snap.read_sidecar(snap.sidecar_path(state_file))
        if extra is None or extra.get("iter") != state.iter:
            log.info("%s: no protonet sidecar; resuming as Caffe does (data position, random "
                     "state and the smoothed loss start afresh)", state_file, extra=BRIEF)
            return
        extra = self._rank_extra(state_file, extra)
        nets = [(self.net, extra.get("train_net", {}))]
        nets += list(zip(self.test_nets, extra.get("test_nets", [])))
        for net, states in nets:
            layers = net.layer_dict
            for name, layer_state in states.items():
                layer = layers.get(name)
                if layer is None:
                    continue
                try:
                    layer.set_state(layer_state)
                except (KeyError, ValueError, TypeError) as e:
                    _warn(f"{state_file}: could not restore the state of layer '{name}' ({e}); "
                          "it starts afresh")
        window = extra.get("loss_window")
        if window:
            self._resumed_window = (list(window["losses"]), float(window["smoothed"]),
                                    int(window["start"]))
