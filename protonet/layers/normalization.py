"""Normalisation layers: LRN, BatchNorm and MVN, after Caffe's
``src/caffe/layers/{lrn,batch_norm,mvn}_layer.cpp``.

LRN (local response normalisation):

bottom and top are (N, C, H, W). With n = ``local_size`` (odd) and zero padding:

* ACROSS_CHANNELS: ``s = k + alpha/n * sum of x^2 over channels c-(n-1)/2 .. c+(n-1)/2``
* WITHIN_CHANNEL: Caffe builds this from Power, AVE Pooling (kernel n, pad (n-1)/2,
  stride 1) and Eltwise layers, so it ignores ``k`` and divides by the pool size,
  which is n*n everywhere: ``s = 1 + alpha/n^2 * sum of x^2 over the n x n window``

and in both ``y = x * s^(-beta)``.
"""
from __future__ import annotations

import numpy as np

from .. import parallel
from ..kernels.scratch import buffer, image_channel_tiles
from .base import TEST, Layer, register
from .neuron import reuse_buffer

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1
#: bytes of a block of one image's channels (input, squares and sums) when the whole image
#: is larger than a tile: GoogLeNet's norm2 (192 56x56 channels, 7 MB) ran 0.85x the time
#: of whole images at batch 1 and 0.95x at batch 8 in blocks of 2 MB; 0.5-1 MB blocks were
#: faster at batch 1 but slower at batch 8
LRN_BLOCK_BYTES = 2 << 20


