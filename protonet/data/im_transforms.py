"""Pixel kernels of the SSD fork's data augmentation, after OpenCV as the fork calls it
(weiliu89/caffe, branch ``ssd``, ``src/caffe/util/im_transforms.cpp``).

Images are ``(C, H, W)`` uint8 in BGR order, as everywhere in :mod:`protonet.data`.

- :func:`resize`: ``cv::resize`` with OpenCV's five interpolations. LINEAR, CUBIC and
  LANCZOS4 follow OpenCV's 11-bit fixed-point formula (pixel centres aligned, edge pixels
  repeated); NEAREST its index rule; AREA its area weights when shrinking (and its
  linear-like rule otherwise). OpenCV's vectorised code drops low bits here and there,
  so a pixel may differ from it by one grey level.
- :func:`bgr_to_hsv` / :func:`hsv_to_bgr`: ``cv::cvtColor`` BGR<->HSV for 8-bit images
  (hue 0..179): the forward conversion with OpenCV's integer tables, the inverse with its
  float formula.
- :func:`convert_scale`: ``Mat::convertTo(-1, alpha, beta)``, rounding half to even.

Each vectorised kernel has a plain loop twin (``*_reference``); the tests hold them equal
and compare both with OpenCV where it is installed.
"""
from __future__ import annotations

import math

import numpy as np

# ResizeParameter.Interp_mode
LINEAR, AREA, NEAREST, CUBIC, LANCZOS4 = 1, 2, 3, 4, 5
INTERP_NAMES = {LINEAR: "LINEAR", AREA: "AREA", NEAREST: "NEAREST", CUBIC: "CUBIC",
                LANCZOS4: "LANCZOS4"}
_COEF = 2048          # INTER_RESIZE_COEF_SCALE
_F = np.float32


# -- resizing -----------------------------------------------------------------------------------
def _cubic_coeffs(x):
    """OpenCV's ``interpolateCubic`` (A = -0.75) for fractions ``x (m,)``: ``(m, 4)`` float32."""
    x = np.asarray(x, _F)
    a = _F(-0.75)
    c0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + 1
    c2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    c3 = _F(1) - c0 - c1 - c2
    return np.stack([c0, c1, c2, c3], axis=1).astype(_F)


def _lanczos4_coeffs(x):
    """OpenCV's ``interpolateLanczos4`` for fractions ``x (m,)``: ``(m, 8)`` float32."""
    s45 = 0.70710678118654752440084436210485
    cs = [(1, 0), (-s45, -s45), (0, 1), (s45, -s45), (-1, 0), (s45, s45), (0, -1), (-s45, s45)]
    out = np.zeros((len(x), 8), _F)
    for r, fx in enumerate(np.asarray(x, _F)):
        if fx < np.finfo(_F).eps:
            out[r, 3] = 1
            continue
        y0 = -(float(fx) + 3) * math.pi * 0.25
        s0, c0 = math.sin(y0), math.cos(y0)
        total = _F(0)
        for i in range(8):
            y = -(float(fx) + 3 - i) * math.pi * 0.25
            out[r, i] = _F((cs[i][0] * s0 + cs[i][1] * c0) / (y * y))
            total += out[r, i]
        out[r] *= _F(1) / total
    return out


