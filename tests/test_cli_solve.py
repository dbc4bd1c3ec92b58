"""`protonet solve/train/test/plot`: Caffe's flags, Caffe-format logs, progress bar, signals."""
import io
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from protonet.cli import main
from protonet.solvers import progress
from protonet.solvers.plot import parse_log

REPO = pathlib.Path(__file__).resolve().parents[1]

NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 1 dim: 6 dim: 6 } shape { dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 3.99 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def solver_file(directory, max_iter=20, extra="", mode="solver_mode: CPU", display=5,
                snapshot=10):
    directory = pathlib.Path(directory)
    (directory / "net.prototxt").write_text(NET)
    (directory / "snaps").mkdir(exist_ok=True)
    (directory / "solver.prototxt").write_text(
        f'net: "net.prototxt" test_iter: 2 test_interval: 10 base_lr: 0.05 momentum: 0.9 '
        f'weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75 display: {display} '
        f'max_iter: {max_iter} snapshot: {snapshot} snapshot_prefix: "snaps/tiny" random_seed: 2 '
        f'{mode} {extra}')
    return "solver.prototxt"


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver_file(tmp_path)
    return tmp_path


GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) +\d+ [\w.]+:\d+\] (.*)$")


def glog_messages(text):
    out = []
    for line in text.splitlines():
        m = GLOG.match(line)
        if m:
            out.append(m.group(7))
    return out


