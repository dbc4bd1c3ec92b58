"""Tools for testing layers: build one from text, run it, check its gradients.

Shipped in the package so users can test their own (Python) layers the same
way protonet tests its own. The gradient checker follows Caffe's
``test_gradient_check_util.hpp``: central differences in float64 on a scalar
objective, compared element by element with the layer's backward, skipping
points near a kink.
"""
from __future__ import annotations

import numpy as np

from .blob import Blob
from .layers.base import TEST, create_layer


def layer_param(text: str):
    """Parse the body of a ``layer { ... }`` block (or the whole block) into a LayerParameter."""
    from google.protobuf import text_format
    from .proto import caffe_pb2
    body = text.strip()
    if body.startswith("layer") and body.rstrip().endswith("}"):
        body = body[body.index("{") + 1: body.rindex("}")]
    param = caffe_pb2.LayerParameter()
    text_format.Parse(body, param)
    if not param.name:
        param.name = param.type.lower() or "layer"
    return param


def make_layer(text: str, phase: int = TEST, dtype=np.float64, seed: int = 0):
    """Build a registered layer from prototxt text, e.g. ``'type: "ReLU"'``."""
    import protonet.layers  # noqa: F401  (registers every layer type)
    param = layer_param(text)
    return create_layer(param, phase=phase, dtype=dtype, rng=np.random.default_rng(seed))


def setup_layer(layer, bottom_arrays, num_top: int | None = None, fill: bool = True):
    """Set ``layer`` up on bottoms holding ``bottom_arrays``; returns (bottom, top) blob lists."""
    bottom = []
    for i, a in enumerate(bottom_arrays):
        b = Blob(np.shape(a), layer.dtype, name=f"bottom{i}")
        b.data[...] = a
        bottom.append(b)
    if num_top is None:
        num_top = max(1, len(layer.param.top))
    top = [Blob((), layer.dtype, name=f"top{i}") for i in range(num_top)]
    layer.setup(bottom, top)
    if fill:
        layer.fill_params()
    return bottom, top


def run_layer(layer, bottom_arrays, num_top: int | None = None):
    """Setup + forward; returns the top arrays (copies)."""
    bottom, top = setup_layer(layer, bottom_arrays, num_top)
    layer.forward(bottom, top)
    return [t.data.copy() for t in top]


def check_gradients(layer, bottom_arrays, *, num_top: int | None = None,
                    check_bottoms=None, check_params: bool = True, check_tops=None,
                    step: float = 1e-3, threshold: float = 1e-4,
                    kink: float | None = None, kink_range: float = -1.0,
                    max_checks: int | None = 200, seed: int = 1701, rng_seed: int = 0):
    """Compare ``layer``'s backward with central finite differences.

    The objective is ``L = sum_k <top_k, R_k>`` with fixed random ``R_k``, so
    every top element's gradient path is exercised. The layer should be
    float64. ``check_bottoms`` lists the bottom indices to check (default
    all); labels and indices must be excluded by the caller. ``check_tops``
    lists the tops in the objective (default all; the others weigh 0). For layers that
    draw random numbers (Dropout), ``layer.rng`` is re-seeded before every
    forward pass so each pass sees the same draws. ``max_checks`` bounds the
    number of elements checked per blob (chosen at random; ``None`` = all).

    Raises AssertionError naming the blob, the index and both values.
    """
    bottom, top = setup_layer(layer, bottom_arrays, num_top)
    draw = np.random.default_rng(seed)
    if check_bottoms is None:
        check_bottoms = list(range(len(bottom)))

    def forward():
        layer.rng = np.random.default_rng(rng_seed)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)

    forward()
    weights = [draw.standard_normal(t.shape) for t in top]
    if check_tops is not None:
        weights = [w if k in check_tops else np.zeros_like(w) for k, w in enumerate(weights)]

    def objective() -> float:
        forward()
        return float(sum(np.sum(t.data * w) for t, w in zip(top, weights)))

    # analytic gradients
    forward()
    for t, w in zip(top, weights):
        t.diff[...] = w
    for p in layer.blobs:
        p.diff[...] = 0
    for b in bottom:
        b.diff[...] = 0
    propagate = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)

    targets = [(f"bottom[{i}]", bottom[i], bottom[i].diff.copy()) for i in check_bottoms]
    if check_params:
        targets += [(f"param[{i}]", p, p.diff.copy()) for i, p in enumerate(layer.blobs)]

    failures = []
    for label, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        idx = np.arange(flat.size)
        if max_checks is not None and flat.size > max_checks:
            idx = np.sort(draw.choice(flat.size, max_checks, replace=False))
        for i in idx:
            x = flat[i]
            if kink is not None and abs(x - kink) < kink_range:
                continue
            flat[i] = x + step
            plus = objective()
            flat[i] = x - step
            minus = objective()
            flat[i] = x
            numeric = (plus - minus) / (2 * step)
            a = analytic.reshape(-1)[i]
            scale = max(1.0, abs(a), abs(numeric))
            if abs(a - numeric) > threshold * scale:
                where = tuple(int(k) for k in np.unravel_index(i, blob.shape))
                failures.append(f"{label} index {where}: "
                                f"analytic {a:.8g} vs numeric {numeric:.8g} (x = {x:.6g})")
    forward()
    if failures:
        shown = "\n  ".join(failures[:10])
        raise AssertionError(
            f"gradient check failed for layer '{layer.name}' ({layer.type}), "
            f"{len(failures)} element(s):\n  {shown}")


def randomize_params(net, seed: int = 0) -> None:
    """Random weights that keep activations of order one through a deep net, for deploy
    files that give no fillers: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1), BatchNorm
    statistics with positive variances (scale factor 1), Scale factors around 1."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm" and len(blobs) == 3:
            blobs[0].data[...] = rng.normal(0, 0.1, blobs[0].shape)
            blobs[1].data[...] = rng.uniform(0.5, 1.5, blobs[1].shape)
            blobs[2].data[...] = 1
            continue
        for k, blob in enumerate(blobs):
            shape = blob.shape
            if layer.type == "Scale" and k == 0:
                blob.data[...] = rng.uniform(0.5, 1.5, shape)
            elif len(shape) <= 1:
                blob.data[...] = rng.normal(0, 0.1, shape)
            else:
                blob.data[...] = rng.normal(0, 1 / np.sqrt(int(np.prod(shape[1:])) or 1), shape)
