"""Bilinear resizing with aligned corners, as DeepLab/PSPNet's ``Interp`` layer computes it.

Output row ``h2`` of ``n2`` reads input position ``r * h2`` with ``r = (n1-1)/(n2-1)``
(0 when ``n2 == 1``) -- the first and last rows of input and output coincide -- and mixes
input rows ``floor(r * h2)`` and the one below it (the same row at the bottom edge) with
weights ``1 - lambda`` and ``lambda``. The fork computes ``r`` and ``r * h2`` in float32;
so do these kernels, so the taps and weights are the fork's exactly.

Bilinear resizing is separable: ``Y = A_h X A_w^T`` with one interpolation matrix per axis
(:func:`interp_matrix`), and its adjoint, the backward, is ``dX = A_h^T dY A_w``.
"""
from __future__ import annotations

import numpy as np


def interp_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the lower input index, the step to the upper one (0 or 1)
    and the upper one's weight ``lambda`` (float32), the fork's float32 arithmetic."""
    ratio = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    pos = np.float32(ratio) * np.arange(n_out, dtype=np.float32)
    low = pos.astype(np.int64)
    step = (low < n_in - 1).astype(np.int64)
    return low, step, pos - low.astype(np.float32)


def interp_matrix(n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """``(n_out, n_in)``: row ``o`` holds the two taps' weights of output ``o``."""
    if n_in == n_out:
        return np.eye(n_out, dtype=dtype)
    low, step, lam = interp_taps(n_in, n_out)
    lam = lam.astype(dtype)
    matrix = np.zeros((n_out, n_in), dtype)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, low), 1 - lam)
    np.add.at(matrix, (rows, low + step), lam)
    return matrix


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``x`` ``(..., H, W)`` resized to ``(..., *out_hw)``."""
    a_h = interp_matrix(x.shape[-2], out_hw[0], x.dtype)
    a_w = interp_matrix(x.shape[-1], out_hw[1], x.dtype)
    return a_h @ x @ a_w.T


def resize_bilinear_backward(dy: np.ndarray, in_hw: tuple[int, int]) -> np.ndarray:
    """The adjoint of :func:`resize_bilinear`: ``dy`` ``(..., Ho, Wo)`` -> ``(..., *in_hw)``."""
    a_h = interp_matrix(in_hw[0], dy.shape[-2], dy.dtype)
    a_w = interp_matrix(in_hw[1], dy.shape[-1], dy.dtype)
    return a_h.T @ dy @ a_w


def resize_bilinear_reference(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The fork's loop, one output cell at a time (for tests and readers)."""
    h_in, w_in = x.shape[-2:]
    h_out, w_out = out_hw
    y = np.empty(x.shape[:-2] + (h_out, w_out), x.dtype)
    if (h_in, w_in) == (h_out, w_out):
        y[...] = x
        return y
    rows, cols = interp_taps(h_in, h_out), interp_taps(w_in, w_out)
    for i in range(h_out):
        h, dh, lh = (v[i] for v in rows)
        for j in range(w_out):
            w, dw, lw = (v[j] for v in cols)
            y[..., i, j] = ((1 - lh) * ((1 - lw) * x[..., h, w] + lw * x[..., h, w + dw])
                            + lh * ((1 - lw) * x[..., h + dh, w] + lw * x[..., h + dh, w + dw]))
    return y
