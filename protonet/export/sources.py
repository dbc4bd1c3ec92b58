"""Layers without bottoms: data layers become graph inputs, constants become initializers.

``Input``, ``Data``, ``ImageData``, ``HDF5Data``, ``MemoryData`` and
``WindowData`` tops are graph inputs of the shapes the net was built with (those
no exported layer reads, such as the labels of a TRAIN/TEST net, are left
out). A data layer's ``transform_param`` (crop, mean, scale) happens before the
blob, so it is not in the model. ``DummyData`` tops with a constant filler are
constants, the others inputs; ``Parameter`` is its learned blob as a constant.
"""
from __future__ import annotations

import numpy as np

from .registry import exporter


@exporter("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData")
def data_layer(L):
    for j in range(len(L.tops)):
        L.graph_input(j)
    tp = L.param.transform_param
    if L.type != "Input" and (tp.crop_size or tp.mean_file or len(tp.mean_value)
                              or tp.scale != 1 or tp.mirror):
        L.note("Caffe's transform_param (crop, mean, scale, mirror) is not part of the model: "
               "feed inputs already transformed")


@exporter("DummyData")
def dummy_data(L):
    for j, filler in enumerate(L.layer.fillers):
        if filler.type == "constant":
            L.alias(j, L.const(np.full(L.out_shapes[j], filler.value), f"{L.tops[j]}"))
        else:
            L.graph_input(j)


@exporter("Parameter")
def parameter(L):
    L.alias(0, L.const(L.weight(0), "blob"))


@exporter("Python")
def python_layer(L):
    """A Python layer without bottoms feeds the net (py-faster-rcnn's input layer): its tops
    become graph inputs. One with bottoms runs code ONNX cannot hold."""
    if L.bottoms:
        module = L.param.python_param.module
        L.fail(f"a Python layer runs the module '{module}', which ONNX cannot hold")
    for j in range(len(L.tops)):
        L.graph_input(j)
