"""Vision layers: Convolution, Deconvolution, Pooling, SPP, Im2col, Crop.

After Caffe's ``src/caffe/layers/{conv,deconv,pooling,spp,im2col,crop}_layer.cpp``.
All work on the whole batch at once with strided views; Python loops run
only over kernel taps (``kh*kw``), pyramid levels or axes, never over images
or output positions.
"""
from __future__ import annotations

import math

import numpy as np

from ..blob import Blob
from ..errors import ProtonetError
from ..im2col import (col2im, conv_out_size, im2col, pad_channels_last, pool_out_size,
                      windows_channels_last)
from .. import parallel
from ..proto import caffe_pb2
from .base import TRAIN, Layer, register
from .common import canonical_axis
from . import conv_nd

_Pool = caffe_pb2.PoolingParameter
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
#: input channels from which a convolution runs channels-last (``ConvolutionLayer._channels_last``)
CHANNELS_LAST_MIN = 16
#: how much larger than the top a bottom may be for backward-data to run as a full convolution
FULL_CONV_MAX_GROWTH = 1.5


def _buffer(cache: dict, name: str, shape, dtype, fill=None, copy_of=None) -> np.ndarray:
    """A scratch array of ``shape`` kept across passes.

    Plain buffers only grow, as a Caffe Blob's capacity: a smaller request is a
    view of the start of the kept array (so nets of different batch sizes
    sharing scratch, or a net reshaped back and forth, allocate nothing new).
    A ``fill``-ed buffer (a frame whose border must hold ``fill``) is remade
    whenever its shape changes. With ``copy_of``, the buffer is overwritten
    with that array's values.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    buf = cache.get(name)
    if fill is not None:
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = cache[name] = np.full(shape, fill, dtype)
    else:
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = cache[name] = np.empty(size, dtype)
        buf = buf[:size].reshape(shape)
    if copy_of is not None:
        buf[...] = copy_of
    return buf


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
    """Caffe's Convolution: im2col + one matmul per group for the whole batch.

    Bottom ``(*outer, C, H, W)`` with ``C`` at ``axis`` -> top ``(*outer, O, Ho, Wo)``;
    weight ``(O, C/group, kh, kw)``, bias ``(O,)``. Any number of spatial axes
    (1-D runs as 2-D with a height-1 kernel; 3 or more run in
    :mod:`protonet.layers.conv_nd`). Several bottoms share the weights, each
    giving its own top.
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

    # -- helpers ----------------------------------------------------------------
    def _parts(self) -> list[slice]:
        """The batch parts worked on concurrently (see :mod:`protonet.parallel`)."""
        K = self.channels * self.kernel[0] * self.kernel[1]
        return parallel.split(self.num, self.num * K * self.out_hw[0] * self.out_hw[1])

    def _part_col_buffer(self, k: int, n: int, dtype) -> np.ndarray:
        """Part ``k``'s column buffer ``(C, kh, kw, n, Ho, Wo)`` for ``n`` images (kept)."""
        return _buffer(self._buf, f"col{k}", (self.channels,) + self.kernel + (n,) + self.out_hw,
                       dtype)

    def _part_columns(self, k: int, s: slice, x4: np.ndarray) -> np.ndarray:
        """Columns of the images ``x4[s]``, ``(G, C/G*kh*kw, n*Ho*Wo)``, in part ``k``'s buffer."""
        C, G = self.channels, self.group
        H, W = self.in_hw
        Ho, Wo = self.out_hw
        n = s.stop - s.start
        if self.is_1x1 and n == 1:
            return x4[s.start].reshape(G, C // G, H * W)  # a view: nothing to unfold
        col = self._part_col_buffer(k, n, x4.dtype)
        if self.is_1x1:
            col.reshape(C, n, H * W)[...] = x4[s].reshape(n, C, H * W).transpose(1, 0, 2)
        else:
            im2col(x4[s], self.kernel, self.pad, self.stride, self.dilation, out=col,
                   frame=self._padded_buffer(f"xpad{k}", x4[s]))
        return col.reshape(G, -1, n * Ho * Wo)

    def _padded_buffer(self, key: str, x: np.ndarray) -> np.ndarray | None:
        """Scratch for ``x`` ``(n, C, H, W)`` padded by :attr:`pad` (None without padding)."""
        if not any(self.pad):
            return None
        (n, C, H, W), (ph, pw) = x.shape, self.pad
        return _buffer(self._buf, key, (n, C, H + 2 * ph, W + 2 * pw), x.dtype)

    def _weights(self) -> np.ndarray:
        """Weights as ``(G, O/G, C/G*kh*kw)`` (a view)."""
        return self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1)

    @property
    def _channels_last(self) -> bool:
        """Whether this convolution runs channels-last, a few images at a time.

        With many input channels, the NCHW im2col copies short ``Wo`` runs and
        builds a column matrix far larger than the cache, which the GEMM then
        reads back from memory. Channels-last windows copy runs of ``kw*C``
        floats, and each tile of images is unfolded and multiplied while it is
        still in cache (:meth:`_convolve_tiles`).
        """
        return (type(self) is ConvolutionLayer and self.group == 1 and not self.is_1x1
                and self.channels >= CHANNELS_LAST_MIN)

    @property
    def _full_pad(self) -> tuple[int, int] | None:
        """Padding that makes backward-data a stride-1 convolution of the top diff, if it pays.

        With stride 1, ``dx`` is ``dy`` padded by ``dilation*(k-1) - pad``
        and convolved with the weights flipped in space and transposed in
        channels. That is one more tiled convolution, unless the padding is
        negative or the bottom much larger than the top (the GEMM would then
        mostly multiply padding zeros); None then.
        """
        if self.stride != (1, 1):
            return None
        pad = tuple(d * (k - 1) - p for d, k, p in zip(self.dilation, self.kernel, self.pad))
        in_size, out_size = math.prod(self.in_hw), math.prod(self.out_hw)
        if min(pad) < 0 or in_size > FULL_CONV_MAX_GROWTH * out_size:
            return None
        return pad

    def _weight_columns(self) -> np.ndarray:
        """Weights as ``(kh*kw*C, O)``, rows in channels-last window order (a copy)."""
        O, C = self.num_output, self.channels
        w = self.blobs[0].data.reshape((O, C) + self.kernel)
        return _buffer(self._buf, "wcols", self.kernel + (C, O), w.dtype,
                       copy_of=w.transpose(2, 3, 1, 0)).reshape(-1, O)

    def _flipped_weight_columns(self) -> np.ndarray:
        """Weights of the backward-data convolution, ``(kh*kw*O, C)`` (a copy)."""
        O, C = self.num_output, self.channels
        w = self.blobs[0].data.reshape((O, C) + self.kernel)
        return _buffer(self._buf, "wflip", self.kernel + (O, C), w.dtype,
                       copy_of=w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)).reshape(-1, C)

    def _frame(self, k: int, key: str, x: np.ndarray, pad) -> np.ndarray:
        """``x`` ``(n, C, H, W)`` padded channels-last in part ``k``'s buffer ``key``."""
        n, C, H, W = x.shape
        frame = _buffer(self._buf, f"{key}{k}", (n, H + 2 * pad[0], W + 2 * pad[1], C), x.dtype)
        return pad_channels_last(x, pad, frame)

    def _convolve_tiles(self, k: int, windows: np.ndarray, w_cols: np.ndarray,
                        out: np.ndarray, bias: np.ndarray | None = None,
                        x: np.ndarray | None = None) -> np.ndarray | None:
        """``out (n, Cout, Ho*Wo)`` = windows ``(n, Ho, Wo, kh, kw, Cin)`` @ ``w_cols (K, Cout)``.

        Tile by tile (:func:`protonet.parallel.tiles`): the tile's windows are
        copied into part ``k``'s column buffer ``(t*Ho*Wo, K)``, multiplied
        into rows ``(t*Ho*Wo, Cout)``, and the rows transposed into ``out``.
        Given ``x`` (shaped like ``out``), the same columns also give
        ``x`` rows^T ``(Cout, t*Ho*Wo)`` @ columns, summed over the tiles and
        returned as ``(Cout, K)``: backward-data's columns of the top diff
        (:attr:`_full_pad`) then yield the weight gradient too.
        """
        n, Ho, Wo = windows.shape[:3]
        P, (K, O) = Ho * Wo, w_cols.shape
        product = None if x is None else np.zeros((O, K), out.dtype)
        for t in parallel.tiles(slice(0, n), P * K * out.itemsize):
            m = t.stop - t.start
            col = _buffer(self._buf, f"col{k}", (m,) + windows.shape[1:], out.dtype)
            col[...] = windows[t]
            col = col.reshape(m * P, K)
            rows = _buffer(self._buf, f"out{k}", (m * P, O), out.dtype)
            if x is not None:
                rows.reshape(m, P, O)[...] = x[t].reshape(m, O, P).transpose(0, 2, 1)
                product += parallel.matmul(rows.T, col)
            parallel.matmul(col, w_cols, out=rows)
            if bias is not None:
                rows += bias
            out[t] = rows.reshape(m, P, O).transpose(0, 2, 1)
        return product

    def _input_windows(self, k: int, x: np.ndarray, cached: bool = False) -> np.ndarray:
        """Convolution windows of the images ``x`` (part ``k``); from its kept frame if cached."""
        if cached:
            n, C, H, W = x.shape
            shape = (n, H + 2 * self.pad[0], W + 2 * self.pad[1], C)
            frame = _buffer(self._buf, f"xpad{k}", shape, x.dtype)
        else:
            frame = self._frame(k, "xpad", x, self.pad)
        return windows_channels_last(frame, self.kernel, self.stride, self.dilation, self.out_hw)

    def _backward_channels_last(self, k, s, x4, dy, dx, down, cached, want_w, want_b, w_data):
        """One part's gradients, channels-last: returns ``(dW (O, C, kh, kw), db (O,))``.

        ``w_data`` are the weights backward-data needs (made once, before the
        parts run): the flipped weight columns when :attr:`_full_pad` applies,
        else the per-tap slabs.
        """
        N, C, O = self.num, self.channels, self.num_output
        (kh, kw), n, P = self.kernel, s.stop - s.start, self.out_hw[0] * self.out_hw[1]
        d_b = dy[s].sum(axis=(0, 2)) if want_b else None
        pad = self._full_pad if down else None
        if pad is not None:  # one unfold of dy serves dx and dW
            dy4 = dy.reshape((N, O) + self.out_hw)
            windows = windows_channels_last(self._frame(k, "dypad", dy4[s], pad),
                                            self.kernel, (1, 1), self.dilation, self.in_hw)
            d_w = self._convolve_tiles(k, windows, w_data, dx[s].reshape(n, C, -1),
                                       x=x4[s] if want_w else None)
            # dW[o, c, i, j] = (the flipped kernel's gradient)[c, kh-1-i, kw-1-j, o]
            return (None if d_w is None else
                    d_w.reshape(C, kh, kw, O)[:, ::-1, ::-1].transpose(3, 0, 1, 2)), d_b
        if not (want_w or down):
            return None, d_b
        rows = _buffer(self._buf, f"out{k}", (n, P, O), dy.dtype)  # dy rows, for dW and dx
        rows[...] = dy[s].transpose(0, 2, 1)
        d_w = (self._weight_gradient_tiles(k, self._input_windows(k, x4[s], cached), rows)
               if want_w else None)
        if down:
            self._fold_slabs(k, rows, w_data, dx[s])
        return d_w, d_b

    def _weight_gradient_tiles(self, k: int, windows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """dW ``(O, C, kh, kw)`` = sum over tiles of dy rows^T @ the tile's input columns.

        ``windows`` are the input windows ``(n, Ho, Wo, kh, kw, C)`` and
        ``rows`` the matching top diff, channels-last ``(n, Ho*Wo, O)``.
        """
        n, P, O = rows.shape
        C = self.channels
        K = C * self.kernel[0] * self.kernel[1]
        d_w = np.zeros((O, K), rows.dtype)
        for t in parallel.tiles(slice(0, n), P * K * rows.itemsize):
            m = t.stop - t.start
            col = _buffer(self._buf, f"col{k}", (m,) + windows.shape[1:], rows.dtype)
            col[...] = windows[t]
            d_w += parallel.matmul(rows[t].reshape(m * P, O).T, col.reshape(m * P, K))
        return d_w.reshape((O,) + self.kernel + (C,)).transpose(0, 3, 1, 2)

    def _weight_slabs(self) -> np.ndarray:
        """Weights as ``(kh*kw, O, C)``, one ``(O, C)`` matrix per kernel tap (a copy)."""
        O, C = self.num_output, self.channels
        return _buffer(self._buf, "wslabs", (self.kernel[0] * self.kernel[1], O, C),
                       self.blobs[0].data.dtype, copy_of=self.blobs[0].data.reshape(
                           O, C, -1).transpose(2, 0, 1))

    def _fold_slabs(self, k: int, rows: np.ndarray, slabs: np.ndarray, dx: np.ndarray) -> None:
        """Bottom diff ``dx`` ``(n, C, H, W)``, channels-last, where :attr:`_full_pad` is None.

        One batched matmul gives, per kernel tap, a contiguous slab
        ``(n*Ho*Wo, C)`` = dy ``rows`` ``(n, Ho*Wo, O)`` @ ``W_tap (O, C)``;
        each slab is added into a padded channels-last frame ``(n, Hf, Wf, C)``
        at its tap offset (runs of ``C`` contiguous floats), and the frame's
        interior is transposed into ``dx``.
        """
        n, _, O = rows.shape
        C = self.channels
        (H, W), (Ho, Wo), (kh, kw) = self.in_hw, self.out_hw, self.kernel
        (ph, pw), (sh, sw), (dh, dw) = self.pad, self.stride, self.dilation
        slab = _buffer(self._buf, f"col{k}", (kh * kw, n * Ho * Wo, C), rows.dtype)
        parallel.matmul(rows.reshape(-1, O), slabs, out=slab)
        frame_hw = (max(H + 2 * ph, (Ho - 1) * sh + dh * (kh - 1) + 1),
                    max(W + 2 * pw, (Wo - 1) * sw + dw * (kw - 1) + 1))
        frame = _buffer(self._buf, f"dframe{k}", (n,) + frame_hw + (C,), rows.dtype)
        frame[...] = 0
        for t in range(kh * kw):
            i, j = divmod(t, kw)
            target = frame[:, i * dh:i * dh + (Ho - 1) * sh + 1:sh,
                           j * dw:j * dw + (Wo - 1) * sw + 1:sw]
            target += slab[t].reshape(n, Ho, Wo, C)
        dx[...] = frame[:, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2)

    # -- passes -----------------------------------------------------------------
    def forward(self, bottom, top):
        if self.num_spatial > 2:
            return conv_nd.conv_forward(self, bottom, top)
        N, C, O, G = self.num, self.channels, self.num_output, self.group
        P = self.out_hw[0] * self.out_hw[1]
        w = self._weights()
        bias = self.blobs[1].data if self.bias_term else None
        parts = self._parts()
        w_cols = self._weight_columns() if self._channels_last else None
        for i, (b, t) in enumerate(zip(bottom, top)):
            x4 = b.data.reshape((N, C) + self.in_hw)
            y = t.data.reshape(N, O, P)

            def work(k, s, x4=x4, y=y):
                if w_cols is not None:
                    self._convolve_tiles(k, self._input_windows(k, x4[s]), w_cols, y[s], bias)
                    return
                col = self._part_columns(k, s, x4)
                n = s.stop - s.start
                # image by image, straight into the top: (n, G, O/G, P) =
                # (G, O/G, K) @ (n, G, K, P), the columns (G, K, n*P) seen per image
                parallel.matmul(w, col.reshape(G, -1, n, P).transpose(2, 0, 1, 3),
                                out=y[s].reshape(n, G, O // G, P))
                if bias is not None:
                    y[s] += bias[:, None]
            parallel.run(work, parts)
            self._col_of, self._col_parts = i, parts
            self._buf["owner"] = self._token

    def backward(self, top, propagate_down, bottom):
        if self.num_spatial > 2:
            return conv_nd.conv_backward(self, top, propagate_down, bottom)
        N, C, O, G = self.num, self.channels, self.num_output, self.group
        P = self.out_hw[0] * self.out_hw[1]
        w = self._weights()
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        parts = self._parts()
        for i in reversed(range(len(bottom))):  # the last forwarded bottom's columns are cached
            b, t = bottom[i], top[i]
            if not (propagate_down[i] or want_w or want_b):
                continue
            cached = (self._col_of == i and self._col_parts == parts
                      and self._buf.get("owner") is self._token)
            x4 = b.data.reshape((N, C) + self.in_hw)
            dx = b.diff.reshape((N, C) + self.in_hw)
            dy = t.diff.reshape(N, O, P)
            d_w, d_b = [None] * len(parts), [None] * len(parts)
            w_data = None
            if propagate_down[i] and self._channels_last:
                w_data = (self._weight_slabs() if self._full_pad is None
                          else self._flipped_weight_columns())

            def work(k, s, x4=x4, dx=dx, dy=dy, down=propagate_down[i], cached=cached):
                if self._channels_last:
                    d_w[k], d_b[k] = self._backward_channels_last(
                        k, s, x4, dy, dx, down, cached, want_w, want_b, w_data)
                    return
                n = s.stop - s.start
                if n == 1:
                    dyg = dy[s.start].reshape(G, O // G, P)
                else:
                    dyg = _buffer(self._buf, f"out{k}", (O, n * P), dy.dtype).reshape(O, n, P)
                    dyg[...] = dy[s].transpose(1, 0, 2)
                    dyg = dyg.reshape(G, O // G, n * P)
                if want_b:
                    d_b[k] = dyg.reshape(O, -1).sum(axis=1)
                if want_w:
                    col = (self._part_col_buffer(k, n, x4.dtype).reshape(G, -1, n * P)
                           if cached and not (self.is_1x1 and n == 1)
                           else self._part_columns(k, s, x4))
                    # dW (G, O/G, K) = dy (G, O/G, n*P) @ col^T (G, n*P, K)
                    d_w[k] = parallel.matmul(dyg, col.transpose(0, 2, 1))
                if not down:
                    return
                if self.is_1x1 and n == 1:
                    parallel.matmul(w.transpose(0, 2, 1), dyg,
                                    out=dx[s.start].reshape(G, C // G, -1))
                    return
                # dcol (G, K, n*P) = W^T (G, K, O/G) @ dy (G, O/G, n*P), over the columns
                dcol = self._part_col_buffer(k, n, dy.dtype)
                parallel.matmul(w.transpose(0, 2, 1), dyg, out=dcol.reshape(G, -1, n * P))
                if self.is_1x1:
                    dx[s].reshape(n, C, -1)[...] = dcol.reshape(C, n, -1).transpose(1, 0, 2)
                else:
                    col2im(dcol, dx[s].shape, self.kernel, self.pad, self.stride,
                           self.dilation, out=dx[s])
            parallel.run(work, parts)
            if propagate_down[i]:
                self._col_of = None  # the column buffers now hold gradients
            if want_w:
                w_diff = self.blobs[0].diff.reshape(w.shape)
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


@register("Pooling")
class PoolingLayer(Layer):
    """Caffe's Pooling over ``(N, C, H, W)``: MAX (optional mask top), AVE, STOCHASTIC.

    Windows start at ``o*stride - pad``; the output size follows
    :func:`protonet.im2col.pool_out_size`. MAX ignores padding (windows are
    clipped to the image; the first maximum in row-major window order wins)
    and may output the argmax as a second top (``h*W + w`` within the
    channel, as float). AVE divides by the window area clipped to
    ``H + pad`` (padding counts, cells past it do not). STOCHASTIC (no
    padding) samples a cell with probability proportional to its value in
    TRAIN and returns ``sum(x^2) / sum(x)`` in TEST. ``round_mode: FLOOR`` (or the
    forks' ``ceil_mode: false``) rounds the output size down instead of up.
    """

    exact_num_bottom = 1
    min_num_top = 1
    max_num_top = 2
    splits_work = True

    def layer_setup(self, bottom, top):
        pp = self.param.pooling_param
        has = pp.HasField
        self.method = pp.pool
        if self.method not in (_Pool.MAX, _Pool.AVE, _Pool.STOCHASTIC):
            raise self.error(f"unknown pooling method {self.method}")
        self.global_pooling = pp.global_pooling
        self.ceil = pp.round_mode == _Pool.CEIL
        if has("ceil_mode"):  # the forks' spelling (DenseNet, OpenCV): false rounds down
            if has("round_mode") and pp.ceil_mode != self.ceil:
                raise self.error("ceil_mode and round_mode contradict each other; give one")
            self.ceil = pp.ceil_mode
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("global_pooling takes the kernel from the input; "
                                 "do not give kernel_size/kernel_h/kernel_w")
            self.kernel = None
        else:
            if has("kernel_size") and (has("kernel_h") or has("kernel_w")):
                raise self.error("give kernel_size or kernel_h and kernel_w (exactly one form)")
            if not has("kernel_size") and not (has("kernel_h") and has("kernel_w")):
                raise self.error("needs kernel_size or kernel_h and kernel_w together")
            self.kernel = ((pp.kernel_size,) * 2 if has("kernel_size")
                           else (pp.kernel_h, pp.kernel_w))
            if min(self.kernel) < 1:
                raise self.error(f"kernel must be positive, got {list(self.kernel)}")
        self.pad = self._pair(pp, "pad")
        self.stride = self._pair(pp, "stride")
        if min(self.stride) < 1:
            raise self.error(f"stride must be positive, got {list(self.stride)}")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("global_pooling allows only pad 0 and stride 1")
        if self.pad != (0, 0):
            if self.method == _Pool.STOCHASTIC:
                raise self.error("padding is implemented only for MAX and AVE pooling")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise self.error(f"pad {list(self.pad)} must be smaller than the kernel "
                                 f"{list(self.kernel)}")
        if len(top) > 1 and self.method != _Pool.MAX:
            raise self.error("only MAX pooling has a second (mask) top")
        self._buf: dict = {}
        self._geometry = None

    def _pair(self, pp, name) -> tuple[int, int]:
        h, w = f"{name}_h", f"{name}_w"
        if pp.HasField(h) or pp.HasField(w):
            if pp.HasField(name) or not (pp.HasField(h) and pp.HasField(w)):
                raise self.error(f"give {name} or both {h} and {w}, not a mix")
            return getattr(pp, h), getattr(pp, w)
        return (getattr(pp, name),) * 2

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.shape_error("input must have 4 axes (num, channels, height, width)",
                                   bottom)
        N, C, H, W = bottom[0].shape
        self.channels = C
        kernel = (H, W) if self.global_pooling else self.kernel
        out = tuple(pool_out_size(n, k, p, s, self.ceil)
                    for n, k, p, s in zip((H, W), kernel, self.pad, self.stride))
        if min(out) < 1:
            raise self.shape_error(f"kernel {list(kernel)} is larger than the padded input",
                                   bottom)
        if self._geometry != ((H, W), kernel, out):
            self._prepare((H, W), kernel, out)
        for t in top:
            t.reshape((N, C) + out)

    def _prepare(self, in_hw, kernel, out):
        """Tap slices, window starts and the AVE divisor for one input geometry."""
        self._geometry = (in_hw, kernel, out)
        self._buf.clear()  # frames keep their borders only for one geometry
        (H, W), (kh, kw), (Ho, Wo), (ph, pw), (sh, sw) = in_hw, kernel, out, self.pad, self.stride
        self.in_hw, self.window, self.out_hw = in_hw, kernel, out
        # padded frame: the image at offset pad, large enough for the last window
        self.frame = (max(H + ph, (Ho - 1) * sh + kh), max(W + pw, (Wo - 1) * sw + kw))
        self.framed = self.frame != in_hw
        # each cell in at most one window: MAX backward writes taps instead of summing
        self.disjoint = sh >= kh and sw >= kw
        self.tiled = (sh, sw) == (kh, kw) and self.frame == (Ho * sh, Wo * sw)  # no cell left out
        self.single = out == (1, 1) and self.pad == (0, 0)  # one window = the whole image
        # tap k = i*kw + j reads frame rows i, i+sh, ... and columns j, j+sw, ...
        self._taps = [(Ellipsis, slice(i, i + (Ho - 1) * sh + 1, sh),
                       slice(j, j + (Wo - 1) * sw + 1, sw)) for i in range(kh) for j in range(kw)]
        self._index_dtype = np.int8 if kh * kw <= 127 else np.int32
        self._starts = np.arange(Ho) * sh - ph, np.arange(Wo) * sw - pw
        # flat image positions: tap k's offset inside a window, each window's first cell
        self._tap_offsets = np.array([i * W + j for i in range(kh) for j in range(kw)], np.intp)
        self._window_offsets = np.add.outer(self._starts[0] * W, self._starts[1])
        # Caffe's AVE pool size: the window clipped to H + pad, before clipping to the image
        hs, ws = self._starts
        self._area = np.outer(np.minimum(hs + kh, H + ph) - hs, np.minimum(ws + kw, W + pw) - ws)

    def _framed(self, x: np.ndarray, fill: float, s: slice, key="") -> np.ndarray:
        """Images ``s`` of ``x`` inside a padded frame whose border holds ``fill``.

        ``x[s]`` itself when no frame is needed. The frame buffer (one per
        ``key``, as large as the largest tile) keeps its border across passes.
        """
        if not self.framed or self.single:
            return x[s]
        n = s.stop - s.start
        capacity = max(n, parallel.tile_items(self._image_bytes()))
        frame = _buffer(self._buf, f"frame{fill}{key}", (capacity, x.shape[1]) + self.frame,
                        x.dtype, fill)[:n]
        (H, W), (ph, pw) = self.in_hw, self.pad
        frame[:, :, ph:ph + H, pw:pw + W] = x[s]
        return frame

    def _parts(self, x: np.ndarray) -> list[slice]:
        return parallel.split(x.shape[0], x.size * len(self._taps))

    def _image_bytes(self) -> int:
        """Bytes a tile takes per image: its frame and as much scratch (the taps pass over
        each image many times, so tiles are cache-sized, :func:`protonet.parallel.tiles`)."""
        return 2 * self.channels * self.frame[0] * self.frame[1] * np.dtype(self.dtype).itemsize

    def _tiles(self, s: slice) -> list[slice]:
        return parallel.tiles(s, self._image_bytes())

    def flat_index(self) -> np.ndarray:
        """The selected cells as Caffe's mask: ``h*W + w`` in the input channel, -1 for none."""
        W, kw = self.in_hw[1], self.window[1]
        k = self._index.astype(np.int64)
        i, j = np.divmod(k, kw)
        hs, ws = self._starts
        flat = (hs[:, None] + i) * W + (ws[None, :] + j)
        return np.where(k < 0, -1, flat)

    # -- forward -----------------------------------------------------------------
    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        self._index = index = _buffer(self._buf, "index", y.shape, self._index_dtype)
        if self.method == _Pool.STOCHASTIC:
            xp = self._framed(x, 0.0, slice(0, x.shape[0]), "all")
            if self.phase == TRAIN:
                self._forward_stochastic_train(xp, y, index)
            else:
                self._forward_stochastic_test(xp, y)
            return
        if self.method == _Pool.MAX:

            def work(k, s):
                for u in self._tiles(s):
                    tile = (u.stop - u.start,) + y.shape[1:]
                    scratch = [_buffer(self._buf, f"{name}{k}", tile, dtype) for name, dtype in
                               (("tap", y.dtype), ("mask", bool), ("step", index.dtype))]
                    self._forward_max(self._framed(x, -np.inf, u, k), y[u], index[u], *scratch)
        else:

            def work(k, s):
                for u in self._tiles(s):
                    self._forward_ave(self._framed(x, 0.0, u, k), y[u])
        parallel.run(work, self._parts(x))
        if len(top) > 1:
            top[1].data[...] = self.flat_index()

    def _forward_max(self, xp, y, index, v, better, step):
        """MAX over the windows of the framed images ``xp`` into ``y`` and ``index``."""
        if self.single:
            cells = xp.reshape(xp.shape[0], xp.shape[1], -1)
            best = cells.argmax(axis=2)[:, :, None]  # the first maximum, as Caffe's '>'
            y[...] = np.take_along_axis(cells, best, 2)[..., None]
            i, j = np.divmod(best[..., None], self.in_hw[1])
            index[...] = i * self.window[1] + j
        else:
            # the first tap against -inf: fmax turns a NaN into -inf, which any later
            # value beats, as Caffe's '>' skips NaN
            np.fmax(xp[self._taps[0]], -np.inf, out=y)
            index[...] = 0
            wide = index.dtype != np.int8
            # branch-free: as taps come in order, the last tap that beat the running maximum
            # is the largest k that did, so index = max(index, k * better)
            for k, tap in enumerate(self._taps[1:], 1):
                np.copyto(v, xp[tap])  # one strided read, then contiguous work
                np.greater(v, y, out=better)
                np.fmax(y, v, out=y)
                if wide:
                    np.multiply(better, k, out=step)
                else:
                    np.multiply(better.view(np.int8), np.int8(k), out=step)
                np.maximum(index, step, out=index)
        # windows without a value > -inf (y never holds NaN): Caffe leaves -FLT_MAX, index -1
        if y.size and y.min() == -np.inf:
            empty = y == -np.inf
            y[empty] = -FLT_MAX
            index[empty] = -1

    def _forward_ave(self, xp, y):
        """AVE over the windows of the framed images ``xp`` into ``y``."""
        if self.single:
            y[..., 0, 0] = xp.reshape(xp.shape[0], xp.shape[1], -1).sum(axis=2)
        else:
            y[...] = 0
            for tap in self._taps:
                y += xp[tap]
        with np.errstate(divide="ignore", invalid="ignore"):  # empty windows give 0/0, as Caffe
            y /= self._area.astype(y.dtype)

    def _forward_stochastic_train(self, xp, y, index):
        total = np.zeros_like(y)
        for tap in self._taps:
            total += xp[tap]
        threshold = self.rng.random(y.shape).astype(y.dtype) * total
        # pick the first cell (row-major) whose running sum reaches u * total
        running = np.zeros_like(y)
        hit = _buffer(self._buf, "mask", y.shape, bool)
        index[...] = -1
        y[...] = 0
        for k, tap in enumerate(self._taps):
            v = xp[tap]
            running += v
            np.greater_equal(running, threshold, out=hit)
            hit &= index < 0
            np.copyto(index, k, where=hit)
            np.copyto(y, v, where=hit)

    def _forward_stochastic_test(self, xp, y):
        y[...] = FLT_MIN  # Caffe starts the sum at FLT_MIN to avoid 0/0
        squares = np.zeros_like(y)
        for tap in self._taps:
            v = xp[tap]
            y += v
            squares += v * v
        np.divide(squares, y, out=y)

    # -- backward ----------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.method == _Pool.STOCHASTIC and self.phase != TRAIN:
            raise self.error("STOCHASTIC pooling has no gradient in the TEST phase")
        average = self.method == _Pool.AVE
        if self.single:
            if average:
                dx[...] = dy / self._area.astype(dy.dtype)
            else:
                dx[...] = 0
                N, C = dx.shape[:2]
                flat = self.flat_index().reshape(N, C, 1)
                np.put_along_axis(dx.reshape(N, C, -1), np.maximum(flat, 0),
                                  np.where(flat >= 0, dy.reshape(N, C, 1), 0), axis=2)
            return
        index = self._index
        area = self._area.astype(dy.dtype)

        def tile(part, s):
            if not average:
                route = self._place_selected if self.disjoint else self._route_selected
                route(part, index[s], dy[s], dx[s])
                return
            dxp = self._diff_frame(part, dx[s])
            dxp[...] = 0
            gs = dy[s] / area
            for tap in self._taps:
                target = dxp[tap]
                target += gs
            self._unframe(dxp, dx[s])

        def work(part, s):
            for u in self._tiles(s):
                tile(part, u)
        parallel.run(work, self._parts(dx))

    def _route_selected(self, part: int, index: np.ndarray, dy: np.ndarray,
                        dx: np.ndarray) -> None:
        """``dx`` (whole images) = the sum of ``dy`` over the windows that selected each cell.

        Every output's selected cell (always inside the image) has a flat
        position in ``dx``: its image and channel, its window's start and its
        tap's offset. One ``bincount`` sums ``dy`` by position (overlapping
        windows that chose the same cell add up), far faster than a masked add
        per tap, and no padded frame is needed.
        """
        n, C = dy.shape[:2]
        H, W = self.in_hw
        flat = _buffer(self._buf, f"flat{part}", dy.shape, np.intp)
        np.take(self._tap_offsets, index, out=flat)
        flat += self._window_offsets
        flat += (np.arange(n * C, dtype=np.intp) * (H * W)).reshape(n, C, 1, 1)
        empty = index < 0
        weights = dy
        if empty.any():  # no selection: any position in range will do, with weight 0
            flat[empty] = 0
            weights = np.where(empty, 0, dy)
        dx.reshape(-1)[...] = np.bincount(flat.reshape(-1), weights.reshape(-1),
                                          minlength=dx.size)

    def _place_selected(self, part: int, index: np.ndarray, dy: np.ndarray,
                        dx: np.ndarray) -> None:
        """:meth:`_route_selected` for windows that do not overlap (stride >= kernel).

        Each cell then lies in at most one window, so tap ``k``'s cells are
        written once, as a strided view: ``dy`` where the window chose ``k``,
        else 0. The selection is a bitwise AND with an all-ones mask, which
        (unlike multiplying by 0/1) keeps a NaN elsewhere in ``dy`` out of ``dx``.
        """
        target = self._diff_frame(part, dx)
        if not self.tiled:
            target[...] = 0
        bits = np.dtype(f"i{dy.itemsize}")
        hit = _buffer(self._buf, f"hit{part}", dy.shape, bool)
        keep = _buffer(self._buf, f"keep{part}", dy.shape, bits)
        for k, tap in enumerate(self._taps):
            np.equal(index, k, out=hit)
            np.negative(hit.view(np.int8), out=keep, casting="unsafe")  # 0 or all ones
            np.bitwise_and(dy.view(bits), keep, out=target[tap].view(bits))
        self._unframe(target, dx)

    def _diff_frame(self, part: int, dx: np.ndarray) -> np.ndarray:
        """Where a backward tile writes the taps of ``dx`` (images of the bottom diff):
        part ``part``'s frame buffer, or ``dx`` itself when no frame is needed."""
        if not self.framed:
            return dx
        return _buffer(self._buf, f"dframe{part}", dx.shape[:2] + self.frame, dx.dtype)

    def _unframe(self, frame: np.ndarray, dx: np.ndarray) -> None:
        """Copy the image interior of a :meth:`_diff_frame` into ``dx`` (nothing if it is ``dx``)."""
        if self.framed:
            (H, W), (ph, pw) = self.in_hw, self.pad
            dx[...] = frame[:, :, ph:ph + H, pw:pw + W]

    def macc(self, bottom, top):
        N, C, Ho, Wo = top[0].shape
        return N * C * Ho * Wo * self.window[0] * self.window[1]


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
                # dW (G, C/G, O/G*kh*kw) += x (G, C/G, N*P) @ col^T (G, N*P, O/G*kh*kw)
                w_diff += np.matmul(self._rows(b.data), col.transpose(0, 2, 1))
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


_SPP = caffe_pb2.SPPParameter


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling (``spp_layer.cpp``): ``pyramid_height`` poolings, concatenated.

    Level ``l`` pools ``(N, C, H, W)`` into ``2^l x 2^l`` bins with Caffe's Pooling:
    kernel = stride = ``ceil(H / bins)``, pad ``(kernel*bins - H + 1) // 2`` (each
    of h and w). Each level is flattened to ``(N, C*h*w)`` and the levels are
    concatenated: top ``(N, C * sum(bins^2))``. With ``pyramid_height: 1`` Caffe
    uses the one pooling directly, so the top is ``(N, C, 1, 1)``.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error("spp_param.pyramid_height must be given and at least 1")
        if p.pool not in (_SPP.MAX, _SPP.AVE, _SPP.STOCHASTIC):
            raise self.error(f"unknown pooling method {p.pool}")
        self.pool = int(p.pool)  # SPPParameter and PoolingParameter number them alike
        self._in_hw = None
        self.levels = []
        self._scratch = Blob((), self.dtype, name=f"{self.name}/diff")

    @staticmethod
    def level_window(level: int, size: int) -> tuple[int, int]:
        """(kernel = stride, pad) of pyramid level ``level`` over an extent ``size``."""
        bins = 2 ** level
        kernel = -(-size // bins)
        return kernel, (kernel * bins - size + 1) // 2

    def _build(self, in_hw):
        """One Pooling layer (with its own bottom and top blobs) per level."""
        self.levels = []
        for level in range(self.height):
            (kh, ph), (kw, pw) = (self.level_window(level, n) for n in in_hw)
            param = caffe_pb2.LayerParameter(name=f"{self.name}/level{level}", type="Pooling")
            pp = param.pooling_param
            pp.pool, pp.kernel_h, pp.kernel_w = self.pool, kh, kw
            pp.stride_h, pp.stride_w, pp.pad_h, pp.pad_w = kh, kw, ph, pw
            pool = PoolingLayer(param, phase=self.phase, dtype=self.dtype, rng=self.rng)
            self.levels.append((pool, Blob((), self.dtype, name=f"{self.name}/in{level}"),
                                Blob((), self.dtype, name=f"{self.name}/out{level}")))
        self._in_hw = in_hw

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.shape_error("input must have 4 axes (num, channels, height, width)",
                                   bottom)
        N, C, H, W = bottom[0].shape
        if min(H, W) < 1:
            raise self.shape_error("input height and width must be positive", bottom)
        rebuild = self._in_hw != (H, W)
        if rebuild:
            self._build((H, W))
        self.sizes = []
        for level, (pool, lb, lt) in enumerate(self.levels):
            lb.reshape(bottom[0].shape)
            try:
                if rebuild:
                    pool.setup([lb], [lt])
                else:
                    pool.reshape([lb], [lt])
            except ProtonetError as e:
                self._in_hw = None
                k, p = zip(*(self.level_window(level, n) for n in (H, W)))
                raise self.shape_error(
                    f"pyramid level {level} ({2 ** level}x{2 ** level} bins: kernel {list(k)}, "
                    f"pad {list(p)}) cannot be pooled: {e}", bottom) from None
            self.sizes.append(lt.count_range(1))  # C*h*w of the flattened level
        if self.height == 1:
            top[0].reshape(self.levels[0][2].shape)
        else:
            top[0].reshape((N, sum(self.sizes)))

    def forward(self, bottom, top):
        N = bottom[0].shape[0]
        start = 0
        for (pool, lb, lt), size in zip(self.levels, self.sizes):
            lb.share_data(bottom[0])
            pool.forward([lb], [lt])
            top[0].data.reshape(N, -1)[:, start:start + size] = lt.data.reshape(N, size)
            start += size

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        N = bottom[0].shape[0]
        dx = bottom[0].diff
        self._scratch.reshape(bottom[0].shape)
        start = 0
        for level, ((pool, lb, lt), size) in enumerate(zip(self.levels, self.sizes)):
            lt.diff[...] = top[0].diff.reshape(N, -1)[:, start:start + size].reshape(lt.shape)
            start += size
            if level == 0:
                lb.share_diff(bottom[0])  # the first level writes the bottom diff directly
                pool.backward([lt], [True], [lb])
            else:  # the others into one scratch diff, then summed (the Split's backward)
                lb.share_diff(self._scratch)
                pool.backward([lt], [True], [lb])
                dx += lb.diff

    def macc(self, bottom, top):
        return sum(pool.macc([lb], [lt]) for pool, lb, lt in self.levels)
