"""Snapshot files in Caffe's formats, exact resume, and atomic writes that survive kill -9."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.io import parse_solver
from protonet.proto import caffe_pb2
from protonet.solvers import AdamSolver, NesterovSolver, SGDSolver, get_solver
from protonet.solvers import snapshot as snap

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 1 dim: 6 dim: 6 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 3.99 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SETTINGS = ('base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "multistep" '
            'gamma: 0.5 stepvalue: 3 stepvalue: 6 random_seed: 11 display: 1 average_loss: 3 '
            'test_iter: 2 test_interval: 3 ')


def solver_text(prefix, max_iter=8, snapshot=4, fmt="BINARYPROTO", extra=""):
    return (f'net_param {{ {TINY} }} {SETTINGS} max_iter: {max_iter} snapshot: {snapshot} '
            f'snapshot_prefix: "{prefix}" snapshot_format: {fmt} {extra}')


def make(prefix, cls=SGDSolver, **kwargs):
    extra = kwargs.pop("extra", "")
    if cls is AdamSolver:
        extra += " momentum2: 0.999 "
    return cls(parse_solver(solver_text(prefix, extra=extra, **kwargs)))


def weights(solver):
    return [b.data.copy() for b in solver.net.learnable_params]


def logged(caplog):
    """Iteration, output and test lines, with the display line's timing cut out."""
    keep = ("Iteration", "output #", "Test loss")
    return [re.sub(r" \(.* iter/s, .*s/\d+ iters\)", "", r.getMessage())
            for r in caplog.records if any(k in r.getMessage() for k in keep)]


# -- formats ------------------------------------------------------------------------------------
def test_caffemodel_and_solverstate_are_caffes_binary_protos(tmp_path):
    solver = make(tmp_path / "t", max_iter=4)
    solver.solve()
    net = caffe_pb2.NetParameter()
    net.ParseFromString((tmp_path / "t_iter_4.caffemodel").read_bytes())
    assert net.name == "tiny"
    assert [l.name for l in net.layer] == solver.net.layer_names
    assert all(l.HasField("phase") and l.phase == caffe_pb2.TRAIN for l in net.layer)
    by_name = {l.name: l for l in net.layer}
    for name, blobs in solver.net.params.items():
        stored = by_name[name].blobs
        assert len(stored) == len(blobs)
        for proto, blob in zip(stored, blobs):
            assert list(proto.shape.dim) == list(blob.shape)
            np.testing.assert_array_equal(np.asarray(proto.data, np.float32).reshape(blob.shape),
                                          blob.data)
            assert len(proto.diff) == 0
    state = caffe_pb2.SolverState()
    state.ParseFromString((tmp_path / "t_iter_4.solverstate").read_bytes())
    assert state.iter == 4 and state.current_step == 1
    assert state.learned_net == str(tmp_path / "t_iter_4.caffemodel")
    assert [list(h.shape.dim) for h in state.history] == \
        [list(b.shape) for b in solver.net.learnable_params]
    for h, mine in zip(state.history, solver.history):
        np.testing.assert_array_equal(np.asarray(h.data, np.float32).reshape(mine.shape), mine)


def test_snapshot_diff_stores_gradients(tmp_path):
    solver = make(tmp_path / "t", max_iter=2, extra="snapshot_diff: true")
    solver.solve()
    net = caffe_pb2.NetParameter()
    net.ParseFromString((tmp_path / "t_iter_2.caffemodel").read_bytes())
    conv = next(l for l in net.layer if l.name == "conv1")
    np.testing.assert_array_equal(np.asarray(conv.blobs[0].diff, np.float32),
                                  solver.net.params["conv1"][0].diff.ravel())


def test_hdf5_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    solver = make(tmp_path / "t", max_iter=4, fmt="HDF5", extra="snapshot_diff: true")
    solver.solve()
    with h5py.File(tmp_path / "t_iter_4.caffemodel.h5", "r") as f:
        assert set(f) == {"data", "diff"}
        assert set(f["data"]) == set(solver.net.layer_names)
        assert len(f["data/drop"]) == 0
        np.testing.assert_array_equal(f["data/conv1/0"][()], solver.net.params["conv1"][0].data)
        np.testing.assert_array_equal(f["diff/ip/0"][()], solver.net.params["ip"][0].diff)
        assert f["data/ip/0"].dtype == np.float32
    with h5py.File(tmp_path / "t_iter_4.solverstate.h5", "r") as f:
        assert f["iter"][()] == 4 and f["iter"].dtype == np.int32 and f["iter"].shape == ()
        assert f["current_step"][()] == 1
        learned = f["learned_net"]
        assert learned.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert learned[()].rstrip(b"\0").decode() == str(tmp_path / "t_iter_4.caffemodel.h5")
        assert sorted(f["history"], key=int) == [str(i) for i in range(len(solver.history))]
    assert (tmp_path / "t_iter_4.solverstate.h5.protonet.json").exists()


