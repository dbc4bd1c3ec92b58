"""Drawing nets the way Netscope does, without a browser, a server or Graphviz.

One box per layer, in-place layers (ReLU, BatchNorm, Scale, Dropout ... whose top is
their bottom) folded into the box of the layer that produced their blob; each box shows
the layer's name, type, key parameters (kernel/stride/pad, num_output ...) and top
shapes, coloured by the layer's family. Arrows run from producers to consumers.

Layout is a small Sugiyama-style layered drawing, all in Python:

1. ranks by longest path from the inputs (inputs pulled down next to their first reader);
2. edges spanning several ranks get one dummy vertex per rank crossed;
3. order within ranks by barycentre sweeps (down and up), keeping the order with the
   fewest crossings;
4. positions across ranks by repeated weighted averaging towards neighbours, solved
   exactly per rank under the no-overlap constraints (isotonic regression), long edges
   weighted to run straight;
5. edges drawn as vertical (or horizontal) S-curves through their dummies.

Outputs: SVG (written directly), PNG and PDF (matplotlib's Agg/PDF canvases, no
pyplot), DOT (text for Graphviz), and HTML: one self-contained page with the SVG inline
and a little inline JavaScript that shows every layer's full definition, top shapes,
parameter count and multiply-accumulates on hover, with zoom buttons. No network access.

pycaffe's ``caffe.draw`` functions are here too: :func:`draw_net_to_file`,
:func:`draw_net`, :func:`get_layer_label`.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ProtonetError
from ..proto import caffe_pb2

FORMATS = ("svg", "png", "pdf", "dot", "html")
RANKDIRS = ("TB", "BT", "LR", "RL")

# -- text metrics: DejaVu Sans advance widths (1/1000 em) for ASCII 32..126 and a few extras.
_EXTRA = "×…·→αβ"
_WIDTHS = {
    False: [318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318, 337, 636,
            636, 636, 636, 636, 636, 636, 636, 636, 636, 337, 337, 838, 838, 838, 531, 1000, 684,
            686, 698, 770, 632, 575, 775, 752, 295, 295, 656, 557, 863, 748, 787, 603, 787, 695,
            635, 611, 732, 684, 989, 685, 611, 685, 390, 337, 390, 838, 500, 500, 613, 635, 550,
            635, 615, 352, 635, 634, 278, 278, 579, 278, 974, 634, 612, 635, 635, 411, 521, 392,
            634, 592, 818, 592, 592, 525, 636, 337, 636, 838, 838, 1000, 318, 838, 659, 638],
    True: [348, 456, 521, 838, 696, 1002, 872, 306, 457, 457, 523, 838, 380, 415, 380, 365, 696,
           696, 696, 696, 696, 696, 696, 696, 696, 696, 400, 400, 838, 838, 838, 580, 1000, 774,
           762, 734, 830, 683, 683, 821, 837, 372, 372, 775, 637, 995, 837, 850, 733, 850, 770,
           720, 682, 812, 774, 1103, 771, 724, 725, 457, 365, 457, 838, 500, 500, 675, 716, 593,
           716, 678, 435, 716, 712, 343, 343, 665, 343, 1042, 712, 687, 716, 716, 493, 595, 478,
           712, 652, 924, 645, 652, 582, 712, 365, 712, 838, 838, 1000, 380, 838, 687, 716],
}


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width in px of ``text`` set in DejaVu Sans at ``size`` px."""
    table = _WIDTHS[bold]
    total = 0
    for ch in text:
        code = ord(ch)
        if 32 <= code < 127:
            total += table[code - 32]
        else:
            i = _EXTRA.find(ch)
            total += table[95 + i] if i >= 0 else 1000
    return total * size / 1000.0


FONT_FAMILY = "DejaVu Sans, Verdana, Geneva, sans-serif"

#: line styles inside a box: (font size px, bold, italic, colour, line height px)
STYLES = {
    "name": (12.0, True, False, "#111111", 16.0),
    "type": (11.0, False, False, "#333333", 14.0),
    "param": (10.0, False, False, "#3b3b3b", 13.0),
    "inplace": (10.0, False, True, "#5a5a5a", 13.0),
    "shape": (10.0, False, False, "#1d4f91", 13.0),
}
PAD_X, PAD_Y, MIN_WIDTH, MAX_CHARS = 10.0, 5.0, 96.0, 44

