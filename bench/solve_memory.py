"""Peak resident memory of a LeNet solve (``python -m bench --solve-memory [N]``).

Trains bench/nets.py's LeNet (DummyData, batch 64; no LMDB needed) for N iterations through
protonet's solver API (SGD, lr 0.01, momentum 0.9, inv policy, weight decay 5e-4) with a
LeNet test net at batch 100 tested every 500 iterations (100 test iterations each, as
Caffe's examples/mnist/lenet_solver.prototxt does), in a fresh process, and reports that
process's max RSS. Caffe's full LeNet solve peaks at 122 MiB.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CAFFE_MAX_RSS_MIB = 122

SOLVER = """net_param { %(train)s }
test_net_param { %(test)s }
test_iter: %(test_iter)d
test_interval: %(test_interval)d
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 0
max_iter: %(iterations)d
snapshot: 0
snapshot_after_train: false
solver_mode: CPU
random_seed: 1
"""


def child(iterations: int, test_iter: int = 100) -> None:
    sys.path.insert(0, ".")
    from protonet._malloc import tune_malloc
    tuned = tune_malloc()
    import protonet

    from bench.nets import LENET
    text = SOLVER % {"train": LENET % {"batch": 64}, "test": LENET % {"batch": 100},
                     "test_iter": test_iter, "test_interval": min(500, iterations),
                     "iterations": iterations}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "solver.prototxt")
        with open(path, "w") as f:
            f.write(text)
        t = time.perf_counter()
        protonet.get_solver(path).solve()
        wall = time.perf_counter() - t
    # ru_maxrss is in KiB on Linux
    print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "wall_s": wall, "iterations": iterations, "malloc_tuned": tuned}))


def measure(iterations: int, env=None, test_iter: int = 100) -> dict:
    """Run the solve in a fresh process (only this one: RUSAGE_CHILDREN of the bench process
    would also count the PyTorch runs) and return its max RSS in MiB and wall time."""
    out = subprocess.run([sys.executable, "-m", "bench.solve_memory", "--child", str(iterations),
                          str(test_iter)],
                         env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*map(int, sys.argv[2:4]))
    else:
        r = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
        print(f"LeNet solve, {r['iterations']} iterations: max RSS {r['max_rss_mib']:.0f} MiB "
              f"(Caffe: {CAFFE_MAX_RSS_MIB} MiB), {r['wall_s']:.1f} s")
