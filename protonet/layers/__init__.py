"""Layer implementations, one module per family, registered by Caffe type string.

Importing this package registers every layer type; look one up with
``LAYER_REGISTRY["Convolution"]`` or list them with :func:`layer_type_list`.
"""
from .base import LAYER_REGISTRY, TEST, TRAIN, Layer, create_layer, layer_type_list, register
from . import (annotated_data, common, conv, data, forks, loss,  # noqa: F401 (registers)
               multibox_loss, neuron, normalization, pooling, python_layer, rcnn, recurrent,
               scale_bias, ssd, utility, vision, window_data)

__all__ = ["LAYER_REGISTRY", "TEST", "TRAIN", "Layer", "create_layer", "layer_type_list", "register"]


def __getattr__(name):
    # pycaffe's caffe.layers: ``from protonet import layers as L; L.Convolution(bottom, ...)``
    if name[:1].isupper():
        from ..net_spec import layers as _spec_layers
        return getattr(_spec_layers, name)
    raise AttributeError(f"module 'protonet.layers' has no attribute {name!r}")
