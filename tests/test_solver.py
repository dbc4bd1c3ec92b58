"""The solver loop: Caffe's step order and log lines, testing, smoothing, net selection,
seeds, divergence, debug_info and requested actions."""
import os
import re

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.io import parse_solver
from protonet.solvers import SGDSolver, get_solver
from protonet.solvers.snapshot import read_solverstate

TINY = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 1 dim: 6 dim: 6 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 3.99 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

BASE = ('base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 '
        'power: 0.75 snapshot_after_train: false ')


def solver_from(text, cls=SGDSolver, **kwargs):
    return cls(parse_solver(text), **kwargs)


def tiny(extra="", cls=SGDSolver, seed=3, **kwargs):
    return solver_from(f"net_param {{ {TINY} }} {BASE} random_seed: {seed} {extra}", cls,
                       **kwargs)


def messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("protonet")]


# parse_log.py's regexes
RE_ITER = re.compile(r"Iteration (\d+)")
RE_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
RE_DISPLAY = re.compile(r"^Iteration (\d+) \(([\d.e+-]+) iter/s, ([\d.e+-]+)s/(\d+) iters\), "
                        r"loss = ([\d.e+-]+)$")


def test_step_order_and_caffe_log_lines(caplog):
    solver = tiny("test_iter: 2 test_interval: 5 display: 5 max_iter: 10")
    with caplog.at_level("INFO", logger="protonet"):
        solver.solve()
    lines = [m for m in messages(caplog) if "Iteration" in m or "output #" in m
             or m.startswith(("Optimization", "Solving", "Learning Rate"))]
    kinds = []
    for m in lines:
        if m.startswith("Solving"):
            kinds.append("solving")
        elif "Testing net (#0)" in m:
            kinds.append(f"test@{RE_ITER.search(m).group(1)}")
        elif RE_DISPLAY.match(m):
            kinds.append(f"display@{RE_DISPLAY.match(m).group(1)}")
        elif RE_TRAIN.search(m):
            kinds.append("train-output")
        elif RE_TEST.search(m):
            kinds.append("test-output")
        elif ", lr = " in m:
            kinds.append(f"lr@{RE_ITER.search(m).group(1)}")
        elif re.match(r"^Iteration 10, loss = ", m):
            kinds.append("final-loss")
        elif m == "Optimization Done.":
            kinds.append("done")
        elif m.startswith("Learning Rate Policy"):
            kinds.append("policy")
    assert kinds == ["solving", "policy",
                     "test@0", "test-output", "test-output", "display@0", "train-output", "lr@0",
                     "test@5", "test-output", "test-output", "display@5", "train-output", "lr@5",
                     "final-loss", "test@10", "test-output", "test-output", "done"]
    assert "    Test net output #0: accuracy = " in "\n".join(lines)
    loss_line = next(m for m in lines if RE_TEST.search(m) and "loss" in m)
    assert re.fullmatch(r"    Test net output #1: loss = (\S+) \(\* 1 = \1 loss\)", loss_line)
    train_line = next(m for m in lines if RE_TRAIN.search(m))
    assert re.fullmatch(r"    Train net output #0: loss = (\S+) \(\* 1 = \1 loss\)", train_line)
    assert "Iteration 5, lr = 0.0499813" in lines   # inv policy, Caffe's 6 digits
    assert RE_DISPLAY.match(next(m for m in lines if m.startswith("Iteration 0 ("))).group(4) == "5"


def test_no_test_at_iteration_zero_without_test_initialization(caplog):
    solver = tiny("test_iter: 1 test_interval: 2 test_initialization: false max_iter: 4")
    with caplog.at_level("INFO", logger="protonet"):
        solver.solve()
    tests = [m for m in messages(caplog) if "Testing net" in m]
    assert tests == ["Iteration 2, Testing net (#0)", "Iteration 4, Testing net (#0)"]


LIN = """name: "lin"
layer { name: "data" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""

MEMORY = """name: "mem"
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 1 width: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "data" bottom: "label" top: "loss"
  loss_weight: 2 }
