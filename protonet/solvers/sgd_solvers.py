"""The six solver types (Caffe's ``sgd_solvers.hpp``): each differs only in how it
turns a parameter's gradient into the step (see :mod:`protonet.solvers.updates`)."""
from __future__ import annotations

from ..errors import ProtonetError
from . import updates
from .solver import Solver


class SGDSolver(Solver):
    """Momentum SGD, Caffe's way: h = μ·h + lr·g; w -= h."""

    type = "SGD"

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        updates.sgd(blob.diff, self.history[param_id], self.scratch(param_id)[0],
                    self.local_rate(param_id, rate), self.param.momentum)


class NesterovSolver(SGDSolver):
    type = "Nesterov"

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        updates.nesterov(blob.diff, self.history[param_id], self.scratch(param_id)[0],
                         self.local_rate(param_id, rate), self.param.momentum)


class AdaGradSolver(SGDSolver):
    type = "AdaGrad"

    def check_param(self):
        if self.param.momentum != 0:
            raise ProtonetError("momentum cannot be used with AdaGrad (set momentum: 0)")

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        updates.adagrad(blob.diff, self.history[param_id], self.scratch(param_id)[0],
                        self.local_rate(param_id, rate), self.param.delta)


class RMSPropSolver(SGDSolver):
    type = "RMSProp"

    def check_param(self):
        if self.param.momentum != 0:
            raise ProtonetError("momentum cannot be used with RMSProp (set momentum: 0; "
                                "rms_decay is its decay)")
        if not 0 <= self.param.rms_decay <= 1:
            raise ProtonetError(f"rms_decay must lie between 0 and 1, got {self.param.rms_decay}")

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        updates.rmsprop(blob.diff, self.history[param_id], self.scratch(param_id)[0],
                        self.local_rate(param_id, rate), self.param.rms_decay, self.param.delta)


class AdaDeltaSolver(SGDSolver):
    """history[i]: running mean of g²; history[N + i]: running mean of the squared updates."""

    type = "AdaDelta"
    history_factor = 2

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        n = len(self.net.learnable_params)
        tmp, tmp2 = self.scratch(param_id, 2)
        updates.adadelta(blob.diff, self.history[param_id], self.history[n + param_id], tmp, tmp2,
                         self.local_rate(param_id, rate), self.param.momentum, self.param.delta)


class AdamSolver(SGDSolver):
    """history[i]: m (first moment); history[N + i]: v (second moment)."""

    type = "Adam"
    history_factor = 2

    def compute_update_value(self, param_id, rate):
        blob = self.net.learnable_params[param_id]
        n = len(self.net.learnable_params)
        updates.adam(blob.diff, self.history[param_id], self.history[n + param_id],
                     self.scratch(param_id)[0], self.local_rate(param_id, rate),
                     self.param.momentum, self.param.momentum2, self.param.delta, self.iter + 1)


SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                     AdaDeltaSolver, AdamSolver)}


def solver_class(type_name: str):
    try:
        return SOLVERS[type_name]
    except KeyError:
        raise ProtonetError(f"unknown solver type '{type_name}' (known: "
                            f"{', '.join(SOLVERS)})") from None


def get_solver(param, **kwargs):
    """A solver of the type the prototxt (or SolverParameter) names (pycaffe's get_solver)."""
    import os

    from ..proto import caffe_pb2
    if not isinstance(param, caffe_pb2.SolverParameter):
        from ..io import read_solver
        path = os.fspath(param)
        param = read_solver(path)
        kwargs.setdefault("solver_path", path)
    return solver_class(param.type)(param, **kwargs)
