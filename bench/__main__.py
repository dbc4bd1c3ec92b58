"""python -m bench [--nets lenet] [--threads 1 2] [--iterations 30] [--rounds 3] [--batch N]

Times protonet and PyTorch CPU on the same nets, alternating rounds, each in its
own process with the thread count fixed through the environment (so protonet's
process never imports torch), and prints min-of-runs times and the ratio
protonet / PyTorch. Both sides do forward, backward and a plain SGD update.
"""
import argparse
import json
import os
import subprocess
import sys

from bench.nets import LENET_MACC, NETS

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run(script, args, threads):
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
    out = subprocess.run([sys.executable, "-m", f"bench.{script}", *map(str, args)], env=env,
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=None, help="override each net's batch size")
    p.add_argument("--no-torch", action="store_true", help="time protonet only")
    args = p.parse_args(argv)
    rows = []
    for name in args.nets:
        batch = args.batch or NETS[name][1]
        for threads in args.threads:
            ours, theirs, peak = [], [], 0.0
            for _ in range(args.rounds):  # alternate so drift hits both sides alike
                r = run("run_protonet", [name, batch, args.iterations], threads)
                ours.append(min(r["times"]))
                peak = max(peak, r["gemm_gflops"])
                if not args.no_torch:
                    theirs.append(min(run("run_torch", [name, batch, args.iterations, threads],
                                          threads)["times"]))
            ms = min(ours) * 1000
            flops = 3 * 2 * LENET_MACC * batch if name == "lenet" else 0
            row = {"net": name, "batch": batch, "threads": threads, "protonet_ms": ms,
                   "protonet_spread_ms": (max(ours) - min(ours)) * 1000,
                   "gflops": flops / min(ours) / 1e9, "gemm_peak_gflops": peak}
            if theirs:
                row["torch_ms"] = min(theirs) * 1000
                row["ratio"] = ms / row["torch_ms"]
            rows.append(row)
    print(f"{'net':8} {'batch':>5} {'thr':>3} {'protonet':>10} {'pytorch':>10} {'ratio':>6} "
          f"{'GFLOP/s':>8} {'GEMM peak':>9}")
    for r in rows:
        torch_ms = f"{r['torch_ms']:8.2f}ms" if "torch_ms" in r else "         -"
        ratio = f"{r['ratio']:6.2f}" if "ratio" in r else "     -"
        print(f"{r['net']:8} {r['batch']:5d} {r['threads']:3d} {r['protonet_ms']:8.2f}ms "
              f"{torch_ms} {ratio} {r['gflops']:8.1f} {r['gemm_peak_gflops']:9.1f}")
    return rows


if __name__ == "__main__":
    main()
