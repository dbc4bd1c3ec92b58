"""Netscope parity on the shared corpus (issue 17): `protonet summary` (text and --json) and
`protonet draw`, run as a new user runs them (no flags), succeed on every net file; where the
data shape can be inferred, the shapes downstream are exact; nets that build keep Caffe's
shapes, and the partial pass never contradicts them."""
import csv
import json
import warnings

import pytest

from protonet.cli import main
from protonet.io import read_net
from protonet.net import Net
from protonet.proto import caffe_pb2
from protonet.tools.shapes import infer, summarize_param
from protonet.tools.summary import summarize

from conftest import corpus_dir


def net_rows():
    root = corpus_dir()
    if root is None:
        return []
    with open(root / "MANIFEST.tsv", newline="") as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r["kind"] != "solver"]


ROWS = net_rows()
IDS = [r["local"].split("/", 1)[1] for r in ROWS]


def path_of(corpus, row):
    return str(corpus.parent / row["local"])


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert rc == 0, err
    return out, err


def test_the_corpus_has_its_net_files(corpus):
    assert len(ROWS) == 88


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_summary_and_draw_succeed_without_flags(corpus, capsys, tmp_path, row):
    path = path_of(corpus, row)
    out, _ = run(capsys, "summary", path)
    assert out.startswith("net '") and "TOTAL" in out
    out, _ = run(capsys, "summary", path, "--json")
    s = json.loads(out)
    assert s["layers"] and set(s["totals"]) == {"params", "macc", "activation_bytes", "partial"}
    for layer in s["layers"]:
        assert len(layer["top_shapes"]) == len(layer["tops"])
        for shape in layer["top_shapes"]:
            assert shape is None or all(d is None or (isinstance(d, int) and d >= 0)
                                        for d in shape)
    if s["totals"]["partial"]:   # something unknown: the notes say what and why
        assert s["notes"]
    dot = tmp_path / "net.dot"
    _, err = run(capsys, "draw", path, dot)
    assert dot.read_text().startswith("digraph") and "wrote" in err


def summary(capsys, corpus, rel, *args):
    out, err = run(capsys, "summary", corpus / rel, "--json", *args)
    s = json.loads(out)
    return {t: sh for l in s["layers"] for t, sh in zip(l["tops"], l["top_shapes"])}, s, err


CAFFENET = "BVLC/caffe/models/bvlc_reference_caffenet/train_val.prototxt"
FCN32 = "shelhamer/fcn.berkeleyvision.org/voc-fcn32s/train.prototxt"


def test_caffenet_train_val_without_its_database(corpus, capsys):
    sh, s, err = summary(capsys, corpus, CAFFENET)
    assert s["phase"] == "TEST"
    assert sh["data"] == [50, None, 227, 227] and sh["label"] == [50]
    assert sh["conv1"] == [50, 96, 55, 55] and sh["pool5"] == [50, 256, 6, 6]
    assert sh["fc8"] == [50, 1000] and sh["accuracy"] == [] and sh["loss"] == []
    assert "ilsvrc12_val_lmdb" in err and "inferred" in err
    conv2 = next(l for l in s["layers"] if l["name"] == "conv2")
    assert conv2["params"] == 307456 and conv2["macc"] == 5 * 5 * 48 * 256 * 27 * 27 * 50
    conv1 = next(l for l in s["layers"] if l["name"] == "conv1")
    assert conv1["params"] is None and s["totals"]["partial"] is True
    sh, _, _ = summary(capsys, corpus, CAFFENET, "--phase", "TRAIN")
    assert sh["conv1"] == [256, 96, 55, 55] and sh["fc8"] == [256, 1000]


def test_lenet_train_test_without_mnist(corpus, capsys):
    sh, s, err = summary(capsys, corpus, "BVLC/caffe/examples/mnist/lenet_train_test.prototxt")
    assert sh["data"] == [100, None, None, None] and sh["conv1"] == [100, 20, None, None]
    assert sh["ip1"] == [100, 500] and sh["ip2"] == [100, 10] and sh["loss"] == []
    assert "mnist_test_lmdb" in err


