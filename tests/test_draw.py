"""protonet draw: layout properties, every output format for LeNet, GoogLeNet and ResNet-50,
the HTML page's script, the CLI and pycaffe's caffe.draw functions."""
import json
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import protonet
from protonet.cli import main
from protonet.io import parse_net, read_net
from protonet.tools import draw
from conftest import corpus_dir

NETS = {
    "lenet": "BVLC/caffe/examples/mnist/lenet.prototxt",
    "googlenet": "BVLC/caffe/models/bvlc_googlenet/deploy.prototxt",
    "resnet50": "KaimingHe/deep-residual-networks/prototxt/ResNet-50-deploy.prototxt",
}
LENET_TRAIN_TEST = "BVLC/caffe/examples/mnist/lenet_train_test.prototxt"


def corpus_path(rel):
    root = corpus_dir()
    if root is None:
        pytest.skip("prototxt corpus not found (set PROTONET_CORPUS)")
    return str(root / rel)


_CACHE = {}


def drawing(name, **kw):
    """Built once per net and options: layout is what most tests look at."""
    key = (name, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = draw.build_drawing(read_net(corpus_path(NETS[name]), lenient=True), **kw)
    return _CACHE[key]


def boxes(d):
    return [(n.x - n.width / 2, n.y - n.height / 2, n.x + n.width / 2, n.y + n.height / 2)
            for n in d.nodes]


def bezier_points(path, steps=12):
    """Points along an edge path (its M/L/C commands)."""
    pts, cur = [], None
    for cmd in path:
        if cmd[0] == "M":
            cur = cmd[1]
        elif cmd[0] == "L":
            for t in np.linspace(0, 1, steps):
                pts.append((cur[0] + t * (cmd[1][0] - cur[0]), cur[1] + t * (cmd[1][1] - cur[1])))
            cur = cmd[1]
        else:
            p0, p1, p2, p3 = cur, cmd[1], cmd[2], cmd[3]
            for t in np.linspace(0, 1, steps):
                a, b, c, e = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
                pts.append((a * p0[0] + b * p1[0] + c * p2[0] + e * p3[0],
                            a * p0[1] + b * p1[1] + c * p2[1] + e * p3[1]))
            cur = p3
    return pts


# -- layout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETS))
def test_boxes_never_overlap_and_edges_avoid_other_boxes(name):
    d = drawing(name)
    rects = boxes(d)
    for i, a in enumerate(rects):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= d.width and a[3] <= d.height
        for b in rects[i + 1:]:
            overlap = min(a[2], b[2]) - max(a[0], b[0]) > 0 and \
                min(a[3], b[3]) - max(a[1], b[1]) > 0
            assert not overlap, (a, b)
    for e in d.edges:
        src, dst = d.nodes[e.src], d.nodes[e.dst]
        start = e.path[0][1]
        assert start[1] == pytest.approx(src.y + src.height / 2)       # leaves the bottom
        assert e.arrow[0][1] == pytest.approx(dst.y - dst.height / 2)  # points at the top
        for x, y in bezier_points(e.path):
            for k, (x0, y0, x1, y1) in enumerate(rects):
                if k not in (e.src, e.dst):
                    assert not (x0 + 2 < x < x1 - 2 and y0 + 2 < y < y1 - 2), \
                        f"edge {src.name} -> {dst.name} crosses {d.nodes[k].name}"


def test_in_place_layers_fold_into_their_producer():
    param = read_net(corpus_path(NETS["resnet50"]))
    d = drawing("resnet50")
    assert sum(len(n.layers) for n in d.nodes) == len(param.layer)
    conv1 = next(n for n in d.nodes if n.name == "conv1")
    assert [l.type for l in conv1.layers] == ["Convolution", "BatchNorm", "Scale", "ReLU"]
    for n in d.nodes:
        head = n.layers[0]
        assert list(head.bottom) != list(head.top) or not len(head.top)
    res2a = next(n for n in d.nodes if n.name == "res2a")
    assert [l.type for l in res2a.layers] == ["Eltwise", "ReLU"]
    assert len([e for e in d.edges if e.dst == d.nodes.index(res2a)]) == 2


def test_labels_show_type_parameters_and_shapes():
    d = drawing("resnet50")
    conv1 = next(n for n in d.nodes if n.name == "conv1")
    text = [t for t, _ in conv1.lines]
    assert text[:2] == ["conv1", "Convolution"]
    assert "out 64 · k 7×7 · s 2 · p 3" in text
    assert "+ BatchNorm · Scale · ReLU" in text
    if "BatchNorm" in protonet.layer_type_list():
        assert text[-1] == "1×64×112×112"
    g = drawing("googlenet")
    concat = next(n for n in g.nodes if n.name == "inception_3a/output")
    assert [t for t, _ in concat.lines] == ["inception_3a/output", "Concat", "10×256×28×28"]
    pool = next(n for n in g.nodes if n.name == "pool1/3x3_s2")
    assert "MAX · k 3×3 · s 2" in [t for t, _ in pool.lines]
    lrn = next(n for n in g.nodes if n.name == "pool1/norm1")
    assert "size 5 · α 0.0001 · β 0.75" in [t for t, _ in lrn.lines]
    assert g.totals["params"] == 6998552      # BVLC GoogLeNet's parameter count


def test_googlenet_layout_is_balanced():
    """Inception modules hang centred under the previous concat: the concats line up."""
    d = drawing("googlenet")
    xs = [n.x for n in d.nodes if n.type == "Concat"]
    assert len(xs) == 9 and max(xs) - min(xs) < 40
    # and a module is not much wider than its four branches need
    assert d.width < 1000


def test_layout_is_fast():
    param = read_net(corpus_path(NETS["resnet50"]))
    start = time.perf_counter()
    draw.build_drawing(param)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("rankdir", ["TB", "BT", "LR", "RL"])
def test_rankdir(rankdir):
    d = draw.build_drawing(read_net("models/lenet/lenet.prototxt"), rankdir=rankdir)
    order = [n.name for n in d.nodes]
    assert order[0] == "data" and order[-1] == "prob"
    coord = {"TB": lambda n: n.y, "BT": lambda n: -n.y, "LR": lambda n: n.x,
             "RL": lambda n: -n.x}[rankdir]
    values = [coord(n) for n in d.nodes]
    assert values == sorted(values) and len(set(values)) == len(values)
    if rankdir in ("LR", "RL"):
        assert d.width > 4 * d.height
    else:
        assert d.height > 4 * d.width


def test_phase_all_train_and_input_shapes():
    param = read_net(corpus_path(LENET_TRAIN_TEST))
    both = draw.build_drawing(param, phase="ALL")
    data = [n for n in both.nodes if n.type == "Data"]
    assert len(data) == 2
    assert {t for n in data for t, s in n.lines if "only" in t} == \
        {"batch 64 · TRAIN only", "batch 100 · TEST only"}
    conv1 = next(i for i, n in enumerate(both.nodes) if n.name == "conv1")
    assert {both.nodes[e.src].name for e in both.edges if e.dst == conv1} == {"mnist"}
    assert len([e for e in both.edges if e.dst == conv1]) == 2
    train = draw.build_drawing(param, phase="TRAIN")
    assert "Accuracy" not in [n.type for n in train.nodes]
    assert train.notes and "input-shape" in train.notes[0]          # no LMDB: inferred shapes
    shaped = draw.build_drawing(param, phase="TRAIN",
                                input_shapes={"data": (64, 1, 28, 28), "label": (64,)})
    assert not shaped.notes
    mnist = next(n for n in shaped.nodes if n.name == "mnist")
    assert ("data: 64×1×28×28", "shape") in mnist.lines and ("label: 64", "shape") in mnist.lines
    assert shaped.nodes[-1].lines[-1] == ("scalar", "shape")


def test_shapes_stop_at_a_layer_that_cannot_be_built():
    param = parse_net("""name: "partial"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "py" type: "Python" bottom: "conv" top: "py" python_param { module: "nowhere" layer: "X" } }
layer { name: "ip" type: "InnerProduct" bottom: "py" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "orphan" type: "ReLU" bottom: "ghost" top: "orphan" }
""")
    d = draw.build_drawing(param)
    names = {n.name: n for n in d.nodes}
    assert names["conv"].lines[-1] == ("1×4×6×6", "shape")
    assert names["ip"].lines[-1] == ("?×2", "shape")   # past the opaque layer: [N, num_output]
    assert d.notes and "Python" in d.notes[0]
    assert names["ghost"].implicit                     # a blob nobody produces
    assert b"stroke-dasharray" in draw.render(d, "svg")


def test_isotonic_keeps_gaps_and_fits_targets():
    out = draw._isotonic([0.0, 0.0, 0.0], [1, 1, 1], [10, 10])
    assert out == pytest.approx([-10, 0, 10])
    out = draw._isotonic([0.0, 50.0, 51.0], [1, 1, 1], [10, 10])
    assert out == pytest.approx([0, 45.5, 55.5])
    assert draw.text_width("conv1", 12, bold=True) > draw.text_width("conv1", 12)


# -- every format --------------------------------------------------------------------------------
def check_svg(d, data):
    root = ET.fromstring(data)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert float(root.get("width")) == pytest.approx(d.width, abs=1)
    nodes = [g for g in root.iter(f"{ns}g") if g.get("class") == "node"]
    edges = [g for g in root.iter(f"{ns}g") if g.get("class") == "edge"]
    assert len(nodes) == len(d.nodes) and len(edges) == len(d.edges)
    texts = {t.text for t in root.iter(f"{ns}text")}
    assert all(n.name in texts for n in d.nodes)


def check_png(d, data, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with Image.open(path) as im:
        assert im.format == "PNG"
        scale = im.width / d.width
        assert 0.5 < scale <= draw.PNG_SCALE + 0.01
        assert im.height == pytest.approx(d.height * scale, rel=2e-3)
        pixels = np.asarray(im.convert("RGB"))
    # the conv boxes' fill colour (#d6e4f7) is there, and most of the page is white
    assert np.any(np.all(np.abs(pixels.astype(int) - [0xd6, 0xe4, 0xf7]) <= 2, axis=-1))
    assert np.mean(np.all(pixels == 255, axis=-1)) > 0.3


def check_pdf(d, data):
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data)
    assert box and float(box.group(1)) == pytest.approx(d.width, abs=1)


def check_dot(d, data):
    text = data.decode()
    assert text.startswith(f'digraph "{d.name}" {{') and text.rstrip().endswith("}")
    assert text.count(" -> ") == len(d.edges)
    assert len(re.findall(r"^  \".*\" \[label=<", text, re.M)) == len(d.nodes)
    assert "rankdir=TB;" in text
    dot = shutil.which("dot")
    if dot:   # Graphviz, where installed, reads it
        run = subprocess.run([dot, "-Tsvg"], input=data, capture_output=True, timeout=120)
        assert run.returncode == 0 and b"<svg" in run.stdout, run.stderr


JS_HARNESS = r"""
const fs = require('fs');
const html = fs.readFileSync(process.argv[2], 'utf8');
const json = html.match(/<script type="application\/json" id="net-data">([\s\S]*?)<\/script>/)[1];
const code = html.match(/<script>([\s\S]*?)<\/script>/)[1];
function El(tag) { this.tag = tag; this.children = []; this.style = {}; this.attrs = {};
  this.textContent = ''; this.offsetWidth = 200; this.offsetHeight = 100; this.h = {};
  const self = this; this.classList = { add() { self.on = true; }, remove() { self.on = false; } }; }
El.prototype.appendChild = function (c) { this.children.push(c); return c; };
El.prototype.getAttribute = function (k) { return this.attrs[k]; };
El.prototype.setAttribute = function (k, v) { this.attrs[k] = String(v); };
El.prototype.addEventListener = function (ev, fn) { this.h[ev] = fn; };
El.prototype.querySelector = function () { return this.title || null; };
Object.defineProperty(El.prototype, 'parentNode', { get() { return { removeChild() {} }; } });
const count = (html.match(/<g class="node"/g) || []).length;
const nodes = [];
for (let i = 0; i < count; i++) { const g = new El('g'); g.attrs['data-i'] = String(i);
  g.title = new El('title'); nodes.push(g); }
const svg = new El('svg'); svg.attrs.width = '500'; svg.attrs.height = '900';
const ids = { 'net-data': { textContent: json }, 'tip': new El('div'), 'net-svg': svg,
  'zin': new El('b'), 'zout': new El('b'), 'zfit': new El('b'), 'z1': new El('b'),
  'zl': new El('span'), 'graph': { clientWidth: 800 } };
global.innerWidth = 1000; global.innerHeight = 700;
global.document = { getElementById: (id) => ids[id], createElement: (t) => new El(t),
  querySelectorAll: () => nodes };
eval(code);
const tip = ids.tip;
let shown = 0;
for (const g of nodes) {
  g.h.mouseenter({ clientX: 950, clientY: 650 });
  if (tip.style.display !== 'block' || tip.children.length < 2) throw new Error('no tooltip');
  const pre = tip.children.find((c) => c.tag === 'pre');
  if (!pre || !/name: "/.test(pre.textContent)) throw new Error('no definition');
  g.h.mousemove({ clientX: 10, clientY: 10 });
  g.h.mouseleave();
  if (tip.style.display !== 'none') throw new Error('tooltip stays');
  shown++;
}
ids.zin.onclick();
if (svg.attrs.width !== String(500 * 1.25)) throw new Error('zoom: ' + svg.attrs.width);
ids.zfit.onclick(); ids.z1.onclick();
if (svg.attrs.width !== '500') throw new Error('1:1');
console.log('ok ' + shown);
"""


def check_html(d, data, tmp_path):
    text = data.decode()
    assert text.startswith("<!DOCTYPE html>") and '<svg xmlns="http://www.w3.org/2000/svg"' in text
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=", text)
    assert "@import" not in text and "url(" not in text
    blob = re.search(r'<script type="application/json" id="net-data">(.*?)</script>', text, re.S)
    payload = json.loads(blob.group(1))
    assert len(payload["nodes"]) == len(d.nodes)
    for node, info in zip(d.nodes, payload["nodes"]):
        assert [l["name"] for l in info["layers"]] == [l.name for l in node.layers]
        for layer in info["layers"]:
            assert f'name: "{layer["name"]}"' in layer["text"]
    node = shutil.which("node")
    if node:
        path = tmp_path / "page.html"
        path.write_text(text)
        script = tmp_path / "harness.js"
        script.write_text(JS_HARNESS)
        run = subprocess.run([node, str(script), str(path)], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"ok {len(d.nodes)}"


@pytest.mark.parametrize("fmt", draw.FORMATS)
@pytest.mark.parametrize("name", list(NETS))
def test_every_format(name, fmt, tmp_path):
    if fmt in ("png", "pdf"):
        pytest.importorskip("matplotlib")
    d = drawing(name)
    data = draw.render(d, fmt)
    if fmt == "svg":
        check_svg(d, data)
    elif fmt == "png":
        check_png(d, data, tmp_path)
    elif fmt == "pdf":
        check_pdf(d, data)
    elif fmt == "dot":
        check_dot(d, data)
    else:
        check_html(d, data, tmp_path)


def test_resnet_hover_details_carry_shapes_and_costs():
    if "BatchNorm" not in protonet.layer_type_list():
        pytest.skip("BatchNorm is not registered yet")
    d = drawing("resnet50")
    info = d.details[[n.name for n in d.nodes].index("conv1")]
    conv, bn = info["layers"][0], info["layers"][1]
    assert conv["tops"] == [["conv1", [1, 64, 112, 112]]]
    assert conv["params"] == 64 * 3 * 7 * 7 + 64 and conv["macc"] == 64 * 3 * 49 * 112 * 112
    assert conv["param_shapes"][0] == [64, 3, 7, 7]
    assert bn["type"] == "BatchNorm" and "use_global_stats: true" in bn["text"]


# -- the command line and caffe.draw -----------------------------------------------------------
def test_cli_draw(tmp_path, capsys):
    out = tmp_path / "lenet.svg"
    assert main(["draw", "models/lenet/lenet.prototxt", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err and out.read_text().startswith("<?xml")
    html = tmp_path / "net.page"
    assert main(["draw", corpus_path(LENET_TRAIN_TEST), str(html), "--format", "html",
                 "--phase", "train", "--rankdir", "lr", "--display-lrm"]) == 0
    err = capsys.readouterr().err
    assert "note: layer 'mnist' (Data): shapes inferred" in err and "input-shape" in err
    assert "lr 1, 2" in html.read_text()
    assert main(["draw", "models/lenet/lenet.prototxt", str(tmp_path / "x.jpg")]) == 1
    assert "cannot tell the format" in capsys.readouterr().err
    assert main(["draw", str(tmp_path / "missing.prototxt"), str(out)]) == 1


def test_caffe_draw_functions(tmp_path):
    pytest.importorskip("matplotlib")
    param = read_net("models/lenet/lenet.prototxt")
    path = tmp_path / "lenet.png"
    draw.draw_net_to_file(param, str(path), "LR")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert draw.draw_net(param, "TB", ext="dot").startswith(b"digraph")
    label = draw.get_layer_label(param.layer[1], "LR")
    assert label.splitlines()[:2] == ["conv1", "(Convolution)"] and "k 5×5" in label
    with pytest.raises(protonet.ProtonetError, match="cannot draw"):
        draw.draw_net(param, "TB", ext="gif")


def corpus_nets():
    import csv
    root = corpus_dir()
    if root is None:
        return []
    with open(root / "MANIFEST.tsv", newline="") as f:
        return [r["local"].split("/", 1)[1] for r in csv.DictReader(f, delimiter="\t")
                if r["kind"] != "solver"]


@pytest.mark.slow
@pytest.mark.parametrize("rel", corpus_nets())
def test_every_corpus_net_draws(rel):
    """Every net of the corpus (phase ALL: every layer) lays out without overlaps and
    renders as SVG, DOT and HTML."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            param = read_net(corpus_path(rel), lenient=True)
        except protonet.ProtonetError:
            pytest.skip("the lenient reader refuses it")
        d = draw.build_drawing(param, phase="ALL")
    rects = boxes(d)
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not (min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]))
    ET.fromstring(draw.render(d, "svg"))
    assert draw.render(d, "dot").count(b" -> ") == len(d.edges)
    assert b"net-data" in draw.render(d, "html")
