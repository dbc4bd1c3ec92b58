"""Image files as Caffe sees them through OpenCV, decoded with Pillow.

Arrays are (C, H, W) uint8 with colour channels in **BGR** order, as
``cv::imread`` gives them and as Caffe stores them in a ``Datum``. Three ways to
read, after OpenCV's flags:

``"native"``  (``IMREAD_UNCHANGED``, Caffe's ``DecodeDatumToCVMatNative``): grey
              stays 1 channel, colour is 3 (BGR), alpha makes 4 (BGRA);
``"color"``   (``IMREAD_COLOR``): always 3 channels, BGR;
``"gray"``    (``IMREAD_GRAYSCALE``): always 1 channel.

Resizing follows ``cv::resize`` with ``INTER_LINEAR`` (pixel centres aligned,
edges clamped, 11-bit fixed-point weights), not Pillow's antialiasing filter.
"""
from __future__ import annotations

import io

import numpy as np

from ..errors import ProtonetError

MODES = ("native", "color", "gray")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ProtonetError("reading images needs Pillow: pip install 'protonet[data]' "
                            "(or pip install Pillow)") from None
    return Image


def decode_image(data: bytes, mode: str = "native", what: str = "image") -> np.ndarray:
    """Decode JPEG/PNG/... bytes to (C, H, W) uint8 BGR. ``what`` names the source in errors."""
    Image = _pil()
    try:
        image = Image.open(io.BytesIO(data))
        if mode == "gray" and image.format == "JPEG":
            # let libjpeg hand out the luma plane directly, as OpenCV's decoder does
            image.draft("L", image.size)
        image.load()
    except Exception as e:  # Pillow raises many types for bad files
        raise ProtonetError(f"{what}: cannot decode image ({e})") from None
    return _to_array(image, mode, what)


def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray:
    """Caffe's ``ReadImageToCVMat``: a file as (C, H, W) uint8, resized when both sizes are set."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"{path}: {e.strerror}") from None
    image = decode_image(data, "color" if is_color else "gray", path)
    if height > 0 and width > 0:
        image = resize_linear(image, height, width)
    return image


def _to_array(image, mode: str, what: str) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":
        raise ProtonetError(f"{what}: {image.mode} images (more than 8 bits per channel) are "
                            "not supported; Caffe needs 8-bit images")
    if mode == "gray":
        return np.asarray(image.convert("L"))[None].copy()
    if mode == "color":
        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))
    # native
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"))[None].copy()
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or \
        (image.mode == "P" and "transparency" in image.info)
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    order = [2, 1, 0, 3] if has_alpha else [2, 1, 0]
    return np.ascontiguousarray(pixels[:, :, order].transpose(2, 0, 1))


def encode_image(image: np.ndarray, ext: str, what: str = "image") -> bytes:
    """(C, H, W) uint8 BGR to file bytes, like ``cv::imencode("." + ext)`` (JPEG quality 95)."""
    Image = _pil()
    ext = ext.lower().lstrip(".")
    formats = {"jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "png": "PNG", "bmp": "BMP",
               "ppm": "PPM", "pgm": "PPM", "pbm": "PPM", "tif": "TIFF", "tiff": "TIFF",
               "webp": "WEBP"}
    if ext not in formats:
        raise ProtonetError(f"{what}: cannot encode as '{ext}' (use one of "
                            f"{', '.join(sorted(formats))})")
    c = image.shape[0]
    if c == 1:
        pil = Image.fromarray(np.ascontiguousarray(image[0]), "L")
    elif c == 3:
        pil = Image.fromarray(np.ascontiguousarray(image[::-1].transpose(1, 2, 0)), "RGB")
    elif c == 4:
        pil = Image.fromarray(np.ascontiguousarray(image[[2, 1, 0, 3]].transpose(1, 2, 0)),
                              "RGBA")
    else:
        raise ProtonetError(f"{what}: cannot encode a {c}-channel image")
    buf = io.BytesIO()
    options = {"JPEG": {"quality": 95}, "PNG": {"compress_level": 1}}.get(formats[ext], {})
    pil.save(buf, formats[ext], **options)
    return buf.getvalue()


def _linear_taps(src: int, dst: int):
    """Source indices and 11-bit weights of ``cv::resize`` INTER_LINEAR along one axis."""
    scale = 1.0 / (dst / src)  # as OpenCV derives it from the inverse scale
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = f - i0
    low = i0 < 0
    frac[low], i0[low] = 0, 0
    high = i0 >= src - 1
    frac[high], i0[high] = 0, src - 1
    i1 = np.minimum(i0 + 1, src - 1)
    w0 = np.rint((1 - frac) * 2048).astype(np.int64)  # INTER_RESIZE_COEF_SCALE
    return i0, i1, w0, 2048 - w0


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (C, H, W) uint8 to (C, height, width), bilinear as OpenCV computes it."""
    c, h, w = image.shape
    if (h, w) == (height, width):
        return image
    x0, x1, wx0, wx1 = _linear_taps(w, width)
    y0, y1, wy0, wy1 = _linear_taps(h, height)
    src = image.astype(np.int64)
    rows = src[:, :, x0] * wx0 + src[:, :, x1] * wx1          # (C, H, width), scale 2^11
    out = rows[:, y0, :] * wy0[:, None] + rows[:, y1, :] * wy1[:, None]  # scale 2^22
    return ((out + (1 << 21)) >> 22).astype(np.uint8)


def _atoi(text: str) -> int:
    """C's ``atoi``: leading blanks, an optional sign and digits; anything else reads as 0."""
    import re
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def parse_image_list(text: str) -> list[tuple[str, int]]:
    """Lines ``path label`` split at the **last** space, as Caffe's ImageData and
    convert_imageset read them (a path may contain spaces; no space: label 0)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for line in lines:
        path, space, label = line.rpartition(" ")
        if not space:
            path, label = line, line
        out.append((path, _atoi(label)))
    return out


def read_image_list(source: str, what: str) -> list[tuple[str, int]]:
    try:
        with open(source, encoding="utf-8", errors="surrogateescape") as f:
            return parse_image_list(f.read())
    except OSError as e:
        raise ProtonetError(
            f"{what}: cannot read image list '{source}' ({e.strerror}); it is a text file with "
            "one `relative/path.jpg LABEL` per line (paths relative to root_folder)") from None