def test_netscope_presets_with_typos_and_without_data_layers(corpus, capsys):
    sh, s, err = summary(capsys, corpus, "dgschwend/netscope/presets/fcn-16s.prototxt")
    assert "fcn-16s.prototxt:106:68: layer 'score-fuse' reads blob 'score-pool4c'" in err
    assert sh["score-pool4c"] is None and sh["score2"] == [1, 21, 22, 22]
    sh, s, err = summary(capsys, corpus, "dgschwend/netscope/presets/googlenet.prototxt")
    assert sh["prob"] == [10, 1000] and "batch_size must be positive" in err
    sh, s, err = summary(capsys, corpus, "dgschwend/netscope/presets/inceptionv3.prototxt",
                         "--input-shape", "data=1,3,299,299")
    assert sh["data"] == [1, 3, 299, 299] and sh["fc1"] == [1, 1000]
    sh, s, err = summary(capsys, corpus, "dgschwend/netscope/presets/SSD300.prototxt")
    assert sh["conv4_3_norm"] == [1, 512, 38, 38] and sh["conv4_3"] == [1, 512, 38, 38]
    assert sh["conv4_3_norm_mbox_loc"] == [1, 16, 38, 38]         # SSD's layers are known
    assert sh["detection_out"] == [1, 1, 1, 7] and not any("(Permute)" in n for n in s["notes"])


def test_python_layers_are_opaque(corpus, capsys):
    sh, s, err = summary(capsys, corpus, FCN32)
    assert sh["data"] is None and sh["score_fr"] == [None, 21, None, None]
    assert err.count("(Python)") == 1 and "voc_layers" in err
    sh, s, err = summary(capsys, corpus, FCN32, "--input-shape", "data=1,3,500,500",
                         "--input-shape", "label=1,1,500,500")
    assert sh["upscore"] == [1, 21, 544, 544] and sh["score"] == [1, 21, 500, 500]


# -- nets that build: Caffe's shapes, and the partial pass agrees with them ---------------------
def buildable(corpus):
    for row in ROWS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            param = read_net(path_of(corpus, row), lenient=True)
            try:
                net = Net(param, "TEST", init_weights=False, memory_limit=0,
                          opaque_python_layers=True)
            except Exception:  # noqa: BLE001
                continue
        exact = summarize(net)
        net.close()
        yield row, param, exact


def test_nets_that_build_keep_exactly_their_shapes(corpus):
    count = 0
    for row, param, exact in buildable(corpus):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert summarize_param(param, "TEST") == exact, row["local"]
            # the partial pass, run on a net whose shapes are all known, is the Net's summary
            assert infer(param, "TEST")[0]["layers"] == exact["layers"], row["local"]
        count += 1
    assert count >= 30


def test_partial_shapes_never_contradict_the_exact_ones(corpus):
    """Each deploy net with an Input layer, re-run with its input replaced by a Data layer
    whose database is missing (batch and crop known, channels not) and by nothing at all
    (an implicit input): every dim, parameter count and MACC the partial pass claims is
    the exact one."""
    checked = known = 0
    for row, param, exact in buildable(corpus):
        inputs = [l for l in param.layer if l.type == "Input" and len(l.top) == 1]
        if not inputs:
            continue
        dims = list(inputs[0].input_param.shape[0].dim)
        for variant in ("data", "implicit"):
            if variant == "data" and (len(dims) != 4 or dims[2] != dims[3]):
                continue
            q = caffe_pb2.NetParameter()
            q.CopyFrom(param)
            index = list(param.layer).index(inputs[0])
            if variant == "data":
                lp = q.layer[index]
                lp.type = "Data"
                lp.ClearField("input_param")
                lp.data_param.source, lp.data_param.batch_size = "/nonexistent", dims[0]
                lp.data_param.backend = caffe_pb2.DataParameter.LMDB
                lp.transform_param.crop_size = dims[2]
            else:
                del q.layer[index]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                partial = infer(q, "TEST")[0]
            rows = {l["name"]: l for l in exact["layers"]}
            for l in partial["layers"]:
                x = rows.get(l["name"])
                if x is None:
                    continue
                for e, p in zip(x["top_shapes"] + x["param_shapes"],
                                l["top_shapes"] + l["param_shapes"]):
                    assert p is None or (len(p) == len(e) and all(
                        d is None or d == de for d, de in zip(p, e))), (row["local"], l, x)
                    known += p is not None and None not in p
                for key in ("params", "macc"):
                    assert l[key] is None or l[key] == x[key], (row["local"], key, l, x)
            checked += 1
    assert checked >= 30 and known > 1000
