"""OpenCV dnn as an independent Caffe implementation: run a prototxt + caffemodel there."""
import numpy as np
import pytest

import protonet
from protonet.io import parse_net
from protonet.testing import randomize_params

cv2 = pytest.importorskip("cv2")


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
