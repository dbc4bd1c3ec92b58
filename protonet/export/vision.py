"""Vision layers: Convolution, Deconvolution, Pooling, SPP, Crop, Im2col.

Convolution is ``Conv`` and Deconvolution ``ConvTranspose`` (Caffe's reversed
weight layout ``(C_in, O/group, k...)`` is ONNX's), with groups, dilation and any
number of spatial axes; a channel axis other than 1 is reshaped to ``(outer, C,
...)`` and back. Caffe's deconvolution size ``s(n-1) + d(k-1) + 1 - 2p`` is
ONNX's with ``output_padding`` 0 (it is set should the two ever differ).

Pooling never relies on ``ceil_mode``: the output size is Caffe's (round up, then
drop a last window that would start in the padding: 112 pixels, kernel 3,
stride 2, pad 1 give 57), and the end padding is chosen so that ONNX's
floor rule gives exactly that many windows, each starting where Caffe's does:
``end = (out-1)*stride + kernel - size - pad``. MAX windows ignore padding in
both. AVE divides by Caffe's window area -- padding counted, cells past
``size + pad`` not -- through whichever form is exact for the geometry:
``count_include_pad=0`` without padding, ``count_include_pad=1`` when no window
passes ``size + pad``, else an explicit zero ``Pad`` up to ``size + pad`` and
``count_include_pad=0``. A window lying wholly past the image (only without
padding, with a stride larger than the kernel; ONNX runtimes refuse pads as large
as the kernel) pads explicitly: MAX gives Caffe's ``-FLT_MAX`` there, AVE is
window sums (a depthwise convolution of ones) divided by Caffe's area map.
"""
from __future__ import annotations

import math

import numpy as np

from ..im2col import pool_out_size
from .registry import exporter

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
MAX, AVE, STOCHASTIC = 0, 1, 2


def _to_channels_first(L, x: str, shape: tuple, axis: int) -> str:
    """``x`` viewed as ``(outer, C, spatial...)`` when its channel axis is not 1."""
    if axis == 1:
        return x
    batch = -1 if axis > 1 else 1
    return L.reshape(x, [batch] + list(shape[axis:]))


def _from_channels_first(L, y: str, shape: tuple, axis: int, out: str) -> None:
    """``(outer, C', spatial...)`` back to the Caffe top ``shape``."""
    if axis > 1 and L.dynamic:
        L.reshape(y, [-1] + list(shape[1:]), out)
    else:
        L.reshape(y, list(shape), out)


@exporter("Convolution", "Deconvolution")
def convolution(L):
    p = L.layer
    nsp = p.num_spatial
    kernel, stride, pad, dilation = (list(v)[-nsp:] for v in
                                     (p.kernel, p.stride, p.pad, p.dilation))
    inputs = [L.const(L.weight(0), "weight")]
    if p.bias_term:
        inputs.append(L.const(L.weight(1), "bias"))
    attrs = dict(kernel_shape=kernel, strides=stride, pads=pad * 2, dilations=dilation,
                 group=p.group)
    op = "Conv"
    if L.type == "Deconvolution":
        op = "ConvTranspose"
        n = L.in_shapes[0][p.axis + 1:]
        onnx_size = [s * (i - 1) + d * (k - 1) + 1 - 2 * q
                     for i, k, q, s, d in zip(n, kernel, pad, stride, dilation)]
        extra = [c - o for c, o in zip(L.out_shapes[0][p.axis + 1:], onnx_size)]
        if any(extra):
            attrs["output_padding"] = extra
    for j, x in enumerate(L.inputs):
        if p.axis == 1:
            L.node(op, [x] + inputs, [L.out(j)], **attrs)
            continue
        y = L.node(op, [_to_channels_first(L, x, L.in_shapes[j], p.axis)] + inputs, **attrs)
        _from_channels_first(L, y, L.out_shapes[j], p.axis, L.out(j))


