"""`protonet summary` and the CLI's error handling."""
import json

import numpy as np
import pytest

from protonet.cli import main
from protonet.proto import caffe_pb2


def summary_json(capsys, *args):
    assert main(["summary", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def shapes(summary):
    return {t: s for l in summary["layers"] for t, s in zip(l["tops"], l["top_shapes"])}


def test_lenet_deploy(corpus, capsys):
    s = summary_json(capsys, corpus / "BVLC/caffe/examples/mnist/lenet.prototxt")
    assert shapes(s) == {"data": [64, 1, 28, 28], "conv1": [64, 20, 24, 24],
                         "pool1": [64, 20, 12, 12], "conv2": [64, 50, 8, 8],
                         "pool2": [64, 50, 4, 4], "ip1": [64, 500], "ip2": [64, 10],
                         "prob": [64, 10]}
    assert s["totals"]["params"] == 431080
    conv1 = s["layers"][1]
    assert conv1["macc"] == 5 * 5 * 1 * 20 * 24 * 24 * 64
    assert conv1["param_shapes"] == [[20, 1, 5, 5], [20]]
    assert conv1["activation_bytes"] == 64 * 20 * 24 * 24 * 4
    relu = next(l for l in s["layers"] if l["type"] == "ReLU")
    assert relu["activation_bytes"] == 0  # in place


def test_caffenet_deploy(corpus, capsys):
    s = summary_json(capsys, corpus / "BVLC/caffe/models/bvlc_reference_caffenet/deploy.prototxt")
    sh = shapes(s)
    assert sh["conv1"] == [10, 96, 55, 55] and sh["pool1"] == [10, 96, 27, 27]
    assert sh["pool2"] == [10, 256, 13, 13] and sh["pool5"] == [10, 256, 6, 6]
    assert sh["prob"] == [10, 1000]
    assert s["totals"]["params"] == 60965224
    conv2 = next(l for l in s["layers"] if l["name"] == "conv2")
    assert conv2["macc"] == 5 * 5 * 48 * 256 * 27 * 27 * 10  # group 2
    assert set(s) == {"name", "phase", "layers", "totals", "notes"}
    assert s["notes"] == [] and s["totals"]["partial"] is False
    assert set(s["layers"][0]) == {"name", "type", "bottoms", "tops", "top_shapes",
                                   "param_shapes", "params", "macc", "activation_bytes"}


def test_googlenet_deploy(corpus, capsys):
    s = summary_json(capsys, corpus / "BVLC/caffe/models/bvlc_googlenet/deploy.prototxt")
    sh = shapes(s)
    assert sh["pool1/3x3_s2"] == [10, 64, 56, 56]  # 112 -> 56 with ceil and no pad
    assert sh["inception_3a/output"] == [10, 256, 28, 28]
    assert sh["inception_5b/output"] == [10, 1024, 7, 7]
    assert sh["pool5/7x7_s1"] == [10, 1024, 1, 1]
    assert sh["prob"] == [10, 1000]
    assert s["totals"]["params"] == 6998552
    assert any(l["type"] == "Split" for l in s["layers"])  # auto-inserted splits are listed


def test_v1_vgg16_deploy(corpus, capsys):
    s = summary_json(capsys, corpus / "ethereon/netscope/presets/vgg-16.prototxt")
    sh = shapes(s)
    assert sh["pool5"] == [10, 512, 7, 7] and sh["fc8"] == [10, 1000]
    assert s["totals"]["params"] == 138357544


def test_caffe_pooling_rule_in_summary(write, capsys):
    path = write("""name: "p"
        input: "data" input_shape { dim: 1 dim: 2 dim: 112 dim: 112 }
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }""")
    assert shapes(summary_json(capsys, path))["pool"] == [1, 2, 57, 57]


def test_text_table(corpus, capsys):
    assert main(["summary", str(corpus / "BVLC/caffe/examples/mnist/lenet.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "64x20x24x24" in out and "TOTAL" in out and "431,080" in out


def make_lmdb(path, n=5, shape=(1, 28, 28)):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            d = caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2], label=i % 10,
                                data=np.full(shape, i, np.uint8).tobytes())
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()


DATA_NET = """name: "d"
layer {{ name: "mnist" type: "Data" top: "data" top: "label"
  data_param {{ source: "{source}" batch_size: 16 backend: LMDB }}
  transform_param {{ scale: 0.00390625 {crop} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 3 }} }}
"""


def test_data_layer_shape_comes_from_the_first_record(tmp_path, write, capsys):
    make_lmdb(tmp_path / "db", shape=(3, 12, 10))
    path = write(DATA_NET.format(source=tmp_path / "db", crop="crop_size: 8"))
    sh = shapes(summary_json(capsys, path))
    assert sh["data"] == [16, 3, 8, 8] and sh["label"] == [16] and sh["ip"] == [16, 3]


def test_missing_source_names_layer_and_path_or_takes_input_shape(write, capsys):
    path = write(DATA_NET.format(source="no/such_lmdb", crop=""))
    assert main(["summary", "--strict", path]) == 1  # without --strict: inferred shapes
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "layer 'mnist'" in err and "no/such_lmdb" in err
    assert "--input-shape" in err
    s = summary_json(capsys, path, "--input-shape", "data=4,1,28,28")
    assert shapes(s)["data"] == [4, 1, 28, 28] and shapes(s)["label"] == [4]


@pytest.mark.parametrize("text, fragment", [
    ('layer { name: "x" type: "Warp" top: "x" }', "unknown layer type 'Warp'"),
    ('layer { name: "x" type: "ReLU" bottom: "nope" top: "x" }', "unknown bottom blob 'nope'"),
    ('input: "a" input_shape { dim: 1 }\n'
     'layer { name: "x" type: "ReLU" bottom: "a" top: "b" }\n'
     'layer { name: "y" type: "ReLU" bottom: "a" top: "b" }', "produced by more than one layer"),
    ('layer { name: "x" type: "Pooling" pooling_param { pool: BIGGEST } }', ":1:"),
    ('layer { name: "x" type: "Pooling" pooling_param { kernel_size: "three" } }', ":1:"),
])
def test_cli_errors_are_one_clear_line(write, capsys, text, fragment):
    path = write(text)
    assert main(["summary", "--strict", path]) == 1
    captured = capsys.readouterr()
    assert fragment in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith("protonet: error: ") and captured.err.count("\n") == 1


def test_cli_missing_file(capsys, tmp_path):
    assert main(["summary", str(tmp_path / "missing.prototxt")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_cli_lenient_warnings_are_printed(corpus, capsys):
    assert main(["summary", str(corpus / "dgschwend/netscope/presets/vgg-16.prototxt")]) == 0
    captured = capsys.readouterr()
    assert "protonet: warning:" in captured.err and "read as 'Input'" in captured.err
    assert "fc8" in captured.out


def test_bad_input_shape_argument(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["summary", "x.prototxt", "--input-shape", "data=a,b"])
    assert exit_.value.code == 2
    assert "TOP=N,C,H,W" in capsys.readouterr().err


def test_resnet50_summary_covers_batchnorm_scale_eltwise(corpus, capsys):
    s = summary_json(capsys, corpus / "KaimingHe/deep-residual-networks/prototxt/ResNet-50-deploy.prototxt")
    types = {l["type"] for l in s["layers"]}
    assert {"BatchNorm", "Scale", "Eltwise", "Convolution", "Pooling", "InnerProduct"} <= types
    assert shapes(s)["prob"] == [1, 1000]
    assert 3.8e9 < s["totals"]["macc"] < 4.2e9  # the well-known ~3.9 GMAC of ResNet-50 at 224
    bn = next(l for l in s["layers"] if l["type"] == "BatchNorm")
    assert bn["param_shapes"] == [[64], [64], [1]] and bn["macc"] > 0