def _taps(src: int, dst: int, interp: int):
    """Source indices ``(dst, K)`` and int64 weights ``(dst, K)`` scaled by 2048 (OpenCV's
    fixed point) of one axis (AREA: the rule OpenCV uses unless both axes shrink)."""
    inv_scale = dst / src
    scale = 1.0 / inv_scale
    d = np.arange(dst)
    if interp == NEAREST:
        idx = np.minimum(np.floor(d * (1.0 / inv_scale)).astype(np.int64), src - 1)
        return idx[:, None], np.full((dst, 1), _COEF, np.int64)
    if interp == AREA:   # OpenCV's area rule unless shrinking both axes: linear-like weights
        sx = np.floor(d * scale).astype(np.int64)
        fx = ((d + 1) - (sx + 1) * inv_scale).astype(_F)
        fx = np.where(fx <= 0, _F(0), fx - np.floor(fx)).astype(_F)
        kind = LINEAR
    else:
        fx = ((d + 0.5) * scale - 0.5).astype(_F)
        sx = np.floor(fx).astype(np.int64)
        fx = (fx - sx).astype(_F)
        kind = interp
    if kind == LINEAR:
        low, high = sx < 0, sx >= src - 1
        fx = np.where(low | high, _F(0), fx)
        sx = np.where(low, 0, np.where(high, src - 1, sx))
        coeffs = np.stack([_F(1) - fx, fx], axis=1)
        first = sx
    elif kind == CUBIC:
        coeffs, first = _cubic_coeffs(fx), sx - 1
    elif kind == LANCZOS4:
        coeffs, first = _lanczos4_coeffs(fx), sx - 3
    else:
        raise ValueError(f"unknown interpolation {interp}")
    k = coeffs.shape[1]
    idx = np.clip(first[:, None] + np.arange(k), 0, src - 1)
    weights = np.clip(np.rint(coeffs.astype(np.float64) * _COEF), -32768, 32767).astype(np.int64)
    return idx, weights


def _area_taps(src: int, dst: int, scale: float):
    """OpenCV's ``computeResizeAreaTab``: each destination pixel averages the source cells
    it covers, partial cells weighted by the part covered."""
    rows = []
    for dx in range(dst):
        f1 = dx * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s1, s2 = math.ceil(f1), math.floor(f2)
        s2 = min(s2, src - 1)
        s1 = min(s1, s2)
        taps = []
        if s1 - f1 > 1e-3:
            taps.append((s1 - 1, (s1 - f1) / cell))
        taps += [(s, 1.0 / cell) for s in range(s1, s2)]
        if f2 - s2 > 1e-3:
            taps.append((s2, min(min(f2 - s2, 1.0), cell) / cell))
        rows.append(taps)
    k = max(len(t) for t in rows)
    idx = np.zeros((dst, k), np.int64)
    weights = np.zeros((dst, k), np.float64)
    for r, taps in enumerate(rows):
        for j, (s, w) in enumerate(taps):
            idx[r, j], weights[r, j] = s, float(_F(w))
    return idx, weights


def resize(image: np.ndarray, height: int, width: int, interp: int = LINEAR) -> np.ndarray:
    """``cv::resize`` of a ``(C, H, W)`` uint8 image to ``(C, height, width)``."""
    c, h, w = image.shape
    if (h, w) == (height, width):
        return image.copy()
    if interp == LINEAR:
        from .images import resize_linear
        return resize_linear(image, height, width)
    if interp == AREA and (h / height >= 1 and w / width >= 1):
        xi, xw = _area_taps(w, width, w / width)
        yi, yw = _area_taps(h, height, h / height)
        rows = (image[:, :, xi].astype(np.float64) * xw).sum(axis=-1)          # (C, H, w')
        out = (rows[:, yi, :] * yw[None, :, :, None]).sum(axis=2)              # (C, h', w')
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    xi, xw = _taps(w, width, interp)
    yi, yw = _taps(h, height, interp)
    if interp == NEAREST:
        return image[:, yi[:, 0]][:, :, xi[:, 0]].copy()
    src = image.astype(np.int64)
    rows = (src[:, :, xi] * xw).sum(axis=-1)                                    # (C, H, w')
    out = (rows[:, yi, :] * yw[None, :, :, None]).sum(axis=2)                   # (C, h', w')
    return np.clip((out + (1 << 21)) >> 22, 0, 255).astype(np.uint8)


