"""`protonet summary` and `draw` on nets that cannot be built (issue 17): shapes inferred
from data layers' parameters, unknown dims (? / null) propagated, opaque layers, implicit
inputs, value errors with file:line:column in both modes, and --strict failing as before."""
import json
import shutil
import subprocess

import pytest

from protonet.cli import main
from protonet.io import parse_net
from protonet.net import Net
from protonet.tools import draw
from protonet.tools.shapes import infer, shape_text, source_shapes, summarize_param
from protonet.tools.summary import summarize

from conftest import REPO


def run(capsys, *args):
    """(exit status, stdout, stderr) of ``protonet ARGS`` run in-process."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def summary_json(capsys, *args):
    rc, out, err = run(capsys, "summary", *args, "--json")
    assert rc == 0, err
    return json.loads(out), err


def shapes(summary):
    return {t: s for l in summary["layers"] for t, s in zip(l["tops"], l["top_shapes"])}


def row(summary, name):
    return next(l for l in summary["layers"] if l["name"] == name)


DATA = """name: "d"
layer {{ name: "mnist" type: "Data" top: "data" top: "label"
  data_param {{ source: "no/such_lmdb" batch_size: 16 backend: LMDB }}
  transform_param {{ scale: 0.00390625 {transform} }} }}
"""
LENET_TAIL = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 500 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


# -- 1. data layers without their source ----------------------------------------------------
def test_missing_database_gives_shapes_from_the_layer_parameters(write, capsys):
    path = write(DATA.format(transform="") + LENET_TAIL)
    s, err = summary_json(capsys, path)
    sh = shapes(s)
    assert sh["data"] == [16, None, None, None] and sh["label"] == [16]
    assert sh["conv1"] == [16, 20, None, None] and sh["pool1"] == [16, 20, None, None]
    assert sh["ip1"] == [16, 500] and sh["ip2"] == [16, 10] and sh["loss"] == []
    # costs that need the unknown channels / sizes are unknown; the rest are exact
    conv1, ip1, ip2 = row(s, "conv1"), row(s, "ip1"), row(s, "ip2")
    assert conv1["param_shapes"] == [[20, None, 5, 5], [20]]
    assert conv1["params"] is None and conv1["macc"] is None
    assert conv1["activation_bytes"] is None
    assert ip1["params"] is None and ip1["param_shapes"] == [[500, None], [500]]
    assert ip2["params"] == 5010 and ip2["macc"] == 16 * 500 * 10
    assert ip2["activation_bytes"] == 16 * 10 * 4
    assert s["totals"]["partial"] is True              # the totals count the known part
    assert s["totals"]["params"] == 5010 + 20 + 500     # ip2, and conv1's and ip1's biases
    assert s["totals"]["macc"] == sum(l["macc"] for l in s["layers"] if l["macc"] is not None)
    # one note, naming the layer, the source it could not open and what it inferred
    assert len(s["notes"]) == 1
    note = s["notes"][0]
    assert "layer 'mnist' (Data)" in note and "no/such_lmdb" in note
    assert "16x?x?x?" in note and "--input-shape" in note
    assert err.count("protonet: warning:") == 1 and "no/such_lmdb" in err


def test_unknown_dims_are_null_in_json_and_question_marks_in_text(write, capsys):
    path = write(DATA.format(transform="") + LENET_TAIL)
    rc, out, _ = run(capsys, "summary", path, "--json")
    assert rc == 0 and '"top_shapes": [\n    [\n     16,\n     null,' in out
    rc, out, err = run(capsys, "summary", path)
    assert rc == 0 and "16x?x?x?" in out and "16x20x?x?" in out and "16x500" in out
    conv1 = next(line for line in out.splitlines() if line.startswith("conv1 "))
    assert conv1.split()[-3:] == ["?", "?", "?"]           # params, MACC, activations
    assert "TOTAL (known part)" in out and "? = not determined" in out
    assert "no/such_lmdb" in err


@pytest.mark.parametrize("transform, data", [
    ("crop_size: 8 force_color: true", [16, 3, 8, 8]),
    ("crop_size: 8 force_gray: true", [16, 1, 8, 8]),
    ("mean_value: 104 mean_value: 117 mean_value: 123", [16, 3, None, None]),
    ("crop_size: 227", [16, None, 227, 227]),
])
def test_data_shape_from_transform_param(write, capsys, transform, data):
    s, _ = summary_json(capsys, write(DATA.format(transform=transform) + LENET_TAIL))
    assert shapes(s)["data"] == data


def test_known_channels_make_everything_downstream_exact(write, capsys):
    path = write(DATA.format(transform="crop_size: 28 force_gray: true") + LENET_TAIL)
    s, _ = summary_json(capsys, path)
    exact = summarize(Net(parse_net(
        'layer { name: "mnist" type: "Input" top: "data" top: "label" input_param { '
        'shape { dim: 16 dim: 1 dim: 28 dim: 28 } shape { dim: 16 } } }' + LENET_TAIL),
        init_weights=False))
    assert s["totals"]["partial"] is False and s["notes"]
    assert [l["top_shapes"] for l in s["layers"]] == [l["top_shapes"] for l in exact["layers"]]
    assert s["totals"]["params"] == exact["totals"]["params"] == 520 + 1440500 + 5010
    assert s["totals"]["macc"] == exact["totals"]["macc"]


def lp(text):
    return parse_net(text).layer[0]


@pytest.mark.parametrize("text, expected", [
    ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { '
     'source: "x.txt" batch_size: 4 new_height: 32 new_width: 24 is_color: false } }',
     [(4, 1, 32, 24), (4,)]),
    ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { '
     'source: "x.txt" batch_size: 4 } transform_param { crop_size: 16 } }',
     [(4, 3, 16, 16), (4,)]),
    ('layer { name: "d" type: "WindowData" top: "data" top: "label" window_data_param { '
     'source: "w.txt" batch_size: 128 } transform_param { crop_size: 227 } }',
     [(128, 3, 227, 227), (128,)]),
    ('layer { name: "d" type: "MemoryData" top: "data" top: "label" memory_data_param { '
     'batch_size: 5 channels: 2 height: 0 width: 7 } }', [(5, 2, None, 7), (5,)]),
    ('layer { name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { '
     'source: "h.txt" batch_size: 10 } }', [None, None]),
    ('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
     'shape { dim: 2 dim: 3 } shape { dim: 2 } } }', [(2, 3), (2,)]),
    ('layer { name: "d" type: "Data" top: "data" input_param { shape { dim: 10 dim: 3 '
     'dim: 227 dim: 227 } } }', [(10, 3, 227, 227)]),        # a Netscope preset's data layer
    ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { batch_size: 0 } }',
     [(None, None, None, None), (None,)]),
])
def test_source_shapes(text, expected):
    layer = lp(text)
    assert source_shapes(layer, list(layer.top)) == expected


def test_zero_batch_netscope_preset_uses_its_input_param(write, capsys):
    path = write('layer { name: "data" type: "Data" top: "data" input_param { shape { '
                 'dim: 10 dim: 3 dim: 227 dim: 227 } } }\n'
                 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                 'convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }\n')
    s, err = summary_json(capsys, path)
    assert shapes(s)["c"] == [10, 96, 55, 55] and s["totals"]["partial"] is False
    assert "batch_size must be positive" in err


def test_input_shape_still_overrides_a_missing_source(write, capsys):
    path = write(DATA.format(transform="") + LENET_TAIL)
    s, _ = summary_json(capsys, path, "--input-shape", "data=16,1,28,28", "--input-shape",
                        "label=16")
    assert s["notes"] == [] and s["totals"]["partial"] is False
    assert shapes(s)["ip1"] == [16, 500] and row(s, "ip1")["params"] == 20 * 12 * 12 * 500 + 500


# -- 2. unknown dims propagate -----------------------------------------------------------------
UNKNOWN_C = ('layer { name: "data" type: "Data" top: "data" data_param { source: "none" '
             'batch_size: 2 } transform_param { crop_size: 32 } }\n')


def partial(text):
    return infer(parse_net(UNKNOWN_C + text), "TEST")[0]


def test_concat_sums_known_channels():
    s = partial("""
