"""Caffe's DataTransformer (``src/caffe/data_transformer.cpp``), on whole batches.

For every image Caffe picks a crop offset (random in TRAIN, the centre in
TEST), decides on a mirror (``mirror: true`` flips a random half of the images
*in TEST too*), and writes ``(pixel - mean) * scale`` where the mean is read at
the pixel's position in the *uncropped* image (a ``mean_file``) or per channel
(``mean_value``: one value, or one per channel). The arithmetic is done in the
output's float type, so results are bit-for-bit Caffe's.

Random draws come from the generator the layer passes in: per batch, first the
mirror coin flips (when ``mirror``), then the row offsets, then the column
offsets (when cropping in TRAIN). Caffe draws from its own generator image by
image, so its random choices differ from ours; their distribution does not.
"""
from __future__ import annotations

import numpy as np

from .errors import ProtonetError
from .layers.base import TRAIN


class DataTransformer:
    """Applies a ``TransformationParameter`` to batches of (N, C, H, W) uint8 or float images."""

    def __init__(self, param, phase: int, rng: np.random.Generator, layer_name: str = ""):
        self.param, self.phase, self.rng, self.layer_name = param, phase, rng, layer_name
        self.scale = float(param.scale)
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self._mean = None
        self._mean_loaded = False
        if param.HasField("mean_file") and len(param.mean_value):
            raise self.error("give mean_file or mean_value, not both")
        if param.force_color and param.force_gray:
            raise self.error("transform_param: force_color and force_gray cannot both be set")

    def error(self, message: str) -> ProtonetError:
        return ProtonetError(f"layer '{self.layer_name}': {message}" if self.layer_name
                             else message)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def decode_mode(self) -> str:
        """How encoded images are decoded: ``force_color`` -> colour, ``force_gray`` -> grey."""
        return "color" if self.param.force_color else "gray" if self.param.force_gray \
            else "native"

    @property
    def mean(self):
        """(C, H, W) from ``mean_file``, (C,) from ``mean_value``, or None.

        Read on first use, so a net can be shaped without its mean file."""
        if not self._mean_loaded:
            self._mean = self._load_mean()
            self._mean_loaded = True
        return self._mean

    def _load_mean(self):
        param = self.param
        if param.HasField("mean_file"):
            from .io.blobs import blob_proto_shape, blob_proto_to_array
            from .proto import caffe_pb2
            proto = caffe_pb2.BlobProto()
            try:
                with open(param.mean_file, "rb") as f:
                    proto.ParseFromString(f.read())
            except OSError:
                raise self.error(
                    f"cannot read mean_file '{param.mean_file}' (create one from the training "
                    "database with `protonet compute-mean DB OUT.binaryproto`)") from None
            except Exception:
                raise self.error(f"mean_file '{param.mean_file}' is not a binary BlobProto "
                                 "(as `protonet compute-mean` writes)") from None
            shape = blob_proto_shape(proto)
            mean = blob_proto_to_array(proto)
            if len(shape) == 4 and shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise self.error(f"mean_file '{param.mean_file}' holds a blob of shape "
                                 f"{list(shape)}; a mean image is (1, C, H, W)")
            return mean
        if len(param.mean_value):
            return np.asarray(param.mean_value, np.float64)
        return None

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """The shape one transformed (C, H, W) image takes (Caffe's InferBlobShape)."""
        self.check_size(channels, height, width)
        if self.crop:
            return channels, self.crop, self.crop
        return channels, height, width

    def check_size(self, channels: int, height: int, width: int) -> None:
        if channels <= 0:
            raise self.error("images have no channels")
        if self.crop > height or self.crop > width:
            raise self.error(f"crop_size {self.crop} is larger than the {height}x{width} input")

    def check_input(self, channels: int, height: int, width: int) -> None:
        """Fail now (as Caffe does at setup) if images of this shape cannot be transformed."""
        self.check_size(channels, height, width)
        self._mean_for(channels, height, width, np.float32)

    def _mean_for(self, c: int, h: int, w: int, dtype):
        """The mean, broadcastable against one (C, H, W) image, in ``dtype`` (checked as Caffe
        checks it)."""
        mean = self.mean
        if mean is None:
            return None
        if self.param.HasField("mean_file"):
            if mean.shape != (c, h, w):
                raise self.error(f"the mean in '{self.param.mean_file}' is "
                                 f"{list(mean.shape)} (C, H, W) but the data is {[c, h, w]}; "
                                 "recompute it with `protonet compute-mean` on this data")
            return mean.astype(dtype, copy=False)
        if len(mean) not in (1, c):
            raise self.error(f"give 1 mean_value or one per channel ({c}), got {len(mean)}")
        # float, as Caffe keeps mean_values_ in Dtype
        values = mean.astype(np.float32).astype(dtype)
        return np.broadcast_to(values, (c,)).reshape(c, 1, 1)

    # -- random choices -----------------------------------------------------------------------
    def draw(self, n: int, heights, widths):
        """(mirror flags or None, row offsets, column offsets) for ``n`` images."""
        flips = self.rng.integers(2, size=n).astype(bool) if self.mirror else None
        heights, widths = np.broadcast_to(heights, (n,)), np.broadcast_to(widths, (n,))
        if not self.crop:
            zero = np.zeros(n, np.int64)
            return flips, zero, zero
        if self.phase == TRAIN:
            rows = self.rng.integers(0, heights - self.crop + 1, size=n)
            cols = self.rng.integers(0, widths - self.crop + 1, size=n)
        else:
            rows, cols = (heights - self.crop) // 2, (widths - self.crop) // 2
        return flips, np.asarray(rows, np.int64), np.asarray(cols, np.int64)

    # -- applying -----------------------------------------------------------------------------
    def __call__(self, batch: np.ndarray, out: np.ndarray) -> None:
        """Transform ``batch`` (N, C, H, W) into ``out`` (N, C, h, w) float."""
        n, c, h, w = batch.shape
        if n == 0:
            return
        self.check_size(c, h, w)
        mean = self._mean_for(c, h, w, out.dtype)
        flips, rows, cols = self.draw(n, h, w)
        size = self.crop
        if size and (h, w) != (size, size):
            if self.phase == TRAIN:
                # (N, C, H-s+1, W-s+1, s, s) windows; pick each image's own window
                windows = np.lib.stride_tricks.sliding_window_view(batch, (size, size),
                                                                   axis=(2, 3))
                batch = windows[np.arange(n), :, rows, cols]
                if mean is not None and mean.shape[1:] != (1, 1):
                    mean_windows = np.lib.stride_tricks.sliding_window_view(
                        mean, (size, size), axis=(1, 2))
                    mean = mean_windows[:, rows, cols].transpose(1, 0, 2, 3)
            else:
                top, left = int(rows[0]), int(cols[0])
                batch = batch[:, :, top:top + size, left:left + size]
                if mean is not None and mean.shape[1:] != (1, 1):
                    mean = mean[:, top:top + size, left:left + size]
        if mean is not None:
            np.subtract(batch, mean, out=out, dtype=out.dtype)
        else:
            out[...] = batch
        if flips is not None and flips.any():
            out[flips] = out[flips][..., ::-1]
        if self.scale != 1.0:
            out *= self.scale

    def transform_images(self, images: list, out: np.ndarray) -> None:
        """Transform images of differing sizes (cropped to one size) into ``out``."""
        n = len(images)
        heights = np.array([im.shape[1] for im in images])
        widths = np.array([im.shape[2] for im in images])
        for im in images:
            self.check_size(*im.shape)
        if not self.crop and (len(set(heights)) > 1 or len(set(widths)) > 1):
            raise self.error("images in one batch differ in size "
                             f"({heights[0]}x{widths[0]} and others); set crop_size, or resize "
                             "them to one size (convert-imageset --resize_height/--resize_width)")
        flips, rows, cols = self.draw(n, heights, widths)
        size = self.crop
        for i, im in enumerate(images):
            c, h, w = im.shape
            mean = self._mean_for(c, h, w, out.dtype)
            top, left = int(rows[i]), int(cols[i])
            crop = im[:, top:top + size, left:left + size] if size else im
            if mean is not None and mean.shape[1:] != (1, 1):
                mean = mean[:, top:top + size, left:left + size]
            if mean is not None:
                np.subtract(crop, mean, out=out[i], dtype=out.dtype)
            else:
                out[i] = crop
            if flips is not None and flips[i]:
                out[i] = out[i][..., ::-1]
        if self.scale != 1.0:
            out *= self.scale
