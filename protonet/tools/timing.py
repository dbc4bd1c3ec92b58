"""``protonet time``: Caffe's layer-by-layer benchmark (tools/caffe.cpp ``time``)."""
from __future__ import annotations

import time

import numpy as np


def time_net(net, iterations: int = 50, warmup: int = 1) -> dict:
    """Average forward/backward milliseconds per layer and per pass.

    Runs ``warmup`` untimed forward-backward passes, then ``iterations``
    timed ones, layer by layer (each layer's reshape counts as forward, as in
    Caffe). Backward runs only for layers that need it. A chain folded into
    its head layer (:mod:`protonet.fuse`, the TEST phase) runs as the head: the
    head's forward time is the chain's, and each member's entry names the head
    under ``folded_into``. Blobs sharing buffers (:mod:`protonet.recycle`) get memory of
    their own first: a pass layer by layer is not the pass they were planned for.
    """
    recycler = getattr(net, "_recycler", None)
    if recycler is not None:
        recycler.stop()
    n = len(net.layers)
    for _ in range(warmup):
        net.forward_from_to()
        net.backward_from_to()
    fwd = np.zeros(n)
    bwd = np.zeros(n)
    passes_f, passes_b = [], []
    clock = time.perf_counter
    for _ in range(iterations):
        # one pass, layer by layer: what the last one deferred is written anew, not computed
        forget = getattr(net, "_forget_deferred", None)
        if forget is not None:
            forget(0, n - 1)
        start = clock()
        i = 0
        while i < n:
            # a folded chain (protonet.fuse) runs as its head: the time is the head's
            chain = getattr(net, "_chain_at", {}).get(i)
            last = chain.last if chain is not None and chain.head == i else i
            t0 = clock()
            net.forward_from_to(i, last)
            fwd[i] += clock() - t0
            i = last + 1
        mid = clock()
        for i in reversed(range(n)):
            t0 = clock()
            net.backward_from_to(i, i)
            bwd[i] += clock() - t0
        end = clock()
        passes_f.append(mid - start)
        passes_b.append(end - mid)
    ms = 1000.0 / max(iterations, 1)
    layers = [{"name": name, "type": layer.type, "forward_ms": fwd[i] * ms,
               "backward_ms": bwd[i] * ms}
              for i, (name, layer) in enumerate(zip(net.layer_names, net.layers))]
    for chain in getattr(net, "_chains", []):
        for i in chain.members:
            layers[i]["folded_into"] = net.layer_names[chain.head]
    return {
        "iterations": iterations,
        "layers": layers,
        "forward_ms": float(np.mean(passes_f)) * 1000,
        "backward_ms": float(np.mean(passes_b)) * 1000,
        "forward_backward_ms": float(np.mean(np.add(passes_f, passes_b))) * 1000,
    }


def format_timing(result: dict) -> str:
    width = max([len(l["name"]) for l in result["layers"]] + [5])
    twidth = max([len(l["type"]) for l in result["layers"]] + [4])
    lines = [f"Average time per layer over {result['iterations']} iterations:",
             f"{'layer'.ljust(width)}  {'type'.ljust(twidth)}  {'forward':>10}  {'backward':>10}"]
    for l in result["layers"]:
        forward = (f"{l['forward_ms']:>7.3f} ms" if "folded_into" not in l
                   else f"{'folded':>10}")
        lines.append(f"{l['name'].ljust(width)}  {l['type'].ljust(twidth)}  "
                     f"{forward}  {l['backward_ms']:>7.3f} ms"
                     + (f"  (into {l['folded_into']})" if "folded_into" in l else ""))
    lines += [f"Average Forward pass: {result['forward_ms']:.3f} ms.",
              f"Average Backward pass: {result['backward_ms']:.3f} ms.",
              f"Average Forward-Backward: {result['forward_backward_ms']:.3f} ms."]
    return "\n".join(lines)
