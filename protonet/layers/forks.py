"""Small layers of the Caffe forks that deployed models use.

- ``ReLU6`` (MobileNet v2 ports, NVIDIA Caffe): ``min(max(x, 0), 6)``.
- ``Axpy`` (SENet's Caffe, SE-ResNet/SE-ResNeXt deploy nets): ``a * x + y`` with ``a``
  one scale per image and channel.
- ``ShuffleChannel`` (ShuffleNet ports): interleaves the channels of ``group`` groups.
- ``Interp`` (DeepLab v2, PSPNet): bilinear resizing with aligned corners.
- ``Upsample`` (SegNet): max-unpooling, each value put back where a pooling mask says.

The detection and segmentation families live in their own modules.
"""
from __future__ import annotations

import numpy as np

from ..interp import resize_bilinear, resize_bilinear_backward
from .base import Layer, register
from .neuron import NeuronLayer


@register("ReLU6")
class ReLU6Layer(NeuronLayer):
    """``y = min(max(x, 0), 6) + negative_slope * min(x, 0)`` (``relu_param``, as the
    forks read it); the gradient passes where ``0 < x < 6`` and is ``negative_slope``
    where ``x <= 0``. Any shape; in place allowed (the input's mask is kept)."""

    def layer_setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        # in place the output overwrites x: keep the gradient's mask first
        self.scale = self._scale(x) if self.in_place else None
        negative = np.minimum(x, 0) if self.slope else None
        np.clip(x, 0, 6, out=y)
        if negative is not None:
            y += self.slope * negative

    def _scale(self, x: np.ndarray) -> np.ndarray:
        scale = ((x > 0) & (x < 6)).astype(x.dtype)
        if self.slope:
            scale[x <= 0] = self.slope
        return scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        scale = self.scale if self.in_place else self._scale(bottom[0].data)
        np.multiply(top[0].diff, scale, out=bottom[0].diff)


@register("Axpy")
class AxpyLayer(Layer):
    """``F = a * X + Y``: bottoms ``a`` ``(N, C)`` or ``(N, C, 1, 1)``, ``X`` and ``Y``
    ``(N, C, *spatial)``; top ``F`` like ``X``. Backward: ``da = sum_spatial(dF * X)``,
    ``dX = a * dF``, ``dY = dF``. The top may be ``Y`` (in place)."""

    exact_num_bottom = 3
    exact_num_top = 1

    def reshape(self, bottom, top):
        a, x, y = bottom
        if (a.num_axes < 2 or a.shape[:2] != x.shape[:2] or a.count != a.shape[0] * a.shape[1]
                or x.num_axes < 2):
            raise self.shape_error("the scale (bottom 0) must be N x C (x 1 x 1) with the "
                                   "N and C of X (bottom 1)", bottom)
        if y.shape != x.shape:
            raise self.shape_error("X and Y (bottoms 1 and 2) must have the same shape", bottom)
        if top[0] is bottom[1] or top[0] is bottom[0]:
            raise self.error("the top may replace Y (bottom 2) in place, not a or X")
        top[0].reshape(x.shape)

    def _scale(self, bottom) -> np.ndarray:
        a, x = bottom[0].data, bottom[1].data
        return a.reshape(a.shape[:2] + (1,) * (x.ndim - 2))

    def forward(self, bottom, top):
        a, x = self._scale(bottom), bottom[1].data
        out = top[0].data
        if top[0] is not bottom[2]:
            np.copyto(out, bottom[2].data)
        out += a * x

    def backward(self, top, propagate_down, bottom):
        dF = top[0].diff
        x = bottom[1].data
        if propagate_down[0]:
            n, c = x.shape[:2]
            bottom[0].diff.reshape(n, c)[...] = (dF * x).reshape(n, c, -1).sum(axis=2)
        if propagate_down[1]:
            np.multiply(dF, self._scale(bottom), out=bottom[1].diff)
        if propagate_down[2] and top[0] is not bottom[2]:
            np.copyto(bottom[2].diff, dF)

    def macc(self, bottom, top):
        return bottom[1].count