# -- layer families: (fill, stroke) ----------------------------------------------------------
_FAMILIES = {
    "data": (("#d8eeda", "#4f9a5b"), "Data Input DummyData ImageData HDF5Data MemoryData "
             "WindowData HDF5Output Python"),
    "conv": (("#d6e4f7", "#4a78b5"), "Convolution Deconvolution Im2col"),
    "pool": (("#fde3c6", "#c5873a"), "Pooling SPP"),
    "inner": (("#e6ddf4", "#7b5eae"), "InnerProduct Embed RNN LSTM LSTMUnit"),
    "norm": (("#f7e0ea", "#b4577f"), "BatchNorm LRN MVN Scale Bias Normalize"),
    "act": (("#fff3c4", "#b39428"), "ReLU PReLU ELU Sigmoid TanH AbsVal Power Exp Log BNLL "
            "Threshold Clip Swish Dropout"),
    "shape": (("#e2ecee", "#62868e"), "Concat Eltwise Slice Split Crop Flatten Reshape Tile "
              "Reduction ArgMax BatchReindex Filter Silence Parameter Permute"),
    "loss": (("#f8d6d2", "#b8473c"), "SoftmaxWithLoss EuclideanLoss SigmoidCrossEntropyLoss "
             "HingeLoss MultinomialLogisticLoss InfogainLoss ContrastiveLoss Accuracy Softmax"),
}
_FAMILY_OF = {t: fam for fam, (_, types) in _FAMILIES.items() for t in types.split()}
_OTHER = ("#ececec", "#8a8a8a")


def family_colors(layer_type: str) -> tuple[str, str]:
    fam = _FAMILY_OF.get(layer_type)
    if fam is None and layer_type.endswith("Loss"):
        fam = "loss"
    return _FAMILIES[fam][0] if fam else _OTHER


# -- the graph --------------------------------------------------------------------------------
@dataclass
class Node:
    key: str                       # unique: the head layer's name (or "blob:<name>")
    layers: list                   # LayerParameter: head first, then folded in-place layers
    tops: list[str]
    implicit: bool = False         # a blob nobody produces (drawn dashed)
    lines: list = field(default_factory=list)   # (text, style)
    width: float = 0.0
    height: float = 0.0
    x: float = 0.0                 # centre, final picture coordinates
    y: float = 0.0
    rank: int = 0

    @property
    def type(self) -> str:
        return "blob" if self.implicit else self.layers[0].type

    @property
    def name(self) -> str:
        return self.key[5:] if self.implicit else self.layers[0].name


@dataclass
class Edge:
    src: int
    dst: int
    blobs: list[str]
    path: list = field(default_factory=list)    # ("M", p) / ("C", p1, p2, p3) / ("L", p)
    arrow: list = field(default_factory=list)   # three points


@dataclass
class Drawing:
    """A laid-out net: nodes with positions and sizes, edges with paths, and what the
    hover details show (``details[i]`` for node ``i``)."""
    name: str
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float
    rankdir: str
    shapes: dict
    details: list
    totals: dict
    notes: list[str]


def _dims(text_values) -> str:
    return "×".join("?" if d is None else str(int(d)) for d in text_values)


def _num(v) -> str:
    v = float(v)
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}"


def _two(values, h=None, w=None, default=None):
    """Caffe's kernel/stride/pad rule: explicit _h/_w, else one value for both axes, or
    one value per spatial axis (two, or more for an N-D convolution)."""
    if h is not None:
        return (h, w)
    values = list(values)
    if not values:
        return None if default is None else (default, default)
    return (values[0], values[0]) if len(values) == 1 else tuple(values)


def _hw(values) -> str:
    """``3`` when every axis has the same value, else ``3×2×1``."""
    return str(values[0]) if len(set(values)) == 1 else "×".join(map(str, values))


