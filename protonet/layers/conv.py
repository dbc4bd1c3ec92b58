"""Convolution, Deconvolution and Im2col layers: Caffe's semantics; the array work is in
:mod:`protonet.kernels.conv` and :mod:`protonet.kernels.conv_backward`.

After Caffe's ``src/caffe/layers/{conv,deconv,im2col}_layer.cpp``. 2-D (and 1-D, as 2-D
over a height-1 axis) passes pick a kernel once per shape (:meth:`ConvolutionLayer.reshape`);
3 or more spatial axes run in :mod:`protonet.layers.conv_nd`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import parallel
from ..kernels import conv as kconv
from ..kernels import conv_backward as kback
from ..kernels import jit_conv
from ..kernels.affine import Epilogue
from ..kernels.im2col import col2im, conv_out_size, im2col
from ..kernels.scratch import buffer as _buffer
from .base import TRAIN, Layer, register
from . import conv_nd

#: input channels from which a group-1 convolution runs channels-last through BLAS.
#: Below these channels, the compiled implicit GEMM takes a convolution only if an image's
#: output fits one tile (:data:`~protonet.kernels.conv.EPILOGUE_TILE_BYTES`): with few
#: channels the product is little work, and the pass that transposes a large image's
#: output rows costs more than it (SqueezeNet 1.1's conv1, 3 channels, 113x113 outputs:
#: 12.2 ms against 5.6 through the columns, whose GEMM writes NCHW directly)
CHANNELS_LAST_MIN = 16
#: ``(values, outputs)``: without the compiled implicit GEMM, a convolution whose window
#: holds fewer values (``C*kh*kw``) and that has at least this many outputs stays on Caffe's
#: columns even so (measured 1.1-1.3x faster there than BLAS on channels-last tiles:
#: SqueezeNet's 3x3 expand layers, 16 -> 64 and 32 -> 128 channels)
SHORT_WINDOW_COLUMNS = (320, 64)


def _spatial_param(layer, cp, name, h_name, w_name, default) -> tuple[int, ...]:
    """One value per spatial axis from ``name`` (repeated) or ``h_name``/``w_name``."""
    values = list(getattr(cp, name))
    nsp = layer.num_spatial
    if h_name and (cp.HasField(h_name) or cp.HasField(w_name)):
        if nsp != 2:
            raise layer.error(f"{h_name}/{w_name} can only be used for 2-D convolution")
        if values:
            raise layer.error(f"give either {name} or {h_name}/{w_name}, not both")
        return getattr(cp, h_name), getattr(cp, w_name)
    if not values:
        if default is None:
            raise layer.error(f"{name} (or {h_name}/{w_name}) is required")
        return (default,) * nsp
    if len(values) == 1:
        return (values[0],) * nsp
    if len(values) != nsp:
        raise layer.error(f"{name} must be given once or once per spatial axis ({nsp}), "
                          f"got {len(values)} values")
    return tuple(values)


def _conv_geometry(layer, cp, bottom) -> tuple[int, ...]:
    """Read the window of a ``convolution_param`` (Convolution, Deconvolution, Im2col).

    Sets ``layer.axis`` (the channel axis), ``num_spatial`` (the axes after it)
    and ``kernel``, ``stride``, ``pad``, ``dilation``: ``(h, w)`` pairs for 1-D
    (run as 2-D over a height-1 axis) and 2-D, one value per axis for 3+ axes
    (run by :mod:`protonet.layers.conv_nd`); and ``is_1x1``. Returns the kernel
    per spatial axis (the shape a weight blob has).
    """
    layer.axis = bottom[0].canonical_axis(cp.axis)
    nsp = bottom[0].num_axes - layer.axis - 1
    if nsp < 1:
        raise layer.shape_error(
            f"the input needs at least one spatial axis after the channel axis {layer.axis}",
            bottom)
    layer.num_spatial = nsp
    kernel = _spatial_param(layer, cp, "kernel_size", "kernel_h", "kernel_w", None)
    stride = _spatial_param(layer, cp, "stride", "stride_h", "stride_w", 1)
    pad = _spatial_param(layer, cp, "pad", "pad_h", "pad_w", 0)
    dilation = _spatial_param(layer, cp, "dilation", None, None, 1)
    for name, values, low in (("kernel_size", kernel, 1), ("stride", stride, 1),
                              ("dilation", dilation, 1)):
        if min(values) < low:
            raise layer.error(f"{name} must be positive, got {list(values)}")
    weight_kernel = kernel
    if nsp == 1:  # run as 2-D over a height-1 axis
        kernel, stride, pad, dilation = ((1,) + kernel, (1,) + stride, (0,) + pad,
                                         (1,) + dilation)
    layer.kernel, layer.stride, layer.pad, layer.dilation = kernel, stride, pad, dilation
    layer.is_1x1 = set(kernel) == {1} and set(stride) == {1} and not any(pad)
    return weight_kernel


@register("Convolution")
class ConvolutionLayer(Layer):
    """Caffe's Convolution. Bottom ``(*outer, C, H, W)`` with ``C`` at ``axis`` -> top
    ``(*outer, O, Ho, Wo)``; weight ``(O, C/group, kh, kw)``, bias ``(O,)``. Any number of
    spatial axes (1-D runs as 2-D with a height-1 kernel; 3 or more run in
    :mod:`protonet.layers.conv_nd`). Several bottoms share the weights, each giving its
    own top.

    The 2-D kernel (:attr:`strategy`): ``"1x1"`` (a plain GEMM, no columns),
    ``"depthwise"`` (``group == C == O``: per-tap multiply-adds), ``"channels_last"``
    (group 1, several images, and either the compiled implicit GEMM applies
    (:mod:`~protonet.kernels.jit_conv`: float32, outputs a multiple of the vector width)
    or at least :data:`CHANNELS_LAST_MIN` channels and a window that is not short
    (:data:`SHORT_WINDOW_COLUMNS`): cache-sized tiles of channels-last columns)
    or ``"columns"`` (Caffe's im2col and one GEMM per group). The batch is cut into one
    part per thread; a single image's GEMMs run on BLAS's threads.
    """

    min_num_bottom = 1
    equal_num_bottom_top = True
    shares_scratch = True
    splits_work = True

    def layer_setup(self, bottom, top):
        cp = self.param.convolution_param
        weight_kernel = _conv_geometry(self, cp, bottom)
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
        self.add_param(self._weight_shape(weight_kernel), cp.weight_filler)
        if self.bias_term:
            self.add_param((self.num_output,), cp.bias_filler)
        self._buf: dict = {}
        # which bottom's columns the col buffers hold (for backward), for which batch parts;
        # the buffers may be shared with a same-named layer of another net (a test net), so
        # the layer also stamps them with its token
        self._col_of, self._col_parts, self._token = None, None, object()

    def _weight_shape(self, kernel) -> tuple[int, ...]:
        return (self.num_output, self.channels // self.group) + tuple(kernel)

    def _check_bottoms(self, bottom) -> tuple[int, ...]:
        """Check the bottoms against the setup; sets ``num`` and ``in_hw``; returns the shape."""
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.shape_error("the number of input axes may not change", bottom)
        if shape[self.axis] != self.channels:
            raise self.shape_error(
                f"input has {shape[self.axis]} channels, the weights expect {self.channels}",
                bottom)
        if any(b.shape != shape for b in bottom):
            raise self.shape_error("all bottoms must have the same shape", bottom)
        self.num = math.prod(shape[:self.axis])
        self.in_hw = (1,) * (2 - self.num_spatial) + tuple(shape[self.axis + 1:])
        return shape

    def reshape(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.conv_reshape(self, bottom, top)
        shape = self._check_bottoms(bottom)
        self.out_hw = tuple(conv_out_size(*args) for args in zip(
            self.in_hw, self.kernel, self.pad, self.stride, self.dilation))
        if min(self.out_hw) < 1:
            raise self.shape_error(
                f"the (dilated) kernel {list(self.kernel)} does not fit the padded input", bottom)
        out_spatial = self.out_hw[2 - self.num_spatial:]
        for t in top:
            t.reshape(shape[:self.axis] + (self.num_output,) + out_spatial)
        self._col_of = None
        self.strategy = self._pick_strategy()

    def _pick_strategy(self) -> str:
        C, G, O = self.channels, self.group, self.num_output
        if type(self) is not ConvolutionLayer:
            return "columns"
        if G > 1 and G == C == O:
            return "depthwise"
        if G == 1 and self.kernel == (1, 1) and not any(self.pad):
            return "1x1"
        short = (C * self.kernel[0] * self.kernel[1] < SHORT_WINDOW_COLUMNS[0]
                 and O >= SHORT_WINDOW_COLUMNS[1])
        image_rows = O * math.prod(self.out_hw) * 4  # one image's output rows, float32
        compiled = jit_conv.supported(O, self.dilation[1], self.blobs[0].data.dtype) and (
            C >= CHANNELS_LAST_MIN or image_rows <= kconv.EPILOGUE_TILE_BYTES)
        if G == 1 and self.num > 1 and (compiled or (C >= CHANNELS_LAST_MIN and not short)):
            return "channels_last"
        return "columns"  # a single image: its GEMMs run on BLAS's threads, fastest this way

    @property
    def _channels_last(self) -> bool:
        return self.strategy == "channels_last"

    @property
    def _full_pad(self) -> tuple[int, int] | None:
        """The padding of backward-data as a convolution, if it pays
        (:func:`~protonet.kernels.conv_backward.full_conv_pad`)."""
        return kback.full_conv_pad(*self._geometry)

    @property
    def _geometry(self) -> tuple:
        return self.kernel, self.pad, self.stride, self.dilation, self.in_hw, self.out_hw

    def _parts(self) -> list[tuple[slice, slice]]:
        """``(images, output channels)`` worked on concurrently: batch parts
        (:mod:`protonet.parallel`), each with all of :meth:`_inner_extent`. A single image
        is not cut: its GEMMs run on BLAS's own threads, and cutting its depthwise or
        elementwise work along channels or rows was measured no faster on two cores (the
        parts' many numpy calls wait on each other for the GIL)."""
        width = self._inner_extent()
        P = self.out_hw[0] * self.out_hw[1]
        batch = parallel.split(
            self.num, self.num * self.channels * self.kernel[0] * self.kernel[1] * P)
        return parallel.Parts([(s, slice(0, width)) for s in batch], batch.small)

    def _inner_extent(self) -> int:
        return self.num_output if self.strategy in ("1x1", "depthwise") else self.out_hw[0]

    def _padded_buffer(self, key: str, x: np.ndarray) -> np.ndarray | None:
        """Scratch for ``x`` ``(n, C, H, W)`` padded by :attr:`pad` (None without padding)."""
        if not any(self.pad):
            return None
        (n, C, H, W), (ph, pw) = x.shape, self.pad
        return _buffer(self._buf, key, (n, C, H + 2 * ph, W + 2 * pw), x.dtype)

    def _weights(self) -> np.ndarray:
        """Weights as ``(G, O/G, C/G*kh*kw)`` (a view)."""
        return self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1)

    def _part_columns(self, k: int, s: slice, x4: np.ndarray) -> np.ndarray:
        """Columns of the images ``x4[s]``, ``(G, C/G*kh*kw, n*Ho*Wo)``, in part ``k``'s buffer."""
        C, G = self.channels, self.group
        H, W = self.in_hw
        Ho, Wo = self.out_hw
        n = s.stop - s.start
        if self.is_1x1 and n == 1:
            return x4[s.start].reshape(G, C // G, H * W)  # a view: nothing to unfold
        col = _buffer(self._buf, f"col{k}", (C,) + self.kernel + (n,) + self.out_hw, x4.dtype)
        if self.is_1x1:
            col.reshape(C, n, H * W)[...] = x4[s].reshape(n, C, H * W).transpose(1, 0, 2)
        else:
            frame = (_buffer(self._buf, f"xpad{k}", x4[s].shape[:2] + tuple(
                n + 2 * p for n, p in zip(self.in_hw, self.pad)), x4.dtype)
                if any(self.pad) else None)
            im2col(x4[s], self.kernel, self.pad, self.stride, self.dilation, out=col,
                   frame=frame)
        return col.reshape(G, -1, n * Ho * Wo)

    # -- passes -----------------------------------------------------------------
    def forward(self, bottom, top, epilogue: Epilogue | None = None):
        """``epilogue`` (from :mod:`protonet.fuse`, one bottom) stands for the top: what
        to write from the bias-free convolution (:class:`~protonet.kernels.affine.Epilogue`)."""
        if self.num_spatial > 2:
            return conv_nd.conv_forward(self, bottom, top)
        N, C, O = self.num, self.channels, self.num_output
        P = self.out_hw[0] * self.out_hw[1]
        w = self.blobs[0].data.reshape((O, C // self.group) + self.kernel)  # 1-D as 2-D
        bias = self.blobs[1].data if self.bias_term else None
        parts = self._parts()
        strategy = self.strategy
        geometry = (self.kernel, self.stride, self.pad, self.dilation)
        # the columns of every image are kept for backward in TRAIN; in TEST, images
        # multiplied one by one share one image's buffer, which stays in cache
        keep = self.phase == TRAIN
        for i, (b, t) in enumerate(zip(bottom, top)):
            x4 = b.data.reshape((N, C) + self.in_hw)
            ep = epilogue or Epilogue([(t.data.reshape(N, O, P), None, bias)])
            w_cols = None
            if strategy == "channels_last":
                scale = ep.outputs[0][1]
                w_cols = kconv.weight_columns(
                    w, scale, _buffer(self._buf, "wcols", w.shape, w.dtype),
                    jit_conv.chunk(O, self.dilation[1], w.dtype))
                if scale is not None:
                    ep = ep.without_first_scale()

            def work(k, part, x4=x4, ep=ep, w_cols=w_cols):
                s, inner = part
                if strategy == "1x1":
                    kconv.conv_1x1(x4, w.reshape(O, C), ep, s, inner, self.stride, self._buf, k)
                elif strategy == "depthwise":
                    kconv.depthwise(x4, w, ep, s, inner, *geometry, self._buf, k)
                elif strategy == "columns":
                    kconv.im2col_gemm(x4, w, ep, s, inner, self.group, *geometry, self._buf, k,
                                      keep=keep)
                else:  # channels-last: each part frames its own images
                    frame = kconv.frame_channels_last(x4[s], self.pad, self._buf, f"xpad{k}")
                    kconv.channels_last_conv(frame, w_cols, ep, s, (self.kernel, self.stride,
                                             self.dilation, self.out_hw), self._buf, k)
            parallel.run(work, parts)
            # backward reuses what the buffers hold: the channels-last frames, or (TRAIN) the
            # columns, of whole-image parts
            keeps = strategy == "channels_last" or (strategy == "columns" and keep)
            self._col_of, self._col_parts = (i, parts) if keeps else (None, None)
            self._buf["owner"] = self._token

    def backward(self, top, propagate_down, bottom):
        if self.num_spatial > 2:
            return conv_nd.conv_backward(self, top, propagate_down, bottom)
        N, C, O = self.num, self.channels, self.num_output
        P = self.out_hw[0] * self.out_hw[1]
        w = self.blobs[0].data.reshape((O, C // self.group) + self.kernel)
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        parts = self._parts()
        channels_last = self.strategy == "channels_last"
        for i in reversed(range(len(bottom))):  # the last forwarded bottom's columns are kept
            b, t = bottom[i], top[i]
            if not (propagate_down[i] or want_w or want_b):
                continue
            kept = (self._col_of == i and self._col_parts == parts
                    and self._buf.get("owner") is self._token)
            x4 = b.data.reshape((N, C) + self.in_hw)
            dx = b.diff.reshape((N, C) + self.in_hw)
            dy = t.diff.reshape(N, O, P)
            d_w, d_b = [None] * len(parts), [None] * len(parts)
            w_data = None
            if propagate_down[i] and channels_last:
                full = kback.full_conv_pad(*self._geometry)
                w_data = (kback.weight_slabs(w, self._buf) if full is None
                          else kback.flipped_weight_columns(
                              w, self._buf, jit_conv.chunk(C, self.dilation[1], w.dtype)))

            def work(k, part, x4=x4, dx=dx, dy=dy, down=propagate_down[i], kept=kept):
                s = part[0]
                n = s.stop - s.start
                if channels_last:
                    d_w[k], d_b[k] = kback.channels_last_backward(
                        self._geometry, k, x4[s], dy[s], dx[s], down, kept, want_w, want_b,
                        w_data, self._buf)
                    return

                def columns():
                    if kept and self.strategy == "columns":
                        return _buffer(self._buf, f"col{k}", (C,) + self.kernel + (n,)
                                       + self.out_hw, x4.dtype).reshape(self.group, -1, n * P)
                    return self._part_columns(k, s, x4)
                d_w[k], d_b[k] = kback.columns_backward(
                    self._geometry, self.group, w, columns, x4[s], dy[s], dx[s], down, want_w,
                    want_b, self._buf, k, self.is_1x1)
            parallel.run(work, parts)
            if propagate_down[i]:
                self._col_of = None  # the column buffers now hold gradients
            if want_w:
                w_diff = self.blobs[0].diff
                for part in d_w:
                    w_diff += part.reshape(w_diff.shape)
            if want_b:
                for part in d_b:
                    self.blobs[1].diff += part

    def macc(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.conv_macc(self, bottom, top)
        kh, kw = self.kernel
        per_bottom = (kh * kw * (self.channels // self.group) * self.num_output
                      * self.out_hw[0] * self.out_hw[1] * self.num)
        return per_bottom * len(bottom)


@register("Deconvolution")
class DeconvolutionLayer(ConvolutionLayer):
    """Caffe's Deconvolution (transposed convolution): the convolution's passes swapped.

    Bottom ``(*outer, C, H, W)`` -> top ``(*outer, O, Ho, Wo)`` with
    ``Ho = stride*(H-1) + dilation*(kh-1)+1 - 2*pad``; weight ``(C, O/group, kh, kw)``
    (Caffe's reversed layout), bias ``(O,)``. Forward is the convolution's
    backward-data (one matmul per group, then col2im); the bottom gradient is
    the convolution's forward (im2col, then one matmul per group).
    """

    splits_work = False  # its GEMMs run whole, on BLAS's threads
    runs_gemms = True

    def _weight_shape(self, kernel) -> tuple[int, ...]:
        return (self.channels, self.num_output // self.group) + tuple(kernel)

    def reshape(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.deconv_reshape(self, bottom, top)
        shape = self._check_bottoms(bottom)
        self.out_hw = tuple(s * (n - 1) + d * (k - 1) + 1 - 2 * p for n, k, p, s, d in zip(
            self.in_hw, self.kernel, self.pad, self.stride, self.dilation))
        if min(self.out_hw) < 1:
            raise self.shape_error(
                f"pad {list(self.pad[2 - self.num_spatial:])} leaves no output "
                f"(output size {list(self.out_hw[2 - self.num_spatial:])})", bottom)
        for t in top:
            t.reshape(shape[:self.axis] + (self.num_output,) + self.out_hw[2 - self.num_spatial:])

    def _weights(self) -> np.ndarray:
        """Weights as ``(G, C/G, O/G*kh*kw)`` (a view)."""
        return self.blobs[0].data.reshape(self.group, self.channels // self.group, -1)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """Bottom-shaped ``x`` as ``(G, C/G, N*H*W)`` (a view when N == 1)."""
        N, C, G = self.num, self.channels, self.group
        P = self.in_hw[0] * self.in_hw[1]
        if N == 1:
            return x.reshape(G, C // G, P)
        rows = _buffer(self._buf, "rows", (C, N, P), x.dtype)
        rows[...] = x.reshape(N, C, P).transpose(1, 0, 2)
        return rows.reshape(G, C // G, N * P)

    def _col_buffer(self, dtype) -> np.ndarray:
        """The column buffer ``(O, kh, kw, N, H, W)``: columns over the *bottom* positions."""
        return _buffer(self._buf, "col", (self.num_output,) + self.kernel + (self.num,)
                       + self.in_hw, dtype)

    def forward(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.deconv_forward(self, bottom, top)
        N, O, G = self.num, self.num_output, self.group
        P = self.in_hw[0] * self.in_hw[1]
        w = self._weights()
        for b, t in zip(bottom, top):
            col = self._col_buffer(b.data.dtype)
            # col (G, O/G*kh*kw, N*P) = W^T (G, O/G*kh*kw, C/G) @ x (G, C/G, N*P)
            np.matmul(w.transpose(0, 2, 1), self._rows(b.data), out=col.reshape(G, -1, N * P))
            y = t.data.reshape((N, O) + self.out_hw)
            col2im(col, y.shape, self.kernel, self.pad, self.stride, self.dilation, out=y)
            if self.bias_term:
                y += self.blobs[1].data[:, None, None]

    def backward(self, top, propagate_down, bottom):
        if self.num_spatial > 2:
            return conv_nd.deconv_backward(self, top, propagate_down, bottom)
        N, C, O, G = self.num, self.channels, self.num_output, self.group
        P = self.in_hw[0] * self.in_hw[1]
        w = self._weights()
        w_diff = self.blobs[0].diff.reshape(w.shape)
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        for i in range(len(bottom)):
            b, t = bottom[i], top[i]
            dy = t.diff.reshape((N, O) + self.out_hw)
            if want_b:
                self.blobs[1].diff += dy.sum(axis=(0, 2, 3))
            if not (want_w or propagate_down[i]):
                continue
            col = im2col(dy, self.kernel, self.pad, self.stride, self.dilation,
                         out=self._col_buffer(dy.dtype), frame=self._padded_buffer("xpad", dy))
            col = col.reshape(G, -1, N * P)
            if want_w:
                # dW (G, C/G, O/G*kh*kw) += (col (G, O/G*kh*kw, N*P) @ x^T (G, N*P, C/G))^T
                # (faster than x @ col^T, as the convolution's weight gradient)
                w_diff += np.matmul(col, self._rows(b.data).transpose(0, 2, 1)).transpose(0, 2, 1)
            if propagate_down[i]:
                # dx (G, C/G, N*P) = W (G, C/G, O/G*kh*kw) @ col (G, O/G*kh*kw, N*P)
                if N == 1:
                    np.matmul(w, col, out=b.diff.reshape(G, C // G, P))
                else:
                    dx = _buffer(self._buf, "rows", (C, N, P), dy.dtype)
                    np.matmul(w, col, out=dx.reshape(G, C // G, N * P))
                    b.diff.reshape(N, C, P)[...] = dx.transpose(1, 0, 2)

    def macc(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.deconv_macc(self, bottom, top)
        kh, kw = self.kernel
        per_bottom = (kh * kw * (self.channels // self.group) * self.num_output
                      * self.in_hw[0] * self.in_hw[1] * self.num)
        return per_bottom * len(bottom)


@register("Im2col")
class Im2colLayer(Layer):
    """Caffe's Im2col: the convolution's column matrix as a blob.

    Bottom ``(*outer, C, H, W)`` -> top ``(*outer, C*kh*kw, Ho, Wo)``, channel
    ``(c*kh + i)*kw + j`` holding ``x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]``
    (zero in the padding), as ``im2col_cpu`` per image. Reads ``convolution_param``
    (kernel, stride, pad, dilation, axis; any number of spatial axes, 3 or more
    in :mod:`protonet.layers.conv_nd`). Backward is col2im.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.weight_kernel = _conv_geometry(self, self.param.convolution_param, bottom)

    def reshape(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.im2col_reshape(self, bottom, top)
        shape = bottom[0].shape
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise self.shape_error("the number of input axes may not change", bottom)
        self.num = math.prod(shape[:self.axis])
        self.channels = shape[self.axis]
        self.in_hw = (1,) * (2 - self.num_spatial) + tuple(shape[self.axis + 1:])
        self.out_hw = tuple(conv_out_size(*args) for args in zip(
            self.in_hw, self.kernel, self.pad, self.stride, self.dilation))
        if min(self.out_hw) < 1:
            raise self.shape_error(
                f"the (dilated) kernel {list(self.weight_kernel)} does not fit the padded input",
                bottom)
        rows = self.channels * int(np.prod(self.weight_kernel))
        top[0].reshape(shape[:self.axis] + (rows,) + self.out_hw[2 - self.num_spatial:])

    def _columns(self, array: np.ndarray) -> np.ndarray:
        """A top-shaped array viewed in im2col's layout ``(C, kh, kw, N, Ho, Wo)``."""
        return array.reshape((self.num, self.channels) + self.kernel + self.out_hw).transpose(
            1, 2, 3, 0, 4, 5)

    def forward(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.im2col_forward(self, bottom, top)
        x = bottom[0].data.reshape((self.num, self.channels) + self.in_hw)
        # written straight into the top through a transposed view (no extra copy)
        im2col(x, self.kernel, self.pad, self.stride, self.dilation,
               out=self._columns(top[0].data))

    def backward(self, top, propagate_down, bottom):
        if self.num_spatial > 2:
            return conv_nd.im2col_backward(self, top, propagate_down, bottom)
        if not propagate_down[0]:
            return
        dx = bottom[0].diff.reshape((self.num, self.channels) + self.in_hw)
        col2im(self._columns(top[0].diff), dx.shape, self.kernel, self.pad, self.stride,
               self.dilation, out=dx)


