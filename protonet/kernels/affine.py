"""Per-channel affine maps: what BatchNorm (global statistics), Scale and Bias do in the
TEST phase, composed, and the epilogue a convolution or inner product applies with them.

A per-channel affine map is ``y[n, c, ...] = scale[c] * x[n, c, ...] + shift[c]``. A
BatchNorm with global statistics is one (``1/std``, ``-mean/std``), so are a Scale with
a learned factor and a Bias with a learned shift, and so is a chain of them: the
coefficients compose (:func:`compose`). An :class:`Epilogue` is what a layer writes
from its bias-free result ``r``: one or more outputs, each an affine map of the one
before (the first of ``r``), and optionally a ReLU on the last.
"""
from __future__ import annotations

import numpy as np

from . import jit


class Epilogue:
    """``outputs = [(array, scale (C,) or None, shift (C,) or None), ...]`` and ``relu``:

        outputs[0] = scale[0] * r + shift[0]
        outputs[k] = scale[k] * outputs[k-1] + shift[k]
        outputs[-1] = max(outputs[-1], 0)            (if relu)

    ``r`` is the producing layer's bias-free result, of each array's shape; ``None``
    stands for a scale of 1 or a shift of 0. The plain layer is
    ``Epilogue([(top, None, bias)])``.
    """

    __slots__ = ("outputs", "relu")

    def __init__(self, outputs, relu: bool = False):
        self.outputs = [(a, s, c) for a, s, c in outputs]
        self.relu = relu

    @property
    def first(self) -> np.ndarray:
        return self.outputs[0][0]

    @property
    def trivial(self) -> bool:
        """A single output with no scale and no ReLU (the plain layer)."""
        return len(self.outputs) == 1 and self.outputs[0][1] is None and not self.relu

    def without_first_scale(self) -> "Epilogue":
        """The epilogue left to apply once ``scale[0]`` is folded into the weights."""
        (a, _, c), rest = self.outputs[0], self.outputs[1:]
        return Epilogue([(a, None, c)] + rest, self.relu)


def _shaped(coef, axis: int, ndim: int, channels: slice):
    """``coef (C,)[channels]`` shaped to broadcast along ``axis`` of an ``ndim`` array."""
    if coef is None:
        return None
    coef = coef[channels]
    return coef.reshape((-1,) + (1,) * (ndim - 1 - axis % ndim))


def finish_views(views: list[np.ndarray], ep: Epilogue, axis: int,
                 channels: slice = slice(None), source: np.ndarray | None = None) -> None:
    """Apply ``ep`` to ``views`` (one view per output, channel axis ``axis``, the
    channels ``channels`` of the full arrays): ``r`` is ``source`` if given (of the
    views' shape), else ``views[0]`` holds it on entry. A convolution's single output
    finished in place is one compiled pass if numba is there
    (:func:`protonet.kernels.jit.affine_in_place`), else one numpy pass per step."""
    if source is None and len(views) == 1 and axis == 1 and views[0].ndim >= 3 and \
            jit.enabled() and jit.planes(views[0]) is not None:  # a convolution's
        (_, scale, shift), = ep.outputs
        if scale is not None or shift is not None or ep.relu:
            jit.affine_in_place(views[0], scale, shift, ep.relu, channels)
        return
    for k, (view, (_, scale, shift)) in enumerate(zip(views, ep.outputs)):
        s = _shaped(scale, axis, view.ndim, channels)
        c = _shaped(shift, axis, view.ndim, channels)
        prev = (view if source is None else source) if k == 0 else views[k - 1]
        if s is not None:
            np.multiply(prev, s, out=view)
            prev = view
        if c is not None:
            np.add(prev, c, out=view)
        elif prev is not view:
            np.copyto(view, prev)
    if ep.relu:
        np.maximum(views[-1], 0, out=views[-1])


def finish_buffer(buf: np.ndarray, ep: Epilogue, axis: int, emit,
                  channels: slice = slice(None)) -> None:
    """Apply ``ep`` in place on one buffer holding ``r`` (channel axis ``axis``), calling
    ``emit(k, buf)`` after step ``k`` to copy output ``k`` out of it."""
    last = len(ep.outputs) - 1
    for k, (_, scale, shift) in enumerate(ep.outputs):
        s = _shaped(scale, axis, buf.ndim, channels)
        c = _shaped(shift, axis, buf.ndim, channels)
        if s is not None:
            buf *= s
        if c is not None:
            buf += c
        if k == last and ep.relu:
            np.maximum(buf, 0, out=buf)
        emit(k, buf)


def epilogue_reference(r: np.ndarray, ep: Epilogue, axis: int = 1) -> list[np.ndarray]:
    """The outputs of ``ep`` for ``r`` in float64, step by step as the definition reads."""
    outs, prev = [], np.asarray(r, np.float64)
    for k, (_, scale, shift) in enumerate(ep.outputs):
        shape = [1] * prev.ndim
        shape[axis] = -1
        y = prev * (1.0 if scale is None else np.reshape(scale, shape))
        y = y + (0.0 if shift is None else np.reshape(shift, shape))
        outs.append(y)
        prev = y
    if ep.relu:
        outs[-1] = np.maximum(outs[-1], 0)
    return outs


# -- the layers' coefficients -------------------------------------------------------------
def batchnorm_coefficients(mean_sum, var_sum, factor, eps: float):
    """A global-statistics BatchNorm as ``(scale, shift)`` (float64, ``(C,)``): Caffe's
    ``y = (x - mean) / sqrt(var + eps)`` with ``mean = mean_sum / factor`` and
    ``var = var_sum / factor`` (both 0 while the factor is 0)."""
    factor = float(np.asarray(factor).reshape(-1)[0])
    inverse = 0.0 if factor == 0 else 1.0 / factor
    mean = np.asarray(mean_sum, np.float64).reshape(-1) * inverse
    var = np.asarray(var_sum, np.float64).reshape(-1) * inverse
    std = np.sqrt(var + eps)
    return 1.0 / std, -mean / std


def compose(first, then):
    """The map ``then(first(x))`` of two ``(scale, shift)`` pairs."""
    (s1, c1), (s2, c2) = first, then
    return s1 * s2, c1 * s2 + c2
