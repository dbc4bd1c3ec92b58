"""Vision layers: Convolution and Pooling (``conv_layer.cpp``, ``pooling_layer.cpp``).

Both work on the whole batch at once with strided views; Python loops run
only over kernel taps (``kh*kw``), never over images or output positions.
"""
from __future__ import annotations

import numpy as np

from ..im2col import col2im, conv_out_size, im2col, pool_out_size
from ..proto import caffe_pb2
from .base import TRAIN, Layer, register

_Pool = caffe_pb2.PoolingParameter
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def _buffer(cache: dict, name: str, shape, dtype, fill=None) -> np.ndarray:
    """A scratch array kept across passes; reallocated (and ``fill``-ed) when shape or dtype change."""
    buf = cache.get(name)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        buf = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
        cache[name] = buf
    return buf


@register("Convolution")
class ConvolutionLayer(Layer):
    """Caffe's Convolution: im2col + one matmul per group for the whole batch.

    Bottom ``(*outer, C, H, W)`` with ``C`` at ``axis`` -> top ``(*outer, O, Ho, Wo)``;
    weight ``(O, C/group, kh, kw)``, bias ``(O,)``. One or two spatial axes
    (1-D runs as 2-D with a height-1 kernel). Several bottoms share the weights,
    each giving its own top.
    """

    min_num_bottom = 1
    equal_num_bottom_top = True

    def layer_setup(self, bottom, top):
        cp = self.param.convolution_param
        self.axis = bottom[0].canonical_axis(cp.axis)
        nsp = bottom[0].num_axes - self.axis - 1
        if nsp not in (1, 2):
            raise self.shape_error(
                f"only 1-D and 2-D convolution is implemented; the input has {nsp} spatial "
                f"axes after the channel axis {self.axis}", bottom)
        self.num_spatial = nsp
        kernel = self._spatial(cp, "kernel_size", "kernel_h", "kernel_w", None)
        stride = self._spatial(cp, "stride", "stride_h", "stride_w", 1)
        pad = self._spatial(cp, "pad", "pad_h", "pad_w", 0)
        dilation = self._spatial(cp, "dilation", None, None, 1)
        for name, values, low in (("kernel_size", kernel, 1), ("stride", stride, 1),
                                  ("dilation", dilation, 1)):
            if min(values) < low:
                raise self.error(f"{name} must be positive, got {list(values)}")
        weight_kernel = kernel
        if nsp == 1:  # run as 2-D over a height-1 axis
            kernel, stride, pad, dilation = ((1,) + kernel, (1,) + stride, (0,) + pad,
                                             (1,) + dilation)
        self.kernel, self.stride, self.pad, self.dilation = kernel, stride, pad, dilation
        self.is_1x1 = kernel == (1, 1) and stride == (1, 1) and pad == (0, 0)

        self.channels = bottom[0].shape[self.axis]
        self.num_output = cp.num_output
        self.group = cp.group
        if self.num_output < 1:
            raise self.error("num_output must be given and positive")
        if self.group < 1:
            raise self.error(f"group must be positive, got {self.group}")
        if self.channels % self.group:
            raise self.shape_error(
                f"input channels ({self.channels}) must be divisible by group ({self.group})",
                bottom)
        if self.num_output % self.group:
            raise self.error(
                f"num_output ({self.num_output}) must be divisible by group ({self.group})")
        self.bias_term = cp.bias_term
        self.add_param((self.num_output, self.channels // self.group) + weight_kernel,
                       cp.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), cp.bias_filler)
        self._buf: dict = {}
        self._col_of = None  # index of the bottom whose columns the col buffer holds

    def _spatial(self, cp, name, h_name, w_name, default) -> tuple[int, ...]:
        """One value per spatial axis from ``name`` (repeated) or ``h_name``/``w_name``."""
        values = list(getattr(cp, name))
        nsp = self.num_spatial
        if h_name and (cp.HasField(h_name) or cp.HasField(w_name)):
            if nsp != 2:
                raise self.error(f"{h_name}/{w_name} can only be used for 2-D convolution")
            if values:
                raise self.error(f"give either {name} or {h_name}/{w_name}, not both")
            return getattr(cp, h_name), getattr(cp, w_name)
        if not values:
            if default is None:
                raise self.error(f"{name} (or {h_name}/{w_name}) is required")
            return (default,) * nsp
        if len(values) == 1:
            return (values[0],) * nsp
        if len(values) != nsp:
            raise self.error(f"{name} must be given once or once per spatial axis ({nsp}), "
                             f"got {len(values)} values")
        return tuple(values)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.shape_error("the number of input axes may not change", bottom)
        if shape[self.axis] != self.channels:
            raise self.shape_error(
                f"input has {shape[self.axis]} channels, the weights expect {self.channels}",
                bottom)
        if any(b.shape != shape for b in bottom):
            raise self.shape_error("all bottoms must have the same shape", bottom)
        self.num = int(np.prod(shape[:self.axis], dtype=np.int64))
        spatial = shape[self.axis + 1:]
        self.in_hw = (1,) * (2 - self.num_spatial) + tuple(spatial)
        self.out_hw = tuple(conv_out_size(*args) for args in zip(
            self.in_hw, self.kernel, self.pad, self.stride, self.dilation))
        if min(self.out_hw) < 1:
            raise self.shape_error(
                f"the (dilated) kernel {list(self.kernel)} does not fit the padded input", bottom)
        out_spatial = self.out_hw[2 - self.num_spatial:]
        for t in top:
            t.reshape(shape[:self.axis] + (self.num_output,) + out_spatial)
        self._col_of = None

    # -- helpers ----------------------------------------------------------------
    def _columns(self, i: int, x: np.ndarray) -> np.ndarray:
        """Columns of bottom ``i`` (data ``x``) as ``(G, C/G*kh*kw, N*Ho*Wo)``."""
        N, C, G = self.num, self.channels, self.group
        H, W = self.in_hw
        Ho, Wo = self.out_hw
        kh, kw = self.kernel
        x4 = x.reshape(N, C, H, W)
        if self.is_1x1 and N == 1:
            col = x4.reshape(C, H * W)
        else:
            col = _buffer(self._buf, "col", (C, kh, kw, N, Ho, Wo), x.dtype)
            if self.is_1x1:
                col.reshape(C, N, H * W)[...] = x4.reshape(N, C, H * W).transpose(1, 0, 2)
            else:
                im2col(x4, self.kernel, self.pad, self.stride, self.dilation, out=col)
        self._col, self._col_of = col.reshape(G, -1, N * Ho * Wo), i
        return self._col

    def _weights(self) -> np.ndarray:
        """Weights as ``(G, O/G, C/G*kh*kw)`` (a view)."""
        return self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1)

    # -- passes -----------------------------------------------------------------
    def forward(self, bottom, top):
        N, O = self.num, self.num_output
        P = self.out_hw[0] * self.out_hw[1]
        w = self._weights()
        for i, (b, t) in enumerate(zip(bottom, top)):
            col = self._columns(i, b.data)
            y = t.data.reshape(N, O, P)
            if N == 1:  # (G, O/G, K) @ (G, K, P) straight into the top
                np.matmul(w, col, out=y.reshape(w.shape[0], w.shape[1], P))
            else:
                # (G, O/G, N*P) = (G, O/G, K) @ (G, K, N*P), then (O, N, P) -> (N, O, P)
                out = _buffer(self._buf, "out", (w.shape[0], w.shape[1], N * P), y.dtype)
                np.matmul(w, col, out=out)
                y[...] = out.reshape(O, N, P).transpose(1, 0, 2)
            if self.bias_term:
                y += self.blobs[1].data[:, None]

    def backward(self, top, propagate_down, bottom):
        N, C, O, G = self.num, self.channels, self.num_output, self.group
        H, W = self.in_hw
        P = self.out_hw[0] * self.out_hw[1]
        w = self._weights()
        w_diff = self.blobs[0].diff.reshape(w.shape)
        for i in reversed(range(len(bottom))):  # the last forwarded bottom's columns are cached
            b, t = bottom[i], top[i]
            dy = t.diff.reshape(N, O, P)
            if N == 1:
                dyg = dy.reshape(G, O // G, P)
            else:
                dyg = _buffer(self._buf, "dy", (O, N, P), dy.dtype)
                dyg[...] = dy.transpose(1, 0, 2)
                dyg = dyg.reshape(G, O // G, N * P)
            if self.bias_term:
                self.blobs[1].diff += dyg.sum(axis=2).reshape(O)
            col = self._col if self._col_of == i else self._columns(i, b.data)
            # dW (G, O/G, K) += dy (G, O/G, N*P) @ col^T (G, N*P, K)
            w_diff += np.matmul(dyg, col.transpose(0, 2, 1))
            if not propagate_down[i]:
                continue
            dx = b.diff.reshape(N, C, H, W)
            if self.is_1x1 and N == 1:
                np.matmul(w.transpose(0, 2, 1), dyg, out=dx.reshape(G, C // G, H * W))
                continue
            # dcol (G, K, N*P) = W^T (G, K, O/G) @ dy (G, O/G, N*P), written over the columns
            dcol = self._col
            np.matmul(w.transpose(0, 2, 1), dyg, out=dcol)
            self._col_of = None
            if self.is_1x1:
                dx.reshape(N, C, H * W)[...] = dcol.reshape(C, N, H * W).transpose(1, 0, 2)
            else:
                col2im(dcol.reshape(self._buf["col"].shape), dx.shape, self.kernel, self.pad,
                       self.stride, self.dilation, out=dx)

    def macc(self, bottom, top):
        kh, kw = self.kernel
        per_bottom = (kh * kw * (self.channels // self.group) * self.num_output
                      * self.out_hw[0] * self.out_hw[1] * self.num)
        return per_bottom * len(bottom)


