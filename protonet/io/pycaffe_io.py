"""pycaffe's ``caffe.io``: input preprocessing, image loading, proto <-> array conversion.

    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))     # H x W x K -> K x H x W
    transformer.set_channel_swap("data", (2, 1, 0))  # RGB -> BGR
    transformer.set_raw_scale("data", 255)           # [0, 1] -> [0, 255]
    transformer.set_mean("data", mean_bgr)           # per channel, or a K x H x W image
    net.blobs["data"].data[...] = transformer.preprocess("data", caffe.io.load_image(path))

Images are read with Pillow instead of scikit-image and resized with numpy; see
:func:`load_image` and :func:`resize_image` for how the numbers compare with pycaffe's.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import ProtonetError
from ..proto import caffe_pb2

__all__ = ["Transformer", "load_image", "resize_image", "oversample", "blobproto_to_array",
           "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array"]


# -- proto / datum / ndarray conversion -------------------------------------------------------
def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """A ``BlobProto``'s data (or diff, with ``return_diff``) as a float64 array of its shape:
    the legacy num/channels/height/width when any of them is set, else ``shape.dim`` -- no
    dims at all is a scalar, as in pycaffe. Values that don't fill the shape raise a
    ``ValueError`` (a :class:`~protonet.ProtonetError` too)."""
    from .blobs import blob_proto_shape, blob_proto_to_array
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    shape = blob_proto_shape(blob) if legacy else tuple(int(d) for d in blob.shape.dim)
    return blob_proto_to_array(blob, diff=return_diff, shape=shape).astype(np.float64)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None):
    """A ``BlobProto`` holding ``arr`` (float data, ``shape.dim`` from the array) and
    optionally ``diff`` of the same shape."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float32).ravel().tolist())
    if diff is not None:
        diff = np.asarray(diff)
        if diff.shape != arr.shape:
            raise ProtonetError(f"diff of shape {list(diff.shape)} does not match the data's "
                                f"{list(arr.shape)}")
        blob.diff.extend(diff.astype(np.float32).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist: Iterable[np.ndarray]) -> bytes:
    """A serialized ``BlobProtoVector`` holding the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """The arrays of a serialized ``BlobProtoVector``."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None):
    """A ``Datum`` from a C x H x W array: uint8 arrays go to ``data`` bytes, anything else
    to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum) -> np.ndarray:
    """A ``Datum``'s values as a C x H x W array (uint8 from ``data``, else float64 from
    ``float_data``); the label is ``datum.label``. Encoded (JPEG/PNG) datums are decoded."""
    shape = (datum.channels, datum.height, datum.width)
    if datum.encoded:
        from io import BytesIO

        from PIL import Image
        with Image.open(BytesIO(datum.data)) as im:
            arr = np.asarray(im)
        if arr.ndim == 2:
            return arr[None]
        return arr[:, :, ::-1].transpose(2, 0, 1).copy()  # stored as OpenCV reads it: BGR
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=float).reshape(shape)


# -- preprocessing ------------------------------------------------------------------------------
class Transformer:
    """Turn images (H x W x K floats) into net inputs (K x H x W), and back.

    ``inputs`` maps input names to their blob shapes (N, K, H, W), e.g.
    ``{"data": net.blobs["data"].data.shape}``. :meth:`preprocess` applies, in Caffe's
    order: resize to H x W -> transpose -> channel swap -> raw scale -> subtract mean ->
    input scale; :meth:`deprocess` undoes them in reverse (except the resize).
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]]):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in inputs.items()}
        self.transpose: dict[str, tuple] = {}
        self.channel_swap: dict[str, tuple] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise ProtonetError(f"'{in_}' is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Format an H' x W' x K image for input ``in_``; returns K x H x W float32."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Undo :meth:`preprocess` (but not its resize) on a K x H x W (or 1 x K x H x W)
        array; returns H x W x K when a transpose was set."""
        self._check_input(in_)
        decaf_in = np.array(data).squeeze()
        input_scale = self.input_scale.get(in_)
        mean = self.mean.get(in_)
        raw_scale = self.raw_scale.get(in_)
        channel_swap = self.channel_swap.get(in_)
        transpose = self.transpose.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order taking the image to K x H x W, normally ``(2, 0, 1)``."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ProtonetError(f"transpose order {tuple(order)} needs "
                                f"{len(self.inputs[in_]) - 1} axes, as the input has")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order after the transpose, e.g. ``(2, 1, 0)`` for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ProtonetError(f"channel swap {tuple(order)} needs {self.inputs[in_][1]} "
                                "channels, as the input has")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Scale applied before the mean subtraction, e.g. 255 for models trained on
        [0, 255] pixels (images load in [0, 1])."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """The mean to subtract: one value per channel (shape (K,)) or a K x H x W image,
        resized to the input's H x W when its size differs."""
        self._check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:
                mean = mean.reshape(ms)
                in_shape = self.inputs[in_][1:]
                if ms[0] != in_shape[0]:
                    raise ValueError("Mean channels incompatible with input.")
                mean = resize_image(mean.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1))
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Scale applied after the mean subtraction."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# -- image IO ----------------------------------------------------------------------------------
_GRAY = np.array([0.2125, 0.7154, 0.0721])  # scikit-image's rgb2gray weights


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """Load an image as float32 in [0, 1]: H x W x 3 RGB (``color=True``), else H x W x 1
    intensity (colour images are converted with scikit-image's weights 0.2125 R +
    0.7154 G + 0.0721 B). Alpha is dropped; 16-bit images scale by 65535. Uses Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise ProtonetError("load_image needs Pillow: pip install 'protonet[data]'") from None
    try:
        with Image.open(filename) as im:
            im.load()
            img = _pil_to_float(im)
    except FileNotFoundError:
        raise ProtonetError(f"{filename}: no such file") from None
    except OSError as e:
        raise ProtonetError(f"{filename}: cannot read the image ({e})") from None
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if not color and img.ndim == 3:
        img = img @ _GRAY
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img.astype(np.float32)


def _pil_to_float(im) -> np.ndarray:
    """A Pillow image as floats in [0, 1] (as scikit-image's img_as_float scales them)."""
    if im.mode == "1":
        return np.asarray(im, dtype=np.float64)
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16) / 65535.0
    if im.mode == "I":
        return np.clip(np.asarray(im, dtype=np.float64) / 2147483647.0, 0, 1)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float64)
    if im.mode not in ("L", "RGB", "RGBA"):
        has_alpha = im.mode in ("LA", "PA", "La", "RGBa") or \
            (im.mode == "P" and "transparency" in im.info)
        im = im.convert("RGBA" if has_alpha and im.mode != "LA" else
                        "L" if im.mode == "LA" else "RGB")
    return np.asarray(im, dtype=np.uint8) / 255.0


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K image to ``new_dims`` (height, width); returns float32.

    Same numbers as pycaffe: for K = 1 or 3 pycaffe calls scikit-image's
    ``resize(order=interp_order, mode='constant')`` on the image scaled to [0, 1]: pixel
    centres aligned, samples outside the image count as the image's minimum (so the
    border darkens a little when upsampling). That is done here with numpy for orders 0
    and 1. Other K go through ``scipy.ndimage.zoom`` in pycaffe (corners aligned); here
    too, with numpy. scikit-image 0.19+ additionally blurs before downsampling
    (``anti_aliasing``); pycaffe's results with it differ from these by that blur.
    Orders above 1 need scipy.
    """
    im = np.asarray(im)
    if im.ndim != 3:
        raise ProtonetError(f"resize_image takes an H x W x K array, got shape {list(im.shape)}")
    out_h, out_w = (int(d) for d in new_dims)
    if out_h <= 0 or out_w <= 0:
        raise ProtonetError(f"resize_image: new dimensions must be positive, got {new_dims}")
    if im.shape[-1] in (1, 3):
        lo, hi = float(im.min()), float(im.max())
        if not hi > lo:  # a constant image (avoids pycaffe's division by zero)
            return np.full((out_h, out_w, im.shape[-1]), lo, dtype=np.float32)
        std = (im.astype(np.float64) - lo) / (hi - lo)
        out = _resize_centers(std, out_h, out_w, interp_order)
        return (out * (hi - lo) + lo).astype(np.float32)
    return _resize_corners(im.astype(np.float64), out_h, out_w, interp_order).astype(np.float32)


def _resize_centers(im: np.ndarray, out_h: int, out_w: int, order: int) -> np.ndarray:
    """scikit-image's resize: pixel-centre mapping, zero outside the image."""
    if order > 1:
        ndimage = _scipy_ndimage(order)
        return ndimage.zoom(im, (out_h / im.shape[0], out_w / im.shape[1], 1), order=order,
                            mode="grid-constant", grid_mode=True)
    rows = _axis_samples(im.shape[0], out_h, order)
    cols = _axis_samples(im.shape[1], out_w, order)
    return _apply(im, rows, cols)


