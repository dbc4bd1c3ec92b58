"""Training on several processes, the parts that need no MPI: every TRAIN data layer's share
of a global batch (rank r of N reads items r*B..(r+1)*B-1 of every global batch of N*B, so the
ranks together read exactly what one layer with batch N*B reads, random choices included),
the solver's callbacks and root-solver rules, the refusal of a snapshot written with another
rank count, and the --ranks launcher's helpers."""
import contextlib
import json
import os
import numpy as np
import pytest

from protonet import ProtonetError, pycaffe
from protonet.net import Net

from test_data_layers import close, data_layer, digits_lmdb, image_layer
from test_data_layers import h5_files, image_folder  # noqa: F401  (fixtures)


@contextlib.contextmanager
def solvers(count, rank):
    """caffe.set_solver_count(count) / set_solver_rank(rank), undone afterwards."""
    before = pycaffe.solver_count(), pycaffe.solver_rank()
    pycaffe.set_solver_count(count)
    pycaffe.set_solver_rank(rank)
    try:
        yield
    finally:
        pycaffe.set_solver_count(before[0])
        pycaffe.set_solver_rank(before[1])


def build(tmp_path, text, name, phase="TRAIN"):
    path = tmp_path / name
    path.write_text('name: "t"\n' + text)
    return Net(str(path), phase, seed=3)


def assert_shards_make_the_whole(tmp_path, layers, batch, steps, count=2, tops=("data", "label"),
                                 feed=None):
    """``layers(b)``: the prototxt with batch size b. One net with batch count*batch and
    ``count`` nets of batch ``batch`` (ranks 0..count-1) deliver the same items."""
    whole = build(tmp_path, layers(batch * count), "whole.prototxt")
    parts = []
    for rank in range(count):
        with solvers(count, rank):
            parts.append(build(tmp_path, layers(batch), f"rank{rank}.prototxt"))
    if feed:
        for net in [whole] + parts:
            feed(net)
    try:
        for _ in range(steps):
            whole.forward()
            for net in parts:
                net.forward()
            for top in tops:
                joined = np.concatenate([np.asarray(n.blobs[top].data) for n in parts])
                np.testing.assert_array_equal(joined, whole.blobs[top].data, err_msg=top)
    finally:
        for net in [whole] + parts:
            close(net)
    return whole, parts


def test_data_lmdb_shards_with_random_crops_and_mirrors(tmp_path):
    source, _, _ = digits_lmdb(tmp_path, n=20, shape=(1, 6, 5))
    assert_shards_make_the_whole(
        tmp_path, lambda b: data_layer(source, batch=b, transform="crop_size: 4 mirror: true",
                                       extra="rand_skip: 7"), batch=3, steps=5)


def test_data_test_phase_is_not_sharded(tmp_path):
    source, images, _ = digits_lmdb(tmp_path, n=20, shape=(1, 6, 5))
    with solvers(2, 1):
        net = build(tmp_path, data_layer(source, batch=3, transform=""), "t.prototxt", "TEST")
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, images[:3])
    close(net)


def test_sharded_lmdb_resumes_from_its_state(tmp_path):
    source, _, _ = digits_lmdb(tmp_path, n=20, shape=(1, 6, 5))
    text = data_layer(source, batch=3, transform="crop_size: 4 mirror: true")
    with solvers(2, 1):
        a = build(tmp_path, text, "a.prototxt")
        b = build(tmp_path, text, "b.prototxt")
    a.forward()
    state = a.layers[0].get_state()
    a.forward()
    b.layers[0].set_state(state)
    b.forward()
    np.testing.assert_array_equal(a.blobs["data"].data, b.blobs["data"].data)
    close(a)
    close(b)


def test_image_data_shards_across_reshuffles(image_folder):
    tmp_path, _ = image_folder
    # 5 images, global batch 6: every batch wraps around and reshuffles part way
    assert_shards_make_the_whole(
        tmp_path, lambda b: image_layer(tmp_path, "shuffle: true", "crop_size: 3 mirror: true",
                                        batch=b), batch=3, steps=4)


