"""python -m bench.gemm_floor [--nets lenet cifar10_quick | zoo | googlenet ...] [--threads 1 2]
[--batch N ...] [--iterations 20] [--layers]

The GEMM floor of a net's step: how long numpy's BLAS takes for just the matrix products
that im2col + GEMM needs (per convolution and group: the forward product and, for a
training net, the weight gradient and, where the bottom needs one, the data gradient;
likewise per inner product), each timed alone in its faster orientation (``A @ B`` or
``B^T @ A^T``) on contiguous operands, with nothing else around it. No numpy
implementation of the step can run faster than this with that BLAS. The rows print it next
to protonet's whole step and the reference engine's -- PyTorch for the training nets (its
oneDNN convolutions do not go through a GEMM), OpenCV dnn for the zoo deploy nets (forward
only; their depthwise convolutions are no GEMM and are counted apart) -- each in its own
process with the thread count fixed, as ``python -m bench`` times them.
"""
import argparse
import json
import tempfile
import time

from bench import zoo
from bench.nets import NETS


def _best(f, repeats: int = 5) -> float:
    f()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_seconds(m: int, k: int, n: int) -> float:
    """Seconds for ``(m, k) @ (k, n)`` in float32, the faster of it and its transpose."""
    import numpy as np
    rng = np.random.default_rng(0)
    times = []
    for rows, inner, cols in ((m, k, n), (n, k, m)):
        a = rng.random((rows, inner), np.float32)
        b = rng.random((inner, cols), np.float32)
        out = np.empty((rows, cols), np.float32)
        times.append(_best(lambda: np.matmul(a, b, out=out)))
    return min(times)


def step_gemms(name: str, batch: int) -> list[dict]:
    """Per convolution or inner product of net ``name``: its products ``(m, k, n)`` with how
    many of each (the groups), and the seconds they take. A training net (TRAIN) has the
    forward product, the weight gradient and, where the bottom needs it, the data gradient;
    a zoo deploy net (TEST) the forward product only. A depthwise convolution is no GEMM:
    its row has no products, only ``depthwise_macc``."""
    import protonet
    from protonet.io import parse_net
    if name in zoo.ZOO:
        net = protonet.Net(zoo.net_param(name, batch), protonet.TEST, init_weights=False)
        training = False
    else:
        net = protonet.Net(parse_net(NETS[name][0] % {"batch": batch}), protonet.TRAIN,
                           init_weights=False)
        training = True
    rows = []
    for i, layer in enumerate(net.layers):
        down = training and bool(net.bottom_need_backward[i]) and net.bottom_need_backward[i][0]
        if layer.type == "Convolution":
            g = layer.group
            m, k = layer.num_output // g, layer.channels // g * layer.kernel[0] * layer.kernel[1]
            n = layer.num * layer.out_hw[0] * layer.out_hw[1]
            if g > 1 and g == layer.channels == layer.num_output:
                rows.append({"layer": net.layer_names[i], "products": [], "groups": g,
                             "seconds": {}, "total_s": 0.0, "depthwise_macc": g * k * n})
                continue
            products = [("forward", m, k, n)]
            products += [("weights", m, n, k)] if training else []
            products += [("data", k, m, n)] if down else []
        elif layer.type == "InnerProduct":
            g, (m, k, n) = 1, (layer.M, layer.K, layer.num_output)
            products = [("forward", m, k, n)]
            products += [("weights", n, m, k)] if training else []
            products += [("data", m, n, k)] if down else []
        else:
            continue
        seconds = {what: g * gemm_seconds(a, b, c) for what, a, b, c in products}
        rows.append({"layer": net.layer_names[i], "products": products, "groups": g,
                     "seconds": seconds, "total_s": sum(seconds.values())})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.gemm_floor",
                                description=__doc__.split("\n\n")[1])
    training = [n for n, (_, _, forward_only) in NETS.items() if not forward_only]
    p.add_argument("--nets", nargs="+", default=training,
                   choices=training + list(zoo.ZOO) + ["zoo"],
                   help="training nets (against PyTorch) or zoo deploy nets (forward only, "
                        "against OpenCV dnn); 'zoo' stands for every zoo net")
    p.add_argument("--threads", nargs="+", type=int, default=None,
                   help="thread counts (default: 1 2; zoo nets: 2)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="override each net's batch size (zoo nets: 1 8)")
    p.add_argument("--iterations", type=int, default=20,
                   help="timed steps of protonet and the reference (the min is printed)")
    p.add_argument("--layers", action="store_true", help="also print each layer's products")
    p.add_argument("--worker", nargs=2, metavar=("NET", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(step_gemms(args.worker[0], int(args.worker[1]))))
        return None
    from bench.__main__ import default_batches, default_threads, expand_nets, machine, run
    names = expand_nets(args.nets)
    print(machine(), flush=True)
    print(f"{'net':14} {'batch':>5} {'thr':>3} {'protonet':>11} {'reference':>19} "
          f"{'GEMM floor':>11} {'floor/reference':>15}")
    results = []
    with tempfile.TemporaryDirectory(prefix="protonet-floor-") as folder:
        for name in names:
            batches = args.batch or default_batches(name)
            if name in zoo.ZOO:
                zoo.prepare(name, batches, folder)
            for batch in batches:
                for threads in args.threads or default_threads(name):
                    results.append(_row(name, batch, threads, args, folder, run))
    return results


def _row(name, batch, threads, args, folder, run) -> dict:
    in_zoo = name in zoo.ZOO
    floor = run("gemm_floor", ["--worker", name, batch], threads)
    if in_zoo:
        ours = run("run_protonet", [name, batch, args.iterations, "random", folder], threads)
        ref = run("run_opencv", [name, batch, args.iterations, threads, "random", folder],
                  threads)
        engine = "OpenCV"
    else:
        ours = run("run_protonet", [name, batch, args.iterations], threads)
        ref = run("run_torch", [name, batch, args.iterations, threads], threads)
        engine = "PyTorch"
    ours, ref = min(ours["times"]), min(ref["times"])
    total = sum(r["total_s"] for r in floor)
    depthwise = sum(r.get("depthwise_macc", 0) for r in floor)
    print(f"{name:14} {batch:5d} {threads:3d} {ours * 1e3:8.2f} ms {engine:>7} {ref * 1e3:8.2f} ms "
          f"{total * 1e3:8.2f} ms {total / ref:15.2f}"
          + (f"  (+ depthwise {depthwise / 1e6:.0f} M multiply-adds, not GEMMs)"
             if depthwise else ""), flush=True)
    if args.layers:
        for r in floor:
            parts = ", ".join(f"{what} {a}x{b}x{c} {r['seconds'][what] * 1e3:.2f} ms"
                              for what, a, b, c in r["products"]) or "depthwise, not a GEMM"
            print(f"    {r['layer']:10} x{r['groups']}: {parts}")
    return {"net": name, "batch": batch, "threads": threads, "protonet_ms": ours * 1e3,
            "reference": engine, "reference_ms": ref * 1e3, "gemm_floor_ms": total * 1e3,
            "depthwise_macc": depthwise, "layers": floor}


if __name__ == "__main__":
    main()