def test_hdf5_weights_with_shared_params_load_back(tmp_path):
    pytest.importorskip("h5py")
    net = TINY.replace('inner_product_param { num_output: 4',
                       'param { name: "w" } inner_product_param { num_output: 4').replace(
        'layer { name: "accuracy"',
        'layer { name: "ip2" type: "InnerProduct" bottom: "conv1" top: "ip2" param { name: "w" }'
        ' inner_product_param { num_output: 4 } }\nlayer { name: "accuracy"')
    solver = SGDSolver(parse_solver(f'net_param {{ {net} }} base_lr: 0.1 lr_policy: "fixed" '
                                    f'snapshot_format: HDF5 snapshot_prefix: "{tmp_path}/s" '
                                    "random_seed: 1"))
    solver.step(2)
    state = solver.snapshot()
    other = SGDSolver(solver.param)
    other.restore(state)
    for a, b in zip(weights(solver), weights(other)):
        np.testing.assert_array_equal(a, b)


# -- exact resume -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls, fmt", [(SGDSolver, "BINARYPROTO"), (SGDSolver, "HDF5"),
                                      (AdamSolver, "BINARYPROTO"), (NesterovSolver, "HDF5")])
def test_resume_continues_the_same_trajectory(tmp_path, caplog, cls, fmt):
    if fmt == "HDF5":
        pytest.importorskip("h5py")
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    with caplog.at_level("INFO", logger="protonet"):
        whole = make(tmp_path / "a", cls, fmt=fmt)
        whole.solve()
        first = logged(caplog)
        caplog.clear()
        resumed = make(tmp_path / "b", cls, fmt=fmt)
        resumed.solve(resume=str(tmp_path / f"a_iter_4{ext}"))
        second = logged(caplog)
    for a, b in zip(weights(whole), weights(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(whole.history, resumed.history):
        np.testing.assert_array_equal(a, b)
    tail = first[next(i for i, m in enumerate(first) if m.startswith("Iteration 4")):]
    assert second == tail   # same losses, lr and test outputs from iteration 4 on, digit for digit
    assert any("Test net output" in m for m in second)


def test_resume_without_sidecar_is_caffes_resume(tmp_path, caplog):
    solver = make(tmp_path / "a")
    solver.solve()
    state = tmp_path / "a_iter_4.solverstate"
    os.unlink(str(state) + ".protonet.json")
    other = make(tmp_path / "b")
    with caplog.at_level("INFO", logger="protonet"):
        other.restore(str(state))
    assert any("no protonet sidecar; resuming as Caffe does" in r.getMessage()
               for r in caplog.records)
    assert other.iter == 4 and other.current_step == 1
    reference = make(tmp_path / "c", max_iter=4)
    reference.solve()
    for a, b in zip(weights(reference), weights(other)):
        np.testing.assert_array_equal(a, b)


def test_resume_finds_moved_snapshot_files(tmp_path):
    make(tmp_path / "a", max_iter=4).solve()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for p in tmp_path.glob("a_iter_4.*"):
        p.rename(moved / p.name)
    other = make(tmp_path / "b")
    other.restore(str(moved / "a_iter_4.solverstate"))
    assert other.iter == 4


def test_resume_with_another_solver_type_is_refused(tmp_path):
    make(tmp_path / "a", max_iter=4).solve()
    adam = make(tmp_path / "b", AdamSolver)
    with pytest.raises(ProtonetError, match="holds 4 history blobs, but this Adam solver "
                       "keeps 8"):
        adam.restore(str(tmp_path / "a_iter_4.solverstate"))


def test_missing_state_file():
    with pytest.raises(ProtonetError, match="no such file"):
        snap.read_solverstate("/nonexistent/x.solverstate")


# -- atomic writes ----------------------------------------------------------------------------
def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(b"old complete file")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ProtonetError, match="x.caffemodel: cannot write .No space left"):
        snap.atomic_write(str(path), b"new bytes")
    assert path.read_bytes() == b"old complete file"
    assert os.listdir(tmp_path) == ["x.caffemodel"]


def test_interrupt_during_write_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.solverstate"

    def interrupted(tmp):
        pathlib.Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        snap.atomic_write(str(path), interrupted)
    assert os.listdir(tmp_path) == []


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp_path / f"t_iter_2.caffemodel{snap.TMP_MARK}{proc.pid}"
    stale.write_bytes(b"torn")
    mine = tmp_path / f"t_iter_2.caffemodel{snap.TMP_MARK}{os.getpid()}"
    mine.write_bytes(b"in progress")
    solver = make(tmp_path / "t", max_iter=1)
    solver.solve()
    assert not stale.exists() and mine.exists()


# -- kill -9 -----------------------------------------------------------------------------------
def write_solver_file(tmp_path, max_iter, snapshot, extra=""):
    (tmp_path / "net.prototxt").write_text(TINY)
    text = (f'net: "net.prototxt" {SETTINGS} max_iter: {max_iter} snapshot: {snapshot} '
            f'snapshot_prefix: "snaps/t" {extra}')
    (tmp_path / "snaps").mkdir(exist_ok=True)
    (tmp_path / "solver.prototxt").write_text(text)
    return tmp_path / "solver.prototxt"


def start_cli(tmp_path, *args, env=None):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "protonet", "solve", "solver.prototxt",
                             "--progress", "log", *args], cwd=tmp_path, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError("timed out")


