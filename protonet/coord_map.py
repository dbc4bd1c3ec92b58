"""Relate the spatial coordinates of two tops of a NetSpec (pycaffe's ``caffe.coord_map``).

FCN-style nets upsample a coarse map with a Deconvolution and must then cut it back
to the input's extent with a Crop whose offsets depend on every kernel, stride and pad
on the way. This module derives those offsets from a :class:`protonet.net_spec.NetSpec`.

Each spatial layer maps an input coordinate ``x`` to an output coordinate
``y = a * x + b``, the same along every spatial axis after its channel ``axis``:

    Convolution, Pooling, Im2col   a = 1/s   b = (p - (k-1)/2) / s
    Deconvolution                  a = s     b = (k-1)/2 - p
    Crop (offset o)                a = 1     b = -o
    element-wise layers            a = 1     b = 0   (any axis)

with ``k`` the dilated kernel extent ``(kernel-1)*dilation + 1``, ``s`` the stride and
``p`` the pad. A map is the triple ``(axis, a, b)``; ``a`` and ``b`` are arrays with one
value per spatial axis (or one for all). Composing maps along a path multiplies the
scales; :func:`coord_map_from_to` walks back from both tops to a common blob.
"""
from __future__ import annotations

import numpy as np

from .errors import ProtonetError

#: layers that keep coordinates as they are
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU",
                       "Log", "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale",
                       "Sigmoid", "Split", "TanH", "Threshold"]


class UndefinedMapException(Exception):
    """The layer has no coordinate map (an InnerProduct, a data layer, ...)."""


class AxisMismatchException(ProtonetError):
    """Two maps along a path act on different channel axes."""


class UnconnectedTopsError(ProtonetError, RuntimeError):
    """No chain of spatial layers joins the two tops (a ``RuntimeError``, as in pycaffe)."""


class CropError(ProtonetError, AssertionError):
    """The map between two tops is no crop (an ``AssertionError``, as pycaffe's checks)."""


def _per_axis(params: dict, name: str, default) -> np.ndarray:
    """``name`` as an array with one value per spatial axis (or a single value);
    ``name_h``/``name_w`` give the two axes of a 2-D window."""
    h, w = params.get(f"{name}_h"), params.get(f"{name}_w")
    if h is not None or w is not None:
        if name in params:
            raise ProtonetError(f"give either {name} or {name}_h/{name}_w, not both")
        return np.array([default if h is None else h, default if w is None else w], float)
    return np.array(params.get(name, default), float, ndmin=1)