def param_summary(lp, display_lrm: bool = False, show_phase: bool = False) -> list[str]:
    """Short descriptions of a layer's key parameters, for its box (``show_phase``: say
    which phase an ``include { phase }`` rule keeps the layer in)."""
    t = lp.type
    items: list[str] = []
    if t in ("Convolution", "Deconvolution", "Im2col"):
        p = lp.convolution_param
        k = _two(p.kernel_size, *((p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else ()))
        s = _two(p.stride, *((p.stride_h, p.stride_w) if p.HasField("stride_h") else ()),
                 default=1)
        pad = _two(p.pad, *((p.pad_h, p.pad_w) if p.HasField("pad_h") else ()), default=0)
        if t != "Im2col":
            items.append(f"out {p.num_output}")
        if k:
            items.append(f"k {'×'.join(map(str, k))}")
        items.append(f"s {_hw(s)}")
        if any(pad):
            items.append(f"p {_hw(pad)}")
        if len(p.dilation) and any(d != 1 for d in p.dilation):
            items.append(f"d {_hw(_two(p.dilation))}")
        if p.group != 1:
            items.append(f"group {p.group}")
        if not p.bias_term:
            items.append("no bias")
    elif t == "Pooling":
        p = lp.pooling_param
        items.append(caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool))
        if p.global_pooling:
            items.append("global")
        else:
            k = _two([p.kernel_size] if p.HasField("kernel_size") else [],
                     *((p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else ()))
            s = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
            pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
            if k:
                items.append(f"k {k[0]}×{k[1]}")
            items.append(f"s {_hw(s)}")
            if pad != (0, 0):
                items.append(f"p {_hw(pad)}")
        if ((p.HasField("round_mode") and p.round_mode == caffe_pb2.PoolingParameter.FLOOR)
                or (p.HasField("ceil_mode") and not p.ceil_mode)):
            items.append("floor")
    elif t in ("InnerProduct", "Embed"):
        p = lp.inner_product_param if t == "InnerProduct" else lp.embed_param
        items.append(f"out {p.num_output}")
        if t == "InnerProduct" and p.axis != 1:
            items.append(f"axis {p.axis}")
    elif t in ("RNN", "LSTM"):
        items.append(f"out {lp.recurrent_param.num_output}")
    elif t == "LRN":
        p = lp.lrn_param
        items.append(f"size {p.local_size}")
        items.append(f"α {_num(p.alpha)}")
        items.append(f"β {_num(p.beta)}")
        if p.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL:
            items.append("within")
    elif t == "Dropout":
        items.append(f"ratio {_num(lp.dropout_param.dropout_ratio)}")
    elif t == "Concat":
        axis = lp.concat_param.axis if not lp.concat_param.HasField("concat_dim") \
            else lp.concat_param.concat_dim
        if axis != 1:
            items.append(f"axis {axis}")
    elif t == "Eltwise":
        p = lp.eltwise_param
        items.append(caffe_pb2.EltwiseParameter.EltwiseOp.Name(p.operation))
        if len(p.coeff):
            items.append("coeff " + ", ".join(_num(c) for c in p.coeff))
    elif t == "Slice":
        p = lp.slice_param
        if p.axis != 1:
            items.append(f"axis {p.axis}")
        if len(p.slice_point):
            items.append("at " + ", ".join(str(s) for s in p.slice_point))
    elif t == "Reshape":
        items.append("shape " + _dims(lp.reshape_param.shape.dim).replace("×", ", "))
    elif t in ("Softmax", "SoftmaxWithLoss") and lp.softmax_param.axis != 1:
        items.append(f"axis {lp.softmax_param.axis}")
    elif t == "ReLU" and lp.relu_param.negative_slope:
        items.append(f"slope {_num(lp.relu_param.negative_slope)}")
    elif t == "BatchNorm" and lp.batch_norm_param.HasField("use_global_stats"):
        items.append("global stats" if lp.batch_norm_param.use_global_stats else "batch stats")
    elif t == "Scale" and lp.scale_param.bias_term:
        items.append("with bias")
    elif t == "Power":
        p = lp.power_param
        items.append(f"({_num(p.shift)} + {_num(p.scale)}x)^{_num(p.power)}")
    elif t == "Accuracy" and lp.accuracy_param.top_k != 1:
        items.append(f"top {lp.accuracy_param.top_k}")
    elif t == "Flatten" and lp.flatten_param.axis != 1:
        items.append(f"axis {lp.flatten_param.axis}")
    elif t == "Crop":
        items.append(f"axis {lp.crop_param.axis}")
    elif t in ("Data", "ImageData", "HDF5Data", "WindowData", "MemoryData"):
        p = {"Data": lp.data_param, "ImageData": lp.image_data_param,
             "HDF5Data": lp.hdf5_data_param, "WindowData": lp.window_data_param,
             "MemoryData": lp.memory_data_param}[t]
        if p.batch_size:
            items.append(f"batch {p.batch_size}")
        if lp.transform_param.crop_size:
            items.append(f"crop {lp.transform_param.crop_size}")
    elif t == "Python":
        items.append(f"{lp.python_param.module}.{lp.python_param.layer}")
    if len(lp.loss_weight) and any(w not in (0, 1) for w in lp.loss_weight):
        items.append("loss × " + ", ".join(_num(w) for w in lp.loss_weight))
    if display_lrm and len(lp.param):
        items.append("lr " + ", ".join(_num(p.lr_mult) for p in lp.param))
    if show_phase:
        phases = {caffe_pb2.Phase.Name(r.phase) for r in lp.include if r.HasField("phase")}
        if len(phases) == 1:
            items.append(f"{phases.pop()} only")
    return items


def _wrap(items: list[str], limit: int = MAX_CHARS) -> list[str]:
    """Join items with " · " into lines of at most ``limit`` characters."""
    lines, cur = [], ""
    for item in items:
        if len(item) > limit:
            item = item[:limit - 1] + "…"
        candidate = f"{cur} · {item}" if cur else item
        if cur and len(candidate) > limit:
            lines.append(cur)
            cur = item
        else:
            cur = candidate
    if cur:
        lines.append(cur)
    return lines


def _shape_text(shape) -> str:
    return "?" if shape is None else _dims(shape) if len(shape) else "scalar"


def _json_shape(shape):
    return None if shape is None else list(shape)


def _clip(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def build_graph(param, shapes: dict | None = None, display_lrm: bool = False,
                show_phase: bool = False) -> tuple[list[Node], list[Edge]]:
    """Nodes (one per non-in-place layer, in-place layers folded into their producer's) and
    edges (producer -> consumer, one per pair) of a phase-filtered NetParameter."""
    shapes = shapes or {}
    nodes: list[Node] = []
    producers: dict[str, list[int]] = {}
    edges: dict[tuple[int, int], Edge] = {}

    def producer_of(blob: str) -> list[int]:
        if blob not in producers:
            nodes.append(Node(key=f"blob:{blob}", layers=[], tops=[blob], implicit=True))
            producers[blob] = [len(nodes) - 1]
        return producers[blob]

    for lp in param.layer:
        in_place = len(lp.top) >= 1 and list(lp.bottom) == list(lp.top)
        if in_place:
            srcs = producer_of(lp.top[0])
            head = srcs[-1]
            if not nodes[head].implicit and all(producers.get(b, [None])[-1] == head
                                                for b in lp.bottom):
                nodes[head].layers.append(lp)
                continue
        index = len(nodes)
        key = lp.name or f"{lp.type}{index}"
        if any(n.key == key for n in nodes):
            key = f"{key}#{index}"
        nodes.append(Node(key=key, layers=[lp], tops=list(lp.top)))
        for blob in lp.bottom:
            for src in producer_of(blob):
                edge = edges.get((src, index))
                if edge is None:
                    edges[(src, index)] = Edge(src, index, [blob])
                elif blob not in edge.blobs:
                    edge.blobs.append(blob)
        for blob in lp.top:
            if blob in lp.bottom:
                producers[blob] = [index]
            else:
                # a second writer of a blob (phase ALL: one data layer per phase) is an
                # alternative source, as draw_net's shared blob node shows it
                earlier = [i for i in producers.get(blob, []) if not nodes[i].implicit]
                producers[blob] = earlier + [index]
    for node in nodes:
        _label(node, shapes, display_lrm, show_phase)
    return nodes, list(edges.values())


def _label(node: Node, shapes: dict, display_lrm: bool, show_phase: bool) -> None:
    lines = [(_clip(node.name), "name")]
    if node.implicit:
        lines.append(("blob", "type"))
    else:
        head = node.layers[0]
        lines.append((head.type, "type"))
        lines += [(t, "param") for t in _wrap(param_summary(head, display_lrm, show_phase))]
        folded = _wrap([lp.type for lp in node.layers[1:]], MAX_CHARS - 2)
        lines += [(("+ " if i == 0 else "  ") + t, "inplace") for i, t in enumerate(folded)]
    tops = node.tops
    known = [(t, shapes[t]) for t in tops if t in shapes]
    if len(tops) == 1 and known and (tops[0] == node.name or node.implicit):
        lines.append((_shape_text(known[0][1]), "shape"))
    else:
        for t, s in known[:4]:
            lines.append((_clip(f"{t}: {_shape_text(s)}"), "shape"))
        if len(known) > 4:
            lines.append((f"… {len(known) - 4} more tops", "shape"))
    node.lines = lines
    width = max(text_width(text, STYLES[style][0], STYLES[style][1]) for text, style in lines)
    node.width = max(MIN_WIDTH, math.ceil(width + 2 * PAD_X))
    node.height = math.ceil(sum(STYLES[s][4] for _, s in lines) + 2 * PAD_Y)


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
def net_shapes(param, phase: int, level: int = 0, stages=(), input_shapes=None, source=None):
    """({blob: shape}, {layer name: summary row}, totals, notes) of ``param`` (shapes only):
    Caffe's when the net builds; else every shape its definition determines, None (``?``)
    for the rest, and notes saying what was guessed and why."""
    from .shapes import net_shapes as shapes_of
    return shapes_of(param, phase, level, stages, input_shapes, source)


# -- the whole pipeline -----------------------------------------------------------------------
_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def filter_phase(param, phase, level: int = 0, stages=()):
    """``param`` with the layers of one phase (and level/stages), or all layers when
    ``phase`` is None/"ALL", as draw_net's ``--phase``."""
    from ..graph import filter_net
    if phase is None or (isinstance(phase, str) and phase.upper() == "ALL"):
        return param
    if isinstance(phase, str):
        phase = _PHASES[phase.upper()]
    state = caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))
    return filter_net(param, state)


