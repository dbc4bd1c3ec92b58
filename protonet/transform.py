"""Caffe's DataTransformer: crop, mirror, subtract mean, scale -- in that order."""
from __future__ import annotations

import numpy as np

from .errors import ProtonetError
from .layers.base import TRAIN


class DataTransformer:
    """Applies a ``TransformationParameter`` to uint8/float batches of shape (N, C, H, W).

    The mean (from ``mean_file`` or per-channel ``mean_value``) is subtracted at
    the uncropped position, the crop offset is random in TRAIN and central in
    TEST, mirroring is random whenever ``mirror`` is set (also in TEST, as in
    Caffe), and ``scale`` multiplies last.
    """

    def __init__(self, param, phase: int, rng: np.random.Generator, layer_name: str = ""):
        self.param, self.phase, self.rng, self.layer_name = param, phase, rng, layer_name
        self.scale = float(param.scale)
        self.crop = int(param.crop_size)
        self._mean = None
        self._mean_loaded = False
        if param.HasField("mean_file") and len(param.mean_value):
            raise ProtonetError(f"layer '{layer_name}': give mean_file or mean_value, not both")

    @property
    def mean(self):
        """The mean to subtract: (C, H, W) from mean_file, (C, 1, 1) from mean_value, or None.

        Read on first use, so a net can be shaped without its mean file."""
        if not self._mean_loaded:
            self._mean = self._load_mean()
            self._mean_loaded = True
        return self._mean

    def _load_mean(self):
        param, layer_name = self.param, self.layer_name
        if param.HasField("mean_file"):
            from .io.blobs import blob_proto_to_array
            from .proto import caffe_pb2
            proto = caffe_pb2.BlobProto()
            try:
                with open(param.mean_file, "rb") as f:
                    proto.ParseFromString(f.read())
            except OSError:
                raise ProtonetError(
                    f"layer '{layer_name}': cannot read mean_file '{param.mean_file}' "
                    "(create one with `protonet compute-mean DB OUT.binaryproto`)") from None
            mean = blob_proto_to_array(proto).astype(np.float32)
            return mean.reshape(mean.shape[-3:]) if mean.ndim >= 3 else mean
        if len(param.mean_value):
            return np.asarray(param.mean_value, np.float32).reshape(-1, 1, 1)
        return None

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        if self.crop:
            if self.crop > height or self.crop > width:
                raise ProtonetError(
                    f"layer '{self.layer_name}': crop_size {self.crop} is larger than the "
                    f"{height}x{width} input")
            return channels, self.crop, self.crop
        return channels, height, width

    def __call__(self, batch: np.ndarray, out: np.ndarray) -> None:
        """Transform ``batch`` (N, C, H, W) into ``out`` (N, C, h, w) float."""
        n, c, h, w = batch.shape
        x = batch.astype(out.dtype, copy=False)
        if self.mean is not None:
            mean = self.mean
            if mean.shape[0] == 1 and c > 1:
                mean = np.broadcast_to(mean, (c,) + mean.shape[1:])
            elif mean.shape[0] not in (1, c):
                raise ProtonetError(
                    f"layer '{self.layer_name}': the mean has {mean.shape[0]} channels, "
                    f"the data {c}")
            if mean.shape[1:] not in ((1, 1), (h, w)):
                raise ProtonetError(
                    f"layer '{self.layer_name}': mean of size {list(mean.shape[1:])} does not "
                    f"match data of size {[h, w]}")
            x = x - mean
        if self.crop:
            size = self.crop
            if self.phase == TRAIN:
                offsets = [(int(self.rng.integers(h - size + 1)),
                            int(self.rng.integers(w - size + 1))) for _ in range(n)]
            else:
                offsets = [((h - size) // 2, (w - size) // 2)] * n
            for i, (top, left) in enumerate(offsets):
                out[i] = x[i, :, top:top + size, left:left + size]
        else:
            out[...] = x
        if self.param.mirror:
            flip = self.rng.integers(2, size=n).astype(bool)
            out[flip] = out[flip, :, :, ::-1]
        if self.scale != 1.0:
            out *= self.scale
