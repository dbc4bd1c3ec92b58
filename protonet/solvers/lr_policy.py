"""Learning-rate policies, as Caffe's ``SGDSolver::GetLearningRate`` computes them.

``iter`` is the number of updates done so far. Caffe computes the rate in the
solver's ``Dtype`` (float32); the rate is returned as a Python float holding
that float32 value, so multiplying a float32 array by it never promotes.

``multistep`` is the one stateful policy: ``current_step`` advances by at most
one per call, when ``iter`` has reached ``stepvalue[current_step]``; it is part
of the ``.solverstate``. ``step`` also records ``iter // stepsize`` there.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ProtonetError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _f32(x: float) -> float:
    """Round to float32 (Caffe's Dtype) and back to a Python float."""
    return float(np.float32(x))


def check_policy(param) -> None:
    """Raise a ProtonetError for an unknown policy or a missing/invalid setting."""
    policy = param.lr_policy
    if policy not in POLICIES:
        raise ProtonetError(f"unknown lr_policy '{policy}' (known: {', '.join(POLICIES)})")
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise ProtonetError(f"lr_policy '{policy}' needs a positive stepsize, got "
                            f"{param.stepsize}")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise ProtonetError(f"lr_policy '{policy}' needs gamma >= 0, got {param.gamma}")
    if policy == "poly" and param.max_iter <= 0:
        raise ProtonetError("lr_policy 'poly' needs a positive max_iter")
    if policy == "multistep" and list(param.stepvalue) != sorted(param.stepvalue):
        raise ProtonetError(f"multistep stepvalues must increase, got {list(param.stepvalue)}")


def learning_rate(param, iteration: int, current_step: int = 0) -> tuple[float, int]:
    """``(rate, current_step)`` for the SolverParameter ``param`` at ``iteration``."""
    policy = param.lr_policy
    base = param.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "exp":
        rate = base * math.pow(param.gamma, iteration)
    elif policy == "inv":
        rate = base * math.pow(1.0 + param.gamma * iteration, -param.power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "poly":
        try:
            rate = base * math.pow(1.0 - iteration / param.max_iter, param.power)
        except ValueError:  # past max_iter with a fractional power: C's pow gives NaN
            rate = math.nan
    elif policy == "sigmoid":
        x = -param.gamma * (iteration - param.stepsize)
        rate = base / (1.0 + math.exp(x)) if x < 700 else 0.0
    else:
        check_policy(param)
        raise AssertionError(policy)
    return _f32(rate), current_step