def build_drawing(param, rankdir: str = "TB", phase="TEST", level: int = 0, stages=(),
                  input_shapes=None, display_lrm: bool = False, shapes: bool = True,
                  source: str | None = None) -> Drawing:
    """Lay out a NetParameter as a :class:`Drawing` (shapes and costs computed unless
    ``shapes=False``; ``source``, the prototxt's path, places the notes at file:line:column)."""
    from ..io import write_text
    filtered = filter_phase(param, phase, level, stages)
    blob_shapes, rows, totals, notes = {}, {}, {}, []
    if shapes:
        phases = [caffe_pb2.TEST, caffe_pb2.TRAIN] if filtered is param else \
            [_PHASES[phase.upper()] if isinstance(phase, str) else phase]
        for ph in phases:
            src = filter_phase(param, ph, level, stages) if filtered is param else filtered
            s, r, t, phase_notes = net_shapes(src, ph, level, stages, input_shapes, source)
            for k, v in s.items():
                blob_shapes.setdefault(k, v)
            for k, v in r.items():
                rows.setdefault(k, v)
            totals = totals or t
            if ph == phases[0]:
                notes.extend(phase_notes)
    nodes, edges = build_graph(filtered, blob_shapes, display_lrm, show_phase=filtered is param)
    width, height = layout(nodes, edges, rankdir)
    details = []
    for nd in nodes:
        entries = []
        for lp in nd.layers:
            row = rows.get(lp.name, {})
            entries.append({
                "name": lp.name, "type": lp.type, "text": write_text(lp).rstrip(),
                "tops": [[t, _json_shape(blob_shapes.get(t))] for t in lp.top],
                "bottoms": list(lp.bottom),
                "params": row.get("params"), "param_shapes": row.get("param_shapes"),
                "macc": row.get("macc"), "activation_bytes": row.get("activation_bytes"),
            })
        details.append({"key": nd.key, "implicit": nd.implicit, "layers": entries,
                        "tops": [[t, _json_shape(blob_shapes.get(t))] for t in nd.tops]})
    if not totals and rows:
        totals = {"params": sum(r["params"] or 0 for r in rows.values()),
                  "macc": sum(r["macc"] or 0 for r in rows.values())}
    return Drawing(name=param.name or "net", nodes=nodes, edges=edges, width=width,
                   height=height, rankdir=rankdir.upper(), shapes=blob_shapes, details=details,
                   totals=totals, notes=notes)


