"""The six update rules, clipping, iter_size, L1/L2 decay and lr/decay multipliers, checked
against Caffe's formulas written out here in float64."""
import numpy as np
import pytest

from protonet import ProtonetError
from protonet.io import parse_solver
from protonet.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                              RMSPropSolver, SGDSolver, get_solver, updates)

# -- the update functions alone ---------------------------------------------------------------


def run_rule(name, g_steps, hyper):
    """Apply a rule from protonet.solvers.updates to a float32 param, step by step."""
    shape = g_steps[0].shape
    h1, h2 = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    tmp, tmp2 = np.empty(shape, np.float32), np.empty(shape, np.float32)
    steps = []
    for t, g in enumerate(g_steps):
        g = g.astype(np.float32).copy()
        lr = hyper["lr"]
        if name == "sgd":
            updates.sgd(g, h1, tmp, lr, hyper["mu"])
        elif name == "nesterov":
            updates.nesterov(g, h1, tmp, lr, hyper["mu"])
        elif name == "adagrad":
            updates.adagrad(g, h1, tmp, lr, hyper["delta"])
        elif name == "rmsprop":
            updates.rmsprop(g, h1, tmp, lr, hyper["rho"], hyper["delta"])
        elif name == "adadelta":
            updates.adadelta(g, h1, h2, tmp, tmp2, lr, hyper["mu"], hyper["delta"])
        elif name == "adam":
            updates.adam(g, h1, h2, tmp, lr, hyper["b1"], hyper["b2"], hyper["delta"], t + 1)
        assert g.dtype == np.float32 and h1.dtype == np.float32
        steps.append(g.astype(np.float64))
    return steps


def hand_rule(name, g_steps, p):
    """The same rules as written in Caffe's sgd_solvers, in float64."""
    h1 = np.zeros_like(g_steps[0], dtype=np.float64)
    h2 = np.zeros_like(h1)
    out = []
    for t, g in enumerate(g_steps, start=1):
        g = g.astype(np.float64)
        lr = p["lr"]
        if name == "sgd":
            h1 = p["mu"] * h1 + lr * g
            step = h1
        elif name == "nesterov":
            prev = h1
            h1 = p["mu"] * h1 + lr * g
            step = (1 + p["mu"]) * h1 - p["mu"] * prev
        elif name == "adagrad":
            h1 = h1 + g * g
            step = lr * g / (np.sqrt(h1) + p["delta"])
        elif name == "rmsprop":
            h1 = p["rho"] * h1 + (1 - p["rho"]) * g * g
            step = lr * g / (np.sqrt(h1) + p["delta"])
        elif name == "adadelta":
            h1 = p["mu"] * h1 + (1 - p["mu"]) * g * g
            u = g * np.sqrt((h2 + p["delta"]) / (h1 + p["delta"]))
            h2 = p["mu"] * h2 + (1 - p["mu"]) * u * u
            step = lr * u
        elif name == "adam":
            h1 = p["b1"] * h1 + (1 - p["b1"]) * g
            h2 = p["b2"] * h2 + (1 - p["b2"]) * g * g
            step = lr * np.sqrt(1 - p["b2"] ** t) / (1 - p["b1"] ** t) * h1 / (
                np.sqrt(h2) + p["delta"])
        out.append(step)
    return out


HYPER = {"lr": 0.05, "mu": 0.9, "delta": 1e-6, "rho": 0.98, "b1": 0.9, "b2": 0.999}


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"])
def test_rule_matches_caffe_formula(name):
    rng = np.random.default_rng(7)
    grads = [rng.normal(size=(3, 5)) for _ in range(6)]
    hyper = {k: float(np.float32(v)) for k, v in HYPER.items()}
    ours = run_rule(name, grads, hyper)
    ref = hand_rule(name, [g.astype(np.float32) for g in grads], hyper)
    for t, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-8, err_msg=f"{name} step {t}")


def test_sgd_keeps_the_learning_rate_inside_the_history():
    # Caffe: h = mu*h + lr*g (PyTorch would keep v = mu*v + g and step lr*v).
    g = np.ones(2, np.float32)
    h = np.zeros(2, np.float32)
    tmp = np.empty(2, np.float32)
    updates.sgd(g, h, tmp, 0.5, 0.9)
    np.testing.assert_array_equal(h, [0.5, 0.5])
    g[...] = 1
    updates.sgd(g, h, tmp, 0.1, 0.9)   # the rate changed: the history keeps the old one
    np.testing.assert_allclose(h, [0.9 * 0.5 + 0.1] * 2, rtol=1e-6)


def test_adam_bias_correction_is_folded_into_the_step_size():
    assert updates.adam_correction(0.9, 0.999, 1) == pytest.approx(np.sqrt(0.001) / 0.1, rel=1e-6)


# -- the whole solver on a net whose gradient is known in closed form -------------------------

