"""Compatibility home of the N-D unfolding kernels, now in :mod:`protonet.kernels.im2col_nd`."""
from .kernels.im2col_nd import *  # noqa: F401,F403
from .kernels.im2col_nd import (col2im_nd, col2im_nd_reference, conv_out_shape,  # noqa: F401
                                deconv_out_shape, im2col_nd, im2col_nd_reference)
