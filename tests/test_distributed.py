"""Training one model on several MPI processes, end to end (mpi4py and an mpiexec needed; the
tests skip without them). Every process gets a timeout.

The acceptance check: LeNet on (a slice of) the Fashion-MNIST LMDB, 2 ranks of batch 32 against
1 process of batch 64 from the same weights: the same logged losses for 10 iterations and the
same weights after them, launched by `protonet solve --ranks 2` and by `mpiexec -n 2` alike;
a killed rank stops the run within seconds, naming it, and leaves the last snapshot whole;
Ctrl-C snapshots once and stops every rank; caffe.NCCL runs pycaffe's train.py pattern."""
import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")

if importlib.util.find_spec("mpi4py") is None:
    pytest.skip("mpi4py is not installed (pip install 'protonet[mpi]')", allow_module_level=True)
from protonet.errors import ProtonetError  # noqa: E402
from protonet.solvers.launch import find_mpiexec  # noqa: E402

try:
    MPIEXEC = find_mpiexec()
except ProtonetError:
    pytest.skip("no mpiexec (pip install mpich)", allow_module_level=True)

ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
for name in ("PROTONET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS"):
    ENV.pop(name, None)  # the ranks split the cores themselves
PROTONET = [sys.executable, "-m", "protonet"]


def run(args, cwd, timeout=120, **kwargs):
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def losses(log_text):
    """{iteration: loss} of the `Iteration N (... iter/s ...), loss = X` lines."""
    return {int(m.group(1)): float(m.group(2)) for m in
            re.finditer(r"\] Iteration (\d+) \([^)]*\), loss = (\S+)", log_text)}


def weights(net_file, model):
    """The learnable blobs of ``model``, loaded into ``net_file`` (TEST; run from its folder,
    where the data sources are)."""
    import protonet
    here = os.getcwd()
    os.chdir(pathlib.Path(net_file).parent)
    try:
        net = protonet.Net(str(net_file), protonet.TEST, weights=str(model))
        out = [np.array(b.data) for b in net.learnable_params]
        for layer in net.layers:
            getattr(layer, "close", lambda: None)()
        return out
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """models/lenet with the train batch at 32 and 64, LMDBs of Fashion-MNIST's first 2048
    training and 200 test images (random digits when Debian's dataset is missing), solvers
    with display 1, snapshots every 5 iterations, and the 1-process batch-64 reference run."""
    from protonet.data.mnist import write_mnist_lmdb
    from protonet.io import read_net, read_solver, write_text_file
    root = tmp_path_factory.mktemp("lenet")
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        from protonet.data.idx import read_mnist_pair
        splits = [read_mnist_pair(str(FASHION / f"{p}-images-idx3-ubyte.gz"),
                                  str(FASHION / f"{p}-labels-idx1-ubyte.gz"))
                  for p in ("train", "t10k")]
    else:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 10, 2048).astype(np.uint8)
        images = ((rng.random((2048, 28, 28)) < 0.1 + 0.05 * labels[:, None, None]) * 255)
        splits = [(images.astype(np.uint8), labels)] * 2
    for (images, labels), name, n in zip(splits, ("mnist_train_lmdb", "mnist_test_lmdb"),
                                         (2048, 200)):
        write_mnist_lmdb(images[:n], labels[:n], str(root / "data" / "mnist" / name))
    for batch in (32, 64):
        net = read_net(str(REPO / "models/lenet/lenet_train_test.prototxt"))
        net.layer[0].data_param.batch_size = batch
        write_text_file(net, str(root / f"net{batch}.prototxt"))
        solver = read_solver(str(REPO / "models/lenet/lenet_solver.prototxt"))
        solver.net = f"net{batch}.prototxt"
        solver.max_iter, solver.display, solver.snapshot, solver.random_seed = 10, 1, 5, 3
        solver.test_iter[0], solver.test_interval = 2, 5
        solver.snapshot_prefix = f"snaps/b{batch}"
        write_text_file(solver, str(root / f"solver{batch}.prototxt"))
    (root / "snaps").mkdir()
    started = time.monotonic()
    one = run(PROTONET + ["solve", "solver64.prototxt", "--progress", "log"], root)
    assert one.returncode == 0, one.stderr[-3000:]
    print(f"1 process, batch 64: {time.monotonic() - started:.1f} s")
    return root, losses(one.stderr)