def render(drawing: Drawing, fmt: str) -> bytes:
    """The drawing in one of :data:`FORMATS`, as bytes."""
    fmt = fmt.lower()
    if fmt == "svg":
        return to_svg(drawing).encode("utf-8")
    if fmt == "html":
        return to_html(drawing).encode("utf-8")
    if fmt in ("dot", "raw", "gv"):
        return to_dot(drawing).encode("utf-8")
    if fmt in ("png", "pdf"):
        return to_matplotlib(drawing, fmt)
    raise ProtonetError(f"cannot draw to '.{fmt}': use one of {', '.join(FORMATS)}")


def draw_to_file(net, out_path: str, rankdir: str = "TB", phase="TEST", level: int = 0,
                 stages=(), input_shapes=None, lenient: bool = True, fmt: str | None = None,
                 display_lrm: bool = False) -> Drawing:
    """Read a net (a path or a NetParameter), lay it out and write ``out_path`` in the
    format its extension names (or ``fmt``). Returns the drawing."""
    if isinstance(net, caffe_pb2.NetParameter):
        param = net
    else:
        from ..io import read_net
        param = read_net(os.fspath(net), lenient=lenient)
    fmt = (fmt or os.path.splitext(str(out_path))[1].lstrip(".")).lower()
    if fmt not in FORMATS + ("raw", "gv"):
        raise ProtonetError(f"{out_path}: cannot tell the format from the extension; use "
                            f"one of .{', .'.join(FORMATS)}")
    drawing = build_drawing(param, rankdir, phase, level, stages, input_shapes, display_lrm,
                            source=None if isinstance(net, caffe_pb2.NetParameter) else str(net))
    data = render(drawing, fmt)
    from ..io.atomic import atomic_write
    atomic_write(str(out_path), data)
    return drawing


# -- SVG --------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _path_d(path) -> str:
    parts = []
    for cmd in path:
        if cmd[0] == "M" or cmd[0] == "L":
            parts.append(f"{cmd[0]}{_fmt(cmd[1][0])},{_fmt(cmd[1][1])}")
        else:
            parts.append("C" + " ".join(f"{_fmt(p[0])},{_fmt(p[1])}" for p in cmd[1:]))
    return " ".join(parts)


def _node_title(drawing: Drawing, i: int) -> str:
    d = drawing.details[i]
    out = []
    for e in d["layers"]:
        out.append(f"{e['name']} ({e['type']})")
    for t, s in d["tops"]:
        out.append(f"{t}: {_shape_text(s) if s is not None else '?'}")
    first = d["layers"][0] if d["layers"] else {}
    params = sum(e["params"] or 0 for e in d["layers"])
    macc = sum(e["macc"] or 0 for e in d["layers"])
    if first.get("params") is not None:
        out.append(f"params {params:,} · MACC {_human(macc)}")
    return "\n".join(out)


def _human(n: float) -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}" if suffix == "" else f"{n:.2f}{suffix}"
        n /= 1000.0
    return str(n)


def _node_text_rows(nd: Node):
    """(text, style, baseline y relative to the box top) for each line of a box."""
    y = PAD_Y
    rows = []
    for text, style in nd.lines:
        size, _, _, _, lh = STYLES[style]
        rows.append((text, style, y + lh / 2 + size * 0.36))
        y += lh
    return rows


