"""Shapes of nets that cannot be built, as Netscope's CNN Analyzer shows them.

``protonet summary`` and ``draw`` build a real :class:`~protonet.net.Net` (shapes only)
whenever they can, and then every shape is Caffe's. When the net cannot be built -- a
data layer's database is missing, a Python layer or a layer type protonet cannot run, a
bottom that no layer produces, a zero batch size -- :func:`summarize_param` falls back to
a partial pass over the same phase-filtered, split-inserted layers:

* a shape is a tuple of dims, each an int or None (unknown), or None as a whole when not
  even its number of axes is known (shown as ``?``, ``null`` in JSON);
* a layer whose bottoms are fully known is set up for real: exact tops, parameters, MACC;
* a layer with partly known bottoms is set up twice, the unknown dims replaced by two
  different probe values: a top dim, parameter dim or MACC that comes out the same both
  times does not depend on the unknowns (a convolution's output channels, and its H/W
  where the input's are known; an InnerProduct's [N, num_output]); what differs is
  unknown. A bottom whose number of axes is unknown is probed as 4-D and as 2-D, and a
  top keeps its axes only where both agree (Convolution, Deconvolution and Pooling take
  such a bottom as a 4-D image, as Netscope does);
* a data layer whose source cannot be opened takes its shapes from its own parameters
  (:func:`source_shapes`);
* Python layers and unknown types are opaque: ``?`` tops unless ``--input-shape`` gives them;
* a bottom that no earlier layer produces becomes an implicit input of unknown shape.

Every such guess is reported as one note (file:line:column where the file says it).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..blob import Blob
from ..errors import ProtonetError
from ..layers import LAYER_REGISTRY, TRAIN, create_layer
from ..layers.python_layer import native_layer_type
from ..proto import caffe_pb2

#: what an unknown dim becomes in the two probe runs (large enough for any kernel after
#: several strides; pooling over a whole image of this size takes a while to set up, so
#: global pooling and SPP get the small ones)
PROBES, SMALL_PROBES = (960, 1440), (48, 72)
#: the number of axes a bottom of unknown rank is probed with
RANKS = (4, 2)
#: layers that only take (N, C, H, W) images: a bottom of unknown rank is probed as 4-D
IMAGE_LAYERS = {"Convolution", "Deconvolution", "Pooling"}
#: layers never probed: their setup touches the values (MVN in place) or writes files
NO_PROBE = {"MVN", "HDF5Output"}
#: the activations' element size (summary counts float32 blobs, as Net builds them)
ITEMSIZE = 4


def known(shape) -> bool:
    """Whether every dim of ``shape`` (a tuple, or None) is known."""
    return shape is not None and None not in shape


def count(shape) -> int | None:
    """The number of elements of a fully known shape, else None."""
    return math.prod(shape) if known(shape) else None


def shape_text(shape, sep: str = "x") -> str:
    """``50x?x227x227``; ``?`` for a shape of unknown rank; ``scalar`` for ``()``."""
    if shape is None:
        return "?"
    return sep.join("?" if d is None else str(d) for d in shape) or "scalar"


# -- entry points ---------------------------------------------------------------------------
def summarize_param(param, phase="TEST", level: int = 0, stages=(), overrides=None,
                    source: str | None = None) -> dict:
    """The summary of a NetParameter (see :func:`protonet.tools.summary.summarize`): from a
    built Net when it builds, else from the partial pass, with ``notes`` saying what was
    guessed and why and ``totals["partial"]`` true where something is unknown.
    ``overrides``: {top: shape} (``--input-shape``); ``source``: the prototxt's path, for
    file:line:column in the notes."""
    return _summarize(param, phase, level, stages, overrides, source)[0]


def net_shapes(param, phase, level: int = 0, stages=(), input_shapes=None, source=None):
    """For ``draw``: ({blob: shape or None}, {layer name: summary row}, totals, notes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary, implicit = _summarize(param, phase, level, stages, input_shapes, source)
    shapes = {}
    for row in summary["layers"]:
        for top, s in zip(row["tops"], row["top_shapes"]):
            shapes[top] = None if s is None else tuple(s)
    rows = {row["name"]: row for row in summary["layers"] if row["name"] not in implicit}
    return shapes, rows, summary["totals"], summary["notes"]


def _summarize(param, phase, level, stages, overrides, source):
    """(summary, names of the implicit inputs added)."""
    from ..net import Net
    from .summary import summarize
    overrides = {k: tuple(v) for k, v in dict(overrides or {}).items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            net = Net(param, phase, level=level, stages=list(stages), init_weights=False,
                      seed=0, shape_overrides=overrides, memory_limit=0,
                      opaque_python_layers=True)
        except Exception:  # noqa: BLE001 -- whatever stops the build, the partial pass goes on
            net = None
    if net is None:
        return infer(param, phase, level, stages, overrides, source)
    for w in caught:  # the build's own warnings, once
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    try:
        return summarize(net), set()
    finally:
        net.close()


def infer(param, phase="TEST", level: int = 0, stages=(), overrides=None,
          source: str | None = None):
    """The partial pass: (summary with ``notes``, names of the implicit inputs added)."""
    from ..graph import filter_net, insert_splits
    from ..net import parse_phase
    phase = parse_phase(phase)
    state = caffe_pb2.NetState()
    state.CopyFrom(param.state)
    state.phase, state.level = phase, int(level)
    state.stage.extend(stages or [])
    overrides = {k: tuple(v) for k, v in dict(overrides or {}).items()}
    filtered, implicit = _with_implicit_inputs(filter_net(param, state), source, overrides)
    run = _Pass(phase, overrides)
    pending = dict(implicit)
    for lp in insert_splits(filtered).layer:
        if lp.type == "Input" and lp.name in pending and list(lp.top) == [lp.name]:
            run.notes.append(pending.pop(lp.name))
            run.implicit_input(lp)
        else:
            run.layer(lp)
    summary = {"name": param.name, "phase": "TRAIN" if phase == TRAIN else "TEST",
               "layers": run.rows, "totals": run.totals(), "notes": run.notes}
    return summary, implicit


# -- implicit inputs ------------------------------------------------------------------------
def _with_implicit_inputs(param, source, overrides):
    """``param`` with an ``Input`` layer (named after the blob) before the first reader of
    every blob that no earlier layer produces; (net, {its name: the note about it})."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layer")
    produced: set[str] = set()
    implicit: dict[str, str] = {}
    locate = _Locator(source)
    for lp in param.layer:
        for blob in lp.bottom:
            if blob in produced:
                continue
            out.layer.add(name=blob, type="Input", top=[blob])
            produced.add(blob)
            how = ("an input shaped by --input-shape" if blob in overrides else
                   f"an input of unknown shape (give it with --input-shape {blob}=N,C,H,W)")
            implicit[blob] = (f"{locate(lp.name, blob)}layer '{lp.name}' reads blob '{blob}', "
                              f"which no earlier layer produces: shown as {how}")
        out.layer.add().CopyFrom(lp)
        produced.update(lp.top)
    return out, implicit


class _Locator:
    """``file:line:column: `` of a layer's ``bottom: "blob"`` in the prototxt, found by
    reading the file again (``file: `` when it is not found; nothing without a file)."""

    def __init__(self, source):
        self.source, self.index = source, None

    def __call__(self, layer: str, blob: str) -> str:
        if not self.source:
            return ""
        if self.index is None:
            self.index = {}
            try:
                from ..io.lenient import parse_tree
                from ..io.prototxt import read_text
                self._scan(parse_tree(read_text(self.source), self.source))
            except ProtonetError:
                pass
        tok = self.index.get((layer, blob))
        return f"{self.source}:{tok.line}:{tok.col}: " if tok else f"{self.source}: "

    def _scan(self, entries) -> None:
        from ..io.lenient import Block
        for entry in entries:
            if entry.key.lower() not in ("layer", "layers"):
                continue
            for block in entry.values:
                if not isinstance(block, Block):
                    continue
                inner = [v for e in block.entries if e.key.lower() == "layer"
                         for v in e.values if isinstance(v, Block)]  # V0: name inside
                names = [_unquote(v) for b in [block] + inner for e in b.entries
                         if e.key.lower() == "name" for v in e.values if not isinstance(v, Block)]
                for e in block.entries:
                    if e.key.lower() == "bottom" and names:
                        for v in e.values:
                            if not isinstance(v, Block):
                                self.index.setdefault((names[0], _unquote(v)), v)


def _unquote(tok) -> str:
    return tok.text[1:-1] if tok.kind == "string" else tok.text


# -- data layers ----------------------------------------------------------------------------
def source_shapes(lp, top_names) -> list:
    """The top shapes a bottomless layer's own parameters give, when its source cannot be
    read (as Netscope's analyzer reads them), one per top (None where nothing says):

    * an ``input_param`` (Input, or a data layer written with one, as Netscope presets are);
    * Data, AnnotatedData: [batch_size, C, crop_size, crop_size], label [batch_size]; C from
      force_color (3) / force_gray (1) or the number of mean_values (more than one);
      AnnotatedData's H x W from resize_param without a crop, its label [1, 1, ?, 8];
    * ImageData: [batch_size, 3 (1 without is_color), crop_size or new_height/new_width];
    * WindowData: [batch_size, 3, crop_size, crop_size]; MemoryData: its four fields;
    * DummyData: its shapes; HDF5Data and anything else: unknown (needs the files).
    """
    n = len(top_names)

    def pos(v):
        return int(v) if v > 0 else None

    given = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
    if given:
        return [given[i] if len(given) == n else given[0] if len(given) == 1 else None
                for i in range(n)]
    tp, t = lp.transform_param, lp.type
    crop = pos(tp.crop_size)
    label = None
    if t in ("Data", "AnnotatedData"):
        b = pos(lp.data_param.batch_size)
        c = 3 if tp.force_color else 1 if tp.force_gray else \
            len(tp.mean_value) if len(tp.mean_value) > 1 else None
        hw = (crop, crop)
        if t == "AnnotatedData" and not crop and tp.HasField("resize_param"):
            hw = (pos(tp.resize_param.height), pos(tp.resize_param.width))
        # SSD's label: one row [item, label, instance, x1, y1, x2, y2, difficult] per box
        data, label = (b, c) + hw, ((b,) if t == "Data" else (1, 1, None, 8))
    elif t == "ImageData":
        p = lp.image_data_param
        b = pos(p.batch_size)
        hw = (crop, crop) if crop else (pos(p.new_height), pos(p.new_width))
        data, label = (b, 3 if p.is_color else 1) + hw, (b,)
    elif t == "WindowData":
        p = lp.window_data_param
        b, k = pos(p.batch_size), crop or pos(p.crop_size)
        data, label = (b, 3, k, k), (b,)
    elif t == "MemoryData":
        p = lp.memory_data_param
        data = (pos(p.batch_size), pos(p.channels), pos(p.height), pos(p.width))
        label = (data[0],)
    elif t == "DummyData":
        return _dummy_shapes(lp.dummy_data_param, n)
    else:
        return [None] * n
    return ([data, label] + [None] * n)[:n]


def _dummy_shapes(p, n: int) -> list:
    if len(p.shape):
        return [tuple(int(d) for d in p.shape[i if len(p.shape) > 1 else 0].dim)
                if len(p.shape) in (1, n) else None for i in range(n)]
    dims = [p.num, p.channels, p.height, p.width]
    if any(len(d) not in (1, n) for d in dims):
        return [None] * n
    return [tuple(int(d[i if len(d) > 1 else 0]) for d in dims) for i in range(n)]


# -- the pass -------------------------------------------------------------------------------
def top_names(lp) -> list[str]:
    """A layer's tops, with the anonymous ones Caffe adds to a loss layer given too few."""
    from ..net import AUTOMATIC_TOP
    names = list(lp.top)
    cls = LAYER_REGISTRY.get(lp.type)
    if cls is not None and cls.is_loss:
        needed = max(cls.min_num_top or 0, cls.exact_num_top or 0)
        names += [AUTOMATIC_TOP] * max(0, needed - len(names))
    return names


def _reason(error: Exception, lp) -> str:
    """The error's message without its ``layer 'x' (Type): `` prefix."""
    text = str(error) or type(error).__name__
    for prefix in (f"layer '{lp.name}' ({lp.type}): ", f"layer '{lp.name}': "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _close(layer) -> None:
    closer = getattr(layer, "close", None)
    if callable(closer):
        closer()


def _setup(lp, phase: int, shapes, overrides):
    """The real layer set up on bottoms of these (fully known) shapes, as Net sets it up:
    (top shapes, parameter shapes, MACC). Raises whatever the layer raises."""
    phase = lp.phase if lp.HasField("phase") else phase
    layer = create_layer(lp, phase=phase, rng=np.random.default_rng(0))
    layer.shape_overrides = {t: tuple(overrides[t]) for t in lp.top
                             if t in overrides and not len(lp.bottom)}
    try:
        bottoms = [Blob(s, name=b) for b, s in zip(lp.bottom, shapes)]
        tops = [bottoms[j] if j < len(lp.bottom) and lp.bottom[j] == name
                else Blob((), name=name) for j, name in enumerate(top_names(lp))]
        layer.setup(bottoms, tops)
        return ([tuple(t.shape) for t in tops], [tuple(b.shape) for b in layer.blobs],
                int(layer.macc(bottoms, tops)))
    finally:
        _close(layer)


def _fill(shape, value: int, rank: int, lp, k: int) -> tuple[int, ...]:
    """``shape`` with its unknown dims (all ``rank`` of them when the rank is unknown) set
    to ``value``; a convolution's unknown channels to ``k + 1`` times its group."""
    dims = list(shape) if shape is not None else [None] * rank
    out = [value if d is None else d for d in dims]
    if lp.type in ("Convolution", "Deconvolution") and dims:
        axis = lp.convolution_param.axis
        if -len(dims) <= axis < len(dims) and dims[axis] is None:
            out[axis] = max(lp.convolution_param.group, 1) * (k + 1)
    return tuple(out)


def _agree(values):
    """The dims on which every run agrees (None elsewhere); None if the ranks differ."""
    if any(v is None for v in values) or len({len(v) for v in values}) != 1:
        return None
    return tuple(d if all(v[j] == d for v in values) else None
                 for j, d in enumerate(values[0]))


def _merge(shapes):
    """Eltwise's bottoms have one shape: each takes the dims any other knows."""
    ranks = {len(s) for s in shapes if s is not None}
    if len(ranks) != 1:
        return shapes
    rank = ranks.pop()
    merged = tuple(next((s[j] for s in shapes if s is not None and s[j] is not None), None)
                   for j in range(rank))
    return [merged] * len(shapes)


class _Pass:
    """Walks the layers in order, keeping {blob: shape}, the summary rows and the notes."""

    def __init__(self, phase: int, overrides: dict):
        self.phase, self.overrides = phase, overrides
        self.notes: list[str] = []
        self.shapes: dict = {}
        self.rows: list[dict] = []
        self.shared: set[str] = set()
        self.sums = {"params": 0, "macc": 0, "activation_bytes": 0}
        self.partial = False

    def implicit_input(self, lp) -> None:
        self.add(lp, [self.overrides.get(lp.top[0])], [], 0)

    def layer(self, lp) -> None:
        bottoms = [self.shapes.get(b) for b in lp.bottom]
        if (lp.type == "Python" and native_layer_type(lp) is None) \
                or lp.type not in LAYER_REGISTRY:
            self.opaque(lp)
        elif all(known(s) for s in bottoms):
            self.exact(lp, bottoms)
        else:
            self.add(lp, *self.probe(lp, bottoms))

    def inferred(self, lp, reason: str) -> None:
        """A source layer that cannot be set up: shapes from its parameters."""
        names = top_names(lp)
        tops = [self.overrides.get(t) or s for t, s in zip(names, source_shapes(lp, names))]
        shown = ", ".join(f"{t} {shape_text(s)}" for t, s in zip(names, tops))
        self.notes.append(f"layer '{lp.name}' ({lp.type}): shapes inferred from its "
                          f"parameters ({shown}) because {reason}")
        self.add(lp, tops, [], 0)

    def opaque(self, lp) -> None:
        tops = [self.overrides.get(t) for t in lp.top]
        if lp.type == "Python":
            what = (f"a Python layer (module '{lp.python_param.module}'), which protonet does "
                    "not import to inspect a net")
        else:
            what = "a layer type protonet does not know"
        shown = ("; its tops take their shapes from --input-shape" if None not in tops else
                 " with ? tops (give them with --input-shape TOP=N,C,H,W)")
        self.notes.append(f"layer '{lp.name}' ({lp.type}): {what}; kept as an opaque layer"
                          f"{shown}")
        # a Python layer has no parameters Caffe knows of (as Net's OpaqueLayer)
        cost = 0 if lp.type == "Python" else None
        self.add(lp, tops, [] if cost == 0 else None, cost)

    def exact(self, lp, bottoms) -> None:
        try:
            tops, params, macc = _setup(lp, self.phase, bottoms, self.overrides)
        except Exception as e:  # noqa: BLE001 -- any failure costs this layer's shapes only
            if not len(lp.bottom):
                return self.inferred(lp, _reason(e, lp))
            self.notes.append(f"layer '{lp.name}' ({lp.type}): {_reason(e, lp)}; its tops are "
                              "shown as ?")
            return self.add(lp, [None] * len(top_names(lp)), None, None)
        self.add(lp, tops, params, macc)

    def probe(self, lp, bottoms):
        """(tops, parameter shapes, MACC) of a layer with partly known bottoms."""
        n = len(top_names(lp))
        failed = ([() if i == 0 and (LAYER_REGISTRY[lp.type].is_loss or lp.type == "Accuracy")
                   else None for i in range(n)], None, None)
        if lp.type in NO_PROBE:
            if lp.type == "MVN" and bottoms[0] is not None and len(bottoms[0]) <= 4:
                shape = tuple(bottoms[0]) + (1,) * (4 - len(bottoms[0]))
                return [shape], [], count(shape)
            return failed
        if lp.type == "Eltwise":
            bottoms = _merge(bottoms)
        whole = lp.type == "SPP" or (lp.type == "Pooling" and lp.pooling_param.global_pooling)
        unknown_rank = any(s is None for s in bottoms)
        ranks = ((4,) if lp.type in IMAGE_LAYERS else RANKS) if unknown_rank else (0,)
        runs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for rank in ranks:
                for k, value in enumerate(SMALL_PROBES if whole else PROBES):
                    try:
                        runs.append(_setup(lp, self.phase,
                                           [_fill(s, value, rank, lp, k) for s in bottoms],
                                           self.overrides))
                    except Exception:  # noqa: BLE001 -- the unknowns cannot be worked around
                        return failed
        tops = [_agree([r[0][i] for r in runs]) for i in range(len(runs[0][0]))]
        if len({len(r[1]) for r in runs}) == 1:
            params = [_agree([r[1][i] for r in runs]) for i in range(len(runs[0][1]))]
            params = None if None in params else params
        else:
            params = None
        macc = runs[0][2] if len({r[2] for r in runs}) == 1 else None
        return tops, params, macc

    def add(self, lp, tops, params, macc) -> None:
        """One summary row; ``params`` is a list of parameter shapes (None: unknown)."""
        names = top_names(lp)
        act = 0
        for j, (name, shape) in enumerate(zip(names, tops)):
            in_place = j < len(lp.bottom) and lp.bottom[j] == name
            if name in self.shapes and not in_place and j < len(lp.top):
                self.notes.append(f"layer '{lp.name}' ({lp.type}): top '{name}' is produced by "
                                  "more than one layer, which Caffe refuses; the later shape "
                                  "is shown")
            if not in_place:
                size = count(shape)
                act = None if act is None or size is None else act + size * ITEMSIZE
            self.shapes[name] = shape
        param_count = None
        if params is not None:
            counts = [count(s) for s in params]
            param_count = None if None in counts else sum(counts)
            for k, c in enumerate(counts):
                name = lp.param[k].name if k < len(lp.param) else ""
                if name and name in self.shared:
                    continue
                self.shared.add(name)
                self._total("params", c)
        else:
            self._total("params", None)
        self._total("macc", macc)
        self._total("activation_bytes", act)
        if not all(known(s) for s in tops):
            self.partial = True
        self.rows.append({
            "name": lp.name, "type": native_layer_type(lp) or lp.type,
            "bottoms": list(lp.bottom), "tops": names,
            "top_shapes": [None if s is None else list(s) for s in tops],
            "param_shapes": [] if params is None else
            [None if s is None else list(s) for s in params],
            "params": param_count, "macc": macc, "activation_bytes": act})

    def _total(self, key: str, value) -> None:
        if value is None:
            self.partial = True
        else:
            self.sums[key] += int(value)

    def totals(self) -> dict:
        return {**self.sums, "partial": self.partial}
