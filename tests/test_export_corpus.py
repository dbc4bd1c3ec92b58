"""Every net of the corpus that protonet runs exports to ONNX, passes onnx.checker and gives
protonet's outputs in onnxruntime within 1e-4 of each output's scale. A net holding a layer
ONNX cannot express (SSD's DetectionOutput, Faster R-CNN's proposal layer) is refused with
that layer named, and then exports up to that layer's inputs (``outputs=``) and matches.

Deploy nets and the TEST phase of TRAIN/TEST nets (data layers replaced by DummyData of
their sources' shapes, as in test_corpus_run) are built at batch 1 with random weights
(scaled by fan-in; BatchNorm with real statistics). The small nets run in every test
run, the big ones (ImageNet-sized and up) behind the ``slow`` marker.
"""
import csv

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.io import read_net

from conftest import corpus_dir

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from protonet.export import export  # noqa: E402
from protonet.export.check import format_rows  # noqa: E402
from test_corpus_run import build, declared, with_dummy_data  # noqa: E402

ROOT = corpus_dir()
ROWS = []
if ROOT is not None:
    with open(ROOT / "MANIFEST.tsv", newline="") as f:
        ROWS = [r for r in csv.DictReader(f, delimiter="\t") if r["kind"] != "solver"]

#: nets protonet does not run (so there is nothing to export), and why
NOT_RUNNABLE = {
    "BVLC/caffe/examples/pycaffe/linreg.prototxt": "its loss is a Python layer",
    "dgschwend/netscope/presets/fcn-16s.prototxt": "a dangling bottom in the preset",
    "dgschwend/netscope/presets/fasterRCNN_VGG.prototxt": "an 'implicit' layer type",
    "dgschwend/netscope/presets/inceptionv3.prototxt": "a dangling bottom in the preset",
    "dgschwend/netscope/presets/inceptionv4.prototxt": "a one-bottom SoftmaxWithLoss",
    "chuanqi305/MobileNet-SSD/train.prototxt": "a dangling bottom",
    "rbgirshick/py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_end2end/train.prototxt":
        "its data layer is a Python layer",
    **{f"shelhamer/fcn.berkeleyvision.org/{name}.prototxt": "its data layer is a Python layer"
       for name in ("nyud-fcn32s-color-hha/trainval", "pascalcontext-fcn8s/train",
                    "siftflow-fcn8s/trainval", "voc-fcn-alexnet/train", "voc-fcn32s/train",
                    "voc-fcn32s/val", "voc-fcn8s/train", "voc-fcn8s/val")},
}
#: layer types the exporter refuses (ONNX cannot express them exactly): a net holding one
#: must fail with an error naming it, then export up to its inputs and match
REFUSED = {"DetectionOutput", "PSROIPooling", "Proposal", "Python"}
#: nets small enough for every test run: parameters and input values per item
FAST_PARAMS, FAST_INPUT = 1_500_000, 200_000


def local(row):
    return row["local"].split("/", 1)[1]


def at_batch_one(param):
    for layer in param.layer:
        shapes = (layer.input_param.shape if layer.type == "Input"
                  else layer.dummy_data_param.shape if layer.type == "DummyData" else [])
        for shape in shapes:
            shape.dim[0] = 1
    for shape in param.input_shape:
        shape.dim[0] = 1
    if len(param.input_dim):
        param.input_dim[0] = 1
    return param


def randomize(net, rng):
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            factor = rng.uniform(0.5, 2.0)
            layer.blobs[0].data[...] = rng.normal(0, 0.1, c) * factor
            layer.blobs[1].data[...] = rng.uniform(0.5, 1.5, c) * factor
            layer.blobs[2].data[...] = factor
            continue
        for blob in layer.blobs:
            fan_in = max(1, blob.count // max(1, blob.shape[0])) if blob.shape else 1
            blob.data[...] = rng.standard_normal(blob.shape) / np.sqrt(fan_in)


def load(row, **kw):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        param = at_batch_one(with_dummy_data(read_net(str(ROOT.parent / row["local"]),
                                                      lenient=True)))
    _, stages = declared(param)
    return build(param, protonet.TEST, stages, **kw)


def is_fast(row) -> bool:
    try:
        net = load(row, init_weights=False, memory_limit=0)
    except ProtonetError:
        return True
    params = sum(b.count for layer in net.layers for b in layer.blobs)
    values = max([int(np.prod(net.blobs[n].shape[1:])) for n in net.inputs] or [0])
    return params <= FAST_PARAMS and values <= FAST_INPUT


def refused_inputs(net, refused):
    """The blobs the refused layers read, but for those other refused layers or data
    layers write: what the net exports up to."""
    later = {t for i in refused for t in net.layer_tops[i]}
    fed = {t for i, layer in enumerate(net.layers) if not net.bottom_vecs[i]
           for t in net.layer_tops[i]}
    blobs = [b for i in refused for b in net.layer_bottoms[i] if b not in later | fed]
    return list(dict.fromkeys(blobs))


def params():
    out = []
    for row in ROWS:
        marks = [] if is_fast(row) else [pytest.mark.slow]
        out.append(pytest.param(row, id=local(row), marks=marks))
    return out


@pytest.mark.parametrize("row", params() if ROOT is not None else [])
def test_corpus_net_exports_and_matches_onnxruntime(corpus, tmp_path, row):
    try:
        net = load(row, seed=0)
    except ProtonetError as e:
        if local(row) in NOT_RUNNABLE:
            pytest.skip(f"protonet does not run it ({NOT_RUNNABLE[local(row)]}): {e}")
        raise
    randomize(net, np.random.default_rng(0))
    path = tmp_path / "model.onnx"
    refused = [i for i, layer in enumerate(net.layers)
               if layer.type in REFUSED and net.bottom_vecs[i]]
    outputs = None
    if refused:
        with pytest.raises(ProtonetError) as err:
            export(net, str(path))
        for i in refused:
            assert f"layer '{net.layer_names[i]}' ({net.layers[i].type})" in str(err.value)
        assert not path.exists()
        outputs = refused_inputs(net, refused)
    report = export(net, str(path), check=True, outputs=outputs)
    assert report.rows, "the check did not run"
    assert report.ok, format_rows(report.rows, report.tolerance)
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [n for n, _ in report.inputs]
    assert [o.name for o in graph.output] == [n for n, _ in report.outputs]
    assert set(report.inputs) <= {(n, net.blobs[n].shape) for n in net.blobs}