def to_svg(drawing: Drawing, for_html: bool = False) -> str:
    """The drawing as a standalone SVG document (or, ``for_html``, an inline ``<svg>``)."""
    w, h = math.ceil(drawing.width), math.ceil(drawing.height)
    esc = html.escape
    out = []
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" id="net-svg">')
    if not for_html:
        out.append('<?xml version="1.0" encoding="UTF-8"?>')
    out.append(head)
    out.append(f"<title>{esc(drawing.name)}</title>")
    out.append(f'<rect width="{w}" height="{h}" fill="#ffffff"/>')
    out.append('<g class="edges" fill="none" stroke="#7a7a7a" stroke-width="1.3">')
    for k, e in enumerate(drawing.edges):
        shapes = [f"{b}: {_shape_text(drawing.shapes[b])}" if b in drawing.shapes else b
                  for b in e.blobs]
        pts = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in e.arrow)
        out.append(f'<g class="edge" data-e="{k}"><title>{esc(", ".join(shapes))}</title>'
                   f'<path d="{_path_d(e.path)}"/>'
                   f'<polygon points="{pts}" fill="#7a7a7a" stroke="none"/></g>')
    out.append("</g>")
    out.append('<g class="nodes">')
    for i, nd in enumerate(drawing.nodes):
        fill, stroke = ("#ffffff", "#8a8a8a") if nd.implicit else family_colors(nd.type)
        x0, y0 = nd.x - nd.width / 2, nd.y - nd.height / 2
        dash = ' stroke-dasharray="4 3"' if nd.implicit else ""
        out.append(f'<g class="node" data-i="{i}"><title>{esc(_node_title(drawing, i))}</title>'
                   f'<rect x="{_fmt(x0)}" y="{_fmt(y0)}" width="{_fmt(nd.width)}" '
                   f'height="{_fmt(nd.height)}" rx="6" ry="6" fill="{fill}" stroke="{stroke}" '
                   f'stroke-width="1.2"{dash}/>')
        for text, style, by in _node_text_rows(nd):
            size, bold, italic, color, _ = STYLES[style]
            attrs = f'font-size="{_fmt(size)}" fill="{color}"'
            if bold:
                attrs += ' font-weight="bold"'
            if italic:
                attrs += ' font-style="italic"'
            out.append(f'<text x="{_fmt(nd.x)}" y="{_fmt(y0 + by)}" text-anchor="middle" '
                       f'{attrs}>{esc(text)}</text>')
        out.append("</g>")
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


# -- PNG / PDF through matplotlib -------------------------------------------------------------
PNG_SCALE = 2.0          # pixels per SVG px
PNG_MAX_PIXELS = 48e6    # scale down beyond this many pixels (memory and time)
PNG_MAX_SIDE = 32000


def to_matplotlib(drawing: Drawing, fmt: str) -> bytes:
    """PNG or PDF bytes, drawn with matplotlib's non-interactive canvases."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.backends.backend_pdf import FigureCanvasPdf
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
        from matplotlib.path import Path
    except ImportError:
        raise ProtonetError(f"drawing .{fmt} needs matplotlib: pip install 'protonet[draw]' "
                            "(.svg, .html and .dot need nothing)") from None
    import io
    w, h = max(drawing.width, 1.0), max(drawing.height, 1.0)
    # one drawing unit = one point; fonts given in px map to the same number of points
    fig = Figure(figsize=(w / 72.0, h / 72.0), dpi=72)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    codes = {"M": Path.MOVETO, "L": Path.LINETO}
    for e in drawing.edges:
        verts, kinds = [], []
        for cmd in e.path:
            if cmd[0] in codes:
                verts.append(cmd[1])
                kinds.append(codes[cmd[0]])
            else:
                verts += list(cmd[1:])
                kinds += [Path.CURVE4] * 3
        ax.add_patch(PathPatch(Path(verts, kinds), fill=False, edgecolor="#7a7a7a",
                               linewidth=1.2, capstyle="round"))
        ax.add_patch(Polygon(e.arrow, closed=True, facecolor="#7a7a7a", edgecolor="none"))
    for nd in drawing.nodes:
        fill, stroke = ("#ffffff", "#8a8a8a") if nd.implicit else family_colors(nd.type)
        x0, y0 = nd.x - nd.width / 2, nd.y - nd.height / 2
        ax.add_patch(FancyBboxPatch((x0, y0), nd.width, nd.height,
                                    boxstyle="round,pad=0,rounding_size=6", facecolor=fill,
                                    edgecolor=stroke, linewidth=1.0,
                                    linestyle="--" if nd.implicit else "-"))
        for text, style, by in _node_text_rows(nd):
            size, bold, italic, color, _ = STYLES[style]
            ax.text(nd.x, y0 + by, text, fontsize=size, color=color, ha="center",
                    va="baseline", family="DejaVu Sans", fontweight="bold" if bold else "normal",
                    fontstyle="italic" if italic else "normal")
    buf = io.BytesIO()
    if fmt == "png":
        scale = min(PNG_SCALE, math.sqrt(PNG_MAX_PIXELS / (w * h)), PNG_MAX_SIDE / max(w, h))
        FigureCanvasAgg(fig)
        fig.savefig(buf, format="png", dpi=72 * scale, facecolor="white")
    else:
        FigureCanvasPdf(fig)
        fig.savefig(buf, format="pdf", facecolor="white",
                    metadata={"Title": drawing.name, "Creator": "protonet draw"})
    return buf.getvalue()


# -- DOT --------------------------------------------------------------------------------------
def to_dot(drawing: Drawing) -> str:
    """Graphviz DOT text with the same boxes (HTML-like labels), colours and edges."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def lab(s: str) -> str:
        return html.escape(s, quote=True)

    out = [f"digraph {q(drawing.name)} {{",
           f"  rankdir={drawing.rankdir};",
           '  graph [ranksep=0.35, nodesep=0.25, fontname="DejaVu Sans"];',
           '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", fontsize=10, '
           'margin="0.12,0.06"];',
           '  edge [color="#7a7a7a", arrowsize=0.6];']
    for nd in drawing.nodes:
        fill, stroke = ("#ffffff", "#8a8a8a") if nd.implicit else family_colors(nd.type)
        rows = []
        for text, style in nd.lines:
            size, bold, italic, color, _ = STYLES[style]
            t = lab(text)
            if bold:
                t = f"<B>{t}</B>"
            if italic:
                t = f"<I>{t}</I>"
            rows.append(f'<FONT POINT-SIZE="{_fmt(size)}" COLOR="{color}">{t}</FONT>')
        style = ', style="rounded,dashed"' if nd.implicit else ""
        out.append(f"  {q(nd.key)} [label=<{'<BR/>'.join(rows)}>, fillcolor={q(fill)}, "
                   f"color={q(stroke)}{style}];")
    for e in drawing.edges:
        out.append(f"  {q(drawing.nodes[e.src].key)} -> {q(drawing.nodes[e.dst].key)} "
                   f"[tooltip={q(', '.join(e.blobs))}];")
    out.append("}")
    return "\n".join(out) + "\n"


