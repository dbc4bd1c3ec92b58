"""The six update rules of Caffe's SGD-family solvers, in place and in float32.

Each function turns a parameter's regularized gradient ``g`` into the step to
subtract (written back into ``g``, as Caffe writes it into the diff), and
updates its history buffers. Arrays are float32 and every operation is done in
place or into a caller-owned ``tmp`` buffer of the same shape; scalars are
Python floats that hold float32 values (see :func:`f32`), so numpy keeps
float32 throughout (no silent float64).

With ``lr`` the parameter's local rate (rate · lr_mult):

=========  ==============================================================
SGD        h = μ·h + lr·g;  step = h                (lr inside the history)
Nesterov   h' = μ·h + lr·g;  step = (1+μ)·h' − μ·h
AdaGrad    h += g²;  step = lr·g / (√h + δ)
RMSProp    h = ρ·h + (1−ρ)·g²;  step = lr·g / (√h + δ)
AdaDelta   hg = μ·hg + (1−μ)·g²;  u = g·√((hu+δ)/(hg+δ));
           hu = μ·hu + (1−μ)·u²;  step = lr·u
Adam       m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²;
           step = lr·√(1−β2^t)/(1−β1^t) · m / (√v + ε),  t = iter + 1
=========  ==============================================================
"""
from __future__ import annotations

import math

import numpy as np


def f32(x: float) -> float:
    """``x`` rounded to float32, as a Python float (Caffe computes scalars in Dtype)."""
    return float(np.float32(x))


def _axpby(a: float, x: np.ndarray, b: float, y: np.ndarray, tmp: np.ndarray) -> None:
    """y = a·x + b·y (Caffe's caffe_cpu_axpby: scale y, then add a·x)."""
    y *= b
    np.multiply(x, a, out=tmp)
    y += tmp


def sgd(g, h, tmp, local_rate: float, momentum: float) -> None:
    _axpby(local_rate, g, momentum, h, tmp)
    g[...] = h


def nesterov(g, h, tmp, local_rate: float, momentum: float) -> None:
    tmp[...] = h                      # the history before this step
    h *= momentum
    g *= local_rate
    h += g
    np.multiply(h, f32(1.0 + momentum), out=g)
    tmp *= momentum
    g -= tmp


def adagrad(g, h, tmp, local_rate: float, delta: float) -> None:
    np.multiply(g, g, out=tmp)
    h += tmp
    np.sqrt(h, out=tmp)
    tmp += delta
    np.divide(g, tmp, out=g)
    g *= local_rate


def rmsprop(g, h, tmp, local_rate: float, rms_decay: float, delta: float) -> None:
    np.multiply(g, g, out=tmp)
    h *= rms_decay
    tmp *= f32(1.0 - rms_decay)
    h += tmp
    np.sqrt(h, out=tmp)
    tmp += delta
    np.divide(g, tmp, out=g)
    g *= local_rate


def adadelta(g, hg, hu, tmp, tmp2, local_rate: float, momentum: float, delta: float) -> None:
    one_minus = f32(1.0 - momentum)
    np.multiply(g, g, out=tmp)                 # g²
    _axpby(one_minus, tmp, momentum, hg, tmp2)  # hg = μ·hg + (1−μ)·g²
    np.add(hg, delta, out=tmp)                 # hg + δ
    np.add(hu, delta, out=tmp2)                # hu + δ
    np.divide(tmp2, tmp, out=tmp2)
    np.sqrt(tmp2, out=tmp2)
    np.multiply(g, tmp2, out=tmp2)             # u
    np.multiply(tmp2, tmp2, out=tmp)           # u²
    hu *= momentum
    tmp *= one_minus
    hu += tmp
    np.multiply(tmp2, local_rate, out=g)


def adam_correction(beta1: float, beta2: float, t: int) -> float:
    """√(1−β2^t)/(1−β1^t), computed in double as Caffe's pow(float, int) does, then float."""
    return f32(math.sqrt(1.0 - math.pow(beta2, t)) / (1.0 - math.pow(beta1, t)))


def adam(g, m, v, tmp, local_rate: float, beta1: float, beta2: float, eps: float,
         t: int) -> None:
    step = f32(local_rate * adam_correction(beta1, beta2, t))
    _axpby(f32(1.0 - beta1), g, beta1, m, tmp)
    np.multiply(g, g, out=g)
    _axpby(f32(1.0 - beta2), g, beta2, v, tmp)
    np.sqrt(v, out=tmp)
    tmp += eps
    np.divide(m, tmp, out=g)
    g *= step
