"""Interoperability: OpenCV's Caffe importer reads protonet's weights; `protonet compare`."""
import json

import numpy as np
import pytest

import protonet
from protonet.cli import main
from protonet.io.caffemodel import write_caffemodel

cv2 = pytest.importorskip("cv2")

# CaffeNet's structure (grouped convs, LRN, overlapping pooling, dropout) at a tenth the width
CAFFENET_SHAPED = """name: "CaffeNetShaped"
input: "data" input_shape { dim: 2 dim: 3 dim: 67 dim: 67 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 24 pad: 2 kernel_size: 5 group: 2
    weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3"
  convolution_param { num_output: 32 pad: 1 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 32 pad: 1 kernel_size: 3 group: 2
    weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "pool5" type: "Pooling" bottom: "conv4" top: "pool5"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc6" top: "fc8"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""


def deploy(corpus, name, write):
    if name == "caffenet_shaped":
        return write(CAFFENET_SHAPED, "caffenet_shaped.prototxt")
    return str(corpus / {"lenet": "BVLC/caffe/examples/mnist/lenet.prototxt",
                         "cifar10_quick": "BVLC/caffe/examples/cifar10/cifar10_quick.prototxt"}[name])


@pytest.mark.parametrize("name", ["lenet", "cifar10_quick", "caffenet_shaped"])
def test_opencv_reads_protonet_weights_and_agrees_blob_by_blob(corpus, write, tmp_path, name,
                                                                capsys):
    prototxt = deploy(corpus, name, write)
    net = protonet.Net(prototxt, protonet.TEST, seed=1)
    for blobs in net.params.values():  # non-trivial biases
        blobs[-1].data[...] = np.random.default_rng(2).uniform(-0.1, 0.1, blobs[-1].shape)
    weights = str(tmp_path / f"{name}.caffemodel")
    write_caffemodel(net, weights)
    status = main(["compare", prototxt, weights, "--backend", "opencv", "--json",
                   "--atol", "1e-4", "--rtol", "1e-3"])
    rows = json.loads(capsys.readouterr().out)
    assert status == 0, [r for r in rows if not r["ok"]]
    compared = {r["blob"] for r in rows}
    assert "prob" in compared and len(compared) >= 5


def test_compare_passes_on_a_reference_and_names_the_first_bad_blob(write, tmp_path, capsys):
    prototxt = write(CAFFENET_SHAPED, "net.prototxt")
    net = protonet.Net(prototxt, protonet.TEST, seed=3)
    weights = str(tmp_path / "w.caffemodel")
    write_caffemodel(net, weights)
    data = np.random.default_rng(4).standard_normal(net.blobs["data"].shape).astype(np.float32)
    net.forward(data=data)
    reference = {k: v.data.copy() for k, v in net.blobs.items()}  # what pycaffe would save
    good = str(tmp_path / "ref.npz")
    np.savez(good, **reference)
    assert main(["compare", prototxt, weights, "--reference", good]) == 0
    out = capsys.readouterr().out
    assert "all" in out and "within tolerance" in out and "conv1" in out
    reference["norm2"] = reference["norm2"] * 1.01
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **reference)
    assert main(["compare", prototxt, weights, "--reference", bad]) == 3
    out = capsys.readouterr().out
    assert "first blob over tolerance" in out and ": norm2" in out
    assert any(line.startswith("norm2") and line.endswith("FAIL") for line in out.splitlines())


def test_compare_hdf5_reference_and_missing_input(write, tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    prototxt = write(CAFFENET_SHAPED, "net.prototxt")
    net = protonet.Net(prototxt, protonet.TEST, seed=3)
    weights = str(tmp_path / "w.caffemodel")
    write_caffemodel(net, weights)
    net.forward(data=np.ones(net.blobs["data"].shape))
    ref = str(tmp_path / "ref.h5")
    with h5py.File(ref, "w") as f:
        for k in ("data", "conv1", "prob"):
            f[k] = net.blobs[k].data
    assert main(["compare", prototxt, weights, "--reference", ref]) == 0
    no_input = str(tmp_path / "noinput.npz")
    np.savez(no_input, prob=net.blobs["prob"].data)
    assert main(["compare", prototxt, weights, "--reference", no_input]) == 1
    assert "no values for input 'data'" in capsys.readouterr().err
