"""Layered layout of a net drawing (:mod:`protonet.tools.draw`): ranks, crossing
reduction, positions and edge routes, Sugiyama-style, in plain Python.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ProtonetError

if TYPE_CHECKING:
    from .draw import Edge, Node

RANKDIRS = ("TB", "BT", "LR", "RL")


# -- layout -----------------------------------------------------------------------------------
RANKSEP, NODESEP, EDGESEP = 34.0, 22.0, 12.0
MARGIN = 16.0


def layout(nodes: list[Node], edges: list[Edge], rankdir: str = "TB") -> tuple[float, float]:
    """Place ``nodes`` (setting x, y) and route ``edges`` (setting path, arrow); returns the
    picture's (width, height)."""
    rankdir = rankdir.upper()
    if rankdir not in RANKDIRS:
        raise ProtonetError(f"rankdir must be one of {', '.join(RANKDIRS)}, got '{rankdir}'")
    horizontal = rankdir in ("LR", "RL")
    n = len(nodes)
    if n == 0:
        return 2 * MARGIN, 2 * MARGIN
    # sizes along the cross axis (c) and the main axis (m)
    csize = [nd.height if horizontal else nd.width for nd in nodes]
    msize = [nd.width if horizontal else nd.height for nd in nodes]

    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for e in edges:
        succs[e.src].append(e.dst)
        preds[e.dst].append(e.src)
    rank = _ranks(n, preds, succs)
    for i, nd in enumerate(nodes):
        nd.rank = rank[i]

    # vertices: nodes, then one dummy per rank crossed by a long edge
    vrank = list(rank)
    vcsize = list(csize)
    dummy = [False] * n
    chains = []
    vpreds: list[list[int]] = [[] for _ in range(n)]
    vsuccs: list[list[int]] = [[] for _ in range(n)]
    for e in edges:
        chain = [e.src]
        for r in range(rank[e.src] + 1, rank[e.dst]):
            vrank.append(r)
            vcsize.append(0.0)
            dummy.append(True)
            vpreds.append([])
            vsuccs.append([])
            chain.append(len(vrank) - 1)
        chain.append(e.dst)
        for a, b in zip(chain, chain[1:]):
            vsuccs[a].append(b)
            vpreds[b].append(a)
        chains.append(chain)
    nv = len(vrank)
    nranks = max(vrank) + 1
    layers: list[list[int]] = [[] for _ in range(nranks)]

    # initial order: by first discovery in a depth-first walk from the sources, file order
    seen = [False] * nv
    stack = [v for v in reversed(range(n)) if not vpreds[v]]
    visit = []
    while stack:
        v = stack.pop()
        if seen[v]:
            continue
        seen[v] = True
        visit.append(v)
        stack.extend(reversed(vsuccs[v]))
    visit += [v for v in range(nv) if not seen[v]]
    for v in visit:
        layers[vrank[v]].append(v)
    layers = _order(layers, vpreds, vsuccs)

    # cross-axis coordinates
    pos = _place(layers, vpreds, vsuccs, vcsize, dummy, vrank)
    _straighten(layers, pos, vcsize, dummy, vpreds, vsuccs)
    low = min(pos[v] - vcsize[v] / 2 for v in range(nv))
    pos = [p - low + MARGIN for p in pos]
    cross_total = max(pos[v] + vcsize[v] / 2 for v in range(nv)) + MARGIN

    # main-axis coordinates: each rank as thick as its thickest box
    thick = [0.0] * nranks
    for v in range(n):
        thick[vrank[v]] = max(thick[vrank[v]], msize[v])
    start = []
    m = MARGIN
    for r in range(nranks):
        start.append(m)
        m += thick[r] + RANKSEP
    main_total = m - RANKSEP + MARGIN

    def to_xy(c, mm):
        if rankdir == "TB":
            return (c, mm)
        if rankdir == "BT":
            return (c, main_total - mm)
        if rankdir == "LR":
            return (mm, c)
        return (main_total - mm, c)

    for v, nd in enumerate(nodes):
        nd.x, nd.y = to_xy(pos[v], start[vrank[v]] + thick[vrank[v]] / 2)

    # edges: ports spread along the box sides, S-curves between ranks, straight through ranks
    out_ports = _ports(chains, pos, csize, outgoing=True)
    in_ports = _ports(chains, pos, csize, outgoing=False)
    arrow_len, arrow_half = 7.0, 3.5
    for k, (e, chain) in enumerate(zip(edges, chains)):
        src, dst = chain[0], chain[-1]
        mid_src = start[vrank[src]] + thick[vrank[src]] / 2
        mid_dst = start[vrank[dst]] + thick[vrank[dst]] / 2
        pts = [(out_ports[k], mid_src + msize[src] / 2)]
        for d in chain[1:-1]:
            r = vrank[d]
            pts.append((pos[d], start[r]))
            pts.append((pos[d], start[r] + thick[r]))
        end = (in_ports[k], mid_dst - msize[dst] / 2)
        tip = end
        end = (end[0], end[1] - arrow_len)
        pts.append(end)
        path = [("M", to_xy(*pts[0]))]
        for i in range(len(pts) - 1):
            (c0, m0), (c1, m1) = pts[i], pts[i + 1]
            if i % 2 == 1:   # inside a rank: straight along the dummy
                path.append(("L", to_xy(c1, m1)))
            else:
                h = (m1 - m0) / 2
                path.append(("C", to_xy(c0, m0 + h), to_xy(c1, m1 - h), to_xy(c1, m1)))
        e.path = path
        e.arrow = [to_xy(*tip), to_xy(tip[0] - arrow_half, end[1]),
                   to_xy(tip[0] + arrow_half, end[1])]
    return (main_total, cross_total) if horizontal else (cross_total, main_total)