def test_solve_writes_caffe_log_lines_that_parse_log_reads(work, capsys):
    assert main(["solve", "solver.prototxt"]) == 0
    err = capsys.readouterr().err
    lines = glog_messages(err)
    # every line parse_log.py needs carries glog's prefix (it reads the time from it)
    for needle in ("Solving tiny", "Iteration 0, Testing net (#0)", "Optimization Done."):
        assert needle in lines
    displays = [m for m in lines if re.match(r"Iteration \d+ \([\d.e+-]+ iter/s, "
                                             r"[\d.e+-]+s/5 iters\), loss = [\d.e+-]+$", m)]
    assert [int(m.split()[1]) for m in displays] == [0, 5, 10, 15]
    lrs = [re.search(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)", m) for m in lines]
    assert len([m for m in lrs if m]) == 4
    tests = [m for m in lines if re.search(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)", m)]
    assert len(tests) == 6   # iterations 0, 10, 20; accuracy and loss
    assert "Snapshotting to binary proto file snaps/tiny_iter_10.caffemodel" in lines
    assert sorted(os.listdir(work / "snaps")) == [
        "tiny_iter_10.caffemodel", "tiny_iter_10.solverstate",
        "tiny_iter_10.solverstate.protonet.json", "tiny_iter_20.caffemodel",
        "tiny_iter_20.solverstate", "tiny_iter_20.solverstate.protonet.json"]


def test_train_with_caffes_flag_spellings(work, capsys):
    assert main(["train", "-solver=solver.prototxt", "--sigint_effect=stop",
                 "-sighup_effect", "snapshot", "-level", "0", "-stage=a,b"]) == 0
    assert "Optimization Done." in glog_messages(capsys.readouterr().err)


def test_parse_log_reads_our_log(work, capsys):
    assert main(["solve", "solver.prototxt", "--log", "train.log", "--progress", "log"]) == 0
    data = parse_log("train.log")
    assert [i for i, _ in data.train] == [0, 5, 10, 15, 20]   # + the final "Iteration 20, loss"
    assert [i for i, _ in data.lr] == [0, 5, 10, 15]
    assert [(t.iteration, sorted(t.outputs)) for t in data.tests] == \
        [(i, ["accuracy", "loss"]) for i in (0, 10, 20)]
    assert all(t.losses == {"loss"} for t in data.tests)


def test_parse_log_keeps_the_latest_run_of_an_appended_log(work, capsys):
    """solve --log appends: a second run, or a resumed one, supersedes the earlier lines from
    the iteration it starts at."""
    for _ in range(2):
        assert main(["solve", "solver.prototxt", "--log", "train.log", "--progress", "log"]) == 0
    assert main(["solve", "solver.prototxt", "--log", "train.log", "--progress", "log",
                 "--snapshot", "snaps/tiny_iter_10.solverstate"]) == 0
    text = open("train.log").read()
    assert text.count("Solver scaffolding done.") == 3
    data = parse_log("train.log")
    assert [i for i, _ in data.train] == [0, 5, 10, 15, 20]
    assert [i for i, _ in data.lr] == [0, 5, 10, 15]
    assert [t.iteration for t in data.tests] == [0, 10, 20]
    # the points after the resume are the resumed run's: the last lines of the file
    last_loss = float(re.findall(r"Iteration 20, loss = (\S+)", text)[-1])
    assert data.train[-1] == (20, last_loss)


def test_plot_writes_a_png(work, capsys):
    pytest.importorskip("matplotlib")
    assert main(["solve", "solver.prototxt", "--log", "train.log"]) == 0
    assert main(["plot", "train.log", "-o", "curve.png"]) == 0
    assert (work / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote curve.png" in capsys.readouterr().out
    assert main(["plot", "train.log"]) == 0
    assert (work / "train.png").exists()


def test_plot_of_a_file_without_training_lines(work, capsys):
    (work / "empty.log").write_text("nothing here\n")
    assert main(["plot", "empty.log"]) == 1
    assert "no training or test lines found" in capsys.readouterr().err


def test_gpu_mode_warns_and_runs_on_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    solver_file(tmp_path, max_iter=2, mode="")
    assert main(["solve", "solver.prototxt"]) == 0
    assert "protonet: warning: solver_mode is GPU (Caffe's default); protonet has no GPU " \
           "backend" in capsys.readouterr().err
    assert main(["solve", "solver.prototxt", "--gpu", "0"]) == 0
    assert "--gpu 0: protonet has no GPU backend" in capsys.readouterr().err


def test_user_errors(work, capsys):
    assert main(["solve"]) == 1
    assert "need a solver definition" in capsys.readouterr().err
    assert main(["solve", "solver.prototxt", "--weights", "a.caffemodel",
                 "--snapshot", "b.solverstate"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["solve", "missing.prototxt"]) == 1
    assert "missing.prototxt: no such file" in capsys.readouterr().err
    assert main(["test", "--weights", "w.caffemodel"]) == 1
    assert "need a model definition to score" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["solve", "solver.prototxt", "--sigint-effect", "explode"])
    with pytest.raises(SystemExit):
        main(["solve", "solver.prototxt", "-sigint_effect=explode"])


def test_resume_from_snapshot_flag(work, capsys):
    assert main(["solve", "solver.prototxt"]) == 0
    capsys.readouterr()
    assert main(["solve", "solver.prototxt", "--snapshot", "snaps/tiny_iter_10.solverstate"]) == 0
    lines = glog_messages(capsys.readouterr().err)
    assert "Resuming from snaps/tiny_iter_10.solverstate" in lines
    assert not any(m.startswith("Iteration 0") or m.startswith("Iteration 5 ") for m in lines)
    assert any(m.startswith("Iteration 15 (") for m in lines)


def test_finetune_copies_by_layer_name_and_explains_mismatches(work, capsys):
    assert main(["solve", "solver.prototxt"]) == 0
    (work / "net.prototxt").write_text(NET.replace("num_output: 4", "num_output: 5"))
    assert main(["solve", "solver.prototxt", "--weights", "snaps/tiny_iter_20.caffemodel"]) == 1
    err = capsys.readouterr().err
    assert "cannot copy param 0 of layer 'ip'" in err and "rename the layer" in err
    (work / "net.prototxt").write_text(NET.replace('name: "ip"', 'name: "ip_new"'))
    assert main(["solve", "solver.prototxt", "--weights", "snaps/tiny_iter_20.caffemodel"]) == 0
    err = capsys.readouterr().err
    assert "Finetuning from snaps/tiny_iter_20.caffemodel" in err
    assert "ignoring source layer 'ip'" in err


def test_test_command(work, capsys):
    assert main(["solve", "solver.prototxt"]) == 0
    capsys.readouterr()
    assert main(["test", "--model=net.prototxt", "-weights", "snaps/tiny_iter_20.caffemodel",
                 "--iterations", "3"]) == 0
    lines = glog_messages(capsys.readouterr().err)
    batches = [m for m in lines if m.startswith("Batch ")]
    assert batches[:2] == [m for m in batches if m.startswith("Batch 0,")]
    assert len(batches) == 6
    acc = [float(m.split(" = ")[1]) for m in batches if "accuracy" in m]
    summary = next(m for m in lines if m.startswith("accuracy = "))
    assert float(summary.split(" = ")[1]) == pytest.approx(sum(acc) / 3, rel=1e-5)
    assert re.search(r"^loss = (\S+) \(\* 1 = \1 loss\)$", next(m for m in lines
                                                               if m.startswith("loss = ")))
    assert any(m.startswith("Loss: ") for m in lines)


def test_nan_loss_exits_with_a_clear_error(work, capsys):
    solver_file(work, extra="clip_gradients: -1", mode="solver_mode: CPU base_lr: 1e30")
    (work / "solver.prototxt").write_text(
        (work / "solver.prototxt").read_text().replace("base_lr: 0.05 ", ""))
    assert main(["solve", "solver.prototxt"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"protonet: error: iteration \d+: the loss is (nan|inf); the first layer "
                     r"whose output is not finite is '\w+'", err)


# -- the progress bar -------------------------------------------------------------------------
def test_bar_mode_shows_bar_and_the_lines_worth_reading(work):
    stream = io.StringIO()
    from protonet.solvers import get_solver
    with progress.reporting("bar", stream=stream) as reporter:
        solver = get_solver("solver.prototxt", reporter=reporter)
        solver.solve()
    text = stream.getvalue()
    assert "Test net output #0: accuracy = " in text
    assert "Snapshotting solver state to binary proto file snaps/tiny_iter_20.solverstate" in text
    assert not any(GLOG.match(line) for line in text.splitlines())
    assert "20/20" in text and "loss" in text


def test_line_bar_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = io.StringIO()
    bar = progress.make_bar(100, 0, stream)
    assert isinstance(bar, progress.LineBar)
    bar.min_interval = 0
    bar.update(50, 0.1234567, 0.00992565)
    bar.write("Test net output #0: accuracy = 0.9")
    bar.update(100, 0.05, 0.009)
    bar.close()
    text = stream.getvalue()
    assert "Iteration 50/100  50% | loss 0.1235 | lr 0.00993 | " in text
    assert "it/s | ETA " in text
    assert "\r\x1b[KTest net output #0: accuracy = 0.9\n" in text
    assert text.endswith("\n")


def test_auto_mode_follows_the_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert progress.choose_mode("auto", io.StringIO()) == "log"
    assert progress.choose_mode("auto", Tty()) in ("bar", "log")   # "log" if TERM=dumb
    assert progress.choose_mode("log", Tty()) == "log"


# -- signals ---------------------------------------------------------------------------------
def start(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "protonet", "solve", "solver.prototxt",
                             "--log", "train.log", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the solver exited early: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("timed out")


def log_has(path, text):
    return path.exists() and text in path.read_text()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sighup_snapshots_and_sigint_snapshots_and_stops(tmp_path):
    solver_file(tmp_path, max_iter=10 ** 7, display=1, snapshot=0)
    log = tmp_path / "train.log"
    proc = start(tmp_path)
    try:
        wait_for(lambda: log_has(log, "Iteration 3 ("), proc)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_has(log, "Snapshotting solver state"), proc)
        assert proc.poll() is None          # SIGHUP: snapshot and go on
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == 0, err
    text = log.read_text()
    assert "Optimization stopped early." in text
    from protonet.solvers.snapshot import read_solverstate
    states = sorted((tmp_path / "snaps").glob("tiny_iter_*.solverstate"))
    assert 1 <= len(states) <= 2   # one if SIGINT came while testing right after the SIGHUP one
    # the stop left a snapshot where it stopped: after the update of the last logged
    # iteration, or at it when SIGINT came during a test
    reached = max(int(n) for n in re.findall(r"Iteration (\d+)", text))
    newest = max(read_solverstate(str(p)).iter for p in states)
    assert newest in (reached, reached + 1)
    assert not list((tmp_path / "snaps").glob("*tmp*"))