def resize_reference(image, height, width, interp=LINEAR) -> np.ndarray:
    """:func:`resize` pixel by pixel from the same taps (LINEAR is
    :func:`protonet.data.images.resize_linear`, tested on its own)."""
    c, h, w = image.shape
    if interp == LINEAR:
        from .images import resize_linear
        return resize_linear(image, height, width)
    if interp == AREA and h / height >= 1 and w / width >= 1:
        xi, xw = _area_taps(w, width, w / width)
        yi, yw = _area_taps(h, height, h / height)
        fixed = False
    else:
        xi, xw = _taps(w, width, interp)
        yi, yw = _taps(h, height, interp)
        fixed = True
    out = np.zeros((c, height, width), np.uint8)
    for ch in range(c):
        for y in range(height):
            for x in range(width):
                total = 0
                for a in range(yi.shape[1]):
                    row = 0
                    for b in range(xi.shape[1]):
                        row += int(image[ch, yi[y, a], xi[x, b]]) * xw[x, b]
                    total += row * yw[y, a]
                if interp == NEAREST:
                    value = int(image[ch, yi[y, 0], xi[x, 0]])
                elif fixed:
                    value = (int(total) + (1 << 21)) >> 22
                else:
                    value = int(np.rint(total))
                out[ch, y, x] = min(max(value, 0), 255)
    return out


def pad(image: np.ndarray, top: int, bottom: int, left: int, right: int, mode: int = 1,
        value=(0, 0, 0)) -> np.ndarray:
    """``cv::copyMakeBorder``: ``mode`` 1 CONSTANT (``value`` per channel, rounded),
    2 MIRRORED (BORDER_REFLECT_101), 3 REPEAT_NEAREST (BORDER_REPLICATE)."""
    widths = ((0, 0), (top, bottom), (left, right))
    if mode == 2:
        return np.pad(image, widths, mode="reflect")
    if mode == 3:
        return np.pad(image, widths, mode="edge")
    c = image.shape[0]
    fill = np.clip(np.rint(np.resize(np.asarray(value, np.float64), max(c, 1))), 0, 255)
    out = np.empty((c, image.shape[1] + top + bottom, image.shape[2] + left + right), np.uint8)
    out[...] = fill[:c, None, None].astype(np.uint8)
    out[:, top:top + image.shape[1], left:left + image.shape[2]] = image
    return out


# -- colour --------------------------------------------------------------------------------------
def convert_scale(image: np.ndarray, alpha: float, beta: float = 0.0) -> np.ndarray:
    """``Mat::convertTo(-1, alpha, beta)`` on uint8: ``round(alpha * x + beta)``, saturated."""
    value = image.astype(_F) * _F(alpha) + _F(beta)
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


def _hsv_tables():
    i = np.arange(256, dtype=np.float64)
    with np.errstate(divide="ignore"):
        sdiv = np.where(i == 0, 0, np.rint((255 << 12) / i)).astype(np.int64)
        hdiv = np.where(i == 0, 0, np.rint((180 << 12) / (6.0 * i))).astype(np.int64)
    return sdiv, hdiv


_SDIV, _HDIV = _hsv_tables()


def bgr_to_hsv(image: np.ndarray) -> np.ndarray:
    """``cv::cvtColor(BGR2HSV)`` of a ``(3, H, W)`` uint8 image: H in 0..179, S and V in
    0..255, with OpenCV's integer tables (12-bit fixed point)."""
    b, g, r = (image[k].astype(np.int64) for k in range(3))
    v = np.maximum(np.maximum(b, g), r)
    vmin = np.minimum(np.minimum(b, g), r)
    diff = v - vmin
    s = (diff * _SDIV[v] + (1 << 11)) >> 12
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + (1 << 11)) >> 12
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v]).astype(np.uint8)


def bgr_to_hsv_reference(image) -> np.ndarray:
    """:func:`bgr_to_hsv` pixel by pixel, as OpenCV's ``RGB2HSV_b`` loop."""
    out = np.zeros_like(image)
    for y in range(image.shape[1]):
        for x in range(image.shape[2]):
            b, g, r = (int(image[k, y, x]) for k in range(3))
            v, vmin = max(b, g, r), min(b, g, r)
            diff = v - vmin
            s = (diff * int(_SDIV[v]) + (1 << 11)) >> 12
            if v == r:
                h = g - b
            elif v == g:
                h = b - r + 2 * diff
            else:
                h = r - g + 4 * diff
            h = (h * int(_HDIV[diff]) + (1 << 11)) >> 12
            if h < 0:
                h += 180
            out[:, y, x] = (h, s, v)
    return out