@register("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    """``(N, g*k, ...)`` -> ``(N, k*g, ...)``: channel ``i*k + j`` (group ``i``, member ``j``)
    moves to ``j*g + i`` -- the ``(g, k)`` channel grid transposed. Backward is the inverse
    permutation (the ``(k, g)`` grid transposed back)."""

    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.group = int(self.param.shuffle_channel_param.group)
        if self.group < 1:
            raise self.error(f"shuffle_channel_param.group must be positive, got {self.group}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2 or shape[1] % self.group:
            raise self.shape_error(f"the channels must divide into shuffle_channel_param.group "
                                   f"= {self.group} groups", bottom)
        if top[0] is bottom[0]:
            raise self.error("does not allow in-place computation")
        top[0].reshape(shape)

    @staticmethod
    def _grid(array: np.ndarray, rows: int) -> np.ndarray:
        n, c = array.shape[:2]
        return array.reshape(n, rows, c // rows, -1)

    def forward(self, bottom, top):
        x = self._grid(bottom[0].data, self.group)
        self._grid(top[0].data, x.shape[2])[...] = x.transpose(0, 2, 1, 3)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = self._grid(top[0].diff, top[0].shape[1] // self.group)
            self._grid(bottom[0].diff, self.group)[...] = dy.transpose(0, 2, 1, 3)


@register("Interp")
class InterpLayer(Layer):
    """Bilinear resizing with aligned corners (DeepLab/PSPNet): ``(N, C, H, W)`` ->
    ``(N, C, Ho, Wo)``. The input is first cropped by ``-pad_beg`` at the top/left and
    ``-pad_end`` at the bottom/right (only cropping: the pads must be <= 0), giving
    ``He x We``. The output size, in the fork's order of precedence: ``shrink_factor``
    alone ``(He-1)//s + 1``; ``zoom_factor`` alone ``He + (He-1)(z-1)``; ``height`` and
    ``width``; both factors (shrink, then zoom); else a second bottom's H x W. Kernel:
    :mod:`protonet.interp`."""

    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.interp_param
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        for name, value in (("pad_beg", self.pad_beg), ("pad_end", self.pad_end)):
            if value > 0:
                raise self.error(f"interp_param.{name} must be <= 0 (only cropping), "
                                 f"got {value}")
        for name in ("zoom_factor", "shrink_factor"):
            if p.HasField(name) and getattr(p, name) < 1:
                raise self.error(f"interp_param.{name} must be at least 1, "
                                 f"got {getattr(p, name)}")

    def _out_size(self, size: int, given: int, second: int | None) -> int:
        p = self.param.interp_param
        zoom, shrink = p.HasField("zoom_factor"), p.HasField("shrink_factor")
        if shrink:
            size = (size - 1) // p.shrink_factor + 1
        if zoom:
            return size + (size - 1) * (p.zoom_factor - 1)
        if shrink:
            return size
        if p.HasField("height") and p.HasField("width"):
            return given
        if second is not None:
            return second
        raise self.error("interp_param needs zoom_factor, shrink_factor, height and width, "
                         "or a second bottom giving the size")

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.shape_error("the input must be N x C x H x W", bottom)
        n, c, h, w = bottom[0].shape
        self.in_hw = (h + self.pad_beg + self.pad_end, w + self.pad_beg + self.pad_end)
        if min(self.in_hw) < 1:
            raise self.shape_error(f"pad_beg/pad_end ({self.pad_beg}, {self.pad_end}) crop "
                                   "the whole input", bottom)
        p = self.param.interp_param
        second = bottom[1].shape[2:4] if len(bottom) > 1 else (None, None)
        self.out_hw = (self._out_size(self.in_hw[0], p.height, second[0]),
                       self._out_size(self.in_hw[1], p.width, second[1]))
        if min(self.out_hw) < 1:
            raise self.shape_error(f"the output size {list(self.out_hw)} must be positive",
                                   bottom)
        top[0].reshape((n, c) + self.out_hw)

    def _crop(self, array: np.ndarray) -> np.ndarray:
        b = -self.pad_beg
        return array[:, :, b:b + self.in_hw[0], b:b + self.in_hw[1]]

    def forward(self, bottom, top):
        top[0].data[...] = resize_bilinear(self._crop(bottom[0].data), self.out_hw)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if self.pad_beg or self.pad_end:
            dx[...] = 0
        self._crop(dx)[...] = resize_bilinear_backward(top[0].diff, self.in_hw)

    def macc(self, bottom, top):
        return 4 * top[0].count


@register("Upsample")
class UpsampleLayer(Layer):
    """SegNet's max-unpooling: bottoms ``x`` and ``mask`` ``(N, C, H, W)`` (a MAX Pooling's
    second top: flat ``h*Wo + w`` positions); top ``(N, C, Ho, Wo)`` zero but for
    ``top[n, c].flat[mask[n, c, i]] = x[n, c].flat[i]`` (a later ``i`` wins a clash).
    ``Ho x Wo``: ``upsample_h`` x ``upsample_w``, else ``H*scale_h - pad_out_h`` (and so
    for W; ``scale`` gives both). Backward: ``dx[i] = dtop[mask[i]]``."""

    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.upsample_param
        has = p.HasField
        if has("upsample_h") != has("upsample_w"):
            raise self.error("upsample_param needs both upsample_h and upsample_w")
        if has("scale_h") != has("scale_w"):
            raise self.error("upsample_param needs both scale_h and scale_w")
        if has("scale") and has("scale_h") and not has("upsample_h"):
            raise self.error("upsample_param: give scale or scale_h/scale_w, not both")
        self.size = (p.upsample_h, p.upsample_w) if has("upsample_h") else None
        self.scale = (p.scale_h, p.scale_w) if has("scale_h") else (p.scale, p.scale)
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        limits = self.size if self.size else self.scale
        if min(limits) < 2:
            raise self.error(f"upsample_param: the output must be larger than the input "
                             f"({'upsample_h/w' if self.size else 'scale'} must be >= 2)")
        if self.size is None and any(pad and s != 2 for pad, s in zip(self.pad_out,
                                                                     self.scale)):
            raise self.error("upsample_param: pad_out_h/pad_out_w need a scale of 2")

    def reshape(self, bottom, top):
        x, mask = bottom
        if x.num_axes != 4 or mask.shape != x.shape:
            raise self.shape_error("the input and its mask must both be N x C x H x W", bottom)
        n, c, h, w = x.shape
        self.out_hw = self.size or (h * self.scale[0] - self.pad_out[0],
                                    w * self.scale[1] - self.pad_out[1])
        top[0].reshape((n, c) + tuple(self.out_hw))

    def _positions(self, bottom) -> np.ndarray:
        """The mask as flat positions in ``(N*C, Ho*Wo)``, checked to lie inside."""
        n, c = bottom[0].shape[:2]
        index = bottom[1].data.reshape(n * c, -1).astype(np.int64)
        area = self.out_hw[0] * self.out_hw[1]
        if index.size and (index.min() < 0 or index.max() >= area):
            raise self.error(f"mask position out of range for a {self.out_hw[0]}x"
                             f"{self.out_hw[1]} output: check that the scale matches the "
                             "pooling layer that made the mask")
        return index

    def forward(self, bottom, top):
        index = self._positions(bottom)
        n, c = bottom[0].shape[:2]
        y = top[0].data.reshape(n * c, -1)
        y[...] = 0
        # numpy's fancy assignment lets the last of repeated positions win, like the loop
        np.put_along_axis(y, index, bottom[0].data.reshape(n * c, -1), axis=1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n, c = bottom[0].shape[:2]
        dy = top[0].diff.reshape(n * c, -1)
        bottom[0].diff.reshape(n * c, -1)[...] = np.take_along_axis(
            dy, self._positions(bottom), axis=1)