def _gap(u: int, v: int, vcsize, dummy) -> float:
    return (vcsize[u] + vcsize[v]) / 2 + (EDGESEP if dummy[u] or dummy[v] else NODESEP)


def _place(layers, vpreds, vsuccs, vcsize, dummy, vrank) -> list[float]:
    """Cross-axis positions for ranks in the given order: packed, then moved rank by rank
    to the weighted mean of their neighbours (those above, below, then both), each rank
    solved exactly (least squares) under the separation constraints."""
    nv = len(vcsize)
    pos = [0.0] * nv
    gaps = []
    for layer in layers:
        gap = [_gap(u, v, vcsize, dummy) for u, v in zip(layer, layer[1:])]
        c = 0.0
        for i, v in enumerate(layer):
            c += gap[i - 1] if i else 0.0
            pos[v] = c
        gaps.append(gap)

    # Edge weights: a chain link weighs 1, a link of a fan of k (into a Concat, out of a
    # blob read k times) 1/k, so branches stay in straight columns and the fan's hub sits
    # at their centre. A long edge's inner links weigh 8, so it runs straight.
    indeg = [len(p) for p in vpreds]
    outdeg = [len(s) for s in vsuccs]

    def weight(u, v):
        upper, lower = (u, v) if vrank[u] < vrank[v] else (v, u)
        if dummy[upper] and dummy[lower]:
            return 8.0
        if dummy[lower]:
            return 1.0 / outdeg[upper]
        if dummy[upper]:
            return 1.0 / indeg[lower]
        return 1.0 / max(outdeg[upper], indeg[lower])

    def settle(r, use_preds, use_succs):
        layer = layers[r]
        target, wts = [], []
        for v in layer:
            nb = (vpreds[v] if use_preds else []) + (vsuccs[v] if use_succs else [])
            if nb:
                ws = [weight(u, v) for u in nb]
                target.append(sum(w * pos[u] for w, u in zip(ws, nb)) / sum(ws))
                wts.append(sum(ws))
            else:
                target.append(pos[v])
                wts.append(0.05)
        for v, c in zip(layer, _isotonic(target, wts, gaps[r])):
            pos[v] = c

    nranks = len(layers)
    for _ in range(6):
        for r in range(1, nranks):
            settle(r, True, False)
        for r in range(nranks - 2, -1, -1):
            settle(r, False, True)
    for _ in range(3):
        for r in range(nranks):
            settle(r, True, True)
    return pos


def _straighten(layers, pos, vcsize, dummy, vpreds, vsuccs) -> None:
    """Put each run of one-to-one links (a chain of layers, the dummies of a long edge) on
    one line where its neighbours leave room, so chains and skip connections run straight
    instead of wobbling with the widths of their boxes."""
    where = {}
    for layer in layers:
        for i, v in enumerate(layer):
            where[v] = (layer, i)

    def linked(u, v):  # u -> v is the only way out of u and the only way into v
        return len(vsuccs[u]) == 1 and vsuccs[u][0] == v and len(vpreds[v]) == 1

    runs, seen = [], set()
    for v in where:
        if v in seen or (len(vpreds[v]) == 1 and linked(vpreds[v][0], v)):
            continue
        run = [v]
        while len(vsuccs[run[-1]]) == 1 and linked(run[-1], vsuccs[run[-1]][0]):
            run.append(vsuccs[run[-1]][0])
        seen.update(run)
        if len(run) > 1:
            runs.append(run)
    runs.sort(key=len, reverse=True)
    for run in runs:
        lo, hi = -math.inf, math.inf
        for d in run:
            layer, i = where[d]
            if i > 0:
                lo = max(lo, pos[layer[i - 1]] + _gap(layer[i - 1], d, vcsize, dummy))
            if i + 1 < len(layer):
                hi = min(hi, pos[layer[i + 1]] - _gap(d, layer[i + 1], vcsize, dummy))
        if lo > hi + 1e-6:
            continue
        want = sum(pos[d] for d in run) / len(run)
        c = min(max(want, lo), hi)
        for d in run:
            pos[d] = c


