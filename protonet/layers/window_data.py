"""WindowData: R-CNN's window-file data layer (``src/caffe/layers/window_data_layer.cpp``).

The window file (``window_data_param.source``) lists images and the candidate
windows in each, as whitespace-separated fields::

    # 0                 image index (0, 1, 2, ... in order)
    /path/to/img.jpg    image path (root_folder is prepended)
    3                   channels
    375                 height
    500                 width
    2                   number of windows, then one line per window:
    7 0.83 10 20 150 190    class, overlap with a ground-truth box, x1 y1 x2 y2 (inclusive)
    0 0.12 0 0 99 99

A window whose overlap is at least ``fg_threshold`` is foreground (its class
must be above 0); one under ``bg_threshold`` is background (class and overlap
forced to 0); windows in between are dropped.

Every batch holds ``batch_size - int(batch_size * fg_fraction)`` background
windows first, then ``int(batch_size * fg_fraction)`` foreground ones, each
picked uniformly at random (with replacement) from its set and mirrored with
probability 1/2 when ``transform_param.mirror``. A window is grown by
``context_pad`` pixels of context on each side of the warped output (in
``crop_mode: "square"`` first made square), clipped to the image, warped to
``transform_param.crop_size`` with bilinear interpolation (OpenCV's INTER_LINEAR)
and placed where the clipped part falls in the ``crop_size`` square; the rest is
0. Pixels become ``(pixel - mean) * window_data_param.scale``, the mean taken
from ``transform_param.mean_file`` (its central window, at offset ``(mean width -
crop_size) / 2`` on both axes, as Caffe reads it) or ``mean_value``.

Tops: data (batch_size, channels, crop_size, crop_size), channels from the window
file (images are read in colour, so 3), BGR as OpenCV gives them; label
(batch_size,).

What matches Caffe bit for bit: the parsing, the foreground/background split,
the per-batch foreground count and order, the labels, the crop geometry of a
given window (Caffe's float arithmetic and C rounding) and the warped pixels of a
given window and mirror choice. What does not: *which* windows are drawn and
which are mirrored. Caffe draws them from a Boost mt19937 seeded by its global
generator, whose state depends on everything drawn before in the process;
protonet draws from the layer's numpy generator (per window: the index, then the
mirror coin), so a seeded run is reproducible and resumes exactly, with the same
distribution as Caffe's but other draws.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..data.prefetch import Loader
from ..errors import ProtonetError
from .base import register
from .data import _PrefetchingLayer, _Slot, data_shard


# -- the window file ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One window: the index of its image, its class (0: background), its overlap with a
    ground-truth box, and its corners (inclusive pixel coordinates)."""

    image: int
    label: int
    overlap: float
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass
class WindowFile:
    """A parsed window file: images as (path with root_folder, (channels, height, width)),
    and the foreground and background windows."""

    images: list
    fg: list
    bg: list
    dropped: int = 0


def parse_window_file(text: str, root_folder: str = "", fg_threshold: float = 0.5,
                      bg_threshold: float = 0.5, what: str = "window file") -> WindowFile:
    """Read a window file as Caffe's WindowDataLayer does (fields separated by any
    whitespace; ``#`` then the image index starts each image)."""
    tokens = [(n, t) for n, line in enumerate(text.split("\n"), 1) for t in line.split()]
    fg_t, bg_t = np.float32(fg_threshold), np.float32(bg_threshold)
    images, fg, bg, dropped = [], [], [], 0
    pos = 0

    def take(kind, name):
        nonlocal pos
        if pos >= len(tokens):
            raise ProtonetError(f"{what}: ends early: {name} of image {len(images) - 1} "
                                "is missing")
        line, token = tokens[pos]
        pos += 1
        try:
            return kind(token)
        except ValueError:
            raise ProtonetError(f"{what}:{line}: {name} '{token}' is not "
                                f"{'an integer' if kind is int else 'a number'}") from None

    if len(tokens) < 2:
        raise ProtonetError(f"{what}: the window file is empty (it needs '# 0', an image path, "
                            "its channels, height, width and window count, then the windows)")
    while pos + 1 < len(tokens):
        line, hashtag = tokens[pos]
        if hashtag != "#":
            raise ProtonetError(f"{what}:{line}: expected '#' before image {len(images)}, "
                                f"found '{hashtag}'")
        pos += 1
        index = take(int, "the image index")
        if index != len(images):
            raise ProtonetError(f"{what}:{line}: image index {index} where {len(images)} was "
                                "expected; Caffe looks images up by this index, so they must "
                                "count 0, 1, 2, ... in order")
        if pos >= len(tokens):
            raise ProtonetError(f"{what}: ends early: image {index} has no path")
        path = root_folder + tokens[pos][1]
        pos += 1
        size = (take(int, "channels"), take(int, "height"), take(int, "width"))
        images.append((path, size))
        count = take(int, "the number of windows")
        for _ in range(count):
            line = tokens[pos][0] if pos < len(tokens) else None
            label, overlap = take(int, "a window's class"), take(np.float32, "an overlap")
            box = [take(int, c) for c in ("x1", "y1", "x2", "y2")]
            if overlap >= fg_t:
                if label <= 0:
                    raise ProtonetError(f"{what}:{line}: a foreground window (overlap "
                                        f"{overlap:g} >= fg_threshold {fg_threshold:g}) has "
                                        f"class {label}; foreground classes start at 1")
                fg.append(Window(index, label, float(overlap), *box))
            elif overlap < bg_t:
                bg.append(Window(index, 0, 0.0, *box))
            else:
                dropped += 1
    if pos < len(tokens):
        raise ProtonetError(f"{what}:{tokens[pos][0]}: stray '{tokens[pos][1]}' at the end")
    return WindowFile(images, fg, bg, dropped)


