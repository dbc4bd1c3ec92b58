"""Pure N-D kernels for convolution: output sizes, im2col, col2im (any number of axes).

The N-D counterpart of :mod:`protonet.kernels.im2col`, after Caffe's ``im2col_nd_cpu``
and ``col2im_nd_cpu`` (``src/caffe/util/im2col.cpp``), used by the layers when
the input has 3 or more spatial axes (1-D and 2-D keep their own kernels).

With ``S`` spatial axes, an image batch ``x`` has shape ``(N, C, *in_shape)``
and its column buffer has shape ``(C, *kernel, N, *out_shape)``:

    col[c, k_0..k_{S-1}, n, o_0..o_{S-1}] = x[n, c, o_a*stride_a - pad_a + k_a*dilation_a]

(zero where an index falls in the padding). Its ``C*prod(kernel)`` rows are
Caffe's im2col rows (channel-major, then the kernel axes in order) and its
``N*prod(out_shape)`` columns the output positions of every image, so one
convolution of the whole batch is one matmul (one per group)::

    (O, C*prod(kernel)) @ (C*prod(kernel), N*prod(out_shape)) -> (O, N*prod(out_shape))

:func:`im2col_nd` is one copy of a strided view of the (zero-bordered) image;
:func:`col2im_nd` loops over the ``prod(kernel)`` kernel taps, each one strided
slice per axis. The ``*_reference`` functions beside them are the textbook
element-by-element definitions the tests compare against.
"""
from __future__ import annotations

import itertools

import numpy as np


# -- output sizes ---------------------------------------------------------------------------
def conv_out_shape(in_shape, kernel, pad, stride, dilation) -> tuple[int, ...]:
    """Convolution output extent per axis (Caffe rounds down).

    ``(size + 2*pad - (dilation*(kernel-1) + 1)) // stride + 1`` on every axis;
    an entry < 1 means the dilated kernel does not fit the padded input.
    """
    return tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1
                 for n, k, p, s, d in zip(in_shape, kernel, pad, stride, dilation))


def deconv_out_shape(in_shape, kernel, pad, stride, dilation) -> tuple[int, ...]:
    """Deconvolution output extent per axis: ``stride*(size-1) + dilation*(kernel-1)+1 - 2*pad``.

    The input extent that :func:`conv_out_shape` maps back to ``in_shape``
    (``base_conv_layer``/``deconv_layer.cpp`` ``compute_output_shape``).
    """
    return tuple(s * (n - 1) + d * (k - 1) + 1 - 2 * p
                 for n, k, p, s, d in zip(in_shape, kernel, pad, stride, dilation))


def _check(name: str, x_shape, kernel, pad, stride, dilation) -> int:
    """Number of spatial axes; ValueError when the per-axis tuples disagree with ``x_shape``."""
    nsp = len(x_shape) - 2
    if nsp < 1 or any(len(v) != nsp for v in (kernel, pad, stride, dilation)):
        raise ValueError(
            f"{name}: input of shape {tuple(x_shape)} needs kernel/pad/stride/dilation with "
            f"{max(nsp, 0)} values each, got {tuple(kernel)}/{tuple(pad)}/{tuple(stride)}/"
            f"{tuple(dilation)}")
    return nsp


