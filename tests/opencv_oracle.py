"""OpenCV dnn as an independent Caffe implementation: run a prototxt + caffemodel there."""
import numpy as np
import pytest

import protonet
from protonet.io import parse_net

cv2 = pytest.importorskip("cv2")


def randomize_params(net, seed=0) -> None:
    """Random weights that keep activations of order one through a deep net: weights
    ~ N(0, 1/fan_in), biases ~ N(0, 0.1), BatchNorm statistics with positive variances and
    scale factor 1, Scale factors around 1 (deploy files often give no fillers at all)."""
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
                fan_in = int(np.prod(shape[1:])) or 1
                blob.data[...] = rng.normal(0, 1 / np.sqrt(fan_in), shape)


def protonet_and_opencv(tmp_path, prototxt: str, inputs: dict, outputs, seed=0,
                        randomize: bool = False):
    """Build ``prototxt`` in protonet with random weights (its fillers', or
    :func:`randomize_params` with ``randomize``), save them, load both files in
    OpenCV dnn, run both on ``inputs`` ({blob: array}); returns ``(ours, theirs)`` dicts
    of the ``outputs`` blobs. OpenCV names outputs by *layer*: ask for tops that are not
    written in place (a layer's name equal to its top's)."""
    path, weights = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    path.write_text(prototxt)
    net = protonet.Net(parse_net(prototxt), protonet.TEST, seed=seed)
    if randomize:
        randomize_params(net, seed)
    net.save(str(weights))
    ours = net.forward(blobs=list(outputs), **inputs)
    ours = {k: np.array(ours[k]) for k in outputs}
    cv = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    for name, value in inputs.items():
        cv.setInput(np.ascontiguousarray(value, np.float32), name)
    theirs = dict(zip(outputs, cv.forward(list(outputs))))
    return ours, theirs
