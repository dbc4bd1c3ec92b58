"""Element-wise (neuron) layers: one bottom, one top of its shape.

ReLU (``LeakyRelu`` for a negative slope), PReLU (slopes shaped ``(C, 1, ...)``
so they broadcast along axis 1), ELU, Sigmoid, TanH, AbsVal, Power
``(shift + scale x)^power`` (a constant when ``power * scale == 0``, as Caffe),
Exp ``base^(shift + scale x)`` and Log ``log_base(shift + scale x)`` with Caffe's
folded scales, BNLL ``log(1 + e^x)`` in its overflow-free form, Threshold
``x > t`` as 0/1, Clip (``min`` wins over ``max``, as Caffe), Swish
``x sigmoid(beta x)``.
"""
from __future__ import annotations

import numpy as np

from .registry import exporter


def _unary(op: str, **attrs):
    def convert(L):
        L.node(op, [L.inputs[0]], [L.out(0)], **attrs)
    return convert


exporter("Sigmoid")(_unary("Sigmoid"))
exporter("TanH")(_unary("Tanh"))
exporter("AbsVal")(_unary("Abs"))


@exporter("ReLU")
def relu(L):
    if L.layer.slope == 0:
        L.node("Relu", [L.inputs[0]], [L.out(0)])
    else:
        L.node("LeakyRelu", [L.inputs[0]], [L.out(0)], alpha=L.layer.slope)


@exporter("PReLU")
def prelu(L):
    a = L.weight(0)
    rank = len(L.in_shapes[0])
    slope = a.reshape(1) if L.layer.channel_shared else a.reshape((-1,) + (1,) * (rank - 2))
    L.node("PRelu", [L.inputs[0], L.const(slope, "slope")], [L.out(0)])


@exporter("ELU")
def elu(L):
    L.node("Elu", [L.inputs[0]], [L.out(0)], alpha=L.layer.alpha)


def _affine(L, x: str, scale: float, shift: float) -> str:
    """``shift + scale * x`` in Caffe's order (multiply, then add), skipping no-ops."""
    if scale != 1:
        x = L.binary("Mul", x, scale, "scale")
    if shift != 0:
        x = L.binary("Add", x, shift, "shift")
    return x


def _finish(L, x: str) -> None:
    """Top 0 is ``x`` (an Identity when ``x`` is still the bottom)."""
    if x == L.inputs[0]:
        L.node("Identity", [x], [L.out(0)])
    else:  # rename the value the last node computes
        last = L.graph.nodes[-1]
        assert last.outputs == [x]
        last.outputs = [L.out(0)]


@exporter("Power")
def power(L):
    p = L.layer
    if p.diff_scale == 0:
        with np.errstate(all="ignore"):
            value = 1.0 if p.power == 0 else np.power(np.float32(p.shift), np.float32(p.power))
        shape = L.node("Shape", [L.inputs[0]])
        L.node("Expand", [L.const(np.asarray(value).reshape(()), "value"), shape], [L.out(0)])
        return
    x = _affine(L, L.inputs[0], p.scale, p.shift)
    if p.power != 1:
        x = L.binary("Pow", x, p.power, "power")
    _finish(L, x)


@exporter("Exp")
def exp(L):
    x = L.inputs[0]
    if L.layer.inner_scale != 1:
        x = L.binary("Mul", x, L.layer.inner_scale, "scale")
    x = L.node("Exp", [x])
    if L.layer.outer_scale != 1:
        x = L.binary("Mul", x, L.layer.outer_scale, "outer_scale")
    _finish(L, x)


@exporter("Log")
def log(L):
    x = L.node("Log", [_affine(L, L.inputs[0], L.layer.scale, L.layer.shift)])
    if L.layer.base_scale != 1:
        x = L.binary("Mul", x, L.layer.base_scale, "base_scale")
    _finish(L, x)


@exporter("BNLL")
def bnll(L):
    # max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|. ONNX has no log1p (and
    # Softplus may overflow elsewhere), so Kahan's: log1p(e) = e * log(u) / (u - 1), u = 1 + e
    x = L.inputs[0]
    e = L.node("Exp", [L.node("Neg", [L.node("Abs", [x])])])
    u = L.binary("Add", e, 1.0, "one")
    above = L.binary("Sub", u, 1.0, "one")
    kahan = L.node("Div", [L.node("Mul", [e, L.node("Log", [u])]), above])
    tail = L.node("Where", [L.binary("Equal", above, 0.0, "zero"), e, kahan])
    L.node("Add", [L.node("Relu", [x]), tail], [L.out(0)])


@exporter("Threshold")
def threshold(L):
    above = L.binary("Greater", L.inputs[0], L.layer.threshold, "threshold")
    L.node("Cast", [above], [L.out(0)], to=1)


@exporter("Clip")
def clip(L):
    lo, hi = L.layer.min, L.layer.max
    if lo <= hi:
        L.node("Clip", [L.inputs[0], L.const(np.float32(lo), "min"),
                        L.const(np.float32(hi), "max")], [L.out(0)])
    else:  # ONNX's Clip gives max there; Caffe's max(min, min(x, max)) gives min
        L.binary("Max", L.binary("Min", L.inputs[0], hi, "max"), lo, "min", out=L.out(0))


@exporter("Swish")
def swish(L):
    x = L.inputs[0]
    s = L.binary("Mul", x, L.layer.beta, "beta") if L.layer.beta != 1 else x
    L.node("Mul", [x, L.node("Sigmoid", [s])], [L.out(0)])
