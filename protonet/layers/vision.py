"""Vision layers, by module: Convolution, Deconvolution, Im2col
(:mod:`protonet.layers.conv`), Pooling and SPP (:mod:`protonet.layers.pooling`), and Crop.

After Caffe's ``src/caffe/layers/crop_layer.cpp``.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register
from .common import canonical_axis
from .conv import ConvolutionLayer, DeconvolutionLayer, Im2colLayer  # noqa: F401 (registers)
from .pooling import PoolingLayer, SPPLayer  # noqa: F401 (registers)


@register("Crop")
class CropLayer(Layer):
    """Crops bottom[0] to bottom[1]'s shape on axes ``axis`` and later (``crop_param``).

    ``offset`` is empty (all 0), one value for every cropped axis, or one per
    cropped axis; axes before ``axis`` are kept whole. bottom[1] only gives the
    shape and gets no gradient. Backward zero-fills and copies the top diff in.
    """

    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.crop_param
        self.start = canonical_axis(self, bottom, p.axis)
        cropped = bottom[0].num_axes - self.start
        if len(p.offset) > 1 and len(p.offset) != cropped:
            raise self.shape_error(
                f"crop_param.offset must be given once or once per cropped axis "
                f"({cropped}: axes {self.start}..{bottom[0].num_axes - 1}), "
                f"got {len(p.offset)} values", bottom)

    def reshape(self, bottom, top):
        p = self.param.crop_param
        big, small = bottom[0].shape, bottom[1].shape
        if len(small) < len(big):
            raise self.shape_error(
                f"bottom[1] needs a size for every axis up to {len(big) - 1}", bottom)
        shape, index = list(big), []
        for i, size in enumerate(big):
            offset = 0
            if i >= self.start:
                shape[i] = small[i]
                if p.offset:
                    offset = p.offset[0] if len(p.offset) == 1 else p.offset[i - self.start]
                if size - offset < small[i]:
                    raise self.shape_error(
                        f"the crop of axis {i} (size {small[i]} at offset {offset}) runs past "
                        f"bottom[0]'s size {size}", bottom)
            index.append(slice(offset, offset + shape[i]))
        self.index = tuple(index)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        np.copyto(top[0].data, bottom[0].data[self.index])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            dx[self.index] = top[0].diff
        if propagate_down[1]:  # a shape donor: its gradient is zero
            bottom[1].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