# -- HTML -------------------------------------------------------------------------------------
_CSS = """
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 DejaVu Sans,Verdana,Geneva,sans-serif;color:#222;background:#f6f7f9}
header{position:sticky;top:0;z-index:2;display:flex;gap:18px;align-items:center;flex-wrap:wrap;
 padding:8px 14px;background:#fff;border-bottom:1px solid #ddd}
header h1{font-size:15px;margin:0}
header .stat{color:#555}
header button{font:inherit;padding:2px 9px;border:1px solid #bbb;border-radius:4px;
 background:#fafafa;cursor:pointer}
header .note{color:#9a5b00}
#graph{padding:10px;overflow:auto}
#graph svg{background:#fff;box-shadow:0 1px 3px rgba(0,0,0,.12)}
g.node{cursor:default}
g.node:hover rect,g.node.on rect{stroke:#111;stroke-width:2.2}
g.edge:hover path{stroke:#222;stroke-width:2.2}
#tip{position:fixed;z-index:3;display:none;max-width:560px;max-height:80vh;overflow:auto;
 background:#fff;border:1px solid #999;border-radius:6px;box-shadow:0 4px 14px rgba(0,0,0,.25);
 padding:8px 10px;pointer-events:none}
#tip h2{font-size:13px;margin:0 0 4px}
#tip table{border-collapse:collapse;margin:2px 0 6px}
#tip td{padding:1px 10px 1px 0;vertical-align:top}
#tip td:first-child{color:#666}
#tip pre{margin:4px 0 8px;padding:6px;background:#f4f4f4;border-radius:4px;font:11px/1.35 monospace;
 white-space:pre-wrap}
"""

