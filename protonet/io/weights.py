"""Copying trained weights into a net by layer name (Caffe's CopyTrainedLayersFrom)."""
from __future__ import annotations

import warnings

from ..errors import ProtonetError
from .blobs import blob_proto_to_array
from .prototxt import ProtonetWarning, read_net_binary


def copy_trained_layers(net, path: str) -> None:
    """Copy every layer's blobs from the binary NetParameter at ``path`` into ``net``.

    Source layers the net lacks are ignored (with a note); a blob count or shape
    mismatch names the layer and both shapes and suggests renaming the layer.
    """
    source = read_net_binary(path)
    layers = net.layer_dict
    for src in source.layer:
        target = layers.get(src.name)
        if target is None:
            if len(src.blobs):
                warnings.warn(f"{path}: ignoring source layer '{src.name}' (not in the net)",
                              ProtonetWarning, stacklevel=2)
            continue
        if len(src.blobs) != len(target.blobs):
            raise ProtonetError(
                f"{path}: layer '{src.name}' has {len(src.blobs)} blobs in the weights file "
                f"but {len(target.blobs)} in the net; rename the layer to skip copying it")
        for k, (blob, proto) in enumerate(zip(target.blobs, src.blobs)):
            array = blob_proto_to_array(proto)
            if array.shape != blob.shape:
                legacy_ok = array.size == blob.count and not proto.HasField("shape")
                if not legacy_ok:
                    raise ProtonetError(
                        f"{path}: cannot copy param {k} of layer '{src.name}': shape "
                        f"{list(array.shape)} in the weights file, {list(blob.shape)} in the "
                        "net; to learn this layer's parameters from scratch rather than "
                        "copying them, rename the layer")
            blob.data[...] = array.reshape(blob.shape)
