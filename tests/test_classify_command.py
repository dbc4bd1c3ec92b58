"""protonet classify: Caffe's python/classify.py on images the test makes."""
import json

import numpy as np
import pytest
from PIL import Image

import protonet
from protonet.classifier import Classifier
from protonet.cli import main
from protonet.io.blobs import write_blob_proto
from protonet.io.pycaffe_io import load_image

DEPLOY = """name: "tiny" input: "data" input_shape { dim: 10 dim: 3 dim: 12 dim: 12 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2
                            weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
LABELS = ["n0 zero", "n1 one", "n2 two", "n3 three", "n4 four", "n5 five"]


@pytest.fixture
def files(tmp_path):
    deploy, weights = tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel"
    deploy.write_text(DEPLOY)
    protonet.Net(str(deploy), protonet.TEST, seed=4).save(str(weights))
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(20, 16), (15, 15)]):
        path = tmp_path / f"im{i}.png"
        Image.fromarray((rng.random(size + (3,)) * 255).astype(np.uint8)).save(path)
        images.append(str(path))
    labels = tmp_path / "synset_words.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return str(deploy), str(weights), images, str(labels)


def expected_scores(deploy, weights, images, **kw):
    net = Classifier(deploy, weights, image_dims=(14, 14), raw_scale=255,
                     channel_swap=(2, 1, 0), **kw)
    return net.predict([load_image(p) for p in images])


def test_classify_prints_the_top_classes_of_each_image(files, capsys):
    deploy, weights, images, labels = files
    assert main(["classify", deploy, weights, *images, "--images-dim", "14,14",
                 "--labels", labels, "--top", "3", "--mean-values", "100,110,120"]) == 0
    out = capsys.readouterr().out.splitlines()
    scores = expected_scores(deploy, weights, images, mean=np.array([100, 110, 120.0]))
    assert out[0] == f"{images[0]}:" and out[4] == f"{images[1]}:"
    for block, row in zip((out[1:4], out[5:8]), scores):
        top = np.argsort(-row)[:3]
        assert block == [f"  {row[k]:.4f}  {LABELS[k]}" for k in top]


def test_classify_json_center_only_and_mean_file(files, tmp_path, capsys):
    deploy, weights, images, labels = files
    mean = np.random.default_rng(1).uniform(90, 130, (1, 3, 12, 12))
    write_blob_proto(str(tmp_path / "mean.binaryproto"), mean)
    scores_file = tmp_path / "scores.npy"
    assert main(["classify", deploy, weights, *images, "--center-only", "--json",
                 "--mean-file", str(tmp_path / "mean.binaryproto"), "--top", "6",
                 "-o", str(scores_file)]) == 0
    result = json.loads(capsys.readouterr().out)
    net = Classifier(deploy, weights, raw_scale=255, channel_swap=(2, 1, 0),
                     mean=mean[0].astype(np.float32))   # the file holds float32
    scores = net.predict([load_image(p) for p in images], oversample=False)
    np.testing.assert_allclose(np.load(scores_file), scores, rtol=1e-6)
    for entry, row in zip(result, scores):
        assert [t["class"] for t in entry["top"]] == list(np.argsort(-row, kind="stable"))
        np.testing.assert_allclose([t["score"] for t in entry["top"]], np.sort(row)[::-1],
                                   rtol=1e-6)
        assert entry["top"][0]["label"] == str(entry["top"][0]["class"])   # no labels file


@pytest.mark.parametrize("extra, message", [
    (["--labels", "LABELS_SHORT"], "2 labels for a net with 6 classes"),
    (["--mean-file", "nowhere.binaryproto"], "no such mean file"),
    (["--mean-values", "1,2,x"], "not a comma-separated list of numbers"),
    (["--mean-values", "1,2,3", "--mean-file", "m.npy"], "not both"),
    (["MISSING_IMAGE"], "no such file"),
])
def test_classify_errors_are_one_line(files, tmp_path, capsys, extra, message):
    deploy, weights, images, labels = files
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    extra = [str(short) if e == "LABELS_SHORT" else str(tmp_path / "x.png")
             if e == "MISSING_IMAGE" else e for e in extra]
    assert main(["classify", deploy, weights, images[0], *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