def window_sum(a: np.ndarray, n: int, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """Sum of ``a`` over a centred, zero-padded window of odd length ``n`` along ``axis``
    (into ``out`` if given, which must not be ``a``).

    Adds n shifted slices (one vectorised add per window offset): measured 3x faster
    than a cumulative sum along a middle axis, and free of its cancellation error.
    """
    if out is None:
        out = a.copy()
    else:
        np.copyto(out, a)
    lead = (slice(None),) * axis
    for d in range(1, (n - 1) // 2 + 1):
        out[lead + (slice(d, None),)] += a[lead + (slice(None, -d),)]
        out[lead + (slice(None, -d),)] += a[lead + (slice(d, None),)]
    return out


def negative_power(s: np.ndarray, beta: float, out: np.ndarray) -> np.ndarray:
    """``s ** -beta`` into ``out``. For the usual beta = 0.75, ``1/sqrt(s*sqrt(s))`` is
    about 4x faster than ``np.power`` and within 1.2 ulp of the exact value."""
    if beta == 0.75:
        np.sqrt(s, out=out)
        out *= s
        np.sqrt(out, out=out)
        return np.reciprocal(out, out=out)
    return np.power(s, -beta, out=out)


@register("LRN")
class LRNLayer(Layer):
    """Local response normalisation of (N, C, H, W) bottoms; top has the same shape."""

    exact_num_bottom = 1
    exact_num_top = 1
    splits_work = True

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        self._buf = {}
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.error(f"lrn_param.local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise self.error(f"unknown norm_region {self.region}")

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.shape_error("input must have 4 axes (num, channels, height, width)", bottom)
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        top[0].reshape(bottom[0].shape)

    def _window_sum(self, a: np.ndarray, out=None, scratch=None) -> np.ndarray:
        if self.region == ACROSS_CHANNELS:
            return window_sum(a, self.size, 1, out)
        return window_sum(window_sum(a, self.size, 2, scratch), self.size, 3, out)

    def forward(self, bottom, top):
        """Images are independent: parts of the batch on threads, each in cache-sized tiles
        of whole images (:data:`protonet.parallel.TILE_BYTES`), or, for an image larger than
        that, in blocks of its channels (:data:`LRN_BLOCK_BYTES`); an ACROSS_CHANNELS block
        squares and sums ``(n-1)/2`` channels more on either side."""
        x, y = bottom[0].data, top[0].data
        self.scale = scale = reuse_buffer(getattr(self, "scale", None), x)
        C = x.shape[1]
        across = self.region == ACROSS_CHANNELS
        halo = (self.size - 1) // 2 if across else 0
        channel_bytes = 3 * x[:1, :1].nbytes  # the input, its squares and their sums
        budget = (parallel.TILE_BYTES if C * channel_bytes <= parallel.TILE_BYTES
                  else LRN_BLOCK_BYTES)

        def work(k, s):
            for u, c in image_channel_tiles(s, C, channel_bytes, budget):
                # the block c widened by the halo, clipped to the image: (m, a1-a0, H, W)
                a0, a1 = max(0, c.start - halo), min(C, c.stop + halo)
                xa, sc = x[u, a0:a1], scale[u, c]
                squares = buffer(self._buf, f"sq{k}", xa.shape, xa.dtype)
                np.multiply(xa, xa, out=squares)
                inner = (None if across else buffer(self._buf, f"rows{k}", xa.shape, xa.dtype))
                if (a0, a1) == (c.start, c.stop):  # no halo: the sums go straight to scale
                    sums = sc
                    self._window_sum(squares, sc, inner)
                else:
                    sums = buffer(self._buf, f"sum{k}", xa.shape, xa.dtype)
                    self._window_sum(squares, sums, inner)
                    sums = sums[:, c.start - a0:c.stop - a0]  # those of the block's channels
                if across:
                    np.multiply(sums, self.alpha / self.size, out=sc)
                    sc += self.k
                else:
                    np.divide(sums, float(self.size * self.size), out=sc)  # AVE pooling
                    sc *= self.alpha
                    sc += 1.0
                negative_power(sc, self.beta, y[u, c])
                y[u, c] *= x[u, c]
        parallel.run(work, parallel.split(x.shape[0], x.size * self.size))

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        window = self.size if self.region == ACROSS_CHANNELS else self.size * self.size
        # dx_i = dy_i s_i^-beta - 2 alpha beta / window * x_i * sum_{j near i} dy_j y_j / s_j
        ratio = dy * y
        ratio /= self.scale
        acc = self._window_sum(ratio)
        acc *= x
        acc *= 2.0 * self.alpha * self.beta / window
        dx = bottom[0].diff
        negative_power(self.scale, self.beta, dx)
        dx *= dy
        dx -= acc

    def macc(self, bottom, top):
        per_element = self.size if self.region == ACROSS_CHANNELS else 2 * self.size
        return bottom[0].count * (per_element + 2)


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Normalises each channel (axis 1) with statistics over the batch and every other axis.

    bottom and top are (N, C, ...) (a 1-axis bottom is one channel); with m = N * spatial
    values per channel, ``y = (x - mean) / sqrt(var + eps)``, var the biased variance.
    No scale or shift: Caffe pairs it with a ``Scale { bias_term: true }`` layer.

    The three blobs are running sums, never learned: mean (C,), variance (C,) and a scale
    factor (1,), all starting at 0. Without ``use_global_stats`` (the default in TRAIN),
    forward normalises with the batch statistics and updates, with f the
    ``moving_average_fraction``::

        factor = f * factor + 1;   mean_sum = f * mean_sum + mean
        var_sum = f * var_sum + m / (m - 1) * var      (m / (m - 1) is 1 when m = 1)

    With ``use_global_stats`` (the default in TEST) it uses ``mean_sum / factor`` and
    ``var_sum / factor`` (both 0 while factor is 0). As Caffe's LayerSetUp does, setup adds
    a ``param { lr_mult: 0 }`` for each blob the layer parameter does not list, and refuses
    a listed one with a non-zero lr_mult, so the solver never changes them.
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.use_global_stats = (bool(p.use_global_stats) if p.HasField("use_global_stats")
                                 else self.phase == TEST)
        self.eps = float(p.eps)
        self.channels = self._channels(bottom)
        if not self.blobs:  # set up once; loaded or shared blobs are kept, as in Caffe
            for shape in ((self.channels,), (self.channels,), (1,)):
                self.add_param(shape, None)  # zeros, filled by forward, not by a filler
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add().lr_mult = 0.0
            elif self.param.param[i].lr_mult != 0:
                raise self.error(
                    f"param {i} has lr_mult {self.param.param[i].lr_mult:g}: batch "
                    "normalization statistics cannot be learned; give lr_mult: 0 or leave "
                    "the param blocks out")
        self.param_propagate_down = [False] * len(self.blobs)

    def _channels(self, bottom) -> int:
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom must have at least 1 axis", bottom)
        return 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]

    def reshape(self, bottom, top):
        channels = self._channels(bottom)
        if channels != self.channels:
            raise self.shape_error(
                f"bottom has {channels} channels (axis 1), the statistics were made for "
                f"{self.channels}", bottom)
        top[0].reshape(bottom[0].shape)

    def _view(self, a: np.ndarray) -> np.ndarray:
        """(N, C, spatial) view of a bottom-shaped array."""
        return a.reshape(a.shape[0], self.channels, -1)

    def forward(self, bottom, top):
        x, y = self._view(bottom[0].data), self._view(top[0].data)
        m = x.shape[0] * x.shape[2]  # values per channel
        if self.use_global_stats:
            factor = self.blobs[2].data[0]
            scale = factor.dtype.type(0) if factor == 0 else factor.dtype.type(1) / factor
            mean = self.blobs[0].data * scale
            var = self.blobs[1].data * scale
        else:
            mean = _channel_sum(x, 1.0 / m)
        np.subtract(x, mean[:, None], out=y)  # in place too: x is read before written
        if not self.use_global_stats:
            var = _channel_sum(np.square(y), 1.0 / m)
            f = self.moving_average_fraction
            sums = [b.data for b in self.blobs]
            sums[2] *= f
            sums[2] += 1
            sums[0] *= f
            sums[0] += mean
            correction = self.dtype.type(m) / self.dtype.type(m - 1) if m > 1 else 1.0
            sums[1] *= f
            sums[1] += var * correction
        var += self.eps
        self.std = np.sqrt(var, out=var)  # (C,)
        y /= self.std[:, None]
        # later in-place layers (Scale, ReLU) overwrite top: keep the normalised values
        if self.use_global_stats:
            self.x_norm = None
        else:
            self.x_norm = reuse_buffer(getattr(self, "x_norm", None), y)
            np.copyto(self.x_norm, y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = self._view(top[0].diff), self._view(bottom[0].diff)  # one array in place
        std = self.std[:, None]
        if self.use_global_stats:
            np.divide(dy, std, out=dx)
            return
        # dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), means per channel
        y = self.x_norm
        m = y.shape[0] * y.shape[2]
        grad = y * _channel_sum(dy * y)[:, None]
        grad += _channel_sum(dy)[:, None]
        grad *= -1.0 / m
        grad += dy
        np.divide(grad, std, out=dx)

    def macc(self, bottom, top):
        return bottom[0].count


def _channel_sum(a: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Per-channel sum of an (N, C, S) array, as Caffe's two gemv calls: each (n, c) row is
    summed (and scaled) first, then the rows over n."""
    rows = a.sum(axis=2)
    if scale != 1.0:
        rows *= scale
    return rows.sum(axis=0)


@register("MVN")
class MVNLayer(Layer):
    """Mean-variance normalisation of each (n, c) plane, or each sample with
    ``across_channels``: ``y = x - mean``, then with ``normalize_variance``
    ``y = (x - mean) / (std + eps)`` (Caffe adds eps to the standard deviation).

    Caffe shapes this layer with the legacy (num, channels, height, width) accessors: the
    bottom may have at most 4 axes and top is always 4-D, e.g. (N, C) -> (N, C, 1, 1).
    Backward is Caffe's: ``(dy - mean(dy) - mean(dy * y) * y) / (std + eps)``, which is
    exact for eps = 0 (it leaves out a factor std / (std + eps) on the last term).
    """

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) > 4:
            raise self.shape_error("uses Caffe's legacy (num, channels, height, width) shape, "
                                   "so the bottom can have at most 4 axes", bottom)
        legacy = shape + (1,) * (4 - len(shape))
        if top[0] is bottom[0] and shape != legacy:
            kept = bottom[0].data
            top[0].reshape(legacy)
            top[0].data[...] = kept.reshape(legacy)
        else:
            top[0].reshape(legacy)
        self.rows = legacy[0] if self.across_channels else legacy[0] * legacy[1]

    def _view(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.rows, -1)

    def forward(self, bottom, top):
        x, y = self._view(bottom[0].data), self._view(top[0].data)
        dim = x.shape[1]
        mean = x.sum(axis=1)
        mean *= 1.0 / dim
        np.subtract(x, mean[:, None], out=y)
        if not self.normalize_variance:
            return
        var = np.square(y).sum(axis=1)
        var *= 1.0 / dim
        std = np.sqrt(var, out=var)
        std += self.eps
        self.std = std
        y /= std[:, None]
        # Caffe reads top.data in backward; a later in-place layer may have changed it
        self.y = reuse_buffer(getattr(self, "y", None), y)
        np.copyto(self.y, y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = self._view(top[0].diff), self._view(bottom[0].diff)  # one array in place
        dim = dy.shape[1]
        if not self.normalize_variance:
            mean = dy.sum(axis=1)
            mean *= 1.0 / dim
            np.subtract(dy, mean[:, None], out=dx)
            return
        y = self.y
        grad = y * (dy * y).sum(axis=1)[:, None]
        grad += dy.sum(axis=1)[:, None]
        grad *= -1.0 / dim
        grad += dy
        np.divide(grad, self.std[:, None], out=dx)

    def macc(self, bottom, top):
        return bottom[0].count
