"""2-D convolution, forward: ``x (N, C, H, W)`` and ``w (O, C/G, kh, kw)`` -> ``(N, O, Ho, Wo)``.

The definition (:func:`conv2d_reference`)::

    y[n, o, a, b] = bias[o] + sum over c in o's group, i, j of
                    w[o, c, i, j] * x[n, c, a*sh - ph + i*dh, b*sw - pw + j*dw]

(zero outside the image). The fast kernels each compute one *part* -- a slice ``s`` of
the images and, where the batch cannot be split, a slice of the output channels or
rows -- and write it through an :class:`~protonet.kernels.affine.Epilogue` (the bias,
or a folded BatchNorm/Scale chain and ReLU) while the part's result is in cache:

* :func:`conv_1x1`: a 1x1 kernel without padding is a plain GEMM per image,
  ``(O, C) @ (C, Ho*Wo)`` straight from the image (a strided copy first for stride > 1);
* :func:`depthwise`: ``group == C == O`` is one multiply-add per kernel tap over tiles of
  (images, channels), not one small GEMM per channel; with many channels, one ``einsum``
  over channels-last windows (:func:`depthwise_channels_last`);
* :func:`im2col_gemm`: Caffe's columns ``(C*kh*kw, Ho*Wo)`` per image (any group),
  ``(G, O/G, K) @ (G, K, P)``, output rows ``rows`` of one image at a time;
* :func:`channels_last_conv`: the image padded channels-last, whose windows are one
  strided view; the compiled implicit GEMM (:mod:`~protonet.kernels.jit_conv`) reads
  them in place, or (:func:`channels_last_tiles`) tiles of a few images are copied out
  ``(t*Ho*Wo, kh*kw*C)`` and multiplied by BLAS while in cache (group 1, several images).

Weights are read as the caller holds them on every call (nothing is cached across
calls, so a change to the parameters shows on the next pass); a kernel that copies
them anyway folds the epilogue's first scale into the copy.
"""
from __future__ import annotations

import numpy as np

from .. import parallel
from . import jit, jit_conv
from .affine import Epilogue, finish_buffer, finish_views
from .im2col import (conv_out_size, pad_channels_last,  # noqa: F401 (for the layers)
                     phase_planes, windows_channels_last)
from .scratch import buffer, image_channel_tiles