layer { name: "keep" type: "Split" bottom: "data" top: "copy" }
"""


def test_test_outputs_are_averaged_over_batches_in_alphabetical_order(caplog):
    solver = solver_from(f"train_net_param {{ {LIN} }} test_net_param {{ {MEMORY} }} "
                         "test_iter: 3 test_interval: 100 test_compute_loss: true "
                         'base_lr: 0.01 lr_policy: "fixed" max_iter: 1')
    solver.test_nets[0].layers[0].set_input_arrays(
        np.arange(1, 7, dtype=np.float32).reshape(6, 1, 1, 1), np.arange(10, 16))
    assert solver.test_nets[0].outputs == ["copy", "loss"]
    with caplog.at_level("INFO", logger="protonet"):
        scores = solver.test(0)
    out = [m for m in messages(caplog) if "Test net output" in m or "Test loss" in m]
    # per batch: loss = sum((label - data)^2) / (2*2), both pairs differ by 9: 40.5
    assert out == ["Test loss: 81",
                   "    Test net output #0: copy = 3",
                   "    Test net output #1: copy = 4",
                   "    Test net output #2: loss = 40.5 (* 2 = 81 loss)"]
    assert scores == [("copy", 3.0), ("copy", 4.0), ("loss", 40.5)]


def test_average_loss_smooths_the_displayed_loss(caplog):
    def displayed(extra):
        caplog.clear()
        with caplog.at_level("INFO", logger="protonet"):
            tiny(f"display: 1 max_iter: 7 {extra}").solve()
        return [float(RE_DISPLAY.match(m).group(5)) for m in messages(caplog)
                if RE_DISPLAY.match(m)]
    raw = displayed("average_loss: 1")
    smooth = displayed("average_loss: 3")
    expected = [np.mean(raw[max(0, i - 2):i + 1]) for i in range(len(raw))]
    np.testing.assert_allclose(smooth, expected, rtol=2e-5)


def test_same_seed_same_run_bit_for_bit():
    a, b, c = tiny("max_iter: 6"), tiny("max_iter: 6"), tiny("max_iter: 6", seed=4)
    for s in (a, b, c):
        s.solve()
    for pa, pb, pc in zip(a.net.learnable_params, b.net.learnable_params,
                          c.net.learnable_params):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert not np.array_equal(pa.data, pc.data)
    assert a._losses == b._losses


def test_train_and_test_nets_get_independent_seeds():
    solver = tiny("test_iter: 1 test_interval: 10 max_iter: 1")
    solver.net.forward()
    solver.test_nets[0].forward()
    assert not np.array_equal(solver.net.blobs["data"].data,
                              solver.test_nets[0].blobs["data"].data)


def test_test_nets_use_the_train_nets_weights():
    solver = tiny("test_iter: 1 test_interval: 10 max_iter: 2")
    solver.step(2)
    for name in ("conv1", "ip"):
        for tb, sb in zip(solver.test_nets[0].params[name], solver.net.params[name]):
            assert np.shares_memory(tb.data, sb.data)


def test_a_test_pass_leaves_no_deferred_blob_for_the_updates_to_change():
    # in the test net, conv1's output is only read by a folded BatchNorm that writes
    # another blob: its data is deferred (protonet.fuse), and must be computed before
    # training changes the weights the two nets share
    net = TINY.replace('layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }',
                       'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "bn1" }\n'
                       'layer { name: "relu1" type: "ReLU" bottom: "bn1" top: "bn1" }')
    net = net.replace('bottom: "conv1" top: "ip"', 'bottom: "bn1" top: "ip"')
    solver = solver_from(f"net_param {{ {net} }} {BASE} random_seed: 3 test_iter: 1 "
                         "test_interval: 10 max_iter: 1 test_initialization: false")
    test_net = solver.test_nets[0]
    assert [c.deferred.name for c in test_net._chains if c.deferred is not None] == ["conv1"]
    solver.test(0)
    conv1 = test_net.blobs["conv1"]
    assert not conv1.is_deferred
    test_net.forward_from_to()
    assert conv1.is_deferred  # settling it was no reader's look: passes still defer it
    solver.test(0)
    seen = conv1.data.copy()
    weights = solver.net.params["conv1"][0].data.copy()
    solver.step(1)
    assert not np.array_equal(solver.net.params["conv1"][0].data, weights)
    np.testing.assert_array_equal(conv1.data, seen)


def test_pycaffe_surface():
    solver = tiny("max_iter: 5")
    assert solver.iter == 0 and solver.test_nets == []
    solver.step(2)
    assert solver.iter == 2
    solver.solve()
    assert solver.iter == 5
    before = solver.net.params["ip"][0].data.copy()
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    solver.apply_update()
    assert solver.iter == 5 and not np.array_equal(before, solver.net.params["ip"][0].data)


def test_loss_turning_nan_stops_with_the_layer_named(tmp_path):
    prefix = tmp_path / "snaps" / "tiny"
    prefix.parent.mkdir()
    solver = tiny(f'snapshot: 2 snapshot_prefix: "{prefix}" max_iter: 10')
    solver.step(2)
    assert solver.last_snapshot.endswith("tiny_iter_2.solverstate")
    solver.net.params["ip"][0].data[0, 0] = np.nan
    with pytest.raises(ProtonetError) as err:
        solver.solve()
    message = str(err.value)
    assert message.startswith("iteration 2: the loss is nan; the first layer whose output is not "
                              "finite is 'ip' (InnerProduct, top 'ip'), and its own param(s) "
                              "[0] are already non-finite")
    assert "tiny_iter_2.solverstate, is intact" in message
    assert sorted(os.listdir(prefix.parent)) == [
        "tiny_iter_2.caffemodel", "tiny_iter_2.solverstate",
        "tiny_iter_2.solverstate.protonet.json"]
    assert read_solverstate(str(prefix) + "_iter_2.solverstate").iter == 2


def test_divergence_names_the_first_layer_that_overflows():
    solver = tiny("max_iter: 3")
    solver.net.params["conv1"][1].data[:] = np.inf
    with pytest.raises(ProtonetError, match="'conv1' .Convolution, top 'conv1'."):
        solver.step(1)


def test_debug_info_lines(caplog):
    solver = tiny("display: 2 debug_info: true max_iter: 2 test_iter: 1 test_interval: 100")
    with caplog.at_level("INFO", logger="protonet"):
        solver.step(2)
    text = "\n".join(messages(caplog))
    assert "    [Forward] Layer conv1, top blob conv1 data: " in text
    assert "    [Forward] Layer ip, param blob 0 data: " in text
    assert "    [Backward] Layer ip, bottom blob conv1 diff: " in text
    assert "    [Backward] Layer conv1, param blob 1 diff: " in text
    assert "    [Backward] All net params (data, diff): L1 norm = (" in text
    # only on display iterations: one forward report per layer and top
    assert text.count("[Forward] Layer conv1, top blob conv1") == 2  # iteration 0 + test at 0


def test_multistep_status_line(caplog):
    solver = solver_from(f'net_param {{ {TINY} }} base_lr: 0.05 max_iter: 4 display: 1 '
                         'lr_policy: "multistep" gamma: 0.1 stepvalue: 2 stepvalue: 3 '
                         'snapshot_after_train: false')
    with caplog.at_level("INFO", logger="protonet"):
        solver.solve()
    text = messages(caplog)
    assert "MultiStep Status: Iteration 2, step = 1" in text
    assert "MultiStep Status: Iteration 3, step = 2" in text
    assert "Iteration 2, lr = 0.005" in text and solver.current_step == 2


# -- requested actions (what signals turn into) -------------------------------------------------
def actions(sequence):
    it = iter(sequence)
    return lambda: next(it, "none")


def test_stop_request_snapshots_even_without_snapshot_after_train(tmp_path, caplog):
    prefix = tmp_path / "t"
    solver = tiny(f'max_iter: 100 snapshot_prefix: "{prefix}"',
                  action_function=actions(["none", "none", "stop"]))
    with caplog.at_level("INFO", logger="protonet"):
        solver.solve()
    assert solver.iter == 3
    assert os.path.exists(f"{prefix}_iter_3.solverstate")
    assert "Optimization stopped early." in messages(caplog)


def test_snapshot_request_keeps_training(tmp_path):
    prefix = tmp_path / "t"
    solver = tiny(f'max_iter: 4 snapshot_prefix: "{prefix}"',
                  action_function=actions(["snapshot"]))
    solver.solve()
    assert solver.iter == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".solverstate") == \
        ["t_iter_1.solverstate"]


def test_stop_request_during_testing(tmp_path, caplog):
    prefix = tmp_path / "t"
    solver = tiny(f'max_iter: 10 test_iter: 5 test_interval: 2 snapshot_prefix: "{prefix}"',
                  action_function=actions(["stop"]))
    with caplog.at_level("INFO", logger="protonet"):
        solver.solve()
    text = messages(caplog)
    assert "Test interrupted." in text and solver.iter == 0
    assert os.path.exists(f"{prefix}_iter_0.caffemodel")


# -- net selection ---------------------------------------------------------------------------
STAGED = TINY.replace('include { phase: TEST } }',
                      'include { phase: TEST stage: "val" } }')


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_train_net_and_test_net_files(tmp_path):
    train = write(tmp_path, "train.prototxt", TINY)
    test = write(tmp_path, "test.prototxt", TINY)
    solver = solver_from(f'train_net: "{train}" test_net: "{test}" test_net: "{test}" '
                         f"test_iter: 1 test_iter: 2 test_interval: 5 {BASE}")
    assert len(solver.test_nets) == 2
    assert "accuracy" in solver.test_nets[1].outputs and "accuracy" not in solver.net.outputs


def test_shared_net_gives_one_test_net_per_test_iter(tmp_path):
    net = write(tmp_path, "net.prototxt", TINY)
    solver = solver_from(f'net: "{net}" test_iter: 2 test_iter: 3 test_interval: 5 {BASE}')
    assert len(solver.test_nets) == 2
    assert all(n.phase == 1 for n in solver.test_nets) and solver.net.phase == 0


def test_test_state_and_train_state(tmp_path):
    net = write(tmp_path, "net.prototxt", STAGED)
    solver = solver_from(f'net: "{net}" test_iter: 1 test_iter: 1 test_interval: 5 '
                         'test_state { stage: "val" } test_state { } '
                         f'train_state {{ level: 2 }} {BASE}')
    assert "accuracy" in solver.test_nets[0].outputs
    assert "accuracy" not in solver.test_nets[1].outputs
    assert solver.net.state.level == 2 and solver.net.state.phase == 0


def test_train_net_param_with_test_net_param():
    solver = solver_from(f"train_net_param {{ {TINY} }} test_net_param {{ {TINY} }} "
                         f"test_iter: 1 test_interval: 3 {BASE}")
    assert len(solver.test_nets) == 1


@pytest.mark.parametrize("fields, message", [
    ("", "must give a train net"),
    (f"net_param {{ {TINY} }} train_net_param {{ {TINY} }}", "more than one train net"),
    (f"train_net_param {{ {TINY} }} test_net_param {{ {TINY} }}",
     "test_iter must be given once per test net"),
    (f"net_param {{ {TINY} }} test_iter: 2", "set a positive test_interval"),
    (f"net_param {{ {TINY} }} test_iter: 2 test_interval: 1 test_state {{ }} "
     "test_state { }  test_state { }", "test_state must be given"),
])
def test_bad_net_selection(fields, message):
    with pytest.raises(ProtonetError, match=message):
        solver_from(f"{fields} {BASE}")


def test_relative_net_path_falls_back_to_the_solver_directory(tmp_path, monkeypatch):
    sub = tmp_path / "models"
    sub.mkdir()
    write(sub, "net.prototxt", TINY)
    solver_path = write(sub, "solver.prototxt", f'net: "net.prototxt" {BASE} max_iter: 1')
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="using '.*net.prototxt' .relative to the solver file"):
        solver = get_solver(solver_path)
    assert solver.net.name == "tiny"


def test_missing_net_file_names_both_places(tmp_path, monkeypatch):
    solver_path = write(tmp_path, "solver.prototxt", f'net: "nope.prototxt" {BASE}')
    monkeypatch.chdir("/")
    with pytest.raises(ProtonetError, match="'nope.prototxt' not found .looked in the working "
                       "directory and in"):
        get_solver(solver_path)


def test_weights_field_fine_tunes_train_and_test_nets(tmp_path):
    source = tiny("max_iter: 2")
    source.step(2)
    model = str(tmp_path / "w.caffemodel")
    from protonet.solvers.snapshot import write_caffemodel
    write_caffemodel(source.net, model)
    solver = tiny(f'weights: "{model}" test_iter: 1 test_interval: 5', seed=9)
    np.testing.assert_array_equal(solver.net.params["ip"][0].data,
                                  source.net.params["ip"][0].data)
    np.testing.assert_array_equal(solver.test_nets[0].params["ip"][0].data,
                                  source.net.params["ip"][0].data)


def test_missing_snapshot_directory_is_created(tmp_path):
    solver = tiny(f'max_iter: 1 snapshot: 1 snapshot_prefix: "{tmp_path}/new/dir/x"')
    solver.solve()
    assert (tmp_path / "new" / "dir" / "x_iter_1.solverstate").exists()


def test_unwritable_snapshot_prefix_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    solver = tiny(f'max_iter: 3 snapshot: 1 snapshot_prefix: "{tmp_path}/file/x"')
    with pytest.raises(ProtonetError, match="cannot create directory '.*file'"):
        solver.solve()
    assert solver.iter == 0
