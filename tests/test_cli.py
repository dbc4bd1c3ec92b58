"""The command line as a user runs it: entry points, time, help."""
import io
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


BN_DEPLOY = """name: "bn"
input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_time_defaults_to_train_as_caffe_and_test_times_the_folded_deploy_path(write, capsys):
    path = write(BN_DEPLOY)
    assert main(["time", path, "--iterations", "1", "--json"]) == 0
    train = json.loads(capsys.readouterr().out)["layers"]
    assert not any("folded_into" in l for l in train)  # TRAIN: BatchNorm's batch statistics
    assert train[2]["forward_ms"] > 0
    assert main(["time", path, "--phase", "test", "--iterations", "1", "--json"]) == 0
    test = {l["name"]: l for l in json.loads(capsys.readouterr().out)["layers"]}
    assert [n for n, l in test.items() if "folded_into" in l] == ["bn", "scale", "relu"]
    assert {l["folded_into"] for l in test.values() if "folded_into" in l} == {"conv"}
    assert test["bn"]["forward_ms"] == 0 and test["conv"]["forward_ms"] > 0
    assert main(["time", path, "--phase", "test", "--iterations", "1", "--no-fuse",
                 "--json"]) == 0
    assert not any("folded_into" in l for l in json.loads(capsys.readouterr().out)["layers"])


def test_time_table_marks_folded_layers(write, capsys):
    assert main(["time", write(BN_DEPLOY), "--phase", "TEST", "--iterations", "1"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:-3]}
    assert "folded" in rows["scale"] and rows["scale"].endswith("(into conv)")
    assert "folded" not in rows["pool"] and "ms" in rows["pool"]


def test_time_help_gives_each_commands_phase_default(capsys):
    parser_help = subprocess.run([sys.executable, "-m", "protonet", "time", "--help"],
                                 capture_output=True, text=True, check=True).stdout
    assert "default: TRAIN" in " ".join(parser_help.split())
    summary_help = subprocess.run([sys.executable, "-m", "protonet", "summary", "--help"],
                                  capture_output=True, text=True, check=True).stdout
    assert "default: TEST" in " ".join(summary_help.split())


def test_a_reader_that_goes_away_ends_the_command_quietly(write, monkeypatch):
    class Closed(io.StringIO):  # what `protonet time ... | head` writes into once head exits
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["time", write(BN_DEPLOY), "--iterations", "1"]) == 141


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