_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """``cv::cvtColor(HSV2BGR)`` of a ``(3, H, W)`` uint8 image (hue in 0..179; larger hues
    wrap round), in OpenCV's float formula, rounded to uint8."""
    h = hsv[0].astype(_F) * _F(6.0 / 180.0)
    s = hsv[1].astype(_F) * _F(1.0 / 255.0)
    v = hsv[2].astype(_F) * _F(1.0 / 255.0)
    h = np.fmod(h, _F(6))
    h = np.where(h < 0, h + _F(6), h)
    sector = np.floor(h).astype(np.int64)
    h = (h - sector).astype(_F)
    bad = (sector < 0) | (sector >= 6)
    sector = np.where(bad, 0, sector)
    h = np.where(bad, _F(0), h)
    tab = np.stack([v, v * (_F(1) - s), v * (_F(1) - s * h), v * (_F(1) - s * (_F(1) - h))])
    picks = _SECTORS[sector]                                       # (H, W, 3): b, g, r
    bgr = np.take_along_axis(tab, picks.transpose(2, 0, 1), axis=0)
    bgr = np.where(s[None] == 0, v[None], bgr)
    return np.clip(np.rint(bgr * _F(255)), 0, 255).astype(np.uint8)


def hsv_to_bgr_reference(hsv) -> np.ndarray:
    """:func:`hsv_to_bgr` pixel by pixel, as OpenCV's ``HSV2RGB`` loop."""
    out = np.zeros_like(hsv)
    for y in range(hsv.shape[1]):
        for x in range(hsv.shape[2]):
            h = _F(hsv[0, y, x]) * _F(6.0 / 180.0)
            s = _F(hsv[1, y, x]) * _F(1.0 / 255.0)
            v = _F(hsv[2, y, x]) * _F(1.0 / 255.0)
            if s == 0:
                bgr = (v, v, v)
            else:
                h = _F(math.fmod(h, 6.0))
                if h < 0:
                    h += _F(6)
                sector = math.floor(h)
                h = _F(h - sector)
                if not 0 <= sector < 6:
                    sector, h = 0, _F(0)
                tab = (v, v * (_F(1) - s), v * (_F(1) - s * h), v * (_F(1) - s * (_F(1) - h)))
                bgr = tuple(tab[k] for k in _SECTORS[sector])
            out[:, y, x] = [min(max(int(np.rint(c * _F(255))), 0), 255) for c in bgr]
    return out


def adjust_brightness(image, delta: float) -> np.ndarray:
    """``AdjustBrightness``: add ``delta`` (no change when it is 0)."""
    return convert_scale(image, 1.0, delta) if abs(delta) > 0 else image


def adjust_contrast(image, factor: float) -> np.ndarray:
    """``AdjustContrast``: multiply by ``factor`` (no change within 1e-3 of 1)."""
    return convert_scale(image, factor, 0.0) if abs(factor - 1.0) > 1e-3 else image


def adjust_saturation(image, factor: float) -> np.ndarray:
    """``AdjustSaturation``: multiply the HSV saturation by ``factor``. (The fork's test
    ``fabs(delta - 1) != 1e-3`` is true for any factor, so it always converts.)"""
    hsv = bgr_to_hsv(image)
    hsv[1] = convert_scale(hsv[1], factor, 0.0)
    return hsv_to_bgr(hsv)


def adjust_hue(image, delta: float) -> np.ndarray:
    """``AdjustHue``: add ``delta`` to the HSV hue (saturated to 0..255, then wrapping
    round in the conversion back, as OpenCV does)."""
    if not abs(delta) > 0:
        return image
    hsv = bgr_to_hsv(image)
    hsv[0] = convert_scale(hsv[0], 1.0, delta)
    return hsv_to_bgr(hsv)