def test_image_data_of_mixed_sizes_keeps_the_ranks_in_step(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    lines = []
    for i, (h, w) in enumerate([(6, 4), (7, 5), (5, 6), (8, 8)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png")
        lines.append(f"{i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    text = image_layer(tmp_path, "shuffle: true", "crop_size: 3 mirror: true", batch=3)
    nets = []
    for rank in range(2):
        with solvers(2, rank):
            nets.append(build(tmp_path, text, f"r{rank}.prototxt"))
    seen = []
    for _ in range(4):  # 4 global batches of 6 = 6 passes over 4 images
        for net in nets:
            net.forward()
            seen += [int(v) for v in net.blobs["label"].data]
        states = [net.layers[0].get_state() for net in nets]
        assert states[0] == states[1]
    assert sorted(seen) == sorted(list(range(4)) * 6)
    for net in nets:
        close(net)


def test_hdf5_data_shards_across_files_and_shuffles(h5_files):
    tmp_path, _, _ = h5_files

    def layers(b):
        return ('layer { name: "h" type: "HDF5Data" top: "data" top: "label"\n'
                f'  hdf5_data_param {{ source: "{tmp_path / "files.txt"}" batch_size: {b} '
                'shuffle: true } }\n')
    assert_shards_make_the_whole(tmp_path, layers, batch=3, steps=5)


def test_memory_data_shards_and_wants_whole_global_batches(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(12, 1, 2, 2)).astype(np.float32)
    labels = np.arange(12, dtype=np.float32)

    def layers(b):
        return ('layer { name: "m" type: "MemoryData" top: "data" top: "label"\n'
                f'  memory_data_param {{ batch_size: {b} channels: 1 height: 2 width: 2 }} }}\n')
    assert_shards_make_the_whole(tmp_path, layers, batch=3, steps=5,
                                 feed=lambda net: net.set_input_arrays(data, labels))
    with solvers(2, 0):
        net = build(tmp_path, layers(4), "m.prototxt")
    with pytest.raises(ProtonetError, match=r"global batch 8 \(2 solvers x batch_size 4\)"):
        net.set_input_arrays(data, labels)


def test_window_data_shards_foreground_and_background(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    (tmp_path / "imgs").mkdir()
    lines = []
    for i, (h, w) in enumerate([(50, 60), (40, 70)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"im{i}.png")
        windows = [f"{1 + i + k} 0.{7 + k} {k} {k} {20 + k} {25 + k}" for k in range(2)]
        windows += [f"{3 + k} 0.{k} {5 * k} 0 {w - 1} {h - 1 - k}" for k in range(3)]
        lines += [f"# {i}", f"im{i}.png", "3", str(h), str(w), str(len(windows))] + windows
    (tmp_path / "windows.txt").write_text("\n".join(lines) + "\n")

    def layers(b):
        return ('layer { name: "w" type: "WindowData" top: "data" top: "label"\n'
                '  transform_param { crop_size: 8 mirror: true }\n'
                f'  window_data_param {{ source: "{tmp_path / "windows.txt"}" batch_size: {b} '
                f'fg_fraction: 0.3 context_pad: 1 root_folder: "{tmp_path}/imgs/" }} }}\n')
    # global batch 10: 3 foreground windows, which rank 0's 5 (all background) never hold
    assert_shards_make_the_whole(tmp_path, layers, batch=5, steps=3)


def test_a_rank_beyond_the_count_is_an_error(tmp_path):
    source, _, _ = digits_lmdb(tmp_path)
    with solvers(2, 2), pytest.raises(ProtonetError, match="rank 2 is not below the solver count 2"):
        build(tmp_path, data_layer(source), "x.prototxt")


# -- the solver ------------------------------------------------------------------------------------
TINY = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def tiny_solver(tmp_path, extra=""):
    from protonet.solvers import get_solver
    (tmp_path / "net.prototxt").write_text(TINY)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "fixed" max_iter: 4 '
        f'test_iter: 1 test_interval: 2 random_seed: 1 snapshot_prefix: "{tmp_path}/s" {extra}')
    return get_solver(str(tmp_path / "solver.prototxt"))


def test_add_callback_calls_on_start_and_on_gradients_ready(tmp_path):
    solver = tiny_solver(tmp_path)
    calls = []

    class Recorder:
        def on_start(self):
            calls.append(("start", solver.iter))

        def on_gradients_ready(self):
            # the gradients are complete, the update not yet applied
            calls.append(("ready", solver.iter, float(np.abs(solver.net.params["ip"][0].diff)
                                                      .sum()) > 0))

    solver.add_callback(lambda: calls.append("fn-start"), lambda: calls.append("fn-ready"))
    solver.add_callback(Recorder())
    solver.step(2)
    assert calls == ["fn-start", ("start", 0), "fn-ready", ("ready", 0, True),
                     "fn-start", ("start", 1), "fn-ready", ("ready", 1, True)]
    with pytest.raises(ProtonetError, match="on_start"):
        solver.add_callback(object())


def test_only_the_root_solver_builds_test_nets(tmp_path):
    with solvers(2, 1):
        assert tiny_solver(tmp_path).test_nets == []
    with solvers(2, 0):
        assert len(tiny_solver(tmp_path).test_nets) == 1


def test_a_snapshot_of_two_ranks_is_refused_by_one_process(tmp_path):
    from protonet.solvers import snapshot as snap
    solver = tiny_solver(tmp_path, "snapshot: 2")
    solver.solve()
    state = f"{tmp_path}/s_iter_2.solverstate"
    sidecar = snap.read_sidecar(snap.sidecar_path(state))
    snap.write_sidecar(snap.sidecar_path(state), dict(sidecar, ranks=2,
                                                      rank_train_nets=[{}, {}]))
    with pytest.raises(ProtonetError, match=r"written by training on 2 ranks, but this run has "
                                            r"a single process.*--ranks 2"):
        tiny_solver(tmp_path).restore(state)
    with solvers(2, 1):
        resumed = tiny_solver(tmp_path)
        resumed.restore(state)  # rank 1 takes its own (here empty) data state
        assert resumed.iter == 2
    with solvers(3, 0), pytest.raises(ProtonetError, match="has 3 ranks"):
        tiny_solver(tmp_path).restore(state)


# -- the launcher's helpers --------------------------------------------------------------------------
def test_rank_arguments_pass_everything_but_ranks():
    import argparse

    from protonet.solvers.launch import rank_arguments
    args = argparse.Namespace(sigint_effect="stop", sighup_effect="snapshot", level=1,
                              stage=["a", "b"], weights="w.caffemodel", snapshot=None, gpu=None,
                              log="x.log", ranks=2)
    argv = rank_arguments(args, "s.prototxt", "log")
    assert argv[:2] == ["solve", "s.prototxt"] and "--ranks" not in argv
    assert argv[argv.index("--weights") + 1] == "w.caffemodel"
    assert argv.count("--stage") == 2 and "--snapshot" not in argv


def test_newest_snapshot_and_the_dead_rank(tmp_path):
    from protonet.solvers.launch import _dead_rank, newest_snapshot
    for it in (5, 40, 100):
        (tmp_path / f"p_iter_{it}.solverstate").write_bytes(b"")
    (tmp_path / "p_iter_100.solverstate.protonet.json").write_bytes(b"")
    assert newest_snapshot(str(tmp_path / "p")) == (100, str(tmp_path / "p_iter_100.solverstate"))
    assert newest_snapshot(str(tmp_path / "none")) is None
    (tmp_path / "rank-1.json").write_text(json.dumps({"rank": 1, "pid": 4242, "host": "h"}))
    banner = [b"=" * 40, b"=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES",
              b"=   PID 4242 RUNNING AT h", b"=   EXIT CODE: 9", b"=" * 40,
              b"YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)"]
    assert _dead_rank(banner, str(tmp_path)) == \
        "rank 1 (pid 4242 on h) was killed by signal 9 (Killed)"
    assert _dead_rank([b"nothing"], str(tmp_path)) is None
    # the first rank seen to die wins over a banner naming one mpiexec stopped afterwards
    first = {"rank": 0, "pid": 4241, "host": "h"}
    assert _dead_rank(banner, str(tmp_path), dict(first, status=9)) == \
        "rank 0 (pid 4241 on h) was killed by signal 9 (Killed)"
    assert _dead_rank(banner, str(tmp_path), dict(first, status=3 << 8)) == \
        "rank 0 (pid 4241 on h) exited with status 3"
    assert _dead_rank(banner, str(tmp_path), dict(first, status=None)) == \
        "rank 0 (pid 4241 on h) died first"
    assert _dead_rank(banner, str(tmp_path), dict(first, status=0)).startswith("rank 1 (pid 4242")


def test_the_launcher_sees_which_rank_died_first(tmp_path):
    import subprocess
    import sys
    import time

    from protonet.solvers.launch import _FirstDeath
    watch = _FirstDeath(str(tmp_path), 2)
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(2)]
    try:
        for rank, proc in enumerate(procs):
            (tmp_path / f"rank-{rank}.json").write_text(
                json.dumps({"rank": rank, "pid": proc.pid, "host": "h"}))
        time.sleep(0.3)  # the watcher has both pids
        procs[1].kill()
        deadline = time.monotonic() + 10
        while watch.first is None and time.monotonic() < deadline:
            time.sleep(0.01)
        procs[0].kill()  # as mpiexec stops the others
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert watch.stop() == {"rank": 1, "pid": procs[1].pid, "host": "h", "status": 9}
    assert _FirstDeath(str(tmp_path / "none"), 2).stop() is None  # stops before any note


def test_the_output_filter_holds_back_the_banner_and_the_errors():
    import io

    from protonet.solvers.launch import _Output, merge_errors
    read, write = os.pipe()
    sink = io.BytesIO()
    out = _Output(os.fdopen(read, "rb"), sink)
    os.write(write, b"I0101 log line\n\nprotonet: error: rank 1: boom\nprotonet: error: rank 0: "
                    b"boom\n\n" + b"=" * 20 + b"\n=   PID 7 RUNNING AT h\n" + b"=" * 20 +
             b"\nYOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n"
             b"Abort(1) on node 1 (rank 1 in comm 0): application called MPI_Abort\n")
    os.close(write)
    out.join()
    assert sink.getvalue() == b"I0101 log line\n"
    assert len(out.banner) >= 4 and merge_errors(out.errors) == ["protonet: error: ranks 1, 0: boom"]
    assert merge_errors(["protonet: error: plain"]) == ["protonet: error: plain"]


def test_ranks_must_be_positive_and_mpi_must_be_there(tmp_path, monkeypatch, capsys):
    from protonet.cli import main
    solver = tiny_solver(tmp_path)
    del solver
    assert main(["solve", str(tmp_path / "solver.prototxt"), "--ranks", "0"]) == 1
    assert "--ranks must be at least 1" in capsys.readouterr().err
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mpi4py" else real(name, *a))
    assert main(["solve", str(tmp_path / "solver.prototxt"), "--ranks", "2"]) == 1
    assert "--ranks needs mpi4py: pip install 'protonet[mpi]'" in capsys.readouterr().err
