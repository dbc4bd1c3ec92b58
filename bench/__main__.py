"""python -m bench [--nets lenet cifar10_quick caffenet | zoo | resnet50 ...] [--threads 1 2]
[--iterations 30] [--rounds 3] [--batch N ...] [--input random|constant] [--no-torch]
[--against TREE] [--no-fuse] [--no-malloc-tuning] [--solve-memory [N]]

Times protonet and PyTorch CPU on the same nets, alternating rounds, each in its
own process with the thread count fixed through the environment (so protonet's
process never imports torch), and prints, per side, the min over rounds of each round's
min time and the spread (max - min of the per-round mins), the ratio protonet / PyTorch and
protonet's achieved GFLOP/s against a measured numpy GEMM peak. LeNet and CIFAR-10 quick do
forward, backward and a plain SGD update; CaffeNet (deploy) runs forward only. Both sides
get the same input batch: uniform random values by default, or all 0.5 with --input constant.
The zoo deploy nets (``--nets zoo``, or by name) run forward only against OpenCV dnn's Caffe
importer, both loading the same prototxt and random-weight caffemodel, at batch 1 and 8 and
2 threads unless --batch / --threads say otherwise. The CPU, the BLAS and its kernel and the
load average are printed first. --against TREE times another checkout's protonet in the same
rounds (an A/B of a change).
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile

from bench import zoo
from bench.nets import INPUTS, NETS, flops

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, args, threads, extra_env=None, cwd=ROOT):
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS}, **(extra_env or {}))
    out = subprocess.run([sys.executable, "-m", f"bench.{script}", *map(str, args)], env=env,
                         capture_output=True, text=True, cwd=cwd)
    if out.returncode:
        raise RuntimeError(f"bench.{script} {args} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """The CPU model, numpy's BLAS (config line and core kernel) and the load average."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import ctypes

    import numpy as np
    blas = "?"
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split(None, 5)[5].strip() for line in maps
                            if "openblas" in line.lower() and len(line.split(None, 5)) == 6})
        for path in paths:
            lib = ctypes.CDLL(path)
            for suffix in ("64_", ""):
                for prefix in ("scipy_openblas", "openblas"):
                    config = getattr(lib, f"{prefix}_get_config{suffix}", None)
                    core = getattr(lib, f"{prefix}_get_corename{suffix}", None)
                    if config is not None and core is not None:
                        config.restype = core.restype = ctypes.c_char_p
                        blas = f"{config().decode().strip()} (kernel {core().decode()})"
                        raise StopIteration
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"CPU: {cpu}, {os.cpu_count()} CPUs; numpy {np.__version__}, BLAS: {blas}; "
            f"compiled loops: {compiled_loops()}; load average {load}")


def compiled_loops() -> str:
    """What protonet's compiled loops run on: ``numba X`` or ``off`` (numpy only)."""
    from protonet.kernels import jit
    if not jit.enabled():
        return "off (numpy only)"
    import numba
    return f"numba {numba.__version__}"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--nets", nargs="+", default=list(NETS),
                   choices=list(NETS) + list(zoo.ZOO) + ["zoo"],
                   help="nets to time; 'zoo' stands for every zoo deploy net")
    p.add_argument("--threads", nargs="+", type=int, default=None,
                   help="thread counts (default: 1 2; zoo nets: 2)")
    p.add_argument("--iterations", type=int, default=30,
                   help="timed iterations per round (zoo nets: a third, at least 3)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="override each net's batch size (zoo nets: 1 8)")
    p.add_argument("--against", metavar="TREE",
                   help="also time the protonet of another checkout (with this bench/ copied "
                        "into it) in the same alternating rounds: an A/B of a change")
    p.add_argument("--no-fuse", action="store_true",
                   help="build protonet's nets with fuse=False (no BatchNorm/Scale folding)")
    p.add_argument("--input", choices=INPUTS, default="random",
                   help="the input batch: uniform [0, 1) values (default) or all 0.5")
    p.add_argument("--no-torch", action="store_true", help="time protonet only")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="run protonet with PROTONET_NO_MALLOC_TUNING=1 (glibc defaults)")
    p.add_argument("--solve-memory", type=int, nargs="?", const=1000, default=None, metavar="N",
                   help="also train LeNet N iterations (default 1000) through the solver and "
                        "report its max RSS against Caffe's 122 MiB")
    args = p.parse_args(argv)
    penv = {"PROTONET_NO_MALLOC_TUNING": "1"} if args.no_malloc_tuning else {}
    options = "fuse" if args.no_fuse else ""
    names = expand_nets(args.nets)
    print(machine(), flush=True)
    print(header(args), flush=True)  # each row as it is measured; the table again at the end
    rows = []
    with tempfile.TemporaryDirectory(prefix="protonet-bench-") as folder:
        for name in names:
            rows += _time_net(name, args, folder, penv, options)
    print(f"input: {args.input}; {machine().rsplit('; ', 1)[1]} at the end")
    print(header(args))
    for r in rows:
        print(format_row(r))
    zoo_ratios = [r["ratio"] for r in rows if r["net"] in zoo.ZOO and "ratio" in r]
    if len(zoo_ratios) > 1:
        print(f"zoo nets / OpenCV: geometric mean {math.prod(zoo_ratios) ** (1 / len(zoo_ratios)):.2f}"
              f", max {max(zoo_ratios):.2f} over {len(zoo_ratios)} rows")
    if args.solve_memory:
        from bench.solve_memory import CAFFE_MAX_RSS_MIB, measure
        m = measure(args.solve_memory, env=dict(os.environ, **penv))
        print(f"LeNet solve, {m['iterations']} iterations (+ test passes): max RSS "
              f"{m['max_rss_mib']:.0f} MiB, {m['max_rss_mib'] / CAFFE_MAX_RSS_MIB:.2f}x Caffe's "
              f"{CAFFE_MAX_RSS_MIB} MiB; {m['wall_s']:.1f} s wall")
        rows.append({"net": "lenet_solve_memory", **m})
    return rows


