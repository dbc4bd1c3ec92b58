"""The zoo deploy nets benchmarked against OpenCV dnn's Caffe importer.

Each net is a deploy prototxt of the shared corpus (``$PROTONET_CORPUS``, else
``../shared/corpus`` beside the repository). :func:`prepare` writes, into a work
folder, the net with its input batch set (one prototxt per batch size) and one
``.caffemodel`` of random weights that protonet drew and saved: both engines load
the same two files, as a user would load a model zoo's.
"""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (path under the corpus, input image shape (C, H, W))
ZOO = {
    "zoo_caffenet": ("BVLC/caffe/models/bvlc_reference_caffenet/deploy.prototxt", (3, 227, 227)),
    "googlenet": ("BVLC/caffe/models/bvlc_googlenet/deploy.prototxt", (3, 224, 224)),
    "resnet50": ("KaimingHe/deep-residual-networks/prototxt/ResNet-50-deploy.prototxt",
                 (3, 224, 224)),
    "squeezenet11": ("forresti/SqueezeNet/SqueezeNet_v1.1/deploy.prototxt", (3, 227, 227)),
    "mobilenet": ("shicai/MobileNet-Caffe/mobilenet_deploy.prototxt", (3, 224, 224)),
    "mobilenet_v2": ("shicai/MobileNet-Caffe/mobilenet_v2_deploy.prototxt", (3, 224, 224)),
}
#: batch sizes a zoo net is timed at unless --batch says otherwise
ZOO_BATCHES = (1, 8)


def corpus_dir() -> str:
    return os.environ.get("PROTONET_CORPUS") or os.path.join(os.path.dirname(ROOT), "shared",
                                                             "corpus")


def files(name: str, batch: int, folder: str) -> tuple[str, str]:
    """``(prototxt, caffemodel)`` paths of ``name`` at ``batch`` in ``folder``."""
    return (os.path.join(folder, f"{name}_b{batch}.prototxt"),
            os.path.join(folder, f"{name}.caffemodel"))


def net_param(name: str, batch: int):
    """The corpus net as a NetParameter whose Input (or legacy ``input_dim``) has ``batch``."""
    import protonet  # noqa: F401
    from protonet.io import read_net
    path, (c, h, w) = ZOO[name][0], ZOO[name][1]
    param = read_net(os.path.join(corpus_dir(), path))  # upgrades input_dim to an Input layer
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                del shape.dim[:]
                shape.dim.extend([batch, c, h, w])
    return param


def prepare(name: str, batches, folder: str) -> None:
    """Write ``name``'s prototxt for each batch and its random-weight caffemodel."""
    import protonet
    from protonet.io import write_text_file
    from protonet.testing import randomize_params
    for batch in batches:
        write_text_file(net_param(name, batch), files(name, batch, folder)[0])
    net = protonet.Net(net_param(name, 1), protonet.TEST, seed=0)
    randomize_params(net)
    net.save(files(name, 1, folder)[1])


def input_batch(name: str, batch: int, kind: str = "random"):
    """The timed input, float32 ``(batch, C, H, W)``: uniform [0, 1) or all 0.5."""
    import numpy as np
    shape = (batch,) + ZOO[name][1]
    if kind == "constant":
        return np.full(shape, 0.5, np.float32)
    return np.random.default_rng(0).random(shape, np.float32)


def flops(name: str, batch: int) -> int:
    """FLOPs of one forward pass (2 per multiply-accumulate, from protonet's summary)."""
    import protonet
    from protonet.tools.summary import summarize
    net = protonet.Net(net_param(name, batch), protonet.TEST, init_weights=False)
    return 2 * summarize(net)["totals"]["macc"]
