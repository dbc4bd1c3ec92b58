"""Scratch arrays that kernels keep across passes (a layer owns one dict of them), and the
cache-sized tiles kernels cut their work into."""
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


def image_channel_tiles(s: slice, channels: int, channel_bytes: int,
                        tile_bytes: int) -> list[tuple[slice, slice]]:
    """``(images, channels)`` tiles covering images ``s`` x channels ``0..channels-1``,
    each of about ``tile_bytes`` at ``channel_bytes`` per channel of one image: several
    whole images when one image fits, else blocks of one image's channels."""
    step = max(1, tile_bytes // max(1, channel_bytes))
    if step >= channels:
        m = step // channels
        return [(slice(a, min(a + m, s.stop)), slice(0, channels))
                for a in range(s.start, s.stop, m)]
    return [(slice(a, a + 1), slice(c, min(c + step, channels)))
            for a in range(s.start, s.stop) for c in range(0, channels, step)]
