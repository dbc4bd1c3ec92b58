"""Learning-rate policies against the formulas of Caffe's SGDSolver::GetLearningRate."""
import math

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.proto import caffe_pb2
from protonet.solvers.lr_policy import check_policy, learning_rate


def solver(**fields):
    p = caffe_pb2.SolverParameter(base_lr=0.01)
    for k, v in fields.items():
        if k == "stepvalue":
            p.stepvalue.extend(v)
        else:
            setattr(p, k, v)
    return p


def f32(x):
    return float(np.float32(x))


def test_mnist_tutorial_value():
    # examples/mnist/readme.md: "Iteration 100, lr = 0.00992565"
    p = solver(lr_policy="inv", gamma=1e-4, power=0.75)
    rate, _ = learning_rate(p, 100)
    assert "%g" % rate == "0.00992565"


HAND = {
    "fixed": lambda p, it: p.base_lr,
    "step": lambda p, it: p.base_lr * p.gamma ** (it // p.stepsize),
    "exp": lambda p, it: p.base_lr * p.gamma ** it,
    "inv": lambda p, it: p.base_lr * (1 + p.gamma * it) ** (-p.power),
    "poly": lambda p, it: p.base_lr * (1 - it / p.max_iter) ** p.power,
    "sigmoid": lambda p, it: p.base_lr / (1 + math.exp(-p.gamma * (it - p.stepsize))),
}
SETTINGS = {
    "fixed": {},
    "step": dict(gamma=0.1, stepsize=30),
    "exp": dict(gamma=0.99),
    "inv": dict(gamma=1e-4, power=0.75),
    "poly": dict(power=0.5, max_iter=1000),
    "sigmoid": dict(gamma=0.05, stepsize=200),
}


@pytest.mark.parametrize("policy", sorted(HAND))
def test_policy_matches_formula(policy):
    p = solver(lr_policy=policy, **SETTINGS[policy])
    check_policy(p)
    for it in (0, 1, 29, 30, 31, 99, 250, 999):
        rate, _ = learning_rate(p, it)
        assert isinstance(rate, float)
        assert rate == pytest.approx(HAND[policy](p, it), rel=1e-6), (policy, it)
        assert rate == f32(rate)  # a float32 value, as Caffe's Dtype rate


def test_step_records_current_step():
    p = solver(lr_policy="step", gamma=0.5, stepsize=10)
    assert learning_rate(p, 25, 0) == (f32(0.01 * 0.25), 2)


def test_multistep_advances_at_most_one_step_per_iteration():
    p = solver(lr_policy="multistep", gamma=0.1, stepvalue=[5, 6, 100])
    step, rates = 0, []
    for it in range(10):
        rate, step = learning_rate(p, it, step)
        rates.append(rate)
    assert rates[:5] == [f32(0.01)] * 5
    assert rates[5] == f32(0.01 * 0.1)
    assert rates[6] == f32(0.01 * 0.01)
    assert step == 2
    # resumed at iteration 50 with current_step 0 (as a stale state would be): one per call
    step = 0
    _, step = learning_rate(p, 50, step)
    assert step == 1
    _, step = learning_rate(p, 51, step)
    assert step == 2
    _, step = learning_rate(p, 52, step)
    assert step == 2


@pytest.mark.parametrize("fields, message", [
    (dict(lr_policy="bogus"), "unknown lr_policy 'bogus'"),
    (dict(lr_policy="step", gamma=0.1), "positive stepsize"),
    (dict(lr_policy="sigmoid", gamma=0.1), "positive stepsize"),
    (dict(lr_policy="exp", gamma=-1), "gamma >= 0"),
    (dict(lr_policy="poly", power=1), "max_iter"),
    (dict(lr_policy="multistep", stepvalue=[10, 5]), "must increase"),
])
def test_bad_settings_are_user_errors(fields, message):
    with pytest.raises(ProtonetError, match=message):
        check_policy(solver(**fields))


def test_poly_past_max_iter_is_nan_not_a_crash():
    p = solver(lr_policy="poly", power=0.5, max_iter=10)
    assert math.isnan(learning_rate(p, 11)[0])
