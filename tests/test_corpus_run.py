"""Every net in the corpus that BVLC Caffe loads builds in each phase it declares and runs.

The TEST (or deploy) form runs one forward pass at batch 1-2 on random data with random
weights, and one backward pass where the net has a loss. Data layers, whose databases are
not here, are replaced by DummyData tops of the shapes their sources would give.
"""
import csv
import warnings

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.io import read_net
from protonet.proto import caffe_pb2

from conftest import corpus_dir

ROOT = corpus_dir()
ROWS = []
if ROOT is not None:
    with open(ROOT / "MANIFEST.tsv", newline="") as f:
        ROWS = [r for r in csv.DictReader(f, delimiter="\t")
                if r["kind"] != "solver" and r["parses_with_bvlc_proto"] == "ok"
                and (r["bvlc_loadable"] == "yes" or r["bvlc_loadable"].startswith("needs Python"))]

DATA_TYPES = {"Data", "ImageData", "WindowData", "MemoryData", "HDF5Data"}

#: Netscope presets that Caffe's parser accepts but its Net refuses: their TRAIN-phase
#: SoftmaxWithLoss has one bottom (no labels). That phase must fail with a clear error.
BROKEN_TRAIN = {"dgschwend/netscope/presets/inceptionv3.prototxt",
                "dgschwend/netscope/presets/inceptionv4.prototxt",
                "dgschwend/netscope/presets/squeezenet.prototxt",
                "dgschwend/netscope/presets/zynqnet.prototxt"}
BATCH = 2


def image_shape(layer):
    """(C, H, W) the layer's source would give, from its parameters and the dataset it names."""
    source = (layer.data_param.source or layer.image_data_param.source
              or layer.window_data_param.source).lower()
    crop = layer.transform_param.crop_size
    if layer.type == "MemoryData":
        p = layer.memory_data_param
        return p.channels, p.height, p.width
    if "siamese" in source or "pair" in layer.name:
        return 2, 28, 28
    if "mnist" in source:
        return 1, 28, 28
    if "cifar" in source:
        return 3, crop or 32, crop or 32
    size = crop or layer.image_data_param.new_height or 227
    return 3, size, size


