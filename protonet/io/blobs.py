"""BlobProto <-> numpy (weights, mean files, solver history)."""
from __future__ import annotations

import numpy as np

from ..errors import ProtonetError
from ..proto import caffe_pb2


class BlobShapeError(ProtonetError, ValueError):
    """A BlobProto whose values don't fill its shape (a ``ValueError`` too, as pycaffe's
    ``reshape`` raises there)."""


def blob_proto_shape(proto) -> tuple[int, ...]:
    """A BlobProto's shape as Caffe's Blob::FromProto reads it: the legacy 4-D
    num/channels/height/width when any of them is set, else ``shape.dim``."""
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    return (len(proto.double_data) or len(proto.data),)


def blob_proto_to_array(proto, diff: bool = False, shape=None) -> np.ndarray:
    """The data (or diff) of a BlobProto as an array of its shape (float32 or float64);
    ``shape`` overrides the one the proto gives."""
    shape = blob_proto_shape(proto) if shape is None else tuple(shape)
    double = proto.double_diff if diff else proto.double_data
    single = proto.diff if diff else proto.data
    values = np.asarray(double, dtype=np.float64) if len(double) \
        else np.asarray(single, dtype=np.float32)
    expected = int(np.prod(shape, dtype=np.int64))
    if values.size != expected:
        raise BlobShapeError(f"blob of shape {list(shape)} holds {values.size} values, "
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
    elif array.ndim:  # a 0-axis blob has no shape field at all, as Caffe's ToProto writes it
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


# -- files: .binaryproto (mean files) and BlobProtoVector ---------------------------------------
def read_binary_message(path: str, message):
    """Parse the binary protobuf file at ``path`` into ``message``; errors name the file."""
    from google.protobuf import message as pb_message
    try:
        with open(path, "rb") as f:
            message.ParseFromString(f.read())
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProtonetError(f"{path}: is a directory") from None
    except (pb_message.DecodeError, RuntimeError) as e:
        raise ProtonetError(f"{path}: not a valid binary {message.DESCRIPTOR.name} ({e})") \
            from None
    return message


def read_blob_proto(path: str) -> np.ndarray:
    """The array in a ``.binaryproto`` file (e.g. a mean file from compute_image_mean)."""
    return blob_proto_to_array(read_binary_message(path, caffe_pb2.BlobProto()))


def write_blob_proto(path: str, array, legacy_4d: bool | None = None) -> None:
    """Write ``array`` as a ``.binaryproto``; 4-D arrays use the legacy num/channels/height/
    width fields by default, as Caffe's compute_image_mean writes mean files."""
    from .atomic import atomic_write
    array = np.asarray(array)
    legacy = array.ndim == 4 if legacy_4d is None else legacy_4d
    atomic_write(path, array_to_blob_proto(array, legacy_4d=legacy).SerializeToString())


def read_blob_proto_vector(path: str) -> list[np.ndarray]:
    """The arrays of a binary ``BlobProtoVector`` file."""
    vector = read_binary_message(path, caffe_pb2.BlobProtoVector())
    return [blob_proto_to_array(b) for b in vector.blobs]


def write_blob_proto_vector(path: str, arrays) -> None:
    from .atomic import atomic_write
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blob_proto(np.asarray(a)) for a in arrays)
    atomic_write(path, vector.SerializeToString())