def _ranks(n: int, preds, succs) -> list[int]:
    """Longest-path ranks (nodes are in an order where producers come first, as Caffe's
    file order is; anything else is ordered topologically first)."""
    order = _topological(n, preds, succs)
    rank = [0] * n
    for v in order:
        if preds[v]:
            rank[v] = max(rank[u] + 1 for u in preds[v])
    # sources sit just above their first reader rather than at the very top
    for v in reversed(order):
        if not preds[v] and succs[v]:
            rank[v] = max(0, min(rank[s] for s in succs[v]) - 1)
    return rank


def _topological(n: int, preds, succs) -> list[int]:
    indeg = [len(set(p)) for p in preds]
    ready = [v for v in range(n) if indeg[v] == 0]
    ready.reverse()
    out = []
    done = set()
    while ready:
        v = ready.pop()
        out.append(v)
        done.add(v)
        for s in sorted(set(succs[v]), reverse=True):
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    if len(out) != n:  # a cycle (cannot come from a Caffe net): keep file order for the rest
        out += [v for v in range(n) if v not in done]
    return out


def _crossings(upper: list[int], lower: list[int], vsuccs) -> int:
    where = {v: i for i, v in enumerate(lower)}
    a, b = [], []
    for i, u in enumerate(upper):
        for s in vsuccs[u]:
            j = where.get(s)
            if j is not None:
                a.append(i)
                b.append(j)
    if len(a) < 2:
        return 0
    a, b = np.array(a), np.array(b)
    return int(np.sum((a[:, None] < a[None, :]) & (b[:, None] > b[None, :])))


def _order(layers, vpreds, vsuccs):
    """Barycentre sweeps; returns the ordering with the fewest crossings seen."""
    def total(ls):
        return sum(_crossings(ls[r], ls[r + 1], vsuccs) for r in range(len(ls) - 1))

    best = [list(l) for l in layers]
    best_count = total(best)
    cur = [list(l) for l in layers]
    for it in range(12):
        if best_count == 0:
            break
        down = it % 2 == 0
        ranks = range(1, len(cur)) if down else range(len(cur) - 2, -1, -1)
        for r in ranks:
            ref = cur[r - 1] if down else cur[r + 1]
            where = {v: i for i, v in enumerate(ref)}
            keyed = []
            for i, v in enumerate(cur[r]):
                nb = [where[u] for u in (vpreds[v] if down else vsuccs[v]) if u in where]
                keyed.append((sum(nb) / len(nb) if nb else None, i, v))
            # nodes without neighbours keep their slot; the others are sorted into the rest
            movable = sorted((k, i, v) for k, i, v in keyed if k is not None)
            it_m = iter(movable)
            cur[r] = [v if k is None else next(it_m)[2] for k, i, v in keyed]
        count = total(cur)
        if count < best_count:
            best, best_count = [list(l) for l in cur], count
    return best


def _isotonic(target: list[float], weights: list[float], gaps: list[float]) -> list[float]:
    """Positions closest (weighted least squares) to ``target`` that keep each neighbour at
    least ``gaps[i]`` beyond the previous one: pool-adjacent-violators on shifted targets."""
    offs = [0.0]
    for g in gaps:
        offs.append(offs[-1] + g)
    blocks: list[list[float]] = []   # [value, weight, count]
    for t, w, o in zip(target, weights, offs):
        blocks.append([t - o, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks[-1]
            blocks[-1] = [(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2]
    out = []
    for v, _, c in blocks:
        out += [v] * c
    return [y + o for y, o in zip(out, offs)]


def _ports(chains, pos, csize, outgoing: bool) -> list[float]:
    """Cross-axis coordinate where each edge leaves (or enters) its box: spread along the
    side in the order of where the edges go, so arrows into a Concat do not pile up."""
    by_node: dict[int, list[tuple[float, int]]] = {}
    for k, chain in enumerate(chains):
        v, other = (chain[0], chain[1]) if outgoing else (chain[-1], chain[-2])
        by_node.setdefault(v, []).append((pos[other], k))
    ports = [0.0] * len(chains)
    for v, items in by_node.items():
        items.sort()
        count = len(items)
        step = min(14.0, 0.7 * csize[v] / max(count, 1))
        for i, (_, k) in enumerate(items):
            ports[k] = pos[v] + (i - (count - 1) / 2) * step
    return ports


# -- shapes and costs: a built net's, else protonet.tools.shapes' partial ones ----------------
