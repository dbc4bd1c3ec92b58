"""Scratch arrays that kernels keep across passes (a layer owns one dict of them)."""
from __future__ import annotations

import math

import numpy as np


def buffer(cache: dict, name: str, shape, dtype, fill=None, copy_of=None) -> np.ndarray:
    """A scratch array of ``shape`` kept in ``cache`` under ``name``.

    Plain buffers only grow, as a Caffe Blob's capacity: a smaller request is a
    view of the start of the kept array (so nets of different batch sizes
    sharing scratch, or a net reshaped back and forth, allocate nothing new).
    A ``fill``-ed buffer (a frame whose border must hold ``fill``) is remade
    whenever its shape changes. With ``copy_of``, the buffer is overwritten
    with that array's values.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    buf = cache.get(name)
    if fill is not None:
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = cache[name] = np.full(shape, fill, dtype)
    else:
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = cache[name] = np.empty(size, dtype)
        buf = buf[:size].reshape(shape)
    if copy_of is not None:
        buf[...] = copy_of
    return buf