layer { name: "a" type: "Convolution" bottom: "data" top: "a" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
layer { name: "cat2" type: "Concat" bottom: "cat" bottom: "data" top: "cat2" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "a2" top: "sum" }
layer { name: "gp" type: "Pooling" bottom: "cat" top: "gp" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "cat2" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 3 } }
""")
    sh = shapes(s)
    assert sh["data"] == [2, None, 32, 32]
    assert sh["cat"] == [2, 12, 32, 32]                   # 8 + 4: known channels summed
    assert sh["cat2"] == [2, None, 32, 32]               # + unknown channels: unknown
    assert sh["gp"] == [2, 12, 1, 1] and row(s, "gp")["macc"] == 2 * 12 * 32 * 32
    assert sh["flat"] == [2, None] and sh["ip"] == [2, 3]
    assert sh["sum"] == [2, 8, 32, 32]                   # a2 is implicit: shaped like a
    assert row(s, "b")["param_shapes"] == [[4, None, 3, 3], [4]]


def test_deconvolution_and_pooling_of_unknown_rank():
    s = infer(parse_net("""
layer { name: "py" type: "Python" top: "x" python_param { module: "m" layer: "L" } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 5 kernel_size: 3 } }
layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "c" top: "up" convolution_param { num_output: 7 kernel_size: 4 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "r" }
layer { name: "ip" type: "InnerProduct" bottom: "r" top: "ip" inner_product_param { num_output: 6 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "lbl" top: "loss" }
"""), "TEST")[0]
    sh = shapes(s)
    assert sh["x"] is None and sh["r"] is None                 # not even the rank is known
    assert sh["c"] == [None, 5, None, None] and sh["p"] == [None, None, None, None]
    assert sh["up"] == [None, 7, None, None]
    assert row(s, "up")["param_shapes"] == [[5, 7, 4, 4], [7]] and row(s, "up")["params"] == 567
    assert sh["ip"] == [None, 6] and sh["loss"] == []
    assert row(s, "py")["params"] == 0 and s["totals"]["partial"] is True


def test_a_net_that_builds_gives_the_same_summary_either_way():
    param = parse_net((REPO / "models/lenet/lenet.prototxt").read_text())
    exact = summarize(Net(param, "TEST", init_weights=False))
    assert infer(param, "TEST")[0]["layers"] == exact["layers"]
    assert summarize_param(param, "TEST") == exact


# -- 3. opaque layers ------------------------------------------------------------------------
OPAQUE = """name: "o"
layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "voc_layers" layer: "VOC" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "norm" type: "Frobnicate" bottom: "conv" top: "norm" }
layer { name: "ip" type: "InnerProduct" bottom: "norm" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_python_and_unknown_layers_are_opaque_with_one_warning_each(write, capsys):
    path = write(OPAQUE)
    s, err = summary_json(capsys, path)
    sh = shapes(s)
    assert sh["data"] is None and sh["label"] is None and sh["norm"] is None
    assert sh["conv"] == [None, 4, None, None] and sh["ip"] == [None, 2]
    assert [l["type"] for l in s["layers"]] == ["Python", "Convolution", "Frobnicate",
                                                "InnerProduct"]
    assert row(s, "norm")["params"] is None                     # unknown type: unknown cost
    warnings = [line for line in err.splitlines() if line.startswith("protonet: warning:")]
    assert sum("layer 'data' (Python)" in w and "voc_layers" in w for w in warnings) == 1
    assert sum("layer 'norm' (Frobnicate)" in w for w in warnings) == 1
    rc, out, err = run(capsys, "summary", path)
    assert rc == 0 and "?" in out
    rc, _, err = run(capsys, "summary", "--strict", path)
    assert rc == 1 and err.count("\n") == 1 and "Python layer" in err


def test_input_shape_gives_opaque_tops(write, capsys):
    path = write(OPAQUE)
    s, err = summary_json(capsys, path, "--input-shape", "data=1,3,10,10",
                          "--input-shape", "norm=1,4,8,8")
    sh = shapes(s)
    assert sh["data"] == [1, 3, 10, 10] and sh["conv"] == [1, 4, 8, 8]
    assert sh["norm"] == [1, 4, 8, 8] and sh["ip"] == [1, 2]
    assert row(s, "ip")["params"] == 4 * 8 * 8 * 2 + 2
    assert "take their shapes from --input-shape" in err


# -- 4. lenient typos and implicit inputs ----------------------------------------------------
def test_a_bottom_nothing_produces_is_an_implicit_input_named_by_place(write, capsys):
    path = write('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                 'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
                 '  convolution_param { num_output: 2 kernel_size: 3 } }\n'
                 'layer { name: "sum" type: "Eltwise" bottom: "c"  bottom: "cc" top: "sum" }\n')
    s, err = summary_json(capsys, path)
    assert f"{path}:4:58: layer 'sum' reads blob 'cc', which no earlier layer produces" in err
    assert row(s, "cc")["type"] == "Input" and shapes(s)["cc"] is None
    assert shapes(s)["sum"] == [1, 2, 6, 6]
    rc, _, err = run(capsys, "summary", "--strict", path)
    assert rc == 1 and "unknown bottom blob 'cc'" in err


def test_a_net_without_data_layer_gets_its_inputs_the_same_way(write, capsys):
    path = write('layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
                 '  convolution_param { num_output: 2 kernel_size: 3 } }\n')
    s, err = summary_json(capsys, path)
    assert shapes(s) == {"data": None, "c": [None, 2, None, None]} and ":1:47:" in err
    s, err = summary_json(capsys, path, "--input-shape", "data=1,3,8,8")
    assert shapes(s)["c"] == [1, 2, 6, 6] and "shaped by --input-shape" in err


def test_a_layer_that_cannot_be_set_up_keeps_its_row(write, capsys):
    path = write('input: "a" input_shape { dim: 1 dim: 3 }\n'
                 'input: "b" input_shape { dim: 1 dim: 4 }\n'
                 'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }\n'
                 'layer { name: "r" type: "ReLU" bottom: "sum" top: "r" }\n')
    s, err = summary_json(capsys, path)
    assert shapes(s)["sum"] is None and shapes(s)["r"] is None
    assert "layer 'sum' (Eltwise)" in err and "shown as ?" in err
    assert run(capsys, "summary", "--strict", path)[0] == 1


# -- 5. values stay checked, in both modes ----------------------------------------------------
@pytest.mark.parametrize("text, where, words", [
    ('layer {\n  name: "p" type: "Pooling"\n  pooling_param { pool: MEDIAN } }\n', ":3:25:",
     "MEDIAN"),
    ('input: "data"\ninput_shape { dim: 1 dim: "four" }\n', ":2:27:", "four"),
    ('layer { name: "c" type: "Convolution"\n  convolution_param { kernel_size: -3 } }\n',
     ":2:36:", "-3"),
])
@pytest.mark.parametrize("mode", ["--strict", "--lenient"])
def test_wrong_values_of_known_fields_are_errors_in_both_modes(write, capsys, text, where,
                                                                words, mode):
    path = write(text)
    rc, _, err = run(capsys, "summary", mode, path)
    assert rc == 1 and err.startswith(f"protonet: error: {path}{where}"), err
    assert words in err and err.count("\n") == 1
    rc, _, err = run(capsys, "draw", mode, path, path + ".svg")
    assert rc == 1 and f"{path}{where}" in err


@pytest.mark.parametrize("mode", ["--strict", "--lenient"])
def test_a_block_left_open_is_named_by_its_line_and_column(write, capsys, mode):
    path = write('name: "x"\nlayer {\n  name: "p" type: "Pooling"\n  pooling_param { pool: MAX\n')
    rc, _, err = run(capsys, "summary", mode, path)
    assert rc == 1 and err.count("\n") == 1
    assert "'{' at 4:17 is never closed" in err if mode == "--strict" else \
        f"{path}:4:17: missing '}}' at end of file; the '{{' here is never closed" in err


def test_unknown_fields_and_types_stay_tolerated(write, capsys):
    path = write('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
                 '  pooling_param { pool: MAX kernel_size: 2 stride: 2 fork_only_knob: 7 } }\n'
                 'layer { name: "q" type: "ForkOnlyLayer" bottom: "p" top: "q" }\n')
    s, err = summary_json(capsys, path)
    assert shapes(s)["p"] == [1, 3, 4, 4] and shapes(s)["q"] is None
    assert f"{path}:3:54: dropped unknown field 'fork_only_knob'" in err
    assert "layer 'q' (ForkOnlyLayer): a layer type protonet does not know" in err


# -- 6. --strict keeps today's behaviour ------------------------------------------------------
@pytest.mark.parametrize("text, fragment", [
    (DATA.format(transform="") + LENET_TAIL, "no/such_lmdb"),
    (OPAQUE, "Python layer"),
    ('layer { name: "x" type: "Warp" top: "x" }', "unknown layer type 'Warp'"),
    ('layer { name: "x" type: "ReLU" bottom: "nope" top: "x" }', "unknown bottom blob 'nope'"),
    ('layer { name: "d" type: "Data" top: "d" data_param { source: "x" } }', "batch_size"),
])
def test_strict_fails_where_the_net_cannot_be_built(write, capsys, text, fragment):
    path = write(text)
    rc, _, err = run(capsys, "summary", "--strict", path)
    assert rc == 1 and fragment in err and err.count("\n") == 1
    assert run(capsys, "summary", path)[0] == 0
    assert run(capsys, "summary", path, "--json")[0] == 0


# -- the drawing -----------------------------------------------------------------------------
def test_drawing_shows_question_marks_and_the_notes(write, tmp_path, capsys):
    path = write(DATA.format(transform="") + LENET_TAIL)
    d = draw.build_drawing(parse_net(open(path).read()))
    boxes = {n.name: n for n in d.nodes}
    assert ("16×20×?×?", "shape") in boxes["conv1"].lines
    assert ("data: 16×?×?×?", "shape") in boxes["mnist"].lines
    assert ("16×10", "shape") in boxes["ip2"].lines
    assert len(d.notes) == 1 and "no/such_lmdb" in d.notes[0] and d.totals["partial"]
    page = draw.render(d, "html").decode()
    assert "≥ 5,530 parameters" in page
    out = tmp_path / "net.svg"
    rc, _, err = run(capsys, "draw", path, out)
    assert rc == 0 and "16×20×?×?" in out.read_text() and "protonet: note:" in err
    node = shutil.which("node")
    if node:
        from test_draw import JS_HARNESS
        (tmp_path / "page.html").write_text(page)
        (tmp_path / "h.js").write_text(JS_HARNESS + _DUMP_TIPS)
        res = subprocess.run([node, str(tmp_path / "h.js"), str(tmp_path / "page.html")],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        tips = json.loads(res.stdout.strip().splitlines()[-1])
        conv1 = tips[[n.name for n in d.nodes].index("conv1")]
        assert "16×20×?×?" in conv1 and "parameters|?  (20×?×5×5, 20)" in conv1


_DUMP_TIPS = r"""
function texts(e){return [e.textContent].concat(...e.children.map(texts))}
const tips = nodes.map(function(g){g.h.mouseenter({clientX:1,clientY:1});
  const t = texts(tip).join('|'); g.h.mouseleave(); return t});
console.log(JSON.stringify(tips));
"""


def test_shape_text():
    assert shape_text(None) == "?" and shape_text(()) == "scalar"
    assert shape_text((50, None, 227, 227)) == "50x?x227x227"


def test_huge_parameters_are_counted_without_allocating_them(write, capsys):
    # a 4 TB weight: summing the parameters must not touch their values
    path = write('input: "data" input_shape { dim: 1 dim: 1000000 }\n'
                 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
                 '  inner_product_param { num_output: 1000000 } }\n')
    s, _ = summary_json(capsys, path)
    assert s["totals"]["params"] == 10 ** 12 + 10 ** 6 and s["totals"]["partial"] is False