@exporter("Im2col")
def im2col(L):
    """Columns as a grouped convolution whose one-hot filters each pick one kernel tap:
    output channel ``c*K + t`` (K taps) copies input channel ``c`` at tap ``t``."""
    p = L.layer
    nsp = p.num_spatial
    kernel, stride, pad, dilation = (list(v)[-nsp:] for v in
                                     (p.kernel, p.stride, p.pad, p.dilation))
    C, taps = p.channels, math.prod(kernel)
    w = np.zeros((C, taps, taps), np.float32)
    w[:, np.arange(taps), np.arange(taps)] = 1
    weight = L.const(w.reshape([C * taps, 1] + kernel), "taps")
    x = _to_channels_first(L, L.inputs[0], L.in_shapes[0], p.axis)
    attrs = dict(kernel_shape=kernel, strides=stride, pads=pad * 2, dilations=dilation, group=C)
    if p.axis == 1:
        L.node("Conv", [x, weight], [L.out(0)], **attrs)
    else:
        _from_channels_first(L, L.node("Conv", [x, weight], **attrs), L.out_shapes[0], p.axis,
                             L.out(0))


def _end_pads(sizes, kernel, pad, stride, out) -> list[int]:
    """End padding that makes ONNX's floor rule give ``out`` windows starting at
    ``o*stride - pad``, as Caffe's."""
    return [max(0, (o - 1) * s + k - n - p) for n, k, p, s, o in
            zip(sizes, kernel, pad, stride, out)]


def _pad(L, x: str, begin, end, value: float) -> str:
    pads = [0, 0] + list(begin) + [0, 0] + list(end)
    if not any(pads):
        return x
    return L.node("Pad", [x, L.ints(pads, "pads"), L.const(np.float32(value), "pad_value")],
                  mode="constant")


def _window_sums(L, x: str, channels: int, kernel, stride, begin, end) -> str:
    """Sums over Caffe's windows (zero padding): a depthwise convolution of ones."""
    ones = L.const(np.ones([channels, 1] + list(kernel)), "ones")
    return L.node("Conv", [_pad(L, x, begin, end, 0.0), ones], kernel_shape=list(kernel),
                  strides=list(stride), group=channels)


def caffe_area(sizes, kernel, pad, stride, out) -> np.ndarray:
    """Caffe's AVE divisor per output cell: the window clipped to ``size + pad``."""
    axes = []
    for n, k, p, s, o in zip(sizes, kernel, pad, stride, out):
        start = np.arange(o) * s - p
        axes.append(np.minimum(start + k, n + p) - start)
    return np.outer(axes[0], axes[1]).astype(np.float32)


def pool(L, x: str, shape: tuple, method: int, kernel, stride, pad, out_hw, out: str,
         mask: str | None = None) -> None:
    """Caffe's pooling of the ``(N, C, H, W)`` value ``x`` into ``out`` (and the MAX
    argmax ``mask``, Caffe's ``h*W + w`` as float, when given)."""
    sizes, C = shape[2:], shape[1]
    end = _end_pads(sizes, kernel, pad, stride, out_hw)
    # the first window always holds an image cell (pad < kernel); the last does iff end < k
    reach = all(e < k for e, k in zip(end, kernel))
    window = dict(kernel_shape=list(kernel), strides=list(stride))
    if method == MAX:
        if not reach:
            if mask is not None:
                L.fail("its last window lies wholly past the image, where ONNX's MaxPool "
                       "cannot give Caffe's argmax; drop the mask top")
            # Caffe gives -FLT_MAX for an empty window
            L.node("MaxPool", [_pad(L, x, pad, end, -FLT_MAX)], [out], **window)
            return
        outs = [out] if mask is None else [out, L.tmp("argmax")]
        L.node("MaxPool", [x], outs, pads=list(pad) + end, **window)
        if mask is not None:
            flat = L.node("Mod", [outs[1], L.ints([sizes[0] * sizes[1]], "plane")])
            L.node("Cast", [flat], [mask], to=1)
        return
    if method == STOCHASTIC:  # TEST: sum(x^2) / sum(x), Caffe's sum starting at FLT_MIN
        squares = _window_sums(L, L.node("Mul", [x, x]), C, kernel, stride, pad, end)
        total = L.binary("Add", _window_sums(L, x, C, kernel, stride, pad, end), FLT_MIN,
                         "flt_min")
        L.node("Div", [squares, total], [out])
        return
    if reach and not any(pad):
        L.node("AveragePool", [x], [out], pads=[0, 0] + end, count_include_pad=0, **window)
    elif all(e <= p for e, p in zip(end, pad)):
        L.node("AveragePool", [x], [out], pads=list(pad) + end, count_include_pad=1, **window)
    elif reach:
        kept = [min(p, e) for p, e in zip(pad, end)]
        padded = _pad(L, x, pad, kept, 0.0)
        L.node("AveragePool", [padded], [out], pads=[0, 0] + [e - k for e, k in zip(end, kept)],
               count_include_pad=0, **window)
    else:
        sums = _window_sums(L, x, C, kernel, stride, pad, end)
        area = caffe_area(sizes, kernel, pad, stride, out_hw)
        L.node("Div", [sums, L.const(area, "area")], [out])


