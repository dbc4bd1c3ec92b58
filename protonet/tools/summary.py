"""Per-layer shapes, parameter counts, multiply-accumulates and activation memory.

What the Netscope CNN Analyzer shows, computed with Caffe's exact shape rules
from a built (but not weight-initialised) :class:`protonet.net.Net`; for a net that
cannot be built, :mod:`protonet.tools.shapes` gives the same dict with None (``?``)
where the definition does not say.
"""
from __future__ import annotations

import json

from ..layers import TRAIN


def summarize(net) -> dict:
    """The summary as one JSON-ready dict (see ``protonet summary --json``): ``layers``
    rows with ``top_shapes`` ([N, C, H, W]-style lists), ``totals`` (``partial`` is always
    false here) and ``notes`` (always empty here)."""
    layers = []
    total_macc = total_act = 0
    for layer, name, bottoms, tops, bottom_names, top_names in zip(
            net.layers, net.layer_names, net.bottom_vecs, net.top_vecs, net.layer_bottoms,
            net.layer_tops):
        act = sum(t.count * t.dtype.itemsize
                  for j, t in enumerate(tops)
                  if not (j < len(bottom_names) and bottom_names[j] == top_names[j]))
        params = sum(b.count for b in layer.blobs)
        macc = int(layer.macc(bottoms, tops))
        layers.append({
            "name": name, "type": layer.type,
            "bottoms": list(bottom_names), "tops": list(top_names),
            "top_shapes": [list(t.shape) for t in tops],
            "param_shapes": [list(b.shape) for b in layer.blobs],
            "params": params, "macc": macc, "activation_bytes": act,
        })
        total_macc += macc
        total_act += act
    # shared parameters count once: the net lists each owner once (and touching a blob's
    # values to compare them would allocate them)
    total_params = sum(b.count for b in net.learnable_params)
    return {"name": net.name, "phase": "TRAIN" if net.phase == TRAIN else "TEST",
            "layers": layers,
            "totals": {"params": total_params, "macc": total_macc,
                       "activation_bytes": total_act, "partial": False},
            "notes": []}


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}{unit}" if suffix == "" else f"{n:.2f}{suffix}{unit}"
        n /= 1000.0
    return str(n)


def _bytes(n: int) -> str:
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or suffix == "GiB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024.0
    return str(n)


def format_table(summary: dict) -> str:
    """A fixed-width text table, one row per layer, totals last; ``?`` marks what the net's
    definition does not determine (and then the totals count only what is known)."""
    from .shapes import shape_text

    def num(v, fmt):
        return "?" if v is None else fmt(v)

    head = ("layer", "type", "bottoms -> tops", "top shapes", "params", "MACC", "activations")
    rows = []
    for l in summary["layers"]:
        rows.append((l["name"], l["type"],
                     f"{', '.join(l['bottoms']) or '-'} -> {', '.join(l['tops']) or '-'}",
                     " ".join(shape_text(s) for s in l["top_shapes"]),
                     num(l["params"], "{:,}".format), num(l["macc"], _human),
                     num(l["activation_bytes"], _bytes)))
    t = summary["totals"]
    partial = t.get("partial", False)
    total = ("TOTAL (known part)" if partial else "TOTAL", "", "", "", f"{t['params']:,}",
             _human(t["macc"]), _bytes(t["activation_bytes"]))
    widths = [min(max(len(r[i]) for r in rows + [head, total]), 48) for i in range(len(head))]

    def line(r):
        cells = [(c if len(c) <= w else c[: w - 1] + "…") for c, w in zip(r, widths)]
        left = [c.ljust(w) for c, w in zip(cells[:4], widths[:4])]
        right = [c.rjust(w) for c, w in zip(cells[4:], widths[4:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(head))
    title = f"net '{summary['name']}' ({summary['phase']}), {len(rows)} layers"
    out = [title, line(head), rule] + [line(r) for r in rows] + [rule, line(total)]
    if partial:
        out.append("? = not determined by the net's definition (see the warnings); "
                   "the totals leave it out")
    return "\n".join(out)


def to_json(summary: dict) -> str:
    return json.dumps(summary, indent=1)
