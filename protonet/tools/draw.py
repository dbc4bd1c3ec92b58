"""Drawing nets the way Netscope does, without a browser, a server or Graphviz.

One box per layer, in-place layers (ReLU, BatchNorm, Scale, Dropout ... whose top is
their bottom) folded into the box of the layer that produced their blob; each box shows
the layer's name, type, key parameters (kernel/stride/pad, num_output ...) and top
shapes, coloured by the layer's family. Arrows run from producers to consumers.

Layout (:mod:`protonet.tools.draw_layout`) is a small Sugiyama-style layered drawing,
all in Python:

1. ranks by longest path from the inputs (inputs pulled down next to their first reader);
2. edges spanning several ranks get one dummy vertex per rank crossed;
3. order within ranks by barycentre sweeps (down and up), keeping the order with the
   fewest crossings;
4. positions across ranks by repeated weighted averaging towards neighbours, solved
   exactly per rank under the no-overlap constraints (isotonic regression), long edges
   weighted to run straight;
5. edges drawn as vertical (or horizontal) S-curves through their dummies.

Outputs (:mod:`protonet.tools.draw_render`): SVG (written directly), PNG and PDF (matplotlib's Agg/PDF canvases, no
pyplot), DOT (text for Graphviz), and HTML: one self-contained page with the SVG inline
and a little inline JavaScript that shows every layer's full definition, top shapes,
parameter count and multiply-accumulates on hover, with zoom buttons. No network access.

pycaffe's ``caffe.draw`` functions are here too: :func:`draw_net_to_file`,
:func:`draw_net`, :func:`get_layer_label`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field


from ..errors import ProtonetError
from ..proto import caffe_pb2
from .draw_layout import RANKDIRS, _isotonic, layout  # noqa: F401 (re-exported)

FORMATS = ("svg", "png", "pdf", "dot", "html")

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


# the renderers read this module's Node, Drawing and styles: imported last
from .draw_render import PNG_SCALE, to_dot, to_html, to_matplotlib, to_svg  # noqa: E402,F401
