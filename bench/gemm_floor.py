"""python -m bench.gemm_floor [--nets lenet cifar10_quick] [--threads 1 2] [--batch N]
[--iterations 20] [--layers]

The GEMM floor of a training step: how long numpy's BLAS takes for just the matrix products
that im2col + GEMM needs for one forward and backward pass of the net (per convolution
and group: the forward product, the weight gradient and, where the bottom needs one, the
data gradient; likewise per inner product), each timed alone in its faster orientation
(``A @ B`` or ``B^T @ A^T``) on contiguous operands, with nothing else around it. No
numpy implementation of the step can run faster than this with that BLAS; the rows print
it next to protonet's and PyTorch's whole step (PyTorch's oneDNN convolutions do not go
through a GEMM), each in its own process with the thread count fixed, as ``python -m
bench`` times them.
"""
import argparse
import json
import time

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
    """Per convolution or inner product of net ``name`` (TRAIN): its products ``(m, k, n)``
    with how many of each (the groups), and the seconds they take."""
    import protonet
    from protonet.io import parse_net
    template = NETS[name][0]
    net = protonet.Net(parse_net(template % {"batch": batch}), protonet.TRAIN,
                       init_weights=False)
    rows = []
    for i, layer in enumerate(net.layers):
        down = net.bottom_need_backward[i][0] if net.bottom_need_backward[i] else False
        if layer.type == "Convolution":
            g = layer.group
            m, k = layer.num_output // g, layer.channels // g * layer.kernel[0] * layer.kernel[1]
            n = layer.num * layer.out_hw[0] * layer.out_hw[1]
            products = [("forward", m, k, n), ("weights", m, n, k)]
            products += [("data", k, m, n)] if down else []
        elif layer.type == "InnerProduct":
            g, (m, k, n) = 1, (layer.M, layer.K, layer.num_output)
            products = [("forward", m, k, n), ("weights", n, m, k)]
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
    p.add_argument("--nets", nargs="+", default=["lenet", "cifar10_quick"],
                   choices=[n for n, (_, _, forward_only) in NETS.items() if not forward_only])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=None, help="override each net's batch size")
    p.add_argument("--iterations", type=int, default=20,
                   help="timed steps of protonet and PyTorch (the min is printed)")
    p.add_argument("--layers", action="store_true", help="also print each layer's products")
    p.add_argument("--worker", nargs=2, metavar=("NET", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(step_gemms(args.worker[0], int(args.worker[1]))))
        return None
    from bench.__main__ import machine, run
    print(machine(), flush=True)
    print(f"{'net':14} {'batch':>5} {'thr':>3} {'protonet':>11} {'PyTorch':>11} "
          f"{'GEMM floor':>11} {'floor/PyTorch':>13}")
    results = []
    for name in args.nets:
        batch = args.batch or NETS[name][1]
        for threads in args.threads:
            floor = run("gemm_floor", ["--worker", name, batch], threads)
            ours = min(run("run_protonet", [name, batch, args.iterations], threads)["times"])
            torch = min(run("run_torch", [name, batch, args.iterations, threads], threads)["times"])
            total = sum(r["total_s"] for r in floor)
            print(f"{name:14} {batch:5d} {threads:3d} {ours * 1e3:8.2f} ms {torch * 1e3:8.2f} ms "
                  f"{total * 1e3:8.2f} ms {total / torch:13.2f}", flush=True)
            if args.layers:
                for r in floor:
                    parts = ", ".join(f"{what} {a}x{b}x{c} {r['seconds'][what] * 1e3:.2f} ms"
                                      for what, a, b, c in r["products"])
                    print(f"    {r['layer']:10} x{r['groups']}: {parts}")
            results.append({"net": name, "batch": batch, "threads": threads,
                            "protonet_ms": ours * 1e3, "torch_ms": torch * 1e3,
                            "gemm_floor_ms": total * 1e3, "layers": floor})
    return results


if __name__ == "__main__":
    main()