def expand_nets(nets) -> list[str]:
    """The net names asked for, 'zoo' standing for every zoo deploy net, each once."""
    return list(dict.fromkeys(n for name in nets for n in (zoo.ZOO if name == "zoo" else [name])))


def default_batches(name: str) -> list[int]:
    """Batch sizes a net is timed at unless --batch says otherwise (zoo nets: 1 and 8)."""
    return list(zoo.ZOO_BATCHES) if name in zoo.ZOO else [NETS[name][1]]


def default_threads(name: str) -> list[int]:
    """Thread counts a net is timed at unless --threads says otherwise (zoo nets: 2)."""
    return [2] if name in zoo.ZOO else [1, 2]


def header(args) -> str:
    return (f"{'net':14} {'step':>8} {'batch':>5} {'thr':>3} {'protonet (spread)':>20} "
            f"{'reference (spread)':>28} {'ratio':>6} {'GFLOP/s':>8} {'GEMM peak':>9}"
            + (f" {'against (spread)':>20} {'new/old':>7}" if args.against else ""))


def format_row(r: dict) -> str:
    ours = f"{r['protonet_ms']:.2f} ({r['protonet_spread_ms']:.2f}) ms"
    theirs = (f"{r['reference']} {r['reference_ms']:.2f} ({r['reference_spread_ms']:.2f}) ms"
              if "reference_ms" in r else "-")
    ratio = f"{r['ratio']:6.2f}" if "ratio" in r else "     -"
    step = "fwd" if r["forward_only"] else "fwd+bwd"
    against = (f" {r['against_ms']:.2f} ({r['against_spread_ms']:.2f}) ms".rjust(21)
               + f" {r['protonet_ms'] / r['against_ms']:7.2f}" if "against_ms" in r else "")
    return (f"{r['net']:14} {step:>8} {r['batch']:5d} {r['threads']:3d} {ours:>20} "
            f"{theirs:>28} {ratio} {r['gflops']:8.1f} {r['gemm_peak_gflops']:9.1f}" + against)


def _time_net(name, args, folder, penv, options) -> list[dict]:
    """Rows for one net: each batch size and thread count, protonet and its reference engine
    (PyTorch, or OpenCV dnn for a zoo net) in alternating rounds, each in its own process."""
    in_zoo = name in zoo.ZOO
    batches = args.batch or default_batches(name)
    threads_list = args.threads or default_threads(name)
    iterations = max(3, args.iterations // 3) if in_zoo else args.iterations
    if in_zoo:
        zoo.prepare(name, batches, folder)
    rows = []
    for batch in batches:
        step_flops = zoo.flops(name, batch) if in_zoo else flops(name, batch)
        for threads in threads_list:
            ours, theirs, old, peak = [], [], [], 0.0
            for _ in range(args.rounds):  # alternate so drift hits both sides alike
                r = run("run_protonet", [name, batch, iterations, args.input, folder, options],
                        threads, penv)
                ours.append(min(r["times"]))
                peak = max(peak, r["gemm_gflops"])
                if args.against:
                    old.append(min(run("run_protonet", [name, batch, iterations, args.input,
                                                        folder, options], threads, penv,
                                       cwd=args.against)["times"]))
                if args.no_torch:
                    continue
                if in_zoo:
                    ref = run("run_opencv", [name, batch, iterations, threads, args.input,
                                             folder], threads)
                else:
                    ref = run("run_torch", [name, batch, iterations, threads, args.input],
                              threads)
                theirs.append(min(ref["times"]))
            ms = min(ours) * 1000
            row = {"net": name, "batch": batch, "threads": threads, "input": args.input,
                   "forward_only": in_zoo or NETS[name][2], "protonet_ms": ms,
                   "protonet_spread_ms": (max(ours) - min(ours)) * 1000,
                   "gflops": step_flops / min(ours) / 1e9, "gemm_peak_gflops": peak,
                   "fuse": not args.no_fuse}
            if old:
                row["against_ms"] = min(old) * 1000
                row["against_spread_ms"] = (max(old) - min(old)) * 1000
            if theirs:
                engine = "opencv" if in_zoo else "torch"
                row["reference"] = "OpenCV" if in_zoo else "PyTorch"
                row["reference_ms"] = row[f"{engine}_ms"] = min(theirs) * 1000
                row["reference_spread_ms"] = row[f"{engine}_spread_ms"] = \
                    (max(theirs) - min(theirs)) * 1000
                row["ratio"] = ms / row["reference_ms"]
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