def window_params(fn) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(axis, stride, dilated kernel extent, pad)`` of a Convolution, Deconvolution,
    Im2col or Pooling function of a NetSpec."""
    params = fn.params.get("convolution_param") or fn.params.get("pooling_param") or fn.params
    if params.get("global_pooling"):
        raise UndefinedMapException(f"{fn.type_name} with global_pooling")
    if "kernel_h" in params and "kernel_w" in params:
        kernel = _per_axis(params, "kernel", 0)
    elif "kernel_size" in params:
        kernel = _per_axis(params, "kernel_size", 0)
    else:
        raise ProtonetError(f"{fn.type_name}: kernel_size (or kernel_h and kernel_w) is "
                            "needed to map coordinates")
    dilation = _per_axis(params, "dilation", 1)
    return (int(params.get("axis", 1)), _per_axis(params, "stride", 1),
            (kernel - 1) * dilation + 1, _per_axis(params, "pad", 0))


def crop_params(fn) -> tuple[int, np.ndarray]:
    """``(axis, offset)`` of a Crop function (Caffe's defaults: axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return int(params.get("axis", 2)), np.array(params.get("offset", 0), float, ndmin=1)


def coord_map(fn) -> tuple:
    """The map ``(axis, a, b)`` of one NetSpec function; see the module docstring."""
    kind = fn.type_name
    if kind in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = window_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if kind == "Deconvolution":
        axis, stride, extent, pad = window_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if kind == "Crop":
        axis, offset = crop_params(fn)
        # Crop's axis is the first cropped one; the map's axis is the one before it
        return axis - 1, 1, -offset
    raise UndefinedMapException(kind)


def compose(base_map, next_map) -> tuple:
    """The map ``next`` then ``base``: ``y = a1 * (a2 * x + b2) + b1``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"coordinate maps on channel axes {ax1} and {ax2}")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(coord_map) -> tuple:
    """The map back: ``x = (y - b) / a``."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mappable_bottoms(top) -> tuple:
    """The bottoms a top's coordinates come from: all of them, except that only a Crop's
    first bottom (the one cropped) is followed, not the reference giving its size."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _maps_to_ancestors(top) -> dict:
    """``{ancestor top: map from the ancestor's coordinates to top's}``, walking back
    breadth-first (nearest ancestors first) through every layer that has a map."""
    maps = {top: (None, 1, 0)}
    frontier = [top]
    while frontier:
        current = frontier.pop(0)
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            if bottom not in maps:
                maps[bottom] = compose(maps[current], step)
                frontier.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to) -> tuple:
    """The map ``(axis, a, b)`` from ``top_from``'s coordinates to ``top_to``'s:
    ``to = a * from + b`` (so cropping ``top_from`` to ``top_to`` takes offset ``-b``,
    where ``a`` is 1), through their nearest common ancestor. Raises
    :class:`UnconnectedTopsError` (a ``RuntimeError``) when no chain of spatial layers
    joins them."""
    from_maps = _maps_to_ancestors(top_from)
    for ancestor, to_map in _maps_to_ancestors(top_to).items():
        if ancestor in from_maps:
            return compose(to_map, inverse(from_maps[ancestor]))
    raise UnconnectedTopsError("could not map coordinates between the tops: no chain of "
                               "spatial layers joins them")


def crop(top_from, top_to):
    """A Crop function that cuts ``top_from`` to the extent of ``top_to``, with the axis
    and offsets the coordinate map gives (pycaffe's ``coord_map.crop``)."""
    from .net_spec import layers as L
    axis, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not np.all(a == 1):
        raise CropError(f"the tops' scales differ (a = {a}): a crop cannot align them")
    if not np.all(b <= 0):
        raise CropError(f"a crop cannot have a negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise CropError(f"a crop cannot have a fractional offset (b = {b})")
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=axis + 1, offset=[int(v) for v in -np.round(b)]))


_PARAM_FIELDS = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                 "Im2col": "convolution_param", "Pooling": "pooling_param",
                 "Crop": "crop_param"}


def tops_from_net(net_param) -> dict:
    """NetSpec tops for every blob of a parsed net (a ``NetParameter``), by blob name, so
    that :func:`coord_map_from_to` and :func:`crop` work on an existing prototxt:
    ``tops = tops_from_net(parse_net("fcn.prototxt")); crop(tops["upscore"], tops["data"])``.
    In-place layers map the blob's newest producer."""
    from google.protobuf import json_format
    from .net_spec import Function
    tops: dict = {}
    for lp in net_param.layer:
        field = _PARAM_FIELDS.get(lp.type)
        params = {}
        if field and lp.HasField(field):
            params = json_format.MessageToDict(getattr(lp, field),
                                               preserving_proto_field_name=True)
        params["ntop"] = len(lp.top)
        fn = Function(lp.type, [tops[b] for b in lp.bottom if b in tops], params)
        if len(fn.inputs) != len(lp.bottom):   # a bottom of an unknown producer
            fn.inputs = [tops.setdefault(b, Function("Input", [], {}).tops[0])
                         for b in lp.bottom]
        for name, top in zip(lp.top, fn.tops):
            tops[name] = top
    for name in net_param.input:   # legacy input: fields
        tops.setdefault(name, Function("Input", [], {}).tops[0])
    return tops