def _resize_corners(im: np.ndarray, out_h: int, out_w: int, order: int) -> np.ndarray:
    """scipy.ndimage.zoom's default: the corner pixels map onto each other."""
    if order > 1:
        ndimage = _scipy_ndimage(order)
        return ndimage.zoom(im, (out_h / im.shape[0], out_w / im.shape[1], 1), order=order)
    rows = _axis_samples(im.shape[0], out_h, order, corners=True)
    cols = _axis_samples(im.shape[1], out_w, order, corners=True)
    return _apply(im, rows, cols)


def _axis_samples(n_in: int, n_out: int, order: int, corners: bool = False):
    """Per output index along one axis: (low index, high index, high weight, in-bounds
    mask of low, of high). Indices outside the image read as zero."""
    out = np.arange(n_out, dtype=np.float64)
    if corners:
        src = out * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = (out + 0.5) * (n_in / n_out) - 0.5
    if order == 0:
        idx = np.clip(np.floor(src + 0.5), 0, n_in - 1).astype(np.intp)
        return idx, idx, np.zeros(n_out), np.ones(n_out, bool), np.ones(n_out, bool)
    if order != 1:
        raise ProtonetError(f"interpolation order {order} is not supported")
    lo = np.floor(src)
    w = src - lo
    lo = lo.astype(np.intp)
    hi = lo + 1
    lo_ok = (lo >= 0) & (lo < n_in)
    hi_ok = (hi >= 0) & (hi < n_in)
    if corners:  # everything is inside; the last sample lands exactly on the last pixel
        lo_ok[:] = hi_ok[:] = True
        hi = np.minimum(hi, n_in - 1)
    return np.clip(lo, 0, n_in - 1), np.clip(hi, 0, n_in - 1), w, lo_ok, hi_ok


