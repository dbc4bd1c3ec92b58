"""The benchmark runner works (tiny size; speed itself is measured by `python -m bench`)."""
import os

import pytest

from bench.nets import NETS


@pytest.mark.slow
def test_bench_runs_every_net_on_a_tiny_size(capsys):
    pytest.importorskip("torch")
    from bench.__main__ import main
    rows = main(["--iterations", "1", "--rounds", "1", "--threads", "1", "--batch", "2"])
    assert [r["net"] for r in rows] == list(NETS) == ["lenet", "cifar10_quick", "caffenet"]
    for r in rows:
        assert r["protonet_ms"] > 0 and r["torch_ms"] > 0 and r["ratio"] > 0
        assert r["protonet_spread_ms"] == 0 == r["torch_spread_ms"]  # one round: no spread
        assert r["gflops"] > 0 and r["gemm_peak_gflops"] > 0
    assert rows[2]["forward_only"] and not rows[0]["forward_only"]
    out = capsys.readouterr().out
    assert all(name in out for name in NETS)


def test_flop_counts():
    from bench.nets import flops
    lenet_macc = 5 * 5 * 20 * 24 * 24 + 5 * 5 * 20 * 50 * 8 * 8 + 800 * 500 + 500 * 10
    assert 6 * lenet_macc <= flops("lenet", 1) < 6.1 * lenet_macc  # fwd+bwd ~ 3x fwd
    assert flops("lenet", 4) == 4 * flops("lenet", 1)
    assert 1.4e9 < flops("caffenet", 1) < 1.5e9  # forward only: ~724M MACC


@pytest.mark.slow
def test_solve_memory_reports_max_rss():
    from bench.solve_memory import measure
    r = measure(2, test_iter=1)
    assert r["iterations"] == 2 and 10 < r["max_rss_mib"] < 2000 and r["wall_s"] > 0


def test_no_malloc_tuning_flag_reaches_the_protonet_process():
    from bench.__main__ import run
    r = run("run_protonet", ["lenet", 1, 1], 1, {"PROTONET_NO_MALLOC_TUNING": "1"})
    assert r["malloc_tuned"] is False and len(r["times"]) == 1


def test_both_runners_get_the_same_input_batch():
    from bench.nets import INPUTS, NETS, input_batch
    assert INPUTS == ("random", "constant")
    for name in NETS:
        x = input_batch(name, 2)
        assert x.dtype.name == "float32" and x.shape[0] == 2
        assert (x >= 0).all() and (x < 1).all() and x.std() > 0.2  # uniform [0, 1)
        assert (input_batch(name, 2) == x).all()  # the same values in every process
        assert (input_batch(name, 2, "constant") == 0.5).all()


@pytest.mark.parametrize("kind", ["random", "constant"])
def test_protonet_runner_takes_the_input_kind(kind):
    from bench.__main__ import run
    r = run("run_protonet", ["lenet", 1, 1, kind], 1)
    assert len(r["times"]) == 1


def test_the_machine_line_names_the_cpu_and_the_blas_kernel():
    from bench.__main__ import machine
    line = machine()
    assert line.startswith("CPU: ") and "BLAS: " in line and "load average" in line
    from protonet.kernels import jit
    assert ("compiled loops: numba " in line) == jit.enabled()


@pytest.mark.slow
def test_zoo_rows_time_protonet_against_opencv(capsys, monkeypatch):
    pytest.importorskip("cv2")
    from bench import zoo
    from conftest import corpus_dir
    if corpus_dir() is None:
        pytest.skip("no corpus")
    monkeypatch.setenv("PROTONET_CORPUS", str(corpus_dir()))
    from bench.__main__ import main
    rows = main(["--nets", "squeezenet11", "--iterations", "3", "--rounds", "1", "--batch", "1"])
    assert [(r["net"], r["batch"], r["threads"]) for r in rows] == [("squeezenet11", 1, 2)]
    assert rows[0]["reference"] == "OpenCV" and rows[0]["opencv_ms"] > 0 and rows[0]["fuse"]
    assert "squeezenet11" in zoo.ZOO and "OpenCV" in capsys.readouterr().out


def test_gemm_floor_lists_each_layers_products():
    from bench.gemm_floor import step_gemms
    rows = {r["layer"]: r for r in step_gemms("lenet", 2)}
    assert list(rows) == ["conv1", "conv2", "ip1", "ip2"]
    # conv1 reads the data (no data gradient): forward (20, 25) @ (25, 2*24*24), weights
    assert rows["conv1"]["products"] == [("forward", 20, 25, 1152), ("weights", 20, 1152, 25)]
    assert [p[0] for p in rows["conv2"]["products"]] == ["forward", "weights", "data"]
    assert tuple(rows["conv2"]["products"][2]) == ("data", 500, 50, 2 * 8 * 8)
    assert tuple(rows["ip1"]["products"][0]) == ("forward", 2, 800, 500)
    for r in rows.values():
        assert r["total_s"] == pytest.approx(sum(r["seconds"].values())) and r["total_s"] > 0


@pytest.mark.slow
def test_gemm_floor_rows_put_the_floor_beside_both_steps(capsys):
    pytest.importorskip("torch")
    from bench.gemm_floor import main
    rows = main(["--nets", "lenet", "--threads", "1", "--batch", "2", "--iterations", "1"])
    assert len(rows) == 1 and rows[0]["gemm_floor_ms"] > 0
    assert rows[0]["protonet_ms"] > 0 and rows[0]["reference_ms"] > 0
    assert rows[0]["reference"] == "PyTorch" and "floor/reference" in capsys.readouterr().out


def test_gemm_floor_of_a_deploy_net_is_its_forward_products_and_depthwise_apart(monkeypatch):
    from bench import zoo
    from bench.gemm_floor import step_gemms
    if not os.path.isfile(os.path.join(zoo.corpus_dir(), zoo.ZOO["mobilenet"][0])):
        pytest.skip("the shared corpus is not beside the repository")
    monkeypatch.setattr("bench.gemm_floor.gemm_seconds", lambda m, k, n: 1e-9 * m * k * n)
    rows = {r["layer"]: r for r in step_gemms("mobilenet", 2)}
    products = [p[0] for r in rows.values() for p in r["products"]]
    assert products == ["forward"] * 15  # conv1, the 13 1x1 convolutions, fc7
    assert tuple(rows["conv1"]["products"][0]) == ("forward", 32, 27, 2 * 112 * 112)
    dw = rows["conv2_1/dw"]
    assert dw["products"] == [] and dw["total_s"] == 0
    assert dw["depthwise_macc"] == 32 * 9 * 2 * 112 * 112
    assert rows["conv2_1/sep"]["total_s"] == pytest.approx(1e-9 * 64 * 32 * 2 * 112 * 112)
