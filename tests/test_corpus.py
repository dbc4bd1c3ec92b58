"""Every prototxt in the shared corpus parses and upgrades as Caffe's loader would."""
import csv
import warnings

import pytest

import protonet
from protonet.io import read_net, read_solver
from protonet.io.prototxt import ProtonetWarning
from protonet.proto import caffe_pb2

from conftest import corpus_dir


def manifest_rows():
    root = corpus_dir()
    if root is None:
        return []
    with open(root / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = manifest_rows()
ROOT = corpus_dir().parent if ROWS else None


def ids(rows):
    return [r["local"].split("/", 1)[1] for r in rows]


def read(row, lenient=False):
    path = str(ROOT / row["local"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProtonetWarning)
        if row["kind"] == "solver":
            return read_solver(path, lenient=lenient)
        return read_net(path, lenient=lenient)


LOADABLE = [r for r in ROWS if r["parses_with_bvlc_proto"] == "ok" and "mixed" not in r["bvlc_loadable"]]
MIXED = [r for r in ROWS if "mixed" in r["bvlc_loadable"]]
FORK_FIELDS = [r for r in ROWS if r["parses_with_bvlc_proto"].startswith("FAIL")
               and "mixed" not in r["bvlc_loadable"]]


def test_corpus_present():
    if not ROWS:
        pytest.skip("prototxt corpus not found (set PROTONET_CORPUS)")
    assert len(LOADABLE) > 90 and len(MIXED) == 2 and len(FORK_FIELDS) >= 10
    assert len(FORK_KNOWN) >= 10  # SSD, Faster R-CNN and DenseNet files


@pytest.mark.parametrize("row", LOADABLE, ids=ids(LOADABLE))
def test_caffe_loadable_files_parse_strictly(row):
    message = read(row)
    if row["kind"] != "solver":
        assert len(message.layer) > 0 and len(message.layers) == 0  # upgraded to V2
        assert not len(message.input) and not len(message.input_dim)
        for layer in message.layer:
            assert layer.type, layer.name


@pytest.mark.parametrize("row", MIXED, ids=ids(MIXED))
def test_netscope_mixed_files_need_lenient(row):
    # Caffe stops at the first problem: a fork-only field (fcn-16s) or the mix itself
    with pytest.raises(protonet.ProtonetError,
                       match="mixes 'layer' and legacy 'layers'|has no field named"):
        read(row)
    net = read(row, lenient=True)
    assert net.layer[0].type == "Input"
    assert all(layer.type for layer in net.layer)


def _stopping_field(row):
    """(message, field) where BVLC's parser stops, from e.g. "FAIL: 54:5 : Message type
    'caffe.PoolingParameter' has no field named 'ceil_mode'." in the manifest."""
    text = row["parses_with_bvlc_proto"]
    message = text.split("Message type")[-1].split()[0].strip(" '\"").split(".")[-1]
    return message, text.split("named")[-1].strip(" '\".")


def _in_schema(row):
    """Whether protonet's schema carries the field from a Caffe fork (see
    tests/test_schema_forks.py); then the file parses strictly here."""
    message, field = _stopping_field(row)
    return field in getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name


FORK_KNOWN = [r for r in FORK_FIELDS if _in_schema(r)]
FORK_UNKNOWN = [r for r in FORK_FIELDS if not _in_schema(r)]


@pytest.mark.parametrize("row", FORK_KNOWN, ids=ids(FORK_KNOWN))
def test_files_using_fork_fields_in_the_schema_parse_strictly(row):
    message = read(row)
    if row["kind"] != "solver":
        assert len(message.layer) > 0 and all(layer.type for layer in message.layer)


@pytest.mark.parametrize("row", FORK_UNKNOWN, ids=ids(FORK_UNKNOWN))
def test_fields_of_no_fork_fail_strict_and_load_lenient(row):
    # the manifest records where Caffe's own parser stops, e.g. "FAIL: 18:1 : ... 'stepearly'."
    where = row["parses_with_bvlc_proto"].split()[1]  # "18:1"
    field = _stopping_field(row)[1]
    with pytest.raises(protonet.ProtonetError) as err:
        read(row)
    message = str(err.value)
    assert f":{where}:" in message and field in message
    with pytest.warns(ProtonetWarning, match=f"dropped unknown field '{field}'"):
        path = str(ROOT / row["local"])
        (read_solver if row["kind"] == "solver" else read_net)(path, lenient=True)


@pytest.mark.parametrize("row", [r for r in LOADABLE if r["kind"] == "deploy"],
                         ids=ids([r for r in LOADABLE if r["kind"] == "deploy"]))
def test_deploy_nets_report_shapes_or_a_clear_error(row):
    """Deploy nets build in TEST (shapes only) or name the missing layer type."""
    try:
        net = protonet.Net(str(ROOT / row["local"]), protonet.TEST, init_weights=False)
    except protonet.ProtonetError as e:
        assert "unknown layer type" in str(e)
        return
    assert net.outputs and all(net.blobs[o].count > 0 for o in net.outputs)
