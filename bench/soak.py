"""Soak: train LeNet (DummyData inputs) for many iterations; resident memory and rate over time.

    python -m bench.soak [--iterations 20000] [--every 1000] [--net models/lenet/lenet_train_test.prototxt]

Prints one line per window: iteration, resident memory (MiB, from /proc/self/statm) and
iterations per second in that window; then the growth of resident memory after warm-up (the
first window) and the spread of the rate. Issue 10 asks for flat memory (growth <= 5%) and a
steady rate.
"""
import argparse
import os
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.soak")
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--net", help="train this net definition (e.g. models/lenet/lenet_train_test"
                   ".prototxt, reading its LMDBs) instead of LeNet on DummyData")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import protonet
    from protonet.io import parse_net
    from protonet.proto import caffe_pb2

    from bench.nets import LENET
    solver_param = caffe_pb2.SolverParameter(
        base_lr=0.01, momentum=0.9, weight_decay=0.0005, lr_policy="inv", gamma=0.0001,
        power=0.75, max_iter=args.iterations, display=0, snapshot=0,
        snapshot_after_train=False, solver_mode=caffe_pb2.SolverParameter.CPU, random_seed=1)
    if args.net:
        solver_param.net = args.net
    else:
        solver_param.net_param.CopyFrom(parse_net(LENET % {"batch": 64}))
    solver = protonet.get_solver(solver_param)
    rows = []
    last = time.perf_counter()
    while solver.iter < args.iterations:
        solver.step(min(args.every, args.iterations - solver.iter))
        now = time.perf_counter()
        rows.append((solver.iter, rss_mib(), args.every / (now - last)))
        last = now
        print(f"iteration {rows[-1][0]:6d}  rss {rows[-1][1]:7.1f} MiB  "
              f"{rows[-1][2]:6.1f} iter/s", flush=True)
    warm = rows[0][1]
    peak = max(r[1] for r in rows)
    rates = [r[2] for r in rows[1:]] or [rows[0][2]]
    result = {"iterations": args.iterations, "rss_after_warmup_mib": warm, "rss_peak_mib": peak,
              "rss_growth_pct": 100 * (peak - warm) / warm,
              "rate_min": min(rates), "rate_max": max(rates)}
    print(f"resident memory: {warm:.1f} MiB after warm-up, peak {peak:.1f} MiB "
          f"({result['rss_growth_pct']:+.1f}%); rate {min(rates):.1f}-{max(rates):.1f} iter/s")
    return result


if __name__ == "__main__":
    main()