_JS = r"""
(function(){
var data=JSON.parse(document.getElementById('net-data').textContent);
var tip=document.getElementById('tip'),svg=document.getElementById('net-svg');
var W=+svg.getAttribute('width'),H=+svg.getAttribute('height'),zoom=1;
function human(n){var s=['','K','M','G','T'],i=0;while(Math.abs(n)>=1000&&i<4){n/=1000;i++}
 return i?n.toFixed(2)+s[i]:String(Math.round(n))}
function bytes(n){var s=['B','KiB','MiB','GiB'],i=0;while(n>=1024&&i<3){n/=1024;i++}
 return i?n.toFixed(1)+' '+s[i]:n+' B'}
function shape(s){return s===null?'?':(s.length?s.map(function(d){return d===null?'?':d})
 .join('\u00d7'):'scalar')}
function el(tag,text,parent){var e=document.createElement(tag);
 if(text!==undefined)e.textContent=text;if(parent)parent.appendChild(e);return e}
function row(t,k,v){var r=el('tr',undefined,t);el('td',k,r);el('td',v,r)}
function show(i,ev){
 var d=data.nodes[i];tip.textContent='';
 d.layers.forEach(function(l){
  el('h2',l.name+' ('+l.type+')',tip);var t=el('table',undefined,tip);
  if(l.bottoms.length)row(t,'bottoms',l.bottoms.join(', '));
  l.tops.forEach(function(p){row(t,'top '+p[0],shape(p[1]))});
  if(l.param_shapes){function q(v,f){return v===null?'?':f(v)}
   row(t,'parameters',q(l.params,function(v){return v.toLocaleString()})+(l.param_shapes&&
     l.param_shapes.length?'  ('+l.param_shapes.map(shape).join(', ')+')':''));
   row(t,'MACC',q(l.macc,human));row(t,'activations',q(l.activation_bytes,bytes));}
  el('pre',l.text,tip);});
 if(d.implicit){el('h2','blob '+d.tops[0][0],tip);el('div','shape '+shape(d.tops[0][1])+
  ' (no layer produces it)',tip)}
 tip.style.display='block';move(ev)}
function move(ev){var pad=14,w=tip.offsetWidth,h=tip.offsetHeight,x=ev.clientX+pad,y=ev.clientY+pad;
 if(x+w>innerWidth)x=Math.max(0,ev.clientX-w-pad);if(y+h>innerHeight)y=Math.max(0,innerHeight-h);
 tip.style.left=x+'px';tip.style.top=y+'px'}
Array.prototype.forEach.call(document.querySelectorAll('g.node'),function(g){
 var i=+g.getAttribute('data-i');var t=g.querySelector('title');if(t)t.parentNode.removeChild(t);
 g.addEventListener('mouseenter',function(ev){g.classList.add('on');show(i,ev)});
 g.addEventListener('mousemove',move);
 g.addEventListener('mouseleave',function(){g.classList.remove('on');tip.style.display='none'})});
function setZoom(z){zoom=Math.max(0.05,Math.min(4,z));svg.setAttribute('width',W*zoom);
 svg.setAttribute('height',H*zoom);
 document.getElementById('zl').textContent=Math.round(zoom*100)+'%'}
document.getElementById('zin').onclick=function(){setZoom(zoom*1.25)};
document.getElementById('zout').onclick=function(){setZoom(zoom/1.25)};
document.getElementById('zfit').onclick=function(){var g=document.getElementById('graph');
 setZoom(Math.min((g.clientWidth-24)/W,(innerHeight-70)/H,1))};
document.getElementById('z1').onclick=function(){setZoom(1)};
})();
"""


def to_html(drawing: Drawing) -> str:
    """One self-contained page: the SVG inline, hover details from inline JSON, no network."""
    esc = html.escape
    data = {"name": drawing.name, "nodes": drawing.details, "totals": drawing.totals}
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--",
                                                                              "<\\!--")
    layers = sum(len(d["layers"]) for d in drawing.details)
    stats = [f"{layers} layers in {len(drawing.nodes)} boxes"]
    known = "≥ " if drawing.totals.get("partial") else ""  # the totals leave out what is ?
    if drawing.totals.get("params") is not None:
        stats.append(f"{known}{drawing.totals['params']:,} parameters")
    if drawing.totals.get("macc") is not None:
        stats.append(f"{known}{_human(drawing.totals['macc'])} MACC")
    notes = "".join(f'<span class="note">{esc(n)}</span>' for n in drawing.notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(drawing.name)} — protonet draw</title>"
        f"<style>{_CSS}</style></head><body>\n"
        f"<header><h1>{esc(drawing.name)}</h1>"
        + "".join(f'<span class="stat">{esc(s)}</span>' for s in stats)
        + '<span><button id="zout" title="zoom out">−</button> <span id="zl">100%</span> '
        '<button id="zin" title="zoom in">+</button> <button id="z1">1:1</button> '
        '<button id="zfit">fit</button></span>'
        '<span class="stat">hover a box for its full definition</span>'
        f"{notes}</header>\n"
        f'<div id="graph">{to_svg(drawing, for_html=True)}</div>\n<div id="tip"></div>\n'
        f'<script type="application/json" id="net-data">{blob}</script>\n'
        f"<script>{_JS}</script>\n</body></html>\n")


# -- pycaffe's caffe.draw ---------------------------------------------------------------------
def get_layer_label(layer, rankdir: str = "LR", display_lrm: bool = False) -> str:
    """caffe.draw's node label: name, type, and kernel/stride/pad for convolution and
    pooling (``display_lrm`` adds the learning-rate multipliers)."""
    sep = " " if rankdir in ("TB", "BT") else "\n"
    label = f"{layer.name}{sep}({layer.type})"
    items = param_summary(layer, display_lrm)
    if items:
        label += sep + sep.join(items)
    return label


def draw_net(caffe_net, rankdir: str = "LR", ext: str = "png", phase=None,
             display_lrm: bool = False) -> bytes:
    """caffe.draw.draw_net: the picture of a NetParameter as bytes in format ``ext``
    (png, pdf, svg, html, or dot/raw for Graphviz text); ``phase`` None draws all layers."""
    drawing = build_drawing(caffe_net, rankdir, "ALL" if phase is None else phase,
                            display_lrm=display_lrm)
    return render(drawing, ext)


def draw_net_to_file(caffe_net, filename: str, rankdir: str = "LR", phase=None,
                     display_lrm: bool = False) -> None:
    """caffe.draw.draw_net_to_file: write the picture in the format the extension names."""
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)