NET = """name: "lin"
layer { name: "data" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""

X = np.array([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0], [2.0, 0.0, 1.0], [-1.0, 1.5, 0.7]])
T = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5], [-1.0, 2.0]])


def make_solver(cls, extra=""):
    text = f"""net_param {{ {NET} }}
base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 3 max_iter: 10 display: 0
snapshot_after_train: false random_seed: 5 {extra}"""
    solver = cls(parse_solver(text))
    solver.net.blobs["data"].data[...] = X
    solver.net.blobs["target"].data[...] = T
    return solver


def reference(solver, iters, kind, p):
    """float64 replay of Caffe's ApplyUpdate for the net above."""
    W = solver.net.params["ip"][0].data.astype(np.float64)
    b = solver.net.params["ip"][1].data.astype(np.float64)
    Xf, Tf = X.astype(np.float32).astype(np.float64), T.astype(np.float32).astype(np.float64)
    lr_mult, decay_mult = [1.0, 2.0], [1.0, 0.0]
    hist = [[np.zeros_like(W), np.zeros_like(b)], [np.zeros_like(W), np.zeros_like(b)]]
    losses = []
    for it in range(iters):
        r = Xf @ W.T + b - Tf
        losses.append(float((r ** 2).sum() / (2 * len(Xf))))
        grads = [r.T @ Xf / len(Xf) * p["iter_size"], r.sum(0) / len(Xf) * p["iter_size"]]
        if p["clip"] >= 0:
            norm = np.sqrt(sum((gr ** 2).sum() for gr in grads))
            if norm > p["clip"]:
                grads = [gr * p["clip"] / norm for gr in grads]
        rate = 0.1 * 0.5 ** (it // 3)
        params = [W, b]
        for i, (w, gr) in enumerate(zip(params, grads)):
            gr = gr / p["iter_size"]
            decay = p["wd"] * decay_mult[i]
            if decay:
                gr = gr + decay * (w if p["reg"] == "L2" else np.sign(w))
            lr = rate * lr_mult[i]
            h, h2 = hist[0][i], hist[1][i]
            if kind == "SGD":
                h[...] = p["mu"] * h + lr * gr
                step = h.copy()
            elif kind == "Nesterov":
                prev = h.copy()
                h[...] = p["mu"] * h + lr * gr
                step = (1 + p["mu"]) * h - p["mu"] * prev
            elif kind == "AdaGrad":
                h += gr * gr
                step = lr * gr / (np.sqrt(h) + p["delta"])
            elif kind == "RMSProp":
                h[...] = p["rho"] * h + (1 - p["rho"]) * gr * gr
                step = lr * gr / (np.sqrt(h) + p["delta"])
            elif kind == "AdaDelta":
                h[...] = p["mu"] * h + (1 - p["mu"]) * gr * gr
                u = gr * np.sqrt((h2 + p["delta"]) / (h + p["delta"]))
                h2[...] = p["mu"] * h2 + (1 - p["mu"]) * u * u
                step = lr * u
            elif kind == "Adam":
                t = it + 1
                h[...] = p["mu"] * h + (1 - p["mu"]) * gr
                h2[...] = p["b2"] * h2 + (1 - p["b2"]) * gr * gr
                step = lr * np.sqrt(1 - p["b2"] ** t) / (1 - p["mu"] ** t) * h / (
                    np.sqrt(h2) + p["delta"])
            params[i] -= step
    return W, b, losses


CASES = [
    (SGDSolver, "SGD", "momentum: 0.9 weight_decay: 0.01", {}),
    (NesterovSolver, "Nesterov", "momentum: 0.9 weight_decay: 0.01", {}),
    (AdaGradSolver, "AdaGrad", "weight_decay: 0.01 delta: 1e-6", {}),
    (RMSPropSolver, "RMSProp", "weight_decay: 0.01 rms_decay: 0.95 delta: 1e-6", {}),
    (AdaDeltaSolver, "AdaDelta", "momentum: 0.95 delta: 1e-6 weight_decay: 0.01", {}),
    (AdamSolver, "Adam", "momentum: 0.9 momentum2: 0.999 delta: 1e-8 weight_decay: 0.01", {}),
    (SGDSolver, "SGD", "momentum: 0.9 weight_decay: 0.05 regularization_type: \"L1\"",
     {"reg": "L1", "wd": 0.05}),
    (SGDSolver, "SGD", "momentum: 0.9 weight_decay: 0.01 iter_size: 3", {"iter_size": 3}),
    (SGDSolver, "SGD", "momentum: 0.9 weight_decay: 0.01 clip_gradients: 0.05 iter_size: 2",
     {"clip": 0.05, "iter_size": 2}),
]


@pytest.mark.parametrize("cls, kind, extra, over", CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_solver_matches_hand_replay(cls, kind, extra, over):
    solver = make_solver(cls, extra)
    p = {"mu": float(solver.param.momentum), "wd": 0.01, "reg": "L2", "iter_size": 1,
         "clip": -1, "delta": float(solver.param.delta), "rho": float(solver.param.rms_decay),
         "b2": float(solver.param.momentum2)}
    p.update(over)
    W, b, losses = reference(solver, 7, kind, p)
    seen = []
    for _ in range(7):
        solver.step(1)
        seen.append(solver._losses[-1])
    assert solver.iter == 7
    np.testing.assert_allclose(seen, losses, rtol=1e-5)
    np.testing.assert_allclose(solver.net.params["ip"][0].data, W, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(solver.net.params["ip"][1].data, b, rtol=1e-5, atol=1e-7)
    for blob in solver.net.learnable_params:
        assert blob.data.dtype == np.float32
    assert all(h.dtype == np.float32 for h in solver.history)


def test_history_size_follows_the_solver_type():
    n = len(make_solver(SGDSolver).net.learnable_params)
    assert len(make_solver(SGDSolver).history) == n
    assert len(make_solver(AdamSolver).history) == 2 * n
    assert len(make_solver(AdaDeltaSolver, "momentum: 0.9").history) == 2 * n


def test_clipping_logs_caffe_line(caplog):
    solver = make_solver(SGDSolver, "clip_gradients: 0.001")
    with caplog.at_level("INFO", logger="protonet"):
        solver.step(1)
    assert any(r.getMessage().startswith("Gradient clipping: scaling down gradients (L2 norm ")
               and "> 0.001) by scale factor " in r.getMessage() for r in caplog.records)


def test_lr_mult_zero_freezes_a_param():
    solver = make_solver(SGDSolver, "momentum: 0.9 weight_decay: 0.1")
    solver.net.param.layer[1].param[1].lr_mult = 0   # does not reach the cached multipliers
    solver.params_lr[1] = 0.0
    before = solver.net.params["ip"][1].data.copy()
    solver.step(3)
    np.testing.assert_array_equal(solver.net.params["ip"][1].data, before)


def test_shared_param_takes_a_sharers_lr_mult_when_the_owner_gives_none():
    net = """name: "shared"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
      param { name: "w" } inner_product_param { num_output: 3 bias_term: false
        weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
      param { name: "w" lr_mult: 3 decay_mult: 0.5 } inner_product_param { num_output: 3
        bias_term: false weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
    """
    solver = SGDSolver(parse_solver(f'net_param {{ {net} }} base_lr: 0.1 lr_policy: "fixed"'))
    assert len(solver.net.learnable_params) == 1
    assert solver.params_lr == [3.0] and solver.params_weight_decay == [0.5]


@pytest.mark.parametrize("cls, extra, message", [
    (AdaGradSolver, "momentum: 0.9", "momentum cannot be used with AdaGrad"),
    (RMSPropSolver, "momentum: 0.9", "momentum cannot be used with RMSProp"),
    (RMSPropSolver, "rms_decay: 1.5", "rms_decay must lie between 0 and 1"),
    (SGDSolver, "average_loss: 0", "average_loss must be at least 1"),
    (SGDSolver, "iter_size: 0", "iter_size must be at least 1"),
    (SGDSolver, 'regularization_type: "L3"', "unknown regularization_type 'L3'"),
])
def test_bad_solver_settings(cls, extra, message):
    with pytest.raises(ProtonetError, match=message):
        make_solver(cls, extra)


@pytest.mark.parametrize("type_name, cls", [("SGD", SGDSolver), ("Nesterov", NesterovSolver),
                                            ("AdaGrad", AdaGradSolver),
                                            ("RMSProp", RMSPropSolver),
                                            ("AdaDelta", AdaDeltaSolver), ("Adam", AdamSolver)])
def test_get_solver_picks_the_type(tmp_path, type_name, cls):
    (tmp_path / "s.prototxt").write_text(f'net_param {{ {NET} }} base_lr: 0.1 '
                                         f'lr_policy: "fixed" type: "{type_name}"')
    solver = get_solver(str(tmp_path / "s.prototxt"))
    assert type(solver) is cls and solver.type == type_name


@pytest.mark.parametrize("enum, cls", [("NESTEROV", NesterovSolver), ("ADAM", AdamSolver)])
def test_legacy_solver_type_enum(tmp_path, enum, cls):
    (tmp_path / "s.prototxt").write_text(f'net_param {{ {NET} }} base_lr: 0.1 '
                                         f'lr_policy: "fixed" solver_type: {enum}')
    assert type(get_solver(str(tmp_path / "s.prototxt"))) is cls


def test_unknown_type_is_a_user_error(tmp_path):
    (tmp_path / "s.prototxt").write_text(f'net_param {{ {NET} }} base_lr: 0.1 type: "LBFGS"')
    with pytest.raises(ProtonetError, match="unknown solver type 'LBFGS'"):
        get_solver(str(tmp_path / "s.prototxt"))