def with_dummy_data(net):
    """A copy of ``net`` whose data layers are DummyData of their sources' shapes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = min(shape.dim[0], BATCH)
            continue
        if layer.type not in DATA_TYPES:
            continue
        tops = list(layer.top)
        shapes = []
        for top in tops:
            if top in ("label", "sim") or "label" in top:
                shapes.append([BATCH])
            elif layer.type == "HDF5Data":
                shapes.append([BATCH, 4])
            elif len(layer.input_param.shape):  # Netscope presets give Data an input_param
                shapes.append([BATCH, *layer.input_param.shape[0].dim[1:]])
            else:
                shapes.append([BATCH, *image_shape(layer)])
        name, rules = layer.name, (list(layer.include), list(layer.exclude))
        layer.Clear()
        layer.name, layer.type = name, "DummyData"
        layer.top.extend(tops)
        layer.include.extend(rules[0])
        layer.exclude.extend(rules[1])
        for top, shape in zip(tops, shapes):
            layer.dummy_data_param.shape.add().dim.extend(shape)
            filler = layer.dummy_data_param.data_filler.add()
            if len(shape) == 1:  # labels: valid class indices (and 0/1 similarities)
                filler.type, filler.min, filler.max = "uniform", 0, 1.999  # valid for 2+ classes
            else:
                filler.type, filler.std = "gaussian", 1.0
    return out


def declared(net):
    rules = [r for layer in net.layer for r in list(layer.include) + list(layer.exclude)]
    phases = {r.phase for r in rules if r.HasField("phase")} or {protonet.TEST}
    stages = sorted({s for r in rules for s in r.stage})
    return sorted(phases), stages


def build(param, phase, stages, **kw):
    """Build in ``phase``; if the plain state leaves the net incomplete, try each declared stage."""
    try:
        return protonet.Net(param, phase, **kw)
    except ProtonetError:
        for stage in stages:
            try:
                return protonet.Net(param, phase, stages=[stage], **kw)
            except ProtonetError:
                pass
        raise


def randomize(net, rng):
    for layer in net.layers:
        if layer.type == "BatchNorm":
            layer.blobs[0].data[...] = 0
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
            continue
        for blob in layer.blobs:
            fan_in = max(1, blob.count // max(1, blob.shape[0])) if blob.shape else 1
            blob.data[...] = rng.standard_normal(blob.shape) / np.sqrt(fan_in)


def ids(rows):
    return [r["local"].split("/", 1)[1] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=ids(ROWS))
def test_corpus_net_builds_and_runs(row):
    path = str(ROOT.parent / row["local"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        param = with_dummy_data(read_net(path))
    phases, stages = declared(param)
    if row["bvlc_loadable"].startswith("needs Python"):
        modules = {l.python_param.module for l in param.layer if l.type == "Python"}
        with pytest.raises(ProtonetError) as err:
            build(param, phases[-1], stages, init_weights=False, allow_python_layers=True)
        assert any(f"'{m}'" in str(err.value) for m in modules), str(err.value)
        return
    if row["local"].split("/", 1)[1] in BROKEN_TRAIN:
        with pytest.raises(ProtonetError, match=r"layer 'loss' \(SoftmaxWithLoss\): takes exactly 2 bottom"):
            build(param, protonet.TRAIN, stages, init_weights=False)
        try:  # the TEST form runs where the preset defines one
            build(param, protonet.TEST, stages, init_weights=False)
        except ProtonetError as e:
            assert "layer '" in str(e)
            return
        phases = [protonet.TEST]
    for phase in phases:
        build(param, phase, stages, init_weights=False)
    net = build(param, protonet.TEST if protonet.TEST in phases else phases[0], stages, seed=0)
    randomize(net, np.random.default_rng(0))
    loss = net.forward_from_to()
    for name in net.outputs:
        assert np.all(np.isfinite(net.blobs[name].data)), name
    if any(net.blob_loss_weights.values()):
        assert np.isfinite(loss)
        net.clear_param_diffs()
        net.backward_from_to()
        learned = [b for b, need in zip(net.learnable_params, net.param_specs)]
        assert all(np.all(np.isfinite(b.diff)) for b in learned)
        assert any(np.any(b.diff != 0) for b in learned)


def _folds_affine(row) -> bool:
    """Whether the net has a layer that folds into a convolution (not only ReLUs)."""
    with open(ROOT.parent / row["local"], errors="replace") as f:
        text = f.read()
    return any(f'"{kind}"' in text for kind in ("BatchNorm", "Scale", "Bias"))


FOLD_ROWS = [r for r in ROWS if _folds_affine(r)]


@pytest.mark.slow
@pytest.mark.parametrize("row", FOLD_ROWS, ids=ids(FOLD_ROWS))
def test_corpus_net_folded_matches_unfolded(row):
    """The TEST form with BatchNorm/Scale/Bias folded (protonet.fuse, deferred convolution
    tops included) leaves every blob within 1e-5 of its scale of the layer-by-layer net."""
    if row["bvlc_loadable"].startswith("needs Python") or \
            row["local"].split("/", 1)[1] in BROKEN_TRAIN:
        pytest.skip("does not run in protonet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        param = with_dummy_data(read_net(str(ROOT.parent / row["local"])))
    phases, stages = declared(param)
    if protonet.TEST not in phases:
        pytest.skip("no TEST form")
    fused = build(param, protonet.TEST, stages, init_weights=False)
    members = {fused.layers[i].type for c in fused._chains for i in c.members}
    if not members - {"ReLU"}:
        pytest.skip("folds nothing but ReLUs, which the kernels apply as the layer does")
    plain = build(param, protonet.TEST, stages, init_weights=False, fuse=False)
    rng = np.random.default_rng(0)
    randomize(plain, rng)
    for layer in plain.layers:  # statistics that fold into something other than 1 and 0
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            layer.blobs[0].data[...] = rng.normal(0, 0.2, c)
            layer.blobs[1].data[...] = rng.uniform(0.5, 1.5, c)
    for mine, theirs in zip(fused.layers, plain.layers):
        for a, b in zip(mine.blobs, theirs.blobs):
            a.data[...] = b.data
    plain.forward_from_to()
    data = [i for i, layer in enumerate(plain.layers) if layer.type in ("DummyData", "Input")]
    for i in data:  # the same inputs
        for mine, theirs in zip(fused.top_vecs[i], plain.top_vecs[i]):
            mine.data[...] = theirs.data
    fused.forward_from_to(max(data) + 1)
    for name, blob in plain.blobs.items():
        expected, got = blob.data, fused.blobs[name].data
        scale = max(float(np.abs(expected).max()), 1e-30)
        assert np.abs(got - expected).max() <= 1e-5 * scale, name
