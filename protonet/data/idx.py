"""IDX files (the MNIST format), plain or gzipped.

An IDX file is a big-endian header -- two zero bytes, a type code (0x08 for
unsigned bytes), the number of dimensions -- then one big-endian uint32 per
dimension, then the values in C order. MNIST images are ``(N, rows, cols)``
uint8 (magic 2051), labels ``(N,)`` uint8 (magic 2049).
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from ..errors import ProtonetError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension


def read_idx(path: str, expect_magic: int | None = None) -> np.ndarray:
    """The array in an IDX file (gzip is detected from the content, not the name)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ProtonetError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ProtonetError(f"{path}: damaged gzip file ({e})") from None
    if len(raw) < 4 or raw[0] or raw[1]:
        raise ProtonetError(f"{path}: not an IDX file (bad magic number)")
    magic = int.from_bytes(raw[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise ProtonetError(f"{path}: IDX magic number {magic} where {expect_magic} was expected "
                            f"({'images' if expect_magic == IMAGES_MAGIC else 'labels'} file)")
    if raw[2] != 0x08:
        raise ProtonetError(f"{path}: IDX type 0x{raw[2]:02x} is not unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ProtonetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count:
        raise ProtonetError(f"{path}: IDX header says {list(shape)} ({count} bytes) but the file "
                            f"holds {len(raw) - header}; the file is truncated or damaged")
    return np.frombuffer(raw, np.uint8, count, header).reshape(shape)


def write_idx(path: str, array, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzipped when ``compress``, default: name ends in .gz)."""
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    if compress:
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


def read_mnist_pair(images_path: str, labels_path: str):
    """(images (N, rows, cols) uint8, labels (N,) uint8), checked against each other."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ProtonetError(f"{images_path} holds {len(images)} images but {labels_path} "
                            f"holds {len(labels)} labels")
    return images, labels
