"""BlobProto <-> numpy (weights, mean files, solver history)."""
from __future__ import annotations

import numpy as np

from ..errors import ProtonetError
from ..proto import caffe_pb2


def blob_proto_shape(proto) -> tuple[int, ...]:
    """A BlobProto's shape: ``shape.dim``, or the legacy 4-D num/channels/height/width."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.double_data) or len(proto.data),)


def blob_proto_to_array(proto, diff: bool = False) -> np.ndarray:
    """The data (or diff) of a BlobProto as an array of its shape (float32 or float64)."""
    shape = blob_proto_shape(proto)
    double = proto.double_diff if diff else proto.double_data
    single = proto.diff if diff else proto.data
    values = np.asarray(double, dtype=np.float64) if len(double) \
        else np.asarray(single, dtype=np.float32)
    expected = int(np.prod(shape, dtype=np.int64))
    if values.size != expected:
        raise ProtonetError(f"blob of shape {list(shape)} holds {values.size} values, "
                            f"expected {expected}")
    return values.reshape(shape)


def array_to_blob_proto(array, diff=None, legacy_4d: bool = False):
    """A BlobProto holding ``array`` (float64 arrays go to double_data)."""
    array = np.asarray(array)
    proto = caffe_pb2.BlobProto()
    if legacy_4d:
        if array.ndim != 4:
            raise ProtonetError(f"legacy num/channels/height/width needs 4-D, got {array.ndim}-D")
        proto.num, proto.channels, proto.height, proto.width = array.shape
    else:
        proto.shape.dim.extend(int(d) for d in array.shape)
    if array.dtype == np.float64:
        proto.double_data.extend(array.ravel().tolist())
        if diff is not None:
            proto.double_diff.extend(np.asarray(diff, np.float64).ravel().tolist())
    else:
        proto.data.extend(np.asarray(array, np.float32).ravel().tolist())
        if diff is not None:
            proto.diff.extend(np.asarray(diff, np.float32).ravel().tolist())
    return proto