def assert_same_training(root, log_text, reference, model):
    got = losses(log_text)
    assert sorted(got) == list(range(10)) == sorted(reference)
    for it in range(10):
        assert got[it] == pytest.approx(reference[it], rel=5e-5), it
    for a, b in zip(weights(root / "net32.prototxt", model),
                    weights(root / "net64.prototxt", root / "snaps/b64_iter_10.caffemodel")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("launch", ["--ranks", "mpiexec"])
def test_two_ranks_of_32_train_as_one_process_of_64(lenet, launch):
    root, reference = lenet
    prefix = "r" if launch == "--ranks" else "m"
    args = ["solve", "solver32.prototxt", "--progress", "log"]
    (root / f"solver32{prefix}.prototxt").write_text(
        (root / "solver32.prototxt").read_text().replace('"snaps/b32"', f'"snaps/{prefix}32"'))
    args[1] = f"solver32{prefix}.prototxt"
    command = PROTONET + args + ["--ranks", "2"] if launch == "--ranks" else \
        [MPIEXEC, "-n", "2"] + PROTONET + args
    started = time.monotonic()
    two = run(command, root)
    print(f"2 ranks ({launch}): {time.monotonic() - started:.1f} s")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Training on 2 ranks (MPI" in two.stderr and "global batch 64 = 2 x 32" in two.stderr
    assert two.stderr.count("] Iteration 3 (") == 1  # rank 0 alone logs
    assert two.stderr.count("Testing net (#0)") == 3  # and tests: iterations 0, 5, 10
    assert_same_training(root, two.stderr, reference, root / f"snaps/{prefix}32_iter_10.caffemodel")
    assert sorted(p.name for p in (root / "snaps").glob(f"{prefix}32_*")) == [
        f"{prefix}32_iter_{i}.{ext}" for i in (10, 5)
        for ext in ("caffemodel", "solverstate", "solverstate.protonet.json")]


def test_two_ranks_resume_exactly_and_refuse_another_count(lenet):
    import json
    root, _ = lenet
    whole = root / "snaps/r32_iter_10.caffemodel"
    if not whole.exists():
        test_two_ranks_of_32_train_as_one_process_of_64(lenet, "--ranks")
    state = "snaps/r32_iter_5.solverstate"
    side = json.loads((root / (state + ".protonet.json")).read_text())
    assert side["ranks"] == 2 and len(side["rank_train_nets"]) == 2
    (root / "resume.prototxt").write_text(
        (root / "solver32.prototxt").read_text().replace('"snaps/b32"', '"snaps/resumed"'))
    resumed = run(PROTONET + ["solve", "resume.prototxt", "--ranks", "2", "--snapshot", state],
                  root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (root / "snaps/resumed_iter_10.caffemodel").read_bytes() == whole.read_bytes()
    for ranks in (["--ranks", "3"], []):  # refused before anything starts
        refused = run(PROTONET + ["solve", "resume.prototxt", "--snapshot", state] + ranks, root)
        assert refused.returncode == 1
        assert "written by training on 2 ranks" in refused.stderr
        assert "Resume it with --ranks 2 (or mpiexec -n 2)" in refused.stderr


def start_long_run(root, prefix, snapshot=20):
    """`protonet solve --ranks 2` for 100000 iterations, snapshots every ``snapshot`` (0:
    none); returns the process, the two rank pids and the log once iteration 20 is done (and
    its snapshot written)."""
    text = (root / "solver32.prototxt").read_text().replace('"snaps/b32"', f'"snaps/{prefix}"')
    text = re.sub(r"max_iter: \d+", "max_iter: 100000", text)
    text = re.sub(r"snapshot: \d+", f"snapshot: {snapshot}", text)
    text = re.sub(r"display: \d+", "display: 10", text)
    (root / f"{prefix}.prototxt").write_text(text)
    log = root / f"{prefix}.log"
    proc = subprocess.Popen(PROTONET + ["solve", f"{prefix}.prototxt", "--ranks", "2",
                                        "--progress", "log", "--log", str(log)],
                            cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 90
    while not (root / f"snaps/{prefix}_iter_20.solverstate").exists() if snapshot else \
            not (log.exists() and "] Iteration 20 (" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run did not reach iteration 20: " + proc.communicate()[1])
        time.sleep(0.1)
    pids = [int(p) for p in re.findall(r"rank \d pid (\d+)@", log.read_text())]
    assert len(pids) == 2
    return proc, pids, log


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split(") ")[1][0] != "Z"


def test_a_killed_rank_stops_the_run_naming_it(lenet):
    from protonet.solvers import snapshot as snap
    root, _ = lenet
    proc, pids, _ = start_long_run(root, "killed")
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - killed < 10
    assert proc.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("protonet: error:")]
    assert len(lines) == 1, err[-2000:]
    assert f"rank 1 (pid {pids[1]} on " in lines[0] and "killed by signal 9" in lines[0]
    assert "BAD TERMINATION" not in err
    m = re.search(r"the newest snapshot, (\S+) \(iteration (\d+)\), is whole", lines[0])
    assert m and int(m.group(2)) % 20 == 0
    assert not alive(pids[0])
    state = snap.read_solverstate(str(root / m.group(1)))
    assert state.iter == int(m.group(2))
    weights(root / "net32.prototxt", root / state.learned_net)  # loads


def test_sighup_snapshots_and_ctrl_c_snapshots_once_and_stops_every_rank(lenet):
    root, _ = lenet
    proc, pids, log = start_long_run(root, "interrupted", snapshot=0)
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not list((root / "snaps").glob("interrupted_iter_*.solverstate")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    text = log.read_text()
    states = [int(i) for i in re.findall(r"Snapshotting solver state to binary proto file "
                                         r"snaps/interrupted_iter_(\d+)\.solverstate", text)]
    assert len(states) == 2 and 20 <= states[0] < states[1]  # SIGHUP's, then the stop's
    assert sorted(p.name for p in (root / "snaps").glob("interrupted_iter_*.caffemodel")) == \
        sorted(f"interrupted_iter_{i}.caffemodel" for i in states)
    assert "Optimization stopped early." in text
    assert not any(alive(p) for p in pids)


NCCL_SCRIPT = '''
import sys
import numpy as np
import caffe
from protonet import parallel


def solve(proto, snapshot, gpus, timing, uid, rank):  # Caffe's python/train.py, unchanged
    caffe.set_mode_gpu()
    caffe.set_device(gpus[rank])
    caffe.set_solver_count(len(gpus))
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)

    solver = caffe.SGDSolver(proto)
    if snapshot and len(snapshot) != 0:
        solver.restore(snapshot)

    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()

    if timing and rank == 0:
        time(solver, nccl)
    else:
        solver.add_callback(nccl)

    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    solver.step(solver.param.max_iter)
    return solver


rank, count = caffe.NCCL.world_rank(), caffe.NCCL.world_size()
solver = solve(sys.argv[1], None, list(range(count)), False, caffe.NCCL.new_uid(), rank)
print(f"rank {rank}: threads {parallel.num_threads()} test nets {len(solver.test_nets)}",
      flush=True)
if rank == 0:
    np.savez("nccl.npz", *[b.data for b in solver.net.learnable_params])
if rank == 1:  # weights that leave the others: the next check stops every rank
    solver.net.learnable_params[0].data[0, 0, 0, 0] += 1
solver.parallel.check_every = 1
try:
    solver.step(1)
except caffe.ProtonetError as e:
    print(f"rank {rank}: stopped: {e}", flush=True)
'''


def test_pycaffe_nccl_runs_caffes_train_py_pattern(lenet):
    root, reference = lenet
    (root / "train_nccl.py").write_text(NCCL_SCRIPT)
    (root / "nccl.prototxt").write_text(
        (root / "solver32.prototxt").read_text().replace('"snaps/b32"', '"snaps/nccl"'))
    result = run([MPIEXEC, "-n", "2", sys.executable, "-W", "ignore", "-m", "protonet.caffe",
                  "train_nccl.py", "nccl.prototxt"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    cpus = len(os.sched_getaffinity(0))
    threads = max(1, min(8, cpus // 2))
    assert f"rank 0: threads {threads} test nets 1" in result.stdout
    assert f"rank 1: threads {threads} test nets 0" in result.stdout
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: stopped: iteration 10: the weights of rank\(s\) \[1\] "
                         r"differ from rank 0's", result.stdout), result.stdout
    saved = np.load(root / "nccl.npz", allow_pickle=False)
    expected = weights(root / "net64.prototxt", root / "snaps/b64_iter_10.caffemodel")
    for i, b in enumerate(expected):
        np.testing.assert_allclose(saved[f"arr_{i}"], b, rtol=0, atol=1e-4)
    assert (root / "snaps/nccl_iter_10.caffemodel").exists()


def test_an_uncaught_exception_on_one_rank_aborts_a_pycaffe_job(lenet):
    root, _ = lenet
    (root / "raising.py").write_text(
        "import caffe\n"
        "rank = caffe.NCCL.world_rank()\n"
        "caffe.set_solver_count(2)\ncaffe.set_solver_rank(rank)\n"
        "solver = caffe.SGDSolver('solver32.prototxt')\n"
        "nccl = caffe.NCCL(solver, caffe.NCCL.new_uid())\nnccl.bcast()\n"
        "solver.add_callback(nccl)\n"
        "if rank == 1:\n    raise RuntimeError('rank 1 gives up')\n"
        "solver.step(5)\n")
    started = time.monotonic()
    result = run([MPIEXEC, "-n", "2", sys.executable, "-W", "ignore", "-m", "protonet.caffe",
                  "raising.py"], root, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode != 0 and "RuntimeError: rank 1 gives up" in result.stderr


def test_errors_are_reported_once(lenet):
    """A setup error every rank meets: one line. A rank failing alone mid-run (a non-finite
    loss from its share of the data): its error, and the job stops."""
    from protonet.data.lmdb_source import LMDBWriter, array_to_datum
    root, _ = lenet
    missing = run(PROTONET + ["solve", "solver32.prototxt", "--ranks", "2", "--weights",
                              "missing.caffemodel"], root)
    assert missing.returncode == 1
    errors = [x for x in missing.stderr.splitlines() if x.startswith("protonet: error:")]
    assert errors == ["protonet: error: weights file 'missing.caffemodel' not found (looked in "
                      "the working directory and in '.', the solver file's directory)"]
    bad = np.zeros((64, 1, 28, 28), np.float32)
    bad[32:] = np.inf  # the share of rank 1 in the first global batch
    with LMDBWriter(str(root / "data/inf_lmdb")) as db:
        for i, image in enumerate(bad):
            db.put(b"%08d" % i, array_to_datum(image, 0).SerializeToString())
    (root / "netinf.prototxt").write_text((root / "net32.prototxt").read_text().replace(
        "data/mnist/mnist_train_lmdb", "data/inf_lmdb"))
    (root / "inf.prototxt").write_text((root / "solver32.prototxt").read_text().replace(
        "net32.prototxt", "netinf.prototxt").replace('"snaps/b32"', '"snaps/inf"'))
    started = time.monotonic()
    nan = run(PROTONET + ["solve", "inf.prototxt", "--ranks", "2"], root)
    assert time.monotonic() - started < 30
    assert nan.returncode == 1
    errors = [x for x in nan.stderr.splitlines() if x.startswith("protonet: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "protonet: error: rank 1: iteration 0: the loss is nan"), nan.stderr[-2000:]
    assert "MPI_Abort" not in nan.stderr


def test_batchnorm_statistics_stay_identical_on_every_rank(lenet):
    """BatchNorm's running statistics come from each rank's own batch in forward; averaged in
    the allreduce, they pass the weight comparison made here after every iteration."""
    root, _ = lenet
    text = (root / "net32.prototxt").read_text()
    layers = text.split("layer {")
    conv1 = next(i for i, part in enumerate(layers) if 'name: "conv1"' in part)
    layers.insert(conv1 + 1, ' name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n')
    (root / "netbn.prototxt").write_text("layer {".join(layers))
    (root / "bn.prototxt").write_text((root / "solver32.prototxt").read_text().replace(
        "net32.prototxt", "netbn.prototxt").replace('"snaps/b32"', '"snaps/bn"'))
    result = subprocess.run(PROTONET + ["solve", "bn.prototxt", "--ranks", "2"], cwd=root,
                            env=dict(ENV, PROTONET_MPI_CHECK_EVERY="1"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "snaps/bn_iter_10.caffemodel").exists()