# -- crop geometry -----------------------------------------------------------------------------
def c_round(x) -> int:
    """C's ``round``: to the nearest integer, halves away from zero."""
    x = float(x)
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


@dataclass(frozen=True)
class Warp:
    """Where a window goes: the region cut from the image (x1, y1, x2, y2, inclusive),
    the (height, width) it is resized to, and its (row, column) offset in the output."""

    x1: int
    y1: int
    x2: int
    y2: int
    height: int
    width: int
    pad_h: int
    pad_w: int


def window_warp(window, rows: int, cols: int, crop_size: int, context_pad: int = 0,
                square: bool = False, mirror: bool = False, dtype=np.float32) -> Warp:
    """Caffe's crop geometry for a window (anything with x1, y1, x2, y2) of a
    ``rows`` x ``cols`` image, computed in ``dtype`` as Caffe computes it in Dtype.

    Without context padding or square mode, the window itself is resized to
    crop_size x crop_size. Otherwise its half sizes (made equal to the larger in
    square mode) are scaled by crop_size / (crop_size - 2 context_pad) about its
    centre, the grown box is clipped to the image, and the clipped part is
    resized to its share of crop_size and offset by the share cut off at the top
    (rows) and at the left -- the right when ``mirror``, since the output is
    flipped after."""
    f = np.dtype(dtype).type
    x1, y1, x2, y2 = int(window.x1), int(window.y1), int(window.x2), int(window.y2)
    height = width = crop_size
    pad_h = pad_w = 0
    if context_pad > 0 or square:
        context_scale = f(crop_size) / f(crop_size - 2 * context_pad)
        half_h, half_w = f((y2 - y1 + 1) / 2.0), f((x2 - x1 + 1) / 2.0)
        center_x, center_y = f(x1) + half_w, f(y1) + half_h
        if square:
            half_h = half_w = max(half_h, half_w)
        x1 = c_round(center_x - half_w * context_scale)
        x2 = c_round(center_x + half_w * context_scale)
        y1 = c_round(center_y - half_h * context_scale)
        y2 = c_round(center_y + half_h * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        scale_x = f(crop_size) / f(unclipped_w)
        scale_y = f(crop_size) / f(unclipped_h)
        width = c_round(f(x2 - x1 + 1) * scale_x)
        height = c_round(f(y2 - y1 + 1) * scale_y)
        pad_h = c_round(f(pad_y1) * scale_y)
        pad_w = c_round(f(pad_x2 if mirror else pad_x1) * scale_x)
        # rounding may push the region past the output's edge: shrink it
        height = min(height, crop_size - pad_h)
        width = min(width, crop_size - pad_w)
    return Warp(x1, y1, x2, y2, height, width, pad_h, pad_w)


def warp_window(image: np.ndarray, warp: Warp, flip: bool) -> np.ndarray:
    """The (C, warp.height, warp.width) uint8 pixels a window becomes: the region of
    ``image`` (C, H, W) resized as cv::resize INTER_LINEAR does, mirrored if ``flip``."""
    from ..data.images import resize_linear
    region = image[:, warp.y1:warp.y2 + 1, warp.x1:warp.x2 + 1]
    out = resize_linear(region, warp.height, warp.width)
    return out[:, :, ::-1] if flip else out


# -- the layer ---------------------------------------------------------------------------------
class _WindowLoader(Loader):
    """Fills a batch with background windows, then foreground windows, warped."""

    def __init__(self, layer, windows: WindowFile, cache: list | None, channels: int,
                 mean, mean_off: int, rng):
        p = layer.param.window_data_param
        tp = layer.param.transform_param
        self.what = f"layer '{layer.name}' (WindowData)"
        self.source = p.source
        self.windows, self.cache, self.channels = windows, cache, channels
        self.mean, self.mean_off, self.rng = mean, mean_off, rng
        self.dtype = layer.dtype
        self.batch_size = int(p.batch_size)
        self.crop_size = int(tp.crop_size)
        self.mirror = bool(tp.mirror)
        self.context_pad = int(p.context_pad)
        self.square = p.crop_mode == "square"
        self.scale = self.dtype.type(p.scale)
        self.num_fg = int(np.float32(self.batch_size) * np.float32(p.fg_fraction))
        self.fg_fraction = p.fg_fraction
        self.rank, self.count = data_shard(layer)

    def new_slot(self):
        k = self.crop_size
        return _Slot(np.zeros((self.batch_size, self.channels, k, k), self.dtype),
                     np.zeros(self.batch_size, self.dtype))

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as (3, H, W) uint8 BGR (OpenCV's IMREAD_COLOR)."""
        from ..data.images import decode_image, read_image
        path = self.windows.images[index][0]
        if self.cache is not None:
            return decode_image(self.cache[index], "color", path)
        try:
            return read_image(path, is_color=True)
        except FileNotFoundError:
            raise ProtonetError(f"{self.what}: could not load image '{path}' (listed in "
                                f"window file '{self.source}')") from None

    def load(self, slot):
        slot.data[...] = 0
        # draw the whole global batch (see protonet.layers.data.data_shard); warp this
        # rank's share of it
        total = self.batch_size * self.count
        num_fg = self.num_fg if self.count == 1 else \
            int(np.float32(total) * np.float32(self.fg_fraction))
        first = self.rank * self.batch_size
        item = 0
        for pool, count in ((self.windows.bg, total - num_fg), (self.windows.fg, num_fg)):
            for _ in range(count):
                window = pool[int(self.rng.integers(len(pool)))]
                flip = bool(self.rng.integers(2)) if self.mirror else False
                if first <= item < first + self.batch_size:
                    self.put(slot.data[item - first], window, flip)
                    slot.label[item - first] = window.label
                item += 1

    def put(self, out: np.ndarray, window: Window, flip: bool) -> None:
        """Warp ``window`` into ``out`` (channels, crop_size, crop_size), mean subtracted
        and scaled."""
        image = self.image(window.image)
        if image.shape[0] != self.channels:
            raise ProtonetError(f"{self.what}: image '{self.windows.images[window.image][0]}' "
                                f"has {image.shape[0]} channels, the batch {self.channels}")
        rows, cols = image.shape[1:]
        warp = window_warp(window, rows, cols, self.crop_size, self.context_pad, self.square,
                           flip, self.dtype)
        if not (0 <= warp.x1 <= warp.x2 < cols and 0 <= warp.y1 <= warp.y2 < rows) or \
                warp.height <= 0 or warp.width <= 0:
            path = self.windows.images[window.image][0]
            raise ProtonetError(
                f"{self.what}: window ({window.x1}, {window.y1}, {window.x2}, {window.y2}) of "
                f"image '{path}' ({cols}x{rows}) does not overlap the image enough to be "
                f"warped (region {warp}); fix the window file '{self.source}'")
        pixels = warp_window(image, warp, flip)
        h0, w0 = warp.pad_h, warp.pad_w
        target = out[:, h0:h0 + warp.height, w0:w0 + warp.width]
        if self.mean is None:
            target[...] = pixels
        elif self.mean.ndim == 1:
            np.subtract(pixels, self.mean[:, None, None], out=target, dtype=self.dtype)
        else:
            m0 = self.mean_off
            mean = self.mean[:, m0 + h0:m0 + h0 + warp.height, m0 + w0:m0 + w0 + warp.width]
            np.subtract(pixels, mean, out=target, dtype=self.dtype)
        if self.scale != 1:
            target *= self.scale

    def get_state(self):
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state):
        self.rng.bit_generator.state = state["rng"]


@register("WindowData")
class WindowDataLayer(_PrefetchingLayer):
    """Batches of warped windows from R-CNN window files (see the module docstring).

    Tops: data (batch_size, C, crop_size, crop_size), label (batch_size,).
    Prefetched as Data is (``data_param.prefetch`` batches ahead); the state
    (the random generator) resumes exactly.
    """

    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.window_data_param
        tp = self.param.transform_param
        what = f"layer '{self.name}' (WindowData)"
        self._warn_ignored_fields()
        if p.batch_size <= 0:
            raise self.error("window_data_param.batch_size must be positive")
        self.batch_size = int(p.batch_size)
        crop = int(tp.crop_size)
        if crop <= 0:
            moved = (" (Caffe reads it from transform_param, not window_data_param)"
                     if p.crop_size else "")
            raise self.error("WindowData needs transform_param.crop_size, the side windows "
                             f"are warped to{moved}")
        if 2 * p.context_pad >= crop:
            raise self.error(f"context_pad {p.context_pad} leaves nothing of a {crop}-pixel "
                             "crop (it must be below crop_size / 2)")
        if p.crop_mode not in ("warp", "square"):
            warnings.warn(f"{what}: crop_mode '{p.crop_mode}' is neither 'warp' nor 'square'; "
                          "warping, as Caffe does", stacklevel=2)
        override = self.override(0)
        if override is not None:
            self.data_shape = tuple(override)
        else:
            windows = self._read_windows(p, what)
            channels = windows.images[-1][1][0]  # Caffe takes the last image's
            if channels != 3:
                raise self.error(f"the window file gives {channels} channels for image "
                                 f"{len(windows.images) - 1}; WindowData reads images in "
                                 "colour, so 3 are needed")
            mean, mean_off = self._mean(channels, crop)
            cache = self._cache(windows, what) if p.cache_images else None
            self.data_shape = (self.batch_size, channels, crop, crop)
            loader = _WindowLoader(self, windows, cache, channels, mean, mean_off, self.rng)
            self._start(loader, self.param.data_param.prefetch)
        top[0].reshape(self.data_shape)
        top[1].reshape((self.data_shape[0],))

    def _warn_ignored_fields(self) -> None:
        from ..io.prototxt import ProtonetWarning
        p, tp = self.param.window_data_param, self.param.transform_param
        ignored = [f for f in ("mean_file", "crop_size", "mirror") if p.HasField(f)]
        if ignored:
            warnings.warn(f"layer '{self.name}': {', '.join(ignored)} inside window_data_param "
                          f"{'is' if len(ignored) == 1 else 'are'} ignored, as Caffe's "
                          "WindowData reads them from transform_param; move them there",
                          ProtonetWarning, stacklevel=3)
        if tp.HasField("scale") and tp.scale != 1:
            warnings.warn(f"layer '{self.name}': transform_param.scale is ignored, as Caffe's "
                          "WindowData scales by window_data_param.scale; set it there",
                          ProtonetWarning, stacklevel=3)

    def _read_windows(self, p, what) -> WindowFile:
        if not p.source:
            raise self.error("window_data_param.source is empty; name a window file")
        try:
            with open(p.source, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            raise self.error(
                f"cannot read window file '{p.source}' ({e.strerror}); it lists images and "
                "their windows ('# index', path, channels, height, width, window count, then "
                "'class overlap x1 y1 x2 y2' lines), as R-CNN's selective-search tools write "
                "it") from None
        windows = parse_window_file(text, p.root_folder, p.fg_threshold, p.bg_threshold,
                                    f"{what}: window file '{p.source}'")
        if not windows.fg or not windows.bg:
            raise self.error(
                f"window file '{p.source}' has {len(windows.fg)} foreground windows (overlap "
                f">= fg_threshold {p.fg_threshold:g}) and {len(windows.bg)} background windows "
                f"(overlap < bg_threshold {p.bg_threshold:g}); every batch draws from both, so "
                "both must have some")
        return windows

    def _mean(self, channels: int, crop: int):
        """(mean, offset): the (C, H, W) mean_file image, or (C,) mean_values, or None."""
        from ..transform import DataTransformer
        tp = self.param.transform_param
        mean = DataTransformer(tp, self.phase, self.rng, self.name).mean
        if mean is None:
            return None, 0
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if len(mean) not in (1, channels):
                raise self.error(f"give 1 mean_value or one per channel ({channels}), got "
                                 f"{len(mean)}")
            values = mean.astype(np.float32).astype(self.dtype)
            return np.broadcast_to(values, (channels,)).copy(), 0
        c, h, w = mean.shape
        offset = (w - crop) // 2 if w >= crop else -1
        if c != channels or offset < 0 or h < offset + crop:
            raise self.error(
                f"the mean in '{tp.mean_file}' is {c}x{h}x{w}; WindowData subtracts its central "
                f"{crop}x{crop} window (offset (width - crop_size) / 2 on both axes, as Caffe), "
                f"which needs {channels} channels, width >= {crop} and height >= "
                f"{max(offset, 0) + crop}")
        return mean.astype(self.dtype, copy=False), offset

    def _cache(self, windows: WindowFile, what: str) -> list:
        """cache_images: every image file's bytes, read now (Caffe's ReadFileToDatum)."""
        cache = []
        for path, _ in windows.images:
            try:
                with open(path, "rb") as f:
                    cache.append(f.read())
            except OSError as e:
                raise self.error(f"could not load image '{path}' for cache_images "
                                 f"({e.strerror}); listed in window file "
                                 f"'{self.param.window_data_param.source}'") from None
        return cache