def check_snapshots_loadable(directory, solver_file):
    """Every .solverstate on disk restores; returns the iterations found."""
    found = []
    for state in sorted(directory.glob("t_iter_*.solverstate")):
        solver = get_solver(str(solver_file))
        solver.restore(str(state))
        found.append(solver.iter)
    for model in directory.glob("t_iter_*.caffemodel"):
        caffe_pb2.NetParameter().ParseFromString(model.read_bytes())
    return sorted(found)


def test_kill_9_during_a_snapshot_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    solver_file = write_solver_file(tmp_path, 1000, 2)
    snaps = tmp_path / "snaps"
    proc = start_cli(tmp_path, env={snap.WRITE_DELAY_ENV: "0.4"})
    try:
        wait_for(lambda: (snaps / "t_iter_2.solverstate").exists())
        wait_for(lambda: list(snaps.glob(f"t_iter_4.*{snap.TMP_MARK}*")))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (snaps / "t_iter_4.solverstate").exists()
    assert list(snaps.glob(f"*{snap.TMP_MARK}*"))   # the torn write is only a temp file
    monkeypatch.chdir(tmp_path)
    assert check_snapshots_loadable(snaps, solver_file) == [2]
    solver = get_solver("solver.prototxt")
    solver.restore("snaps/t_iter_2.solverstate")
    solver.param.max_iter = 4
    solver.solve()
    assert (snaps / "t_iter_4.solverstate").exists()
    assert not list(snaps.glob(f"*{snap.TMP_MARK}*"))   # the dead run's temp file is gone


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    write_solver_file(tmp_path, 100000, 4)
    snaps = tmp_path / "snaps"
    proc = start_cli(tmp_path)
    try:
        wait_for(lambda: (snaps / "t_iter_8.solverstate").exists())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    monkeypatch.chdir(tmp_path)
    newest = max(int(p.name.split("_iter_")[1].split(".")[0])
                 for p in snaps.glob("t_iter_*.solverstate"))
    stop = newest + 6
    resumed = get_solver("solver.prototxt")
    resumed.param.max_iter = stop
    resumed.param.snapshot_prefix = "snaps/resumed"
    resumed.solve(resume=f"snaps/t_iter_{newest}.solverstate")
    whole = get_solver("solver.prototxt")
    whole.param.max_iter = stop
    whole.param.snapshot = 0
    whole.param.snapshot_prefix = "snaps/whole"
    whole.solve()
    for a, b in zip(weights(whole), weights(resumed)):
        np.testing.assert_array_equal(a, b)
    assert whole._smoothed_loss == resumed._smoothed_loss


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_a_torn_snapshot(tmp_path, monkeypatch):
    solver_file = write_solver_file(tmp_path, 100000, 1)
    snaps = tmp_path / "snaps"
    rng = np.random.default_rng(0)
    for _ in range(6):
        proc = start_cli(tmp_path)
        try:
            wait_for(lambda: list(snaps.glob("t_iter_*.solverstate")))
            time.sleep(float(rng.uniform(0, 0.5)))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        monkeypatch.chdir(tmp_path)
        assert check_snapshots_loadable(snaps, solver_file)
        for state in snaps.glob("t_iter_*.solverstate"):
            sidecar = json.loads(pathlib.Path(str(state) + ".protonet.json").read_text())
            assert f"_iter_{sidecar['iter']}." in state.name
        for p in snaps.iterdir():
            p.unlink()