@exporter("Pooling")
def pooling(L):
    p = L.layer
    shape = L.in_shapes[0]
    mask = L.out(1) if len(L.tops) > 1 else None
    if p.global_pooling and mask is None and p.method != STOCHASTIC:
        op = "GlobalMaxPool" if p.method == MAX else "GlobalAveragePool"
        L.node(op, [L.inputs[0]], [L.out(0)])
        return
    kernel = tuple(shape[2:]) if p.global_pooling else p.kernel
    pool(L, L.inputs[0], shape, p.method, kernel, p.stride, p.pad, L.out_shapes[0][2:],
         L.out(0), mask)


@exporter("SPP")
def spp(L):
    """Each pyramid level is a Pooling (kernel = stride = ceil(size/bins)), flattened to
    ``(N, C*bins^2)``; the levels are concatenated (one level: the pooling itself)."""
    p = L.layer
    shape = L.in_shapes[0]
    levels = []
    for level in range(p.height):
        windows = [p.level_window(level, n) for n in shape[2:]]
        kernel = tuple(k for k, _ in windows)
        pad = tuple(q for _, q in windows)
        out_hw = tuple(pool_out_size(n, k, q, k) for n, (k, q) in zip(shape[2:], windows))
        if p.height == 1:
            pool(L, L.inputs[0], shape, p.pool, kernel, kernel, pad, out_hw, L.out(0))
            return
        y = L.tmp(f"level{level}")
        pool(L, L.inputs[0], shape, p.pool, kernel, kernel, pad, out_hw, y)
        levels.append(L.node("Flatten", [y], axis=1))
    L.node("Concat", levels, [L.out(0)], axis=1)


@exporter("Crop")
def crop(L):
    """``Slice`` of bottom 0 to bottom 1's shape from ``crop_param.axis`` on, at Caffe's
    offsets (the batch end from bottom 1's runtime shape when the batch is dynamic)."""
    index = L.layer.index
    start = L.layer.start
    axes = list(range(start, len(index)))
    starts = [index[a].start for a in axes]
    ends = [index[a].stop for a in axes]
    if L.dynamic and start == 0:
        batch = L.node("Slice", [L.node("Shape", [L.inputs[1]]), L.ints([0], "zero"),
                                 L.ints([1], "one")])
        first = L.node("Add", [batch, L.ints([starts[0]], "offset")])
        ends_value = L.node("Concat", [first, L.ints(ends[1:], "ends")], axis=0) \
            if len(ends) > 1 else first
    else:
        ends_value = L.ints(ends, "ends")
    L.node("Slice", [L.inputs[0], L.ints(starts, "starts"), ends_value, L.ints(axes, "axes")],
           [L.out(0)])