# -- the definition -------------------------------------------------------------------------
def conv2d_reference(x, w, bias=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """The textbook convolution in float64, one kernel tap at a time (tests only)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    y = np.zeros((N, O, Ho, Wo))
    Og = O // group
    for g in range(group):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * Cg:(g + 1) * Cg, i * dh:i * dh + (Ho - 1) * sh + 1:sh,
                           j * dw:j * dw + (Wo - 1) * sw + 1:sw]  # (N, Cg, Ho, Wo)
                y[:, g * Og:(g + 1) * Og] += np.einsum("ncab,oc->noab", patch,
                                                       w[g * Og:(g + 1) * Og, :, i, j])
    if bias is not None:
        y += np.asarray(bias, np.float64)[:, None, None]
    return y


# -- 1x1 ------------------------------------------------------------------------------------
def conv_1x1(x, w, ep: Epilogue, s: slice, oc: slice, stride, scratch: dict, key) -> None:
    """Images ``s``, output channels ``oc`` of a 1x1 convolution without padding.

    ``x (N, C, H, W)``, ``w (O, C)``; each output array of ``ep`` is ``(N, O, Ho*Wo)``:
    ``r[n, oc] = w[oc] (o, C) @ x[n, :, ::sh, ::sw] (C, Ho*Wo)``, tile by tile of images.
    """
    N, C, H, W = x.shape
    (sh, sw) = stride
    Ho, Wo = (H - 1) // sh + 1, (W - 1) // sw + 1
    P = Ho * Wo
    wv = w[oc]
    o = wv.shape[0]
    n = s.stop - s.start
    if ep.outputs[0][1] is not None and wv.size <= n * o * P:  # fold scale[0] into the weights
        wv = np.multiply(wv, ep.outputs[0][1][oc, None],
                         out=buffer(scratch, f"w1x1{key}", wv.shape, wv.dtype))
        ep = ep.without_first_scale()
    arrays = [a.reshape(N, -1, P) for a, _, _ in ep.outputs]
    for t in parallel.tiles(s, o * P * x.itemsize, EPILOGUE_TILE_BYTES):
        m = t.stop - t.start
        if (sh, sw) == (1, 1):
            xt = x[t].reshape(m, C, P)
        else:
            xt = buffer(scratch, f"sub{key}", (m, C, Ho, Wo), x.dtype)
            xt[...] = x[t, :, ::sh, ::sw]
            xt = xt.reshape(m, C, P)
        views = [a[t, oc] for a in arrays]
        if P == 1:  # 1x1 images (a classifier as a convolution): (m, C) @ (C, o), one GEMM
            parallel.matmul(xt[:, :, 0], wv.T, out=views[0][:, :, 0])
        else:
            parallel.matmul(wv, xt, out=views[0])
        finish_views(views, ep, axis=1, channels=oc)


# -- depthwise ------------------------------------------------------------------------------
#: bytes of one depthwise tile's output: it, the planes it reads and a scratch array stay in
#: the core's cache through the kh*kw passes
DEPTHWISE_TILE_BYTES = 1 << 20


def depthwise(x, w, ep: Epilogue, s: slice, cs: slice, kernel, stride, pad, dilation,
              scratch: dict, key) -> None:
    """Images ``s``, channels ``cs`` of a depthwise convolution (``group == C == O``).

    ``x (N, C, H, W)``, ``w (C, 1, kh, kw)``, each output ``(N, C, Ho*Wo)``:
    ``r[n, c, a, b] = sum over taps (i, j) of w[c, i, j] * xpad[n, c, a*sh + i*dh, b*sw + j*dw]``.

    For a tile of images and channels the padded input is copied into ``sh*sw`` phase
    planes ``plane[p, q][u, v] = xpad[u*sh + p, v*sw + q]`` of width ``Wq``; tap ``(i, j)``
    then reads plane ``((i*dh) % sh, (j*dw) % sw)`` at row and column offsets
    ``((i*dh) // sh, (j*dw) // sw)``, and over the flattened planes that read is one
    contiguous run of ``Ho*Wq`` values. So each tap is one multiply and one add over the
    tile's whole ``(n, c, Ho*Wq)`` accumulator (its columns past ``Wo`` are discarded),
    long runs at full vector speed; the epilogue's first scale goes into the taps.
    """
    if jit.enabled():
        return _depthwise_compiled(x, w, ep, s, cs, kernel, stride, pad, dilation)
    if cs.stop - cs.start >= DEPTHWISE_CHANNELS_LAST_MIN[tuple(stride) != (1, 1)]:
        return depthwise_channels_last(x, w, ep, s, cs, kernel, stride, pad, dilation,
                                       scratch, key)
    H, W = x.shape[2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw_) = kernel, stride, pad, dilation
    Hq, Wq = -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)  # a phase plane's extent
    (Ho, Wo), taps, ep, arrays = _depthwise_setup(x, w, ep, cs, kernel, stride, pad, dilation)
    taps = np.ascontiguousarray(taps.T)[:, :, None]  # (kh*kw, c, 1)
    c_all = cs.stop - cs.start
    per_channel = (Ho * Wq + (Hq + 1) * Wq) * x.itemsize  # accumulator and planes
    for t, cb in image_channel_tiles(s, c_all, per_channel, DEPTHWISE_TILE_BYTES):
        m, c = t.stop - t.start, cb.stop - cb.start
        chans = slice(cs.start + cb.start, cs.start + cb.stop)
        # numpy's inner loops run along the last axis: put the longer one there
        last = c > Ho * Wq
        planes = phase_planes(x[t, chans], pad, stride, (Hq + 1, Wq), scratch, f"dw{key}",
                              channels_last=last)
        shape = (m, Ho * Wq, c) if last else (m, c, Ho * Wq)
        acc = buffer(scratch, f"dwacc{key}", shape, x.dtype)
        tmp = buffer(scratch, f"dwtmp{key}", shape, x.dtype)
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            (pi, oi), (pj, oj) = divmod(i * dh, sh)[::-1], divmod(j * dw_, sw)[::-1]
            start = oi * Wq + oj
            if last:
                run, tap = planes[pi * sw + pj, :, start:start + Ho * Wq], taps[k, cb, 0]
            else:
                run, tap = planes[pi * sw + pj, :, :, start:start + Ho * Wq], taps[k, cb]
            if k == 0:
                np.multiply(run, tap, out=acc)
            else:
                np.multiply(run, tap, out=tmp)
                acc += tmp
        source = (acc.reshape(m, Ho, Wq, c)[:, :, :Wo].transpose(0, 3, 1, 2) if last
                  else acc.reshape(m, c, Ho, Wq)[..., :Wo])
        finish_views([a[t, chans] for a in arrays], ep, axis=1, channels=chans, source=source)


def _depthwise_compiled(x, w, ep: Epilogue, s: slice, cs: slice, kernel, stride, pad,
                        dilation) -> None:
    """:func:`depthwise` through :func:`protonet.kernels.jit.depthwise_part`: the first
    output (its shift, and the ReLU if it is the last) is written by the compiled loop,
    any further outputs from it by numpy."""
    _, taps, ep, arrays = _depthwise_setup(x, w, ep, cs, kernel, stride, pad, dilation)
    (_, _, shift), rest = ep.outputs[0], ep.outputs[1:]
    jit.depthwise_part(x, taps.reshape((-1,) + tuple(kernel)), shift, ep.relu and not rest,
                       arrays[0], s, cs, stride, pad, dilation)
    if rest:
        views = [a[s, cs] for a in arrays]
        finish_views(views[1:], Epilogue(rest, ep.relu), axis=1, channels=cs, source=views[0])


def _depthwise_setup(x, w, ep: Epilogue, cs: slice, kernel, stride, pad, dilation):
    """What both depthwise paths start from: ``(Ho, Wo)``, the taps of channels ``cs`` as
    ``(c, kh*kw)`` with the epilogue's first scale folded in, the epilogue left to apply,
    and its outputs seen as ``(N, C, Ho, Wo)``."""
    N, C = x.shape[:2]
    Ho, Wo = (conv_out_size(*a) for a in zip(x.shape[2:], kernel, pad, stride, dilation))
    taps = w.reshape(C, -1)[cs]
    scale = ep.outputs[0][1]
    if scale is not None:
        taps = taps * scale[cs, None]
        ep = ep.without_first_scale()
    return (Ho, Wo), taps, ep, [a.reshape(N, C, Ho, Wo) for a, _, _ in ep.outputs]


#: channels (stride 1, stride > 1) from which :func:`depthwise` takes
#: :func:`depthwise_channels_last`: measured faster from there (per output value, about
#: 3-5 ns instead of 6-7 at 192+ channels; slower for few channels on large images)
DEPTHWISE_CHANNELS_LAST_MIN = (192, 128)


def depthwise_channels_last(x, w, ep: Epilogue, s: slice, cs: slice, kernel, stride, pad,
                            dilation, scratch: dict, key) -> None:
    """:func:`depthwise` through a channels-last frame, for many channels.

    Per tile of images and channels, the padded input is copied channels-last
    ``(m, Hp, Wp, c)``; its windows are a strided view ``(m, Ho, Wo, kh, kw, c)``
    (:func:`~protonet.kernels.im2col.windows_channels_last`) and
    ``r[n, a, b, c] = sum over i, j of win[n, a, b, i, j, c] * taps[i, j, c]`` is one
    ``einsum``, whose inner loop runs along the contiguous channels; the epilogue works
    on ``r`` channels-last and each output takes it transposed.
    """
    H, W = x.shape[2:]
    (kh, kw), (ph, pw) = kernel, pad
    (Ho, Wo), taps, ep, arrays = _depthwise_setup(x, w, ep, cs, kernel, stride, pad, dilation)
    taps = np.ascontiguousarray(taps.T).reshape(kh, kw, -1)  # (kh, kw, c)
    c_all = cs.stop - cs.start
    per_channel = ((H + 2 * ph) * (W + 2 * pw) + Ho * Wo) * x.itemsize  # frame and result
    for t, cb in image_channel_tiles(s, c_all, per_channel, DEPTHWISE_TILE_BYTES):
        m, c = t.stop - t.start, cb.stop - cb.start
        chans = slice(cs.start + cb.start, cs.start + cb.stop)
        frame = buffer(scratch, f"dwframe{key}", (m, H + 2 * ph, W + 2 * pw, c), x.dtype)
        pad_channels_last(x[t, chans], pad, frame)
        windows = windows_channels_last(frame, kernel, stride, dilation, (Ho, Wo))
        acc = buffer(scratch, f"dwacc{key}", (m, Ho, Wo, c), x.dtype)
        np.einsum("nabijc,ijc->nabc", windows, taps[:, :, cb], out=acc)

        def emit(k, buf, t=t, chans=chans):
            arrays[k][t, chans] = buf.transpose(0, 3, 1, 2)
        finish_buffer(acc, ep, axis=3, emit=emit, channels=chans)


# -- im2col + GEMM --------------------------------------------------------------------------
def im2col_gemm(x, w, ep: Epilogue, s: slice, rows: slice, group: int, kernel, stride, pad,
                dilation, scratch: dict, key, keep: bool = True):
    """Images ``s``, output rows ``rows`` of a convolution through Caffe's columns.

    ``x (N, C, H, W)``, ``w (O, C/G, kh, kw)``, each output ``(N, O, Ho*Wo)``. The
    columns ``col[c, i, j, n, a, b] = xpad[n, c, a*sh + i*dh, b*sw + j*dw]`` of the
    images and rows (one copy of a strided view of a zero-bordered frame of the input
    rows they read) go into the kept buffer ``col{key}`` ``(C, kh, kw, n, rows, Wo)``
    (backward reuses them), returned; then, image by image,
    ``r (G, O/G, rows*Wo) = w (G, O/G, C/G*kh*kw) @ col (G, C/G*kh*kw, rows*Wo)`` (for
    images of fewer than :data:`WHOLE_PART_MAX_POSITIONS` outputs, all images at once).
    (Tiles of rows, to keep the columns and the result in cache, were measured slower:
    the GEMM of a whole image runs best on BLAS's threads.)
    """
    O = w.shape[0]
    Wo = (x.shape[3] + 2 * pad[1] - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    wg = w.reshape(group, O // group, -1)
    n = s.stop - s.start
    if ep.outputs[0][1] is not None and wg.size <= n * O * (rows.stop - rows.start) * Wo:
        wg = np.multiply(wg, ep.outputs[0][1].reshape(group, -1, 1),  # fold scale[0] in
                         out=buffer(scratch, f"wfold{key}", wg.shape, wg.dtype))
        ep = ep.without_first_scale()
    return _columns_tile(x, wg, ep, s, rows, kernel, stride, pad, dilation, scratch, key, keep)


def _columns_tile(x, wg, ep: Epilogue, s: slice, rows: slice, kernel, stride, pad, dilation,
                  scratch: dict, key, keep: bool = True):
    """:func:`im2col_gemm` with ``wg`` the grouped weights ``(G, O/G, K)``."""
    N, C, H, W = x.shape
    G, Og = wg.shape[:2]
    O = G * Og
    (kh, kw), (sh, sw), (ph, pw), (dh, dwl) = kernel, stride, pad, dilation
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dwl * (kw - 1) + 1)) // sw + 1
    r0, r1 = rows.start, rows.stop
    n, P = s.stop - s.start, (r1 - r0) * Wo
    # the padded input rows [top, bottom) these output rows read
    top, bottom = r0 * sh, (r1 - 1) * sh + dh * (kh - 1) + 1
    if (ph, pw) != (0, 0):
        frame = buffer(scratch, f"frame{key}", (n, C, bottom - top, W + 2 * pw), x.dtype)
        lo, hi = max(top, ph), min(bottom, ph + H)  # frame rows holding image rows
        frame[:, :, :max(0, lo - top)] = 0
        frame[:, :, max(0, hi - top):] = 0
        frame[..., :pw] = 0
        frame[..., pw + W:] = 0
        if hi > lo:
            frame[:, :, lo - top:hi - top, pw:pw + W] = x[s, :, lo - ph:hi - ph]
    else:
        frame = x[s, :, top:bottom]
    shape = (C, kh, kw, n, r1 - r0, Wo)
    fn, fc, fh, fw = frame.strides
    windows = np.lib.stride_tricks.as_strided(
        frame, shape, (fc, fh * dh, fw * dwl, fn, fh * sh, fw * sw), writeable=False)
    views = [a.reshape(N, O, Ho * Wo)[s, :, r0 * Wo:r1 * Wo] for a, _, _ in ep.outputs]
    lo, hi = COLUMNS_IMAGE_BYTES
    if n > 1 and P >= WHOLE_PART_MAX_POSITIONS and lo <= C * kh * kw * P * x.itemsize <= hi:
        # large images one by one: (G, O/G, P) = (G, O/G, K) @ (G, K, P), each image's
        # columns multiplied and finished while they are in cache; without ``keep``, every
        # image goes through one image's buffer
        col = buffer(scratch, f"col{key}", shape if keep else shape[:3] + (1,) + shape[4:],
                     x.dtype)
        cols = col.reshape(G, -1, col.shape[3], P)
        for k in range(n):
            j = k if keep else 0
            col[:, :, :, j] = windows[:, :, :, k]
            image = [v[k:k + 1] for v in views]
            parallel.matmul(wg, cols[:, :, j], out=image[0].reshape(G, Og, P))
            finish_views(image, ep, axis=1)
        return col if keep else None
    col = buffer(scratch, f"col{key}", shape, x.dtype)
    cols = col.reshape(G, -1, n, P)
    col[...] = windows
    if n == 1 or P >= WHOLE_PART_MAX_POSITIONS:
        # image by image, straight into the output: (n, G, O/G, P) = (G, O/G, K) @ (n, G, K, P)
        parallel.matmul(wg, cols.transpose(2, 0, 1, 3), out=views[0].reshape(n, G, Og, P))
        finish_views(views, ep, axis=1)
        return col
    # small images: one GEMM for the part, (G, O/G, n*P) = (G, O/G, K) @ (G, K, n*P) (per
    # image, the products are too small for BLAS); the epilogue's first pass reads it image
    # by image into the outputs
    r = buffer(scratch, f"r{key}", (G, Og, n * P), x.dtype)
    parallel.matmul(wg, col.reshape(G, -1, n * P), out=r)
    finish_views(views, ep, axis=1, source=r.reshape(O, n, P).transpose(1, 0, 2))
    return col


#: bytes of convolution output multiplied before the epilogue runs over it: a core's
#: cache holds it between the two (the epilogue took 0.55-0.6 ns per value in SqueezeNet
#: after 3 MB tiles of 1x1 outputs, that much of it read back from memory)
EPILOGUE_TILE_BYTES = 1 << 20


#: ``(low, high)`` bytes of one image's columns for which :func:`im2col_gemm` copies,
#: multiplies and finishes a batch part's images one by one, in the core's cache
#: (SqueezeNet 1.1's 3x3 expand layers, 0.9-1.8 MB: 0.95-0.97 of its batch-8 time); smaller
#: images go together, their Python calls per image cost more than the cache saves (LeNet's
#: conv1, 57 KB: a training step 1.04-1.1x slower), and larger ones do not fit anyway
#: (CaffeNet's conv1 and conv2, 4.4 and 7 MB: 1.02x slower)
COLUMNS_IMAGE_BYTES = (1 << 19, 1 << 21)


#: output positions per image below which :func:`im2col_gemm` multiplies a part's images in
#: one GEMM, not image by image (CaffeNet's grouped 13x13 convolutions, batch 8: 0.82-0.87
#: of the time; with larger images the per-image products are as fast, and the extra pass
#: costs)
WHOLE_PART_MAX_POSITIONS = 256


# -- channels-last tiles --------------------------------------------------------------------
#: bytes of columns copied and multiplied per tile of whole images when the product has at
#: most :data:`FEW_OUTPUTS` columns: such a GEMM does little work per column value, so the
#: columns should stay in the core's L2 cache (2 MB here) between the copy and the GEMM
#: (CIFAR-10 quick's training step, 32 and 64 outputs, at 1 and 2 threads: 0.92-0.93 of the
#: time with 4 MB tiles). Products with more outputs take tiles of
#: :data:`protonet.parallel.TILE_BYTES`: their larger GEMMs run faster (ResNet-50 at batch 8
#: with 1 MB tiles everywhere: 1.03x slower)
COLUMN_TILE_BYTES = 1 << 20
FEW_OUTPUTS = 64


def column_tile_bytes(outputs: int) -> int:
    """Bytes of columns per tile for a product with ``outputs`` columns (see
    :data:`COLUMN_TILE_BYTES`)."""
    return COLUMN_TILE_BYTES if outputs <= FEW_OUTPUTS else parallel.TILE_BYTES


def weight_columns(w, scale=None, out=None, chunk: int | None = None) -> np.ndarray:
    """``w (O, C, kh, kw)`` as the matrix ``(kh*kw*C, O)`` whose column ``o`` is filter
    ``o`` in channels-last window order, held in chunks of ``chunk`` columns (all ``O``
    by default): ``(O/chunk, kh*kw*C, chunk)`` (a copy; times ``scale[o]`` if given).
    Multiplied as ``windows (P, kh*kw*C) @`` the matrix."""
    O, C, kh, kw = w.shape
    q = O if chunk is None else chunk
    shape = (O // q, kh, kw, C, q)
    out = np.empty(shape, w.dtype) if out is None else out.reshape(shape)
    blocks = w.reshape(O // q, q, C, kh, kw).transpose(0, 3, 4, 2, 1)
    if scale is None:
        out[...] = blocks
    else:
        np.multiply(blocks, scale.reshape(O // q, 1, 1, 1, q), out=out)
    return out.reshape(O // q, -1, q)


def column_matrix(w3) -> np.ndarray:
    """The ``(K, O)`` matrix of weights held in chunks ``(O/q, K, q)`` (a view for one
    chunk, else a copy)."""
    return w3[0] if w3.shape[0] == 1 else w3.transpose(1, 0, 2).reshape(w3.shape[1], -1)


def channels_last_conv(frame, w_cols, ep: Epilogue, s: slice, geometry, scratch: dict,
                       key) -> None:
    """``r (n, O, Ho*Wo) = windows (n, Ho, Wo, kh, kw, C) @ w_cols``, the weights
    ``(kh*kw*C, O)`` in chunks (:func:`weight_columns`, chunked by
    :func:`~protonet.kernels.jit_conv.chunk`).

    ``frame`` is images ``s`` padded channels-last ``(n, Hp, Wp, C)`` and ``geometry``
    ``(kernel, stride, dilation, (Ho, Wo))``. The compiled implicit GEMM
    (:mod:`~protonet.kernels.jit_conv`) where it applies, tile by tile of output rows
    ``(positions, O)`` finished and transposed while in cache (whole images, or a large
    image's positions in pieces); else the windows copied into columns tile by tile and
    multiplied by BLAS (:func:`channels_last_tiles`).
    """
    kernel, stride, dilation, out_hw = geometry
    O = w_cols.shape[0] * w_cols.shape[2]
    if not (jit_conv.supported(O, dilation[1], w_cols.dtype)
            and w_cols.shape[2] == jit_conv.chunk(O)):
        windows = windows_channels_last(frame, kernel, stride, dilation, out_hw)
        channels_last_tiles(windows, column_matrix(w_cols), ep, s, scratch, key)
        return
    n, P = frame.shape[0], out_hw[0] * out_hw[1]
    arrays = [a.reshape(a.shape[0], O, -1) for a, _, _ in ep.outputs]
    for t, positions in image_position_tiles(n, P, O * frame.itemsize, EPILOGUE_TILE_BYTES):
        m = t.stop - t.start  # whole images, or one image's positions
        rows = buffer(scratch, f"out{key}", (m * (positions.stop - positions.start), O),
                      frame.dtype)
        first = t.start * P + positions.start
        jit_conv.conv_rows(frame, w_cols, rows, slice(first, first + rows.shape[0]), kernel,
                           stride, dilation, out_hw)
        images = slice(s.start + t.start, s.start + t.stop)

        def emit(k, buf, images=images, positions=positions, m=m):
            transpose_rows(arrays[k][images, :, positions], buf.reshape(m, -1, O))
        finish_buffer(rows, ep, axis=1, emit=emit)


def image_position_tiles(n: int, P: int, position_bytes: int, tile_bytes: int):
    """``(images, positions)`` tiles of ``n`` images of ``P`` positions: whole images
    (``positions`` all ``P``) while one fits in ``tile_bytes``, else one image at a time
    in pieces of positions."""
    if P * position_bytes <= tile_bytes:
        return [(t, slice(0, P)) for t in parallel.tiles(slice(0, n), P * position_bytes,
                                                         tile_bytes)]
    step = max(1, tile_bytes // position_bytes)
    return [(slice(i, i + 1), slice(a, min(P, a + step)))
            for i in range(n) for a in range(0, P, step)]


#: positions per block of :func:`transpose_rows`
TRANSPOSE_BLOCK = 128


def transpose_rows(dst, rows) -> None:
    """``dst (m, O, p) = rows (m, p, O)`` transposed, :data:`TRANSPOSE_BLOCK` positions at a
    time: a block's rows stay in the L1 cache while they are written out as ``O`` short
    runs (0.6 ns a value here, against 1.2 for 1 MB at once and 6 for 3 MB)."""
    for a in range(0, rows.shape[1], TRANSPOSE_BLOCK):
        dst[:, :, a:a + TRANSPOSE_BLOCK] = rows[:, a:a + TRANSPOSE_BLOCK].transpose(0, 2, 1)


def channels_last_tiles(windows, w_cols, ep: Epilogue, s: slice, scratch: dict, key,
                        x=None):
    """``r (n, O, Ho*Wo) = windows (n, Ho, Wo, kh, kw, C) @ w_cols (K, O)``, tile by tile.

    ``windows`` are those of images ``s``. Each tile's windows are copied into a column
    buffer ``(t*P, K)``, multiplied into rows ``(t*P, O)``, finished by ``ep`` in place
    and transposed into the outputs. Given ``x`` (shaped like the first output, images
    ``s``), the same columns also give ``x`` rows^T ``(O, t*P)`` @ columns, summed over the
    tiles and returned as ``(O, K)`` (backward-data's columns yield the weight gradient).
    """
    n, Ho, Wo = windows.shape[:3]
    P, (K, O) = Ho * Wo, w_cols.shape
    dtype = w_cols.dtype
    arrays = [a.reshape(a.shape[0], O, -1) for a, _, _ in ep.outputs]
    product = None if x is None else np.zeros((O, K), dtype)
    for t in parallel.tiles(slice(0, n), P * K * np.dtype(dtype).itemsize,
                            column_tile_bytes(O)):
        m = t.stop - t.start
        col = buffer(scratch, f"col{key}", (m,) + windows.shape[1:], dtype)
        col[...] = windows[t]
        col = col.reshape(m * P, K)
        rows = buffer(scratch, f"out{key}", (m * P, O), dtype)
        if x is not None:
            rows.reshape(m, P, O)[...] = x[t].reshape(m, O, P).transpose(0, 2, 1)
            product += parallel.matmul(rows.T, col)
        parallel.matmul(col, w_cols, out=rows)
        images = slice(s.start + t.start, s.start + t.stop)

        def emit(k, buf, images=images, m=m):
            arrays[k][images] = buf.reshape(m, P, O).transpose(0, 2, 1)
        finish_buffer(rows, ep, axis=1, emit=emit)
    return product


def frame_channels_last(x, pad, scratch: dict, key: str) -> np.ndarray:
    """``x (n, C, H, W)`` padded channels-last into the kept buffer ``key``:
    ``(n, H+2*ph, W+2*pw, C)``."""
    n, C, H, W = x.shape
    frame = buffer(scratch, key, (n, H + 2 * pad[0], W + 2 * pad[1], C), x.dtype)
    return pad_channels_last(x, pad, frame)
