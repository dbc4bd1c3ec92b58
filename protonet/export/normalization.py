"""Normalisation layers: LRN (both regions), BatchNorm, MVN.

* LRN ACROSS_CHANNELS is ONNX's ``LRN`` (same window, ``alpha / size``, ``bias = k``).
  WITHIN_CHANNEL is Caffe's own construction: ``x^2`` -> AVE pooling (kernel n, pad
  (n-1)/2, stride 1, so every divisor is n^2) -> ``(1 + alpha * avg)^-beta`` -> ``* x``
  (``k`` is ignored, as in Caffe).
* BatchNorm with global statistics is ``x * s + t`` with per-channel constants
  ``s = 1 / sqrt(var / f + eps)``, ``t = -mean / f * s`` (f: the scale-factor blob,
  0 meaning no statistics), which the exporter then folds into a preceding
  convolution; with ``use_global_stats: false`` it normalises with the batch's
  own mean and biased variance, as protonet's TEST pass does.
* MVN: ``(x - mean) / (std + eps)`` per (n, c) plane or per item, on Caffe's 4-D view.
"""
from __future__ import annotations

import numpy as np

from .registry import exporter


@exporter("LRN")
def lrn(L):
    p = L.layer
    x = L.inputs[0]
    if p.region == 0:
        L.node("LRN", [x], [L.out(0)], size=p.size, alpha=p.alpha, beta=p.beta, bias=p.k)
        return
    pad = (p.size - 1) // 2
    avg = L.node("AveragePool", [L.node("Mul", [x, x])], kernel_shape=[p.size] * 2,
                 strides=[1, 1], pads=[pad] * 4, count_include_pad=1)
    scale = L.binary("Add", L.binary("Mul", avg, p.alpha, "alpha"), 1.0, "one")
    L.node("Mul", [x, L.binary("Pow", scale, -p.beta, "beta")], [L.out(0)])


def channel_shape(channels: int, rank: int) -> tuple[int, ...]:
    """Shape of a per-channel (axis 1) constant broadcast over a rank-``rank`` tensor."""
    return (channels,) + (1,) * (rank - 2) if rank >= 2 else (channels,)


@exporter("BatchNorm")
def batch_norm(L):
    p = L.layer
    rank = len(L.in_shapes[0])
    shape = channel_shape(p.channels, rank)
    x = L.inputs[0]
    if p.use_global_stats:
        factor = L.weight(2).reshape(-1)[0]
        f = 0.0 if factor == 0 else 1.0 / factor
        mean, var = L.weight(0) * f, L.weight(1) * f
        s = 1.0 / np.sqrt(var + p.eps)
        scaled = L.node("Mul", [x, L.const(s.reshape(shape), "scale")])
        L.node("Add", [scaled, L.const((-mean * s).reshape(shape), "shift")], [L.out(0)])
        return
    axes = [0] + list(range(2, rank))
    mean = L.reduce("ReduceMean", x, axes, keepdims=1)
    centered = L.node("Sub", [x, mean])
    var = L.reduce("ReduceMean", L.node("Mul", [centered, centered]), axes, keepdims=1)
    std = L.node("Sqrt", [L.binary("Add", var, p.eps, "eps")])
    L.node("Div", [centered, std], [L.out(0)])


@exporter("MVN")
def mvn(L):
    p = L.layer
    shape = L.in_shapes[0]
    legacy = tuple(shape) + (1,) * (4 - len(shape))
    x = L.inputs[0]
    if legacy != tuple(shape):
        x = L.reshape(x, [0] * len(shape) + [1] * (4 - len(shape)))
    axes = [1, 2, 3] if p.across_channels else [2, 3]
    mean = L.reduce("ReduceMean", x, axes, keepdims=1)
    if not p.normalize_variance:
        L.node("Sub", [x, mean], [L.out(0)])
        return
    centered = L.node("Sub", [x, mean])
    var = L.reduce("ReduceMean", L.node("Mul", [centered, centered]), axes, keepdims=1)
    std = L.binary("Add", L.node("Sqrt", [var]), p.eps, "eps")
    L.node("Div", [centered, std], [L.out(0)])