def _apply(im: np.ndarray, rows, cols) -> np.ndarray:
    r0, r1, rw, r0_ok, r1_ok = rows
    c0, c1, cw, c0_ok, c1_ok = cols
    top = im[r0] * (r0_ok * (1 - rw))[:, None, None] + im[r1] * (r1_ok * rw)[:, None, None]
    return top[:, c0] * (c0_ok * (1 - cw))[None, :, None] + \
        top[:, c1] * (c1_ok * cw)[None, :, None]


def _scipy_ndimage(order: int):
    try:
        from scipy import ndimage
    except ImportError:
        raise ProtonetError(f"resize_image with interp_order={order} needs scipy "
                            "(orders 0 and 1 do not)") from None
    return ndimage


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """The 10 classic crops of each H x W x K image: the four corners and the centre, then
    the same five mirrored left-right. Returns (10 N) x h x w x K float32."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    if np.any(crop_dims > im_shape[:2]):
        raise ProtonetError(f"crop {list(crop_dims)} is larger than the image "
                            f"{list(im_shape[:2])}")
    center = im_shape[:2] / 2.0
    ix = []
    for i in (0, im_shape[0] - crop_dims[0]):
        for j in (0, im_shape[1] - crop_dims[1]):
            ix.append((i, j, i + crop_dims[0], j + crop_dims[1]))
    # pycaffe truncates the centre crop's float corners toward zero
    ix.append(tuple(np.concatenate([center - crop_dims / 2.0,
                                    center + crop_dims / 2.0]).astype(int)))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    k = 0
    for im in images:
        for y0, x0, y1, x1 in ix:
            crops[k] = im[y0:y1, x0:x1, :]
            k += 1
        crops[k:k + 5] = crops[k - 5:k, :, ::-1, :]
        k += 5
    return crops
