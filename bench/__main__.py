"""python -m bench [--nets lenet cifar10_quick caffenet] [--threads 1 2] [--iterations 30]
[--rounds 3] [--batch N] [--input random|constant] [--no-torch] [--no-malloc-tuning]
[--solve-memory [N]]

Times protonet and PyTorch CPU on the same nets, alternating rounds, each in its
own process with the thread count fixed through the environment (so protonet's
process never imports torch), and prints, per side, the min over rounds of each round's
min time and the spread (max - min of the per-round mins), the ratio protonet / PyTorch and
protonet's achieved GFLOP/s against a measured numpy GEMM peak. LeNet and CIFAR-10 quick do
forward, backward and a plain SGD update; CaffeNet (deploy) runs forward only. Both sides
get the same input batch: uniform random values by default, or all 0.5 with --input constant.
"""
import argparse
import json
import os
import subprocess
import sys

from bench.nets import INPUTS, NETS, flops

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, args, threads, extra_env=None):
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS}, **(extra_env or {}))
    out = subprocess.run([sys.executable, "-m", f"bench.{script}", *map(str, args)], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"bench.{script} {args} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="override each net's batch size")
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
    rows = []
    for name in args.nets:
        batch = args.batch or NETS[name][1]
        step_flops = flops(name, batch)
        for threads in args.threads:
            ours, theirs, peak = [], [], 0.0
            for _ in range(args.rounds):  # alternate so drift hits both sides alike
                r = run("run_protonet", [name, batch, args.iterations, args.input], threads, penv)
                ours.append(min(r["times"]))
                peak = max(peak, r["gemm_gflops"])
                if not args.no_torch:
                    theirs.append(min(run("run_torch", [name, batch, args.iterations, threads,
                                                        args.input], threads)["times"]))
            ms = min(ours) * 1000
            row = {"net": name, "batch": batch, "threads": threads, "input": args.input,
                   "forward_only": NETS[name][2], "protonet_ms": ms,
                   "protonet_spread_ms": (max(ours) - min(ours)) * 1000,
                   "gflops": step_flops / min(ours) / 1e9, "gemm_peak_gflops": peak}
            if theirs:
                row["torch_ms"] = min(theirs) * 1000
                row["torch_spread_ms"] = (max(theirs) - min(theirs)) * 1000
                row["ratio"] = ms / row["torch_ms"]
            rows.append(row)
    print(f"input: {args.input}")
    print(f"{'net':14} {'step':>8} {'batch':>5} {'thr':>3} {'protonet (spread)':>20} "
          f"{'pytorch (spread)':>20} {'ratio':>6} {'GFLOP/s':>8} {'GEMM peak':>9}")
    for r in rows:
        ours = f"{r['protonet_ms']:.2f} ({r['protonet_spread_ms']:.2f}) ms"
        theirs = f"{r['torch_ms']:.2f} ({r['torch_spread_ms']:.2f}) ms" if "torch_ms" in r \
            else "-"
        ratio = f"{r['ratio']:6.2f}" if "ratio" in r else "     -"
        step = "fwd" if r["forward_only"] else "fwd+bwd"
        print(f"{r['net']:14} {step:>8} {r['batch']:5d} {r['threads']:3d} {ours:>20} "
              f"{theirs:>20} {ratio} {r['gflops']:8.1f} {r['gemm_peak_gflops']:9.1f}")
    if args.solve_memory:
        from bench.solve_memory import CAFFE_MAX_RSS_MIB, measure
        m = measure(args.solve_memory, env=dict(os.environ, **penv))
        print(f"LeNet solve, {m['iterations']} iterations (+ test passes): max RSS "
              f"{m['max_rss_mib']:.0f} MiB, {m['max_rss_mib'] / CAFFE_MAX_RSS_MIB:.2f}x Caffe's "
              f"{CAFFE_MAX_RSS_MIB} MiB; {m['wall_s']:.1f} s wall")
        rows.append({"net": "lenet_solve_memory", **m})
    return rows


if __name__ == "__main__":
    main()