# -- padding --------------------------------------------------------------------------------
def pad_image_nd(x: np.ndarray, pad, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` ``(N, C, *S)`` copied into ``out`` ``(N, C, *(S + 2*pad))`` with a zero border.

    Only the border slabs and the interior are written (``out`` may be reused
    scratch holding anything).
    """
    shape = x.shape[:2] + tuple(n + 2 * p for n, p in zip(x.shape[2:], pad))
    if out is None:
        out = np.empty(shape, x.dtype)
    elif out.shape != shape:
        raise ValueError(f"pad_image_nd: out has shape {out.shape}, expected {shape}")
    every = (slice(None),) * 2
    for a, (n, p) in enumerate(zip(x.shape[2:], pad)):
        if p:
            before = (slice(None),) * a
            out[every + before + (slice(0, p),)] = 0
            out[every + before + (slice(p + n, None),)] = 0
    out[every + tuple(slice(p, p + n) for n, p in zip(x.shape[2:], pad))] = x
    return out


# -- im2col / col2im, fast ------------------------------------------------------------------
def im2col_nd(x: np.ndarray, kernel, pad, stride, dilation,
              out: np.ndarray | None = None, frame: np.ndarray | None = None) -> np.ndarray:
    """Unfold ``x`` ``(N, C, *in_shape)`` into columns ``(C, *kernel, N, *out_shape)``.

    ``kernel``, ``pad``, ``stride``, ``dilation`` hold one value per spatial
    axis. ``out``, if given, must have the result's shape (any strides, e.g.
    a transposed view of a top blob); it is overwritten. ``frame``, if given,
    is scratch ``(N, C, *(in_shape + 2*pad))`` for the padded image (unused
    without padding).
    """
    _check("im2col_nd", x.shape, kernel, pad, stride, dilation)
    N, C = x.shape[:2]
    out_shape = conv_out_shape(x.shape[2:], kernel, pad, stride, dilation)
    shape = (C,) + tuple(kernel) + (N,) + out_shape
    if out is None:
        out = np.empty(shape, x.dtype)
    elif out.shape != shape:
        raise ValueError(f"im2col_nd: out has shape {out.shape}, expected {shape}")
    if min(out_shape) < 1:
        raise ValueError(f"im2col_nd: kernel {tuple(kernel)} (dilation {tuple(dilation)}) "
                         f"does not fit input {x.shape} padded by {tuple(pad)}")
    if any(pad):
        x = pad_image_nd(x, pad, frame)
    sn, sc, sp = x.strides[0], x.strides[1], x.strides[2:]
    strides = ((sc,) + tuple(s * d for s, d in zip(sp, dilation))
               + (sn,) + tuple(s * t for s, t in zip(sp, stride)))
    out[...] = np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)
    return out


def _tap_range(size: int, out: int, offset: int, stride: int) -> tuple[int, int]:
    """Outputs ``o`` in ``[lo, hi)`` whose input ``o*stride + offset`` lies in ``[0, size)``."""
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


def _axis_taps(size, out, k, p, s, d):
    """Per kernel index of one axis: ``(output slice, input slice)``, None if no output reads
    the image."""
    taps = []
    for i in range(k):
        lo, hi = _tap_range(size, out, i * d - p, s)
        if hi <= lo:
            taps.append(None)
            continue
        start = lo * s + i * d - p
        taps.append((slice(lo, hi), slice(start, start + (hi - lo - 1) * s + 1, s)))
    return taps


def col2im_nd(col: np.ndarray, x_shape, kernel, pad, stride, dilation,
              out: np.ndarray | None = None) -> np.ndarray:
    """Fold columns ``(C, *kernel, N, *out_shape)`` back into an image ``x_shape`` ``(N, C, *S)``.

    The adjoint of :func:`im2col_nd`: every column entry is added to the
    input cell it was read from (entries that read padding are dropped).
    ``out``, if given (any strides), is overwritten, not accumulated into.
    """
    nsp = _check("col2im_nd", x_shape, kernel, pad, stride, dilation)
    N, C = x_shape[:2]
    out_shape = col.shape[nsp + 2:]
    expected = (C,) + tuple(kernel) + (N,) + tuple(out_shape)
    if col.shape != expected or len(out_shape) != nsp:
        raise ValueError(f"col2im_nd: columns of shape {col.shape} do not match image "
                         f"{tuple(x_shape)} and kernel {tuple(kernel)}")
    if out is None:
        out = np.zeros(x_shape, col.dtype)
    else:
        out[...] = 0
    ot = np.moveaxis(out, 1, 0)  # (C, N, *S), a view
    axes = [_axis_taps(*args) for args in zip(x_shape[2:], out_shape, kernel, pad, stride,
                                                dilation)]
    every = (slice(None),)
    for tap in itertools.product(*(range(k) for k in kernel)):
        parts = [axes[a][i] for a, i in enumerate(tap)]
        if any(part is None for part in parts):
            continue
        ot[every * 2 + tuple(q[1] for q in parts)] += \
            col[every + tap + every + tuple(q[0] for q in parts)]
    return out


# -- references: the textbook definitions, element by element ----------------------------------
def im2col_nd_reference(x: np.ndarray, kernel, pad, stride, dilation) -> np.ndarray:
    """:func:`im2col_nd` by its definition: one loop iteration per column entry."""
    _check("im2col_nd_reference", x.shape, kernel, pad, stride, dilation)
    N, C, in_shape = x.shape[0], x.shape[1], x.shape[2:]
    out_shape = conv_out_shape(in_shape, kernel, pad, stride, dilation)
    col = np.zeros((C,) + tuple(kernel) + (N,) + out_shape, x.dtype)
    for c in range(C):
        for tap in np.ndindex(*kernel):
            for n in range(N):
                for o in np.ndindex(*out_shape):
                    idx = tuple(o[a] * stride[a] - pad[a] + tap[a] * dilation[a]
                                for a in range(len(in_shape)))
                    if all(0 <= i < size for i, size in zip(idx, in_shape)):
                        col[(c,) + tap + (n,) + o] = x[(n, c) + idx]
    return col


def col2im_nd_reference(col: np.ndarray, x_shape, kernel, pad, stride, dilation) -> np.ndarray:
    """:func:`col2im_nd` by its definition: every column entry added to its input cell."""
    nsp = _check("col2im_nd_reference", x_shape, kernel, pad, stride, dilation)
    N, C, in_shape = x_shape[0], x_shape[1], tuple(x_shape[2:])
    out_shape = col.shape[nsp + 2:]
    x = np.zeros(x_shape, col.dtype)
    for c in range(C):
        for tap in np.ndindex(*kernel):
            for n in range(N):
                for o in np.ndindex(*out_shape):
                    idx = tuple(o[a] * stride[a] - pad[a] + tap[a] * dilation[a]
                                for a in range(nsp))
                    if all(0 <= i < size for i, size in zip(idx, in_shape)):
                        x[(n, c) + idx] += col[(c,) + tap + (n,) + o]
    return x


def convolution_nd_reference(x: np.ndarray, w: np.ndarray, bias, kernel_args,
                             group: int = 1) -> np.ndarray:
    """Direct N-D convolution, Caffe's definition: ``x (N, C, *S)``, ``w (O, C/G, *kernel)``.

    ``y[n, o, *q] = bias[o] + sum over c in o's group and taps t of
    w[o, c, *t] * x[n, c, *(q*stride - pad + t*dilation)]`` (zero padding);
    ``kernel_args`` is ``(pad, stride, dilation)``. Loops over output
    positions and taps, no im2col.
    """
    pad, stride, dilation = kernel_args
    N, C, in_shape = x.shape[0], x.shape[1], x.shape[2:]
    O, kernel = w.shape[0], w.shape[2:]
    out_shape = conv_out_shape(in_shape, kernel, pad, stride, dilation)
    y = np.zeros((N, O) + out_shape, np.result_type(x, w))
    cg, og = C // group, O // group
    for g in range(group):
        xs, ws = x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]
        for q in np.ndindex(*out_shape):
            for t in np.ndindex(*kernel):
                idx = tuple(q[a] * stride[a] - pad[a] + t[a] * dilation[a]
                            for a in range(len(in_shape)))
                if all(0 <= i < size for i, size in zip(idx, in_shape)):
                    y[(slice(None), slice(g * og, (g + 1) * og)) + q] += (
                        xs[(slice(None), slice(None)) + idx] @ ws[(slice(None), slice(None)) + t].T)
    if bias is not None:
        y += np.asarray(bias).reshape((1, O) + (1,) * len(in_shape))
    return y


def deconvolution_nd_reference(x: np.ndarray, w: np.ndarray, bias, kernel_args,
                               group: int = 1) -> np.ndarray:
    """Direct N-D transposed convolution: ``x (N, C, *S)``, ``w (C, O/G, *kernel)`` (Caffe's
    reversed layout).

    Every input cell scatters ``x[n, c, *q] * w[c, o, *t]`` into output cell
    ``q*stride - pad + t*dilation`` (dropped where that lies in the padding),
    plus ``bias[o]``; the output extent is :func:`deconv_out_shape`.
    """
    pad, stride, dilation = kernel_args
    N, C, in_shape = x.shape[0], x.shape[1], x.shape[2:]
    og, kernel = w.shape[1], w.shape[2:]
    O, cg = og * group, C // group
    out_shape = deconv_out_shape(in_shape, kernel, pad, stride, dilation)
    y = np.zeros((N, O) + out_shape, np.result_type(x, w))
    for g in range(group):
        xs, ws = x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg]
        for q in np.ndindex(*in_shape):
            for t in np.ndindex(*kernel):
                idx = tuple(q[a] * stride[a] - pad[a] + t[a] * dilation[a]
                            for a in range(len(in_shape)))
                if all(0 <= i < size for i, size in zip(idx, out_shape)):
                    y[(slice(None), slice(g * og, (g + 1) * og)) + idx] += (
                        xs[(slice(None), slice(None)) + q] @ ws[(slice(None), slice(None)) + t])
    if bias is not None:
        y += np.asarray(bias).reshape((1, O) + (1,) * len(in_shape))
    return y
