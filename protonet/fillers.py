"""Caffe's seven weight fillers (``include/caffe/filler.hpp``).

``fill(array, filler_param, rng)`` initialises ``array`` in place. Random
values are drawn in float64 from ``rng`` (a ``numpy.random.Generator``) and
cast to the array's dtype, so a fill is reproducible from the generator's
seed (it does not reproduce Caffe's own random stream).

Shapes follow Caffe's legacy accessors: ``num = shape[0]`` and
``channels = shape[1]`` (1 when missing), so for a convolution weight
``(O, C/g, kh, kw)`` ``fan_in = count/num = C/g*kh*kw`` and
``fan_out = count/channels = O*kh*kw``.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ProtonetError

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2  # FillerParameter.VarianceNorm


def _num_channels(shape) -> tuple[int, int]:
    return (shape[0] if len(shape) > 0 else 1), (shape[1] if len(shape) > 1 else 1)


def _fan(shape, param) -> float:
    """The ``n`` of xavier/msra: fan_in, fan_out or their mean, by ``variance_norm``."""
    count = int(np.prod(shape, dtype=np.int64))
    num, channels = _num_channels(shape)
    fan_in, fan_out = count // num, count // channels
    norm = getattr(param, "variance_norm", FAN_IN)
    if norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _constant(shape, param, rng):
    return np.full(shape, getattr(param, "value", 0.0))


def _uniform(shape, param, rng):
    low, high = getattr(param, "min", 0.0), getattr(param, "max", 1.0)
    if low > high:
        raise ProtonetError(f"uniform filler: min ({low}) must not exceed max ({high})")
    return rng.uniform(low, high, shape)


def _gaussian(shape, param, rng):
    std = getattr(param, "std", 1.0)
    if std < 0:
        raise ProtonetError(f"gaussian filler: std must be >= 0, got {std}")
    values = rng.normal(getattr(param, "mean", 0.0), std, shape)
    sparse = getattr(param, "sparse", -1)
    if sparse < -1:
        raise ProtonetError(f"gaussian filler: sparse must be >= -1, got {sparse}")
    if sparse >= 0:
        # Caffe keeps each weight with probability sparse / shape[0]
        num = _num_channels(shape)[0]
        keep = sparse / num
        if keep > 1:
            raise ProtonetError(
                f"gaussian filler: sparse ({sparse}) exceeds the number of outputs "
                f"(shape[0] = {num})")
        values *= rng.random(shape) < keep
    return values


def _positive_unitball(shape, param, rng):
    values = rng.uniform(0.0, 1.0, shape)
    rows = values.reshape(_num_channels(shape)[0], -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return values


def _xavier(shape, param, rng):
    scale = math.sqrt(3.0 / _fan(shape, param))
    return rng.uniform(-scale, scale, shape)


def _msra(shape, param, rng):
    return rng.normal(0.0, math.sqrt(2.0 / _fan(shape, param)), shape)


def _bilinear(shape, param, rng):
    """Upsampling kernel: ``(1 - |x/f - c|) * (1 - |y/f - c|)`` with ``f = ceil(K/2)``.

    ``c = (2f - 1 - f % 2) / (2f)``; computed in float32 as Caffe does.
    """
    if len(shape) != 4:
        raise ProtonetError(f"bilinear filler needs a 4-D blob, got shape {list(shape)}")
    if shape[2] != shape[3]:
        raise ProtonetError(f"bilinear filler needs a square kernel, got shape {list(shape)}")
    k = shape[3]
    f = math.ceil(k / 2)
    c = np.float32((2 * f - 1 - f % 2) / (2.0 * f))
    ramp = 1 - np.abs(np.arange(k, dtype=np.float32) / np.float32(f) - c)
    return np.broadcast_to(np.outer(ramp, ramp), shape)


FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def fill(array: np.ndarray, filler_param, rng: np.random.Generator) -> None:
    """Fill ``array`` in place as Caffe's filler ``filler_param.type`` would.

    ``filler_param`` is a ``FillerParameter`` (or any object with its
    attributes: ``type, value, min, max, mean, std, sparse, variance_norm``).
    """
    kind = getattr(filler_param, "type", "constant")
    maker = FILLERS.get(kind)
    if maker is None:
        raise ProtonetError(
            f"unknown filler type '{kind}' (known fillers: {', '.join(FILLERS)})")
    if kind != "gaussian" and getattr(filler_param, "sparse", -1) != -1:
        raise ProtonetError(f"filler '{kind}' does not support 'sparse' (only gaussian does)")
    if array.size == 0:
        raise ProtonetError(f"cannot fill an empty blob (shape {list(array.shape)})")
    array[...] = maker(array.shape, filler_param, rng)
