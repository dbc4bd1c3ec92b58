"""The repository's LeNet solver end to end on small MNIST-format LMDBs: Data layers with
prefetching, the CLI, and an exact resume through the data layers' read positions."""
import pathlib
import shutil

import numpy as np
import pytest

from protonet.cli import main
from protonet.io import read_solver, write_text_file
from protonet.solvers import get_solver

REPO = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("lmdb")


@pytest.fixture
def lenet(tmp_path, monkeypatch):
    """A working directory laid out like the repository: models/lenet and data/mnist."""
    from protonet.data.mnist import write_mnist_lmdb
    shutil.copytree(REPO / "models" / "lenet", tmp_path / "models" / "lenet")
    rng = np.random.default_rng(0)
    for name, n in (("mnist_train_lmdb", 320), ("mnist_test_lmdb", 200)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) < 0.1 + 0.05 * labels[:, None, None]) * 255
        write_mnist_lmdb(images.astype(np.uint8), labels, str(tmp_path / "data/mnist" / name))
    solver = read_solver(str(REPO / "models/lenet/lenet_solver.prototxt"))
    solver.max_iter, solver.test_iter[0], solver.test_interval = 8, 1, 4
    solver.snapshot, solver.display, solver.random_seed = 4, 2, 5
    solver.ClearField("snapshot_prefix")
    solver.snapshot_prefix = "snapshots/lenet"
    write_text_file(solver, str(tmp_path / "solver.prototxt"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_lenet_solver_trains_from_the_cli(lenet, capsys):
    assert main(["solve", "solver.prototxt", "--progress", "log"]) == 0
    err = capsys.readouterr().err
    assert "Test net output #0: accuracy = " in err and "Test net output #1: loss = " in err
    assert (lenet / "snapshots" / "lenet_iter_8.caffemodel").exists()
    assert main(["test", "--model", "models/lenet/lenet_train_test.prototxt", "--weights",
                 "snapshots/lenet_iter_8.caffemodel", "--iterations", "2"]) == 0
    assert "accuracy = " in capsys.readouterr().err


def test_lenet_resume_through_data_layers_is_exact(lenet):
    whole = get_solver("solver.prototxt")
    whole.solve()
    resumed = get_solver("solver.prototxt")
    resumed.param.snapshot_prefix = "snapshots/resumed"
    resumed.solve(resume="snapshots/lenet_iter_4.solverstate")
    for a, b in zip(whole.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert whole.test_scores == resumed.test_scores
    assert whole._smoothed_loss == resumed._smoothed_loss
