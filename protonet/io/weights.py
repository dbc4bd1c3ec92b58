"""Copying trained weights into a net by layer name (Caffe's CopyTrainedLayersFrom)."""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np

from ..errors import ProtonetError
from .prototxt import ProtonetWarning


def read_weights(path: str) -> "OrderedDict[str, list[np.ndarray]]":
    """Layer name -> blob arrays, from a binary ``.caffemodel`` or a ``.caffemodel.h5``."""
    if path.endswith((".h5", ".hdf5")):
        return read_weights_hdf5(path)
    from .caffemodel import read_caffemodel
    return read_caffemodel(path)[1]


def read_weights_hdf5(path: str) -> "OrderedDict[str, list[np.ndarray]]":
    """Caffe's HDF5 weights layout: group ``data/<layer>`` holding datasets ``0``, ``1``, ..."""
    try:
        import h5py
    except ImportError:
        raise ProtonetError("reading HDF5 weights needs h5py: pip install 'protonet[data]'") \
            from None
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise ProtonetError(f"{path}: no 'data' group; not a Caffe HDF5 caffemodel")
            out = OrderedDict()
            for name, group in f["data"].items():
                keys = sorted(group.keys(), key=int)
                if keys:  # Caffe writes an empty group for layers whose blobs are shared
                    out[name] = [np.asarray(group[k]) for k in keys]
            return out
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except OSError as e:
        raise ProtonetError(f"{path}: not a readable HDF5 file ({e})") from None


def copy_trained_layers(net, path: str) -> None:
    """Copy every layer's blobs from the weights at ``path`` into ``net`` by layer name.

    Source layers the net lacks are ignored (with a note); a blob count or shape
    mismatch names the layer and both shapes and suggests renaming the layer.
    Legacy 4-D num/channels/height/width blobs fit any target of the same size.
    """
    weights = read_weights(path)
    layers = net.layer_dict
    for name, arrays in weights.items():
        target = layers.get(name)
        if target is None:
            warnings.warn(f"{path}: ignoring source layer '{name}' (not in the net)",
                          ProtonetWarning, stacklevel=2)
            continue
        if len(arrays) != len(target.blobs):
            raise ProtonetError(
                f"{path}: layer '{name}' has {len(arrays)} blobs in the weights file but "
                f"{len(target.blobs)} in the net; to learn this layer from scratch rather "
                "than copying it, rename the layer")
        for k, (blob, array) in enumerate(zip(target.blobs, arrays)):
            if array.shape != blob.shape and not _legacy_equal(array.shape, blob.shape):
                raise ProtonetError(
                    f"{path}: cannot copy param {k} of layer '{name}': shape "
                    f"{list(array.shape)} in the weights file, {list(blob.shape)} in the net; "
                    "to learn this layer's parameters from scratch rather than copying them, "
                    "rename the layer")
            blob.data[...] = array.reshape(blob.shape)


def _legacy_equal(stored, target) -> bool:
    """Caffe's LegacyShape match: a 4-D num/channels/height/width blob fits a target of at
    most 4 axes whose shape, padded in front with 1s, is the same."""
    return len(stored) == 4 and len(target) <= 4 and \
        tuple(stored) == (1,) * (4 - len(target)) + tuple(target)
