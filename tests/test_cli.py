"""The command line as a user runs it: entry points, time, help."""
import json
import subprocess
import sys

import numpy as np

import protonet
from protonet.blob import Blob
from protonet.cli import main

DEPLOY = """name: "tiny"
input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLossStandIn" bottom: "ip" top: "out" }
"""
TRAIN = DEPLOY.replace('layer { name: "loss" type: "EuclideanLossStandIn" bottom: "ip" top: "out" }',
                       'layer { name: "label" type: "DummyData" top: "label" '
                       'dummy_data_param { shape { dim: 2 } } }\n'
                       'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" '
                       'bottom: "label" top: "loss" }')


def test_python_dash_m_and_console_script():
    out = subprocess.run([sys.executable, "-m", "protonet", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"protonet {protonet.__version__}"
    out = subprocess.run([sys.executable, "-m", "protonet", "summary"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "usage:" in out.stderr


def test_time_reports_every_layer_and_the_passes(write, capsys):
    path = write(TRAIN)
    assert main(["time", path, "--iterations", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [l["name"] for l in result["layers"]] == ["input", "conv", "relu", "ip", "label", "loss"]
    assert result["iterations"] == 2
    assert result["forward_ms"] > 0 and result["backward_ms"] > 0
    conv = result["layers"][1]
    assert conv["forward_ms"] > 0 and conv["backward_ms"] > 0
    assert main(["time", path, "--iterations", "1"]) == 0
    text = capsys.readouterr().out
    assert "Average Forward-Backward:" in text and "conv" in text


def test_time_rejects_zero_iterations(write, capsys):
    assert main(["time", write(TRAIN), "--iterations", "0"]) == 1
    assert "--iterations" in capsys.readouterr().err


def test_blob_reshape_takes_pycaffe_dims():
    b = Blob((2, 3))
    b.reshape(1, 3, 4, 5)
    assert b.shape == (1, 3, 4, 5) and b.data.shape == (1, 3, 4, 5)
    b.reshape((6,))
    assert b.count == 6 and b.diff.dtype == np.float32


def test_blob_legacy_accessors_follow_caffes_legacy_shape():
    b = Blob((64, 10))
    assert (b.num, b.channels, b.height, b.width) == (64, 10, 1, 1)
    b.reshape(2, 3, 4, 5)
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 4, 5)
