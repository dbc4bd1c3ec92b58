"""Copying trained weights into a net by layer name (Caffe's CopyTrainedLayersFrom)."""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import ProtonetError
from .prototxt import ProtonetWarning


def copy_trained_layers(net, path: str) -> None:
    """Copy every layer's blobs from the weights at ``path`` into ``net`` by layer name:
    a binary ``.caffemodel`` (any version), or Caffe's HDF5 layout for names ending in
    ``.h5``/``.hdf5`` (Caffe's CopyTrainedLayersFrom).

    Source layers the net lacks are ignored (with a note); a blob count or shape
    mismatch names the layer and both shapes and suggests renaming the layer.
    Legacy 4-D num/channels/height/width blobs fit any target of the same size.
    """
    if path.endswith((".h5", ".hdf5")):
        copy_trained_layers_hdf5(net, path)
        return
    from .caffemodel import read_caffemodel
    weights = read_caffemodel(path)[1]
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
                raise _shape_mismatch(path, name, k, array.shape, blob.shape)
            blob.data[...] = array.reshape(blob.shape)


def _legacy_equal(stored, target) -> bool:
    """Caffe's LegacyShape match: a 4-D num/channels/height/width blob fits a target of at
    most 4 axes whose shape, padded in front with 1s, is the same."""
    return len(stored) == 4 and len(target) <= 4 and \
        tuple(stored) == (1,) * (4 - len(target)) + tuple(target)


def copy_trained_layers_hdf5(net, path: str) -> None:
    """Net::CopyTrainedLayersFromHDF5: copy ``data/<layer>/<i>`` by layer name."""
    from .hdf5 import open_hdf5
    f = open_hdf5(path, "HDF5 weights")
    layers = net.layer_dict
    shared = _shared_non_owner_blobs(net)
    with f:
        if "data" not in f:
            raise ProtonetError(f"{path}: no 'data' group; not a Caffe HDF5 weights file")
        for name, group in f["data"].items():
            target = layers.get(name)
            if target is None:
                if len(group):
                    warnings.warn(f"{path}: ignoring source layer '{name}' (not in the net)",
                                  ProtonetWarning, stacklevel=2)
                continue
            if len(group) > len(target.blobs):
                raise ProtonetError(
                    f"{path}: layer '{name}' has {len(group)} blobs in the weights file but "
                    f"{len(target.blobs)} in the net; rename the layer to skip copying it")
            for j, blob in enumerate(target.blobs):
                if str(j) not in group:
                    if id(blob) in shared:
                        continue
                    raise ProtonetError(f"{path}: layer '{name}' lacks blob {j} in the "
                                        "weights file; rename the layer to skip copying it")
                array = np.asarray(group[str(j)])
                if array.shape != blob.shape:
                    raise _shape_mismatch(path, name, j, array.shape, blob.shape)
                blob.data[...] = array


def _shared_non_owner_blobs(net) -> set[int]:
    owners = {id(b) for b in net.learnable_params}
    return {id(b) for layer in net.layers for b in layer.blobs if id(b) not in owners}


def _shape_mismatch(path, layer, k, stored, target) -> ProtonetError:
    return ProtonetError(
        f"{path}: cannot copy param {k} of layer '{layer}': shape {list(stored)} in the "
        f"weights file, {list(target)} in the net; to learn this layer's parameters from "
        "scratch rather than copying them, rename the layer")
