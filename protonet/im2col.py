"""Compatibility home of the 2-D unfolding kernels, now in :mod:`protonet.kernels.im2col`."""
from .kernels.im2col import (col2im, conv_out_size, im2col, pad_channels_last,  # noqa: F401
                             pad_image, pool_out_size, windows_channels_last)
