"""Pooling and SPP layers: Caffe's semantics; the array work is in
:mod:`protonet.kernels.pool`.

After Caffe's ``src/caffe/layers/{pooling,spp}_layer.cpp``. Work is cut into batch parts
and cache-sized tiles of images; Python loops run over kernel taps and pyramid levels,
never over images or output positions.
"""
from __future__ import annotations

import numpy as np

from .. import parallel
from ..blob import Blob
from ..errors import ProtonetError
from ..kernels import jit as kjit
from ..kernels import jit_pool
from ..kernels import pool as kpool
from ..kernels.im2col import pool_out_size
from ..kernels.scratch import buffer as _buffer
from ..proto import caffe_pb2
from .base import TRAIN, Layer, register

_Pool = caffe_pb2.PoolingParameter


@register("Pooling")
class PoolingLayer(Layer):
    """Caffe's Pooling over ``(N, C, H, W)``: MAX (optional mask top), AVE, STOCHASTIC.

    Windows start at ``o*stride - pad``; the output size follows
    :func:`protonet.kernels.im2col.pool_out_size`; the array work is in
    :mod:`protonet.kernels.pool`. MAX ignores padding (windows are
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
        self._index = None

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
            self._geometry = ((H, W), kernel, out)
            self._buf.clear()  # frames keep their borders only for one geometry
            self.geo = kpool.geometry((H, W), kernel, self.pad, self.stride, out)
            self.in_hw, self.window, self.out_hw = (H, W), kernel, out
            self._index_dtype = np.int8 if kernel[0] * kernel[1] <= 127 else np.int32
        for t in top:
            t.reshape((N, C) + out)

    @property
    def disjoint(self) -> bool:
        """Whether each input cell lies in at most one window (stride >= kernel)."""
        return self.geo.disjoint

    def _parts(self, x: np.ndarray) -> list[slice]:
        return parallel.split(x.shape[0], x.size * len(self.geo.taps))

    def _image_bytes(self) -> int:
        """Bytes a tile takes per image: its frame and as much scratch (the taps pass over
        each image many times, so tiles are cache-sized, :func:`protonet.parallel.tiles`)."""
        Hf, Wf = self.geo.frame
        return 2 * self.channels * Hf * Wf * np.dtype(self.dtype).itemsize

    def _tiles(self, s: slice) -> list[slice]:
        return parallel.tiles(s, self._image_bytes())

    def _framed(self, x, fill: float, s: slice, key="") -> np.ndarray:
        """Images ``s`` of ``x`` in a frame whose border holds ``fill`` (see
        :func:`protonet.kernels.pool.frame_images`)."""
        return kpool.frame_images(x[s], self.geo, fill, self._buf, f"frame{fill}{key}",
                                  parallel.tile_items(self._image_bytes()))

    def flat_index(self) -> np.ndarray:
        """The selected cells as Caffe's mask: ``h*W + w`` in the input channel, -1 for none."""
        return kpool.flat_index(self._selection(), self.geo)

    # -- forward -----------------------------------------------------------------
    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.method == _Pool.STOCHASTIC:
            xp = self._framed(x, 0.0, slice(0, x.shape[0]), "all")
            if self.phase == TRAIN:
                self._index = _buffer(self._buf, "index", y.shape, self._index_dtype)
                kpool.stochastic_pool_train(xp, y, self._index, self.geo, self.rng,
                                            _buffer(self._buf, "hit", y.shape, bool))
            else:
                kpool.stochastic_pool_test(xp, y, self.geo)
            return
        index = None
        if self.method == _Pool.MAX:
            # the choices only matter for backward and the mask top: in TEST they are
            # worked out again if backward asks (:meth:`_selection`)
            keep = self.phase == TRAIN or len(top) > 1
            self._index = (_buffer(self._buf, "index", y.shape, self._index_dtype) if keep
                           else None)
            self._max_from = bottom[0] if not keep else None  # (its data then: read anew)
            index = self._index
        if not self.geo.single and kjit.enabled():
            self._compiled(x, y, index)
        elif self.method == _Pool.MAX:

            def work(k, s):
                parts = kpool.tiles(s, x.shape[1], self.geo, x.itemsize)
                largest = (parts[0][0].stop - parts[0][0].start,
                           parts[0][1].stop - parts[0][1].start)
                for u, c in parts:
                    xp = kpool.frame_tile(x[u, c], self.geo, -np.inf, self._buf,
                                          f"maxframe{k}", largest)
                    kpool.max_pool(xp, y[u, c], self.geo,
                                   None if index is None else index[u, c], self._buf, k)
            parallel.run(work, self._parts(x))
        else:

            def work(k, s):
                for u in self._tiles(s):
                    kpool.ave_pool(self._framed(x, 0.0, u, k), y[u], self.geo)
            parallel.run(work, self._parts(x))
        if len(top) > 1:
            top[1].data[...] = self.flat_index()

    def _compiled(self, x, y, index=None) -> None:
        """MAX (and its choices into ``index`` if given) or AVE by the compiled loops
        (:mod:`protonet.kernels.jit_pool`), straight from the bottom, the images split over
        the threads. A single image stays on the calling thread: its channels split over
        two threads made SqueezeNet 1.1's batch-1 pass 2-10% slower, GoogLeNet's 2%."""
        C = x.shape[1]
        method = "MAX" if self.method == _Pool.MAX else "AVE"

        def work(k, s):
            if index is not None:
                jit_pool.max_pool_choice_part(x, y, index, s, self.window, self.stride,
                                              self.pad)
            else:
                jit_pool.pool_part(method, x, y, s, slice(0, C), self.window, self.stride,
                                   self.pad)
        parallel.run(work, parallel.split(x.shape[0], x.size * len(self.geo.taps)))

    def _selection(self) -> np.ndarray:
        """Which tap each MAX window chose: kept from forward, or (a TEST forward keeps
        none) chosen again from the bottom it pooled."""
        if self._index is None and self.method == _Pool.MAX and self._max_from is not None:
            x = self._max_from.data
            index = _buffer(self._buf, "index", (x.shape[0], x.shape[1]) + self.out_hw,
                            self._index_dtype)
            y = np.empty(index.shape, x.dtype)
            if kjit.enabled():
                self._compiled(x, y, index)
            else:
                kpool.max_pool(self._framed(x, -np.inf, slice(0, x.shape[0]), "again"), y,
                               self.geo, index, self._buf, "again")
            self._index = index
        return self._index

    # -- backward ----------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.method == _Pool.STOCHASTIC and self.phase != TRAIN:
            raise self.error("STOCHASTIC pooling has no gradient in the TEST phase")
        average = self.method == _Pool.AVE
        geo = self.geo
        if geo.single:
            if average:
                dx[...] = dy / geo.area.astype(dy.dtype)
            else:
                dx[...] = 0
                N, C = dx.shape[:2]
                flat = self.flat_index().reshape(N, C, 1)
                np.put_along_axis(dx.reshape(N, C, -1), np.maximum(flat, 0),
                                  np.where(flat >= 0, dy.reshape(N, C, 1), 0), axis=2)
            return
        index = None if average else self._selection()
        if kjit.enabled():
            def work(part, s):
                if average:
                    jit_pool.spread_average_part(dy, dx, s, self.window, self.stride, self.pad)
                else:
                    jit_pool.route_max_part(index, dy, dx, s, self.window, self.stride,
                                            self.pad)
            parallel.run(work, self._parts(dx))
            return

        def tile(part, s):
            if not average and not geo.disjoint:
                kpool.route_selected(index[s], dy[s], dx[s], geo, self._buf, part)
                return
            target = self._diff_frame(part, dx[s])
            if average:
                kpool.spread_average(dy[s], target, geo)
            else:
                kpool.place_selected(index[s], dy[s], target, geo, self._buf, part)
            self._unframe(target, dx[s])

        def work(part, s):
            for u in self._tiles(s):
                tile(part, u)
        parallel.run(work, self._parts(dx))

    def _diff_frame(self, part: int, dx: np.ndarray) -> np.ndarray:
        """Where a backward tile writes the taps of ``dx`` (images of the bottom diff):
        part ``part``'s frame buffer, or ``dx`` itself when no frame is needed."""
        if not self.geo.framed:
            return dx
        return _buffer(self._buf, f"dframe{part}", dx.shape[:2] + self.geo.frame, dx.dtype)

    def _unframe(self, frame: np.ndarray, dx: np.ndarray) -> None:
        """Copy the image interior of a :meth:`_diff_frame` into ``dx`` (nothing if it is ``dx``)."""
        if self.geo.framed:
            (H, W), (ph, pw) = self.in_hw, self.pad
            dx[...] = frame[:, :, ph:ph + H, pw:pw + W]

    def macc(self, bottom, top):
        N, C, Ho, Wo = top[0].shape
        return N * C * Ho * Wo * self.window[0] * self.window[1]


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
