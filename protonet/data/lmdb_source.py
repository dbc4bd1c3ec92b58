"""Sequential reading of ``Datum`` records from LMDB, with Caffe's wrap-around cursor."""
from __future__ import annotations

import numpy as np

from ..errors import ProtonetError


def datum_to_array(datum) -> np.ndarray:
    """A Datum's pixels as (C, H, W): uint8 from ``data``, float32 from ``float_data``,
    or decoded from ``encoded`` image bytes (RGB files give BGR channels, as OpenCV)."""
    if datum.encoded:
        import io

        from PIL import Image
        image = np.asarray(Image.open(io.BytesIO(datum.data)))
        if image.ndim == 2:
            return image[None]
        return image[:, :, ::-1].transpose(2, 0, 1)[:3] if image.shape[2] >= 3 \
            else image.transpose(2, 0, 1)
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, np.uint8).reshape(shape)
    return np.asarray(datum.float_data, np.float32).reshape(shape)


class DatumDB:
    """An LMDB database of Datum records read in key order, wrapping at the end."""

    def __init__(self, path: str, layer_name: str = ""):
        try:
            import lmdb
        except ImportError:
            raise ProtonetError("reading LMDB needs the 'lmdb' package: "
                                "pip install 'protonet[data]'") from None
        self.path, self.layer_name = path, layer_name
        try:
            self.env = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                 max_readers=8)
        except lmdb.Error as e:
            raise ProtonetError(f"layer '{layer_name}': cannot open LMDB '{path}': {e}") from None
        self.txn = self.env.begin(buffers=False)
        self.cursor = self.txn.cursor()
        if not self.cursor.first():
            raise ProtonetError(f"layer '{layer_name}': LMDB '{path}' is empty")

    def _datum(self):
        from ..proto import caffe_pb2
        datum = caffe_pb2.Datum()
        try:
            datum.ParseFromString(self.cursor.value())
        except Exception:
            raise ProtonetError(f"{self.path}: record '{self.cursor.key().decode(errors='replace')}'"
                                " is not a Datum") from None
        return datum

    def record_shape(self) -> tuple[int, int, int]:
        return tuple(datum_to_array(self._datum()).shape)

    def skip(self, n: int) -> None:
        for _ in range(n):
            self._advance()

    def _advance(self):
        if not self.cursor.next():
            self.cursor.first()

    def next_batch(self, n: int):
        """The next ``n`` records as (uint8 or float32 (n, C, H, W), float32 labels (n,))."""
        first = datum_to_array(self._datum())
        batch = np.empty((n,) + first.shape, first.dtype)
        labels = np.empty(n, np.float32)
        for i in range(n):
            datum = self._datum()
            pixels = first if i == 0 else datum_to_array(datum)
            if pixels.shape != first.shape:
                raise ProtonetError(f"{self.path}: record shapes differ ({list(pixels.shape)} "
                                    f"vs {list(first.shape)}); Data layers need equal shapes")
            batch[i] = pixels
            labels[i] = datum.label
            self._advance()
        return batch, labels
