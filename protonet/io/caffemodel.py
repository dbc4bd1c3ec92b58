"""Fast ``.caffemodel`` reading and writing.

A caffemodel is a binary ``NetParameter`` whose layers carry their weights as
``BlobProto`` messages. Parsing hundreds of megabytes of packed floats through
the protobuf runtime copies every value through Python; instead this module
walks the wire format itself: each layer's metadata (everything but its
blobs) is parsed by protobuf, and each blob's packed ``data`` is viewed with
``np.frombuffer`` straight from the file's bytes. Writing does the reverse,
appending ``array.tobytes()`` after hand-encoded tags.

Wire facts used (from the schema): NetParameter.layer = 100 and the legacy
``layers`` = 2; LayerParameter.blobs = 7 (name = 1); V1LayerParameter.blobs = 6
(name = 4, nested V0 ``layer`` = 1 whose name = 1 and blobs = 50); BlobProto
shape = 7 (BlobShape.dim = 1), data = 5, diff = 6, double_data = 8,
double_diff = 9, num/channels/height/width = 1..4.
"""
from __future__ import annotations

import mmap
import os
from collections import OrderedDict

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import ProtonetError
from ..proto import caffe_pb2
from .atomic import atomic_write

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _WireError(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint too long")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value or (start, end) slice) over one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _WireError(f"field {number} claims {length} bytes past the end")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == _I32:
            if pos + 4 > end:
                raise _WireError("truncated fixed32")
            yield number, wire, (pos, pos + 4)
            pos += 4
        elif wire == _I64:
            if pos + 8 > end:
                raise _WireError("truncated fixed64")
            yield number, wire, (pos, pos + 8)
            pos += 8
        else:
            raise _WireError(f"unsupported wire type {wire} (field {number})")


def _blob(buf, start: int, end: int) -> np.ndarray:
    """One BlobProto as an array of its shape (float32, or float64 if stored as double)."""
    dims: list[int] = []
    legacy = [0, 0, 0, 0]
    has_legacy = False
    chunks = {5: [], 8: []}  # data, double_data (views into buf)
    scalars = {5: [], 8: []}  # unpacked encodings, rare
    for number, wire, value in _fields(buf, start, end):
        if number == 7 and wire == _LEN:
            for n, w, v in _fields(buf, *value):
                if n == 1 and w == _LEN:  # packed dims
                    p, e = v
                    while p < e:
                        d, p = _varint(buf, p, e)
                        dims.append(d)
                elif n == 1 and w == _VARINT:
                    dims.append(v)
        elif number in (1, 2, 3, 4) and wire == _VARINT:
            legacy[number - 1] = value
            has_legacy = True
        elif number in (5, 8) and wire == _LEN:
            chunks[number].append(value)
        elif number in (5, 8) and wire in (_I32, _I64):
            scalars[number].append(value)
    double = bool(chunks[8] or scalars[8])
    key, dtype = (8, "<f8") if double else (5, "<f4")
    parts = [np.frombuffer(buf, dtype, (e - s) // np.dtype(dtype).itemsize, s)
             for s, e in chunks[key]]
    parts += [np.frombuffer(buf, dtype, 1, s) for s, _ in scalars[key]]
    values = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts
                                               else np.zeros(0, dtype))
    shape = tuple(dims) if dims or not has_legacy else tuple(legacy)
    if not dims and not has_legacy:
        # Caffe writes no dims only for a 0-axis blob (one value); anything else is a list
        shape = () if values.size == 1 else (values.size,)
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise _WireError(f"blob of shape {list(shape)} holds {values.size} values")
    return values.reshape(shape)


def _strip(buf, start: int, end: int, drop: set[int]) -> bytes:
    """The message bytes without the fields numbered in ``drop`` (re-encoded as found)."""
    out = bytearray()
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            pos += length
        elif wire == _I32:
            pos += 4
        elif wire == _I64:
            pos += 8
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if number not in drop:
            out += buf[field_start:pos]
    return bytes(out)


def read_caffemodel(path: str):
    """Read a binary caffemodel: (upgraded NetParameter without blobs, {layer: [arrays]}).

    Arrays are read-only views of the file's bytes (copy them into the net);
    legacy V1/V0 layers are upgraded like Caffe's, keeping their names.
    """
    from .upgrade import upgrade_net
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except OSError as e:
        raise ProtonetError(f"{path}: cannot read ({e.strerror})") from None
    view = memoryview(buf)
    net = caffe_pb2.NetParameter()
    weights: "OrderedDict[str, list[np.ndarray]]" = OrderedDict()
    try:
        header = _strip(view, 0, len(view), {2, 100})
        net.ParseFromString(header)
        for number, wire, value in _fields(view, 0, len(view)):
            if wire != _LEN or number not in (2, 100):
                continue
            s, e = value
            if number == 100:
                layer = net.layer.add()
                layer.ParseFromString(_strip(view, s, e, {7}))
                blobs = [_blob(view, *v) for n, w, v in _fields(view, s, e) if n == 7 and w == _LEN]
                name = layer.name
            else:
                layer = net.layers.add()
                layer.ParseFromString(_strip(view, s, e, {6, 1}))
                blobs = [_blob(view, *v) for n, w, v in _fields(view, s, e) if n == 6 and w == _LEN]
                for n, w, v in _fields(view, s, e):
                    if n == 1 and w == _LEN:  # nested V0 layer: its blobs are field 50
                        layer.layer.ParseFromString(_strip(view, v[0], v[1], {50}))
                        blobs += [_blob(view, *b) for n2, w2, b in _fields(view, *v)
                                  if n2 == 50 and w2 == _LEN]
                name = layer.layer.name if layer.HasField("layer") else layer.name
            if blobs:
                weights[name] = blobs
    except (_WireError, DecodeError) as e:
        raise ProtonetError(f"{path}: not a valid caffemodel ({e})") from None
    upgrade_net(net, path)
    return net, weights


# -- writing ------------------------------------------------------------------------------------
def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def encode_blob(data: np.ndarray, diff: np.ndarray | None = None) -> bytes:
    """A BlobProto with ``shape``, packed data (and diff): float64 arrays as double_data."""
    data = np.asarray(data)
    double = data.dtype == np.float64
    dtype, data_field, diff_field = ("<f8", 8, 9) if double else ("<f4", 5, 6)
    shape = b"".join(_encode_varint(int(d)) for d in data.shape)
    # a 0-axis blob gets no shape field at all, as Caffe's Blob::ToProto writes it
    out = _len_field(7, _len_field(1, shape)) if data.shape else b""
    out += _len_field(data_field, np.ascontiguousarray(data, dtype).tobytes())
    if diff is not None:
        out += _len_field(diff_field, np.ascontiguousarray(diff, dtype).tobytes())
    return out


def caffemodel_bytes(net, write_diff: bool = False) -> bytes:
    """``net`` and its learnable blobs as a serialized NetParameter (Caffe's Net::ToProto:
    every layer's definition, its phase filled in, then its blobs)."""
    parts = [caffe_pb2.NetParameter(name=net.name).SerializeToString()]
    for lp, layer in zip(net.param.layer, net.layers):
        meta = caffe_pb2.LayerParameter()
        meta.CopyFrom(lp)
        meta.ClearField("blobs")
        if not meta.HasField("phase"):
            meta.phase = net.phase
        blobs = b"".join(_len_field(7, encode_blob(b.data, b.diff if write_diff else None))
                         for b in layer.blobs)
        parts.append(_len_field(100, meta.SerializeToString() + blobs))
    return b"".join(parts)


def write_caffemodel(net, path: str, write_diff: bool = False) -> None:
    """Write ``net``'s weights as a binary caffemodel Caffe reads, atomically."""
    atomic_write(path, caffemodel_bytes(net, write_diff))
