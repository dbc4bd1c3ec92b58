"""ONNX export of the Caffe forks' layers (protonet/export/forks.py): each exporter against
protonet's own layer in onnxruntime within 1e-5 on random inputs, over several parameter
combinations (and a dynamic batch); the refusals and their reasons; ``outputs=`` /
``--outputs``, which exports a net up to a refused layer's inputs."""
import os

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.cli import main
from protonet.io import parse_net

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from protonet.export import export, export_net  # noqa: E402
from protonet.export.check import format_rows, other_batch, run_protonet  # noqa: E402

TOL = 1e-5


def shape_text(shape):
    return "shape { " + " ".join(f"dim: {d}" for d in shape) + " }"


def inputs(**shapes):
    return "\n".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" '
                     f"input_param {{ {shape_text(s)} }} }}" for n, s in shapes.items())


def layer(body, bottoms=("data",), tops=("y",), name="layer"):
    return (f'layer {{ name: "{name}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops) + f" {body} }}")


def build(text, seed=0):
    net = protonet.Net(parse_net(text, "<test>"), protonet.TEST, seed=seed)
    rng = np.random.default_rng(seed)
    for lay in net.layers:
        for blob in lay.blobs:
            blob.data[...] = rng.uniform(0.5, 2.0, blob.shape)
    return net


def feeds_for(exported, rng, batch=None, make=None):
    feeds = {}
    for name, shape in exported.inputs:
        if batch is not None:
            shape = (batch,) + tuple(shape[1:])
        value = make(name, shape, rng) if make else None
        feeds[name] = (rng.standard_normal(shape) * 3).astype(np.float32) if value is None \
            else np.asarray(value, np.float32)
    return feeds


def roundtrip(tmp_path, text, make=None, dynamic=False, outputs=None, opset=None, seed=0):
    """Export ``text``'s net, run it in protonet and onnxruntime on the same random inputs
    (``make(name, shape, rng)`` may give an input's value) and compare every output within
    ``TOL`` of its scale; with ``dynamic`` a second batch size too. Returns the model."""
    net = build(text)
    exported = export_net(net, opset=opset, dynamic_batch=dynamic, outputs=outputs)
    data = exported.model.SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [n for n, _ in exported.outputs]
    rng = np.random.default_rng(seed)
    batches = [None] + ([other_batch(exported.inputs)] if dynamic else [])
    for batch in batches:
        feeds = feeds_for(exported, rng, batch, make)
        ours = run_protonet(net, exported, feeds)
        theirs = dict(zip(names, session.run(names, feeds)))
        for name in names:
            a, b = ours[name], theirs[name]
            assert a.shape == b.shape, (name, a.shape, b.shape)
            scale = max(1.0, float(np.abs(a).max()) if a.size else 0.0)
            diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
            assert diff <= TOL * scale, f"{name} (batch {batch}): {diff:.3g} of scale {scale:.3g}"
    return exported.model


def ops(model):
    return [n.op_type for n in model.graph.node]


# -- Normalize --------------------------------------------------------------------------------
@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shape,eps", [((2, 5, 4, 3), 1e-10), ((3, 4), 0.5), ((2, 3, 7), 1e-3)])
def test_normalize(tmp_path, across, shared, shape, eps):
    body = (f'type: "Normalize" norm_param {{ across_spatial: {str(across).lower()} '
            f"channel_shared: {str(shared).lower()} eps: {eps} }}")
    roundtrip(tmp_path, inputs(data=shape) + layer(body), dynamic=True)


def test_normalize_eps_is_inside_the_square_root(tmp_path):
    """On all-zero input the norm is sqrt(eps): a large eps shows where it goes."""
    text = inputs(data=(1, 2, 2, 2)) + layer('type: "Normalize" norm_param { '
                                            "across_spatial: false eps: 4 }")
    model = roundtrip(tmp_path, text, make=lambda n, s, r: np.full(s, 3.0))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"data": np.full((1, 2, 2, 2), 3.0, np.float32)})[0]
    scale = build(text).layers[-1].blobs[0].data.reshape(())
    np.testing.assert_allclose(y, 3.0 / np.sqrt(9 + 9 + 4) * scale, rtol=1e-6)


# -- Permute ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,order", [((2, 3, 4, 5), [0, 2, 3, 1]), ((2, 3, 4, 5), [0, 3, 1, 2]),
                                         ((2, 3, 4, 5), [0, 2]), ((3, 4), [1, 0]),
                                         ((2, 3, 4, 5, 6), [0, 4, 2]), ((2, 3, 4), [])])
def test_permute(tmp_path, shape, order):
    body = 'type: "Permute" permute_param { ' + " ".join(f"order: {a}" for a in order) + " }"
    model = roundtrip(tmp_path, inputs(data=shape) + layer(body), dynamic=order[:1] == [0])
    assert ops(model) == ["Transpose"]


# -- PriorBox ---------------------------------------------------------------------------------
PRIORS = {
    "ssd": "min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: false "
           "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5",
    "mobilenet_ssd": "min_size: 60 max_size: 105 aspect_ratio: 2 aspect_ratio: 3 flip: true "
                     "clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
                     "offset: 0.5",
    "clip_one_variance": "min_size: 20 aspect_ratio: 2 clip: true variance: 0.1",
    "opencv_sizes": "width: 10 width: 25 height: 20 height: 12 offset_w: 0.2 offset_w: 0.7 "
                    "offset_h: 0.3 offset_h: 0.6 variance: 0.1 step_h: 6 step_w: 5",
}


@pytest.mark.parametrize("case", sorted(PRIORS))
def test_prior_box_is_a_constant_of_the_layer(tmp_path, case):
    text = (inputs(data=(2, 3, 40, 48), feat=(2, 4, 5, 6))
            + layer(f'type: "PriorBox" prior_box_param {{ {PRIORS[case]} }}',
                    bottoms=("feat", "data")))
    model = roundtrip(tmp_path, text, dynamic=True)  # the batch changes nothing
    assert not ops(model) or ops(model) == ["Identity"]
    assert len(model.graph.initializer) == 1 and not model.graph.input


def test_prior_box_with_img_size_and_no_image_bottom(tmp_path):
    text = (inputs(feat=(1, 4, 3, 3))
            + layer('type: "PriorBox" prior_box_param { min_size: 10 img_size: 30 }',
                    bottoms=("feat",)))
    roundtrip(tmp_path, text)


def test_prior_box_concat_with_predictions(tmp_path):
    """SSD's head: priors of two maps concatenated beside a conv's output."""
    text = (inputs(data=(1, 3, 32, 32))
            + layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                    "stride: 4 pad: 1 }", tops=("f1",), name="c1")
            + layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                    "stride: 2 pad: 1 }", bottoms=("f1",), tops=("f2",), name="c2")
            + layer('type: "PriorBox" prior_box_param { min_size: 8 aspect_ratio: 2 flip: true '
                    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }",
                    bottoms=("f1", "data"), tops=("p1",), name="pb1")
            + layer('type: "PriorBox" prior_box_param { min_size: 16 max_size: 24 }',
                    bottoms=("f2", "data"), tops=("p2",), name="pb2")
            + layer('type: "Concat" concat_param { axis: 2 }', bottoms=("p1", "p2"),
                    tops=("priors",), name="cat"))
    roundtrip(tmp_path, text, outputs=["priors", "f2"], dynamic=True)


# -- Interp -----------------------------------------------------------------------------------
INTERP = {
    "zoom": ((2, 3, 5, 7), "zoom_factor: 3"),
    "shrink": ((1, 2, 9, 8), "shrink_factor: 2"),
    "shrink_zoom": ((1, 2, 9, 8), "shrink_factor: 2 zoom_factor: 3"),
    "size": ((2, 3, 5, 6), "height: 11 width: 4"),
    "size_down_to_one": ((1, 2, 5, 6), "height: 1 width: 3"),
    "from_one": ((1, 2, 1, 4), "height: 5 width: 9"),
    "pads": ((2, 3, 9, 10), "zoom_factor: 2 pad_beg: -1 pad_end: -2"),
    "pads_same_size": ((1, 2, 8, 8), "height: 6 width: 6 pad_beg: -1 pad_end: -1"),
    "same_size": ((1, 2, 4, 5), "height: 4 width: 5"),
}


@pytest.mark.parametrize("case", sorted(INTERP))
def test_interp(tmp_path, case):
    shape, params = INTERP[case]
    text = inputs(data=shape) + layer(f'type: "Interp" interp_param {{ {params} }}')
    roundtrip(tmp_path, text, dynamic=True)
    model = roundtrip(tmp_path, text)
    # the model's declared (and onnx-inferred) output size is the layer's
    net = build(text)
    out = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output[0]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == list(net.blobs["y"].shape)


@pytest.mark.parametrize("opset,dynamic", [(13, False), (17, True), (None, True)])
def test_interp_to_a_second_bottoms_size(tmp_path, opset, dynamic):
    text = inputs(data=(2, 3, 6, 5), ref=(2, 1, 13, 17)) + layer('type: "Interp"',
                                                                  bottoms=("data", "ref"))
    roundtrip(tmp_path, text, opset=opset, dynamic=dynamic)


# -- ShuffleChannel, ReLU6, Axpy ----------------------------------------------------------------
@pytest.mark.parametrize("shape,group", [((2, 6, 3, 4), 3), ((2, 6, 3, 4), 2), ((2, 8, 5), 4),
                                         ((3, 6), 2), ((1, 4, 2, 2), 1)])
def test_shuffle_channel(tmp_path, shape, group):
    body = f'type: "ShuffleChannel" shuffle_channel_param {{ group: {group} }}'
    roundtrip(tmp_path, inputs(data=shape) + layer(body), dynamic=True)


@pytest.mark.parametrize("slope", [0, 0.1, 2.5])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu6(tmp_path, slope, in_place):
    body = f'type: "ReLU6" relu_param {{ negative_slope: {slope} }}'
    text = (inputs(data=(2, 3, 4, 5)) + layer('type: "Power"', tops=("x",), name="copy")
            + layer(body, bottoms=("x",), tops=("x",) if in_place else ("y",)))
    model = roundtrip(tmp_path, text, make=lambda n, s, r: r.uniform(-9, 12, s), dynamic=True)
    assert ("Clip" in ops(model)) and (("Min" in ops(model)) == bool(slope))


@pytest.mark.parametrize("a_shape", [(2, 3), (2, 3, 1, 1), (2, 3, 1)])
def test_axpy(tmp_path, a_shape):
    text = (inputs(a=a_shape, x=(2, 3, 4, 5), y=(2, 3, 4, 5))
            + layer('type: "Axpy"', bottoms=("a", "x", "y"), tops=("f",)))
    roundtrip(tmp_path, text, dynamic=True)


# -- Upsample (SegNet) ------------------------------------------------------------------------
POOL = ('type: "Pooling" pooling_param {{ pool: MAX kernel_size: {k} stride: {s} }}')


@pytest.mark.parametrize("shape,k,s,upsample", [
    ((2, 3, 8, 6), 2, 2, "scale: 2"),
    ((2, 3, 7, 9), 2, 2, "scale: 2 pad_out_h: 1 pad_out_w: 1"),
    ((1, 2, 9, 9), 3, 2, "upsample_h: 9 upsample_w: 9"),   # overlapping windows: clashes
    ((2, 2, 6, 9), 3, 3, "scale_h: 3 scale_w: 3"),
])
def test_upsample_from_a_pooling_mask(tmp_path, shape, k, s, upsample):
    text = (inputs(data=shape) + layer(POOL.format(k=k, s=s), tops=("pool", "mask"), name="pool")
            + layer(f'type: "Upsample" upsample_param {{ {upsample} }}',
                    bottoms=("pool", "mask"), tops=("up",), name="up"))
    model = roundtrip(tmp_path, text, dynamic=True)
    assert "MaxUnpool" in ops(model)


def test_upsample_of_a_given_mask_later_position_wins(tmp_path):
    text = (inputs(x=(2, 3, 2, 3), mask=(2, 3, 2, 3))
            + layer('type: "Upsample" upsample_param { upsample_h: 4 upsample_w: 5 }',
                    bottoms=("x", "mask"), tops=("up",)))

    def make(name, shape, rng):
        if name == "mask":  # positions in each 4x5 output plane, some repeated
            return rng.integers(0, 20, shape)
    roundtrip(tmp_path, text, make=make, dynamic=True)
    # the export's own check draws valid positions for a mask input
    report = export(build(text), str(tmp_path / "c.onnx"), check=True)
    assert report.ok, format_rows(report.rows, report.tolerance)


# -- ROIPooling -------------------------------------------------------------------------------
def regions(rng, count, images, image_hw, halves=False):
    h, w = image_hw
    out = np.zeros((count, 5))
    out[:, 0] = rng.integers(0, images, count)
    out[:, 1:] = rng.uniform(-0.3, 1.3, (count, 4)) * [w, h, w, h]   # some reversed, outside
    if halves:
        out[:, 1:] = np.round(out[:, 1:] * 2) / 2
    return out


@pytest.mark.parametrize("pooled,scale,halves", [((2, 2), 1.0, True), ((3, 2), 0.0625, False),
                                                 ((7, 7), 0.5, True), ((1, 4), 1 / 3, False)])
@pytest.mark.parametrize("roi_shape", [(40, 5), (40, 5, 1, 1)])
def test_roi_pooling_matches_max_roi_pool(tmp_path, pooled, scale, halves, roi_shape):
    fh, fw = 9, 11
    text = (inputs(data=(2, 3, fh, fw), rois=roi_shape)
            + layer(f'type: "ROIPooling" roi_pooling_param {{ pooled_h: {pooled[0]} '
                    f"pooled_w: {pooled[1]} spatial_scale: {scale} }}",
                    bottoms=("data", "rois")))

    def make(name, shape, rng):
        if name == "rois":
            return regions(rng, shape[0], 2, (fh / scale, fw / scale), halves).reshape(shape)
        return -np.abs(rng.standard_normal(shape)) if rng.random() < 0.5 else None
    model = roundtrip(tmp_path, text, make=make)
    assert "MaxRoiPool" in ops(model) and model.opset_import[0].version <= 21
    # the export's own check draws valid regions for a regions input
    report = export(build(text), str(tmp_path / "c.onnx"), check=True)
    assert report.ok, format_rows(report.rows, report.tolerance)


# -- Dropout scale_train, Pooling ceil_mode, SmoothL1Loss ------------------------------------------
@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_without_scale_train_multiplies_by_the_keep_ratio(tmp_path, in_place):
    text = (inputs(data=(2, 3, 4))
            + layer('type: "ReLU"', tops=("r",), name="relu")
            + layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false }',
                    bottoms=("r",), tops=("r" if in_place else "y",), name="drop"))
    model = roundtrip(tmp_path, text, dynamic=True)
    assert "Mul" in ops(model)
    assert [o.name for o in model.graph.output] == ["r" if in_place else "y"]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("size,k,s,p", [(8, 3, 2, 0), (9, 2, 2, 1), (7, 3, 3, 1), (10, 3, 2, 1)])
def test_pooling_ceil_mode_false(tmp_path, pool, size, k, s, p):
    text = inputs(data=(2, 3, size, size + 1)) + layer(
        f'type: "Pooling" pooling_param {{ pool: {pool} kernel_size: {k} stride: {s} pad: {p} '
        "ceil_mode: false }")
    net = build(text)
    assert net.blobs["y"].shape[2] == (size + 2 * p - k) // s + 1
    roundtrip(tmp_path, text, dynamic=True)


def test_smooth_l1_loss_is_dropped_as_training_only(tmp_path):
    text = (inputs(data=(2, 4), target=(2, 4))
            + layer('type: "ReLU"', tops=("r",), name="relu")
            + layer('type: "SmoothL1Loss"', bottoms=("r", "target"), tops=("loss",), name="l1"))
    report = export(build(text), str(tmp_path / "m.onnx"), check=True)
    assert report.ok and [n for n, _ in report.outputs] == ["r"]
    assert "dropped training-only layer 'l1' (SmoothL1Loss)" in report.notes


# -- refusals ---------------------------------------------------------------------------------
SSD_HEAD = inputs(data=(1, 3, 16, 16)) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 stride: 4 pad: 1 } }
layer { name: "norm" type: "Normalize" bottom: "conv" top: "norm"
        norm_param { across_spatial: false channel_shared: false } }
layer { name: "loc" type: "Convolution" bottom: "norm" top: "loc"
        convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "mbox_loc" type: "Flatten" bottom: "loc_perm" top: "mbox_loc" }
layer { name: "conf" type: "Convolution" bottom: "norm" top: "conf"
        convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "conf_reshape" type: "Reshape" bottom: "conf_flat" top: "conf_reshape"
        reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax"
        softmax_param { axis: 2 } }
layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "conf_softmax"
        top: "mbox_conf_flatten" }
layer { name: "mbox_priorbox" type: "PriorBox" bottom: "conv" bottom: "data"
        top: "mbox_priorbox" prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2
        flip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc"
        bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"
        detection_output_param { num_classes: 3 share_location: true background_label_id: 0
        nms_param { nms_threshold: 0.45 top_k: 20 } keep_top_k: 10
        confidence_threshold: 0.01 } }
"""
SSD_OUTPUTS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


def test_detection_output_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ProtonetError) as err:
        export(build(SSD_HEAD), str(path))
    message = str(err.value)
    assert "layer 'detection_out' (DetectionOutput): ONNX's NonMaxSuppression" in message
    assert "eta" in message and "keep_top_k" in message
    assert "outputs=mbox_loc,mbox_conf_flatten,mbox_priorbox" in message
    assert not path.exists()


def test_ssd_head_exports_up_to_the_detection_outputs_inputs(tmp_path):
    model = roundtrip(tmp_path, SSD_HEAD, outputs=SSD_OUTPUTS, dynamic=True)
    assert [o.name for o in model.graph.output] == SSD_OUTPUTS
    report = export(build(SSD_HEAD), str(tmp_path / "c.onnx"), outputs=SSD_OUTPUTS, check=True)
    assert report.ok, format_rows(report.rows, report.tolerance)
    assert any("left out: 'detection_out' (DetectionOutput)" in n for n in report.notes)


def test_outputs_must_name_blobs_exported_layers_write(tmp_path):
    net = build(SSD_HEAD)
    with pytest.raises(ProtonetError, match="the net has no blob 'mbox_lc'.*'mbox_loc'"):
        export(net, str(tmp_path / "m.onnx"), outputs=["mbox_lc"])
    text = inputs(data=(2, 4), target=(2, 4)) + layer(
        'type: "EuclideanLoss"', bottoms=("data", "target"), tops=("loss",))
    with pytest.raises(ProtonetError, match="blob 'loss' is written only by dropped training"):
        export(build(text), str(tmp_path / "m.onnx"), outputs=["loss"])


def test_outputs_take_the_last_value_of_a_blob_written_in_place(tmp_path):
    text = (inputs(data=(2, 3, 5, 5))
            + layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }',
                    tops=("conv",), name="conv")
            + layer('type: "ReLU6"', bottoms=("conv",), tops=("conv",), name="relu")
            + layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }',
                    bottoms=("conv",), tops=("pool",), name="pool"))
    model = roundtrip(tmp_path, text, outputs=["conv"],
                      make=lambda n, s, r: r.standard_normal(s) * 20)
    assert ops(model) == ["Conv", "Clip"]


PSROI = (inputs(data=(1, 8, 6, 6), rois=(3, 5))
         + layer('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 '
                 "group_size: 2 }", bottoms=("data", "rois"), name="psroi"))
PROPOSAL = (inputs(prob=(1, 6, 4, 4), deltas=(1, 12, 4, 4), im_info=(1, 3))
            + layer('type: "Proposal" proposal_param { feat_stride: 16 ratio: 1 scale: 4 '
                    "scale: 8 scale: 16 }", bottoms=("prob", "deltas", "im_info"),
                    tops=("rois",), name="proposal"))
PY_PROPOSAL = (inputs(prob=(1, 18, 4, 4), deltas=(1, 36, 4, 4), im_info=(1, 3))
               + layer("type: 'Python' python_param { module: 'rpn.proposal_layer' "
                       "layer: 'ProposalLayer' param_str: \"'feat_stride': 16\" }",
                       bottoms=("prob", "deltas", "im_info"), tops=("rois",),
                       name="proposal"))


@pytest.mark.parametrize("text,start,words", [
    (PSROI, "layer 'psroi' (PSROIPooling): ONNX has no position-sensitive ROI pooling",
     ["RoiAlign", "outputs=data"]),
    (PROPOSAL, "layer 'proposal' (Proposal): ONNX's NonMaxSuppression", ["+1", "min_size",
                                                                         "outputs=prob,deltas"]),
    (PY_PROPOSAL, "layer 'proposal' (Proposal): ONNX's NonMaxSuppression", ["+1"]),
])
def test_refusals_name_the_layer_and_the_reason(tmp_path, text, start, words):
    path = tmp_path / "m.onnx"
    with pytest.raises(ProtonetError) as err:
        export(build(text), str(path))
    assert start in str(err.value)
    for word in words:
        assert word in str(err.value)
    assert not path.exists()


# -- command line -----------------------------------------------------------------------------
def test_cli_outputs(tmp_path, capsys):
    net_path, weights, out = tmp_path / "ssd.prototxt", tmp_path / "w.caffemodel", \
        tmp_path / "ssd.onnx"
    net_path.write_text(SSD_HEAD)
    build(SSD_HEAD).save(str(weights))
    assert main(["export", str(net_path), str(weights), str(out)]) == 1
    assert "layer 'detection_out' (DetectionOutput)" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", str(net_path), str(weights), str(out), "--outputs",
                 "mbox_loc,mbox_conf_flatten", "--outputs", "mbox_priorbox"]) == 0
    captured = capsys.readouterr()
    assert ("outputs: mbox_loc 1x256, mbox_conf_flatten 1x192, mbox_priorbox 1x2x256"
            in captured.out), captured.out
    assert "every output within 0.0001 of its scale (3 compared)" in captured.out
    assert "left out: 'detection_out' (DetectionOutput)" in captured.err
    assert os.path.exists(out)


def test_cli_outputs_before_a_python_proposal_layer(tmp_path, capsys):
    """py-faster-rcnn's proposal layer runs natively: without --outputs it is refused by
    its exporter (with the reason), with them the net exports up to its inputs."""
    text = (inputs(data=(1, 3, 16, 16), im_info=(1, 3))
            + layer('type: "Convolution" convolution_param { num_output: 18 kernel_size: 3 '
                    "stride: 4 pad: 1 }", tops=("prob",), name="cls")
            + layer('type: "Convolution" convolution_param { num_output: 36 kernel_size: 3 '
                    "stride: 4 pad: 1 }", tops=("deltas",), name="bbox")
            + layer("type: 'Python' python_param { module: 'rpn.proposal_layer' "
                    "layer: 'ProposalLayer' param_str: \"'feat_stride': 4\" }",
                    bottoms=("prob", "deltas", "im_info"), tops=("rois",), name="proposal"))
    net_path, weights, out = tmp_path / "rpn.prototxt", tmp_path / "w.caffemodel", \
        tmp_path / "rpn.onnx"
    net_path.write_text(text)
    build(text).save(str(weights))
    assert main(["export", str(net_path), str(weights), str(out)]) == 1
    assert "layer 'proposal' (Proposal): ONNX's NonMaxSuppression" in capsys.readouterr().err
    assert main(["export", str(net_path), str(weights), str(out),
                 "--outputs", "prob,deltas"]) == 0
    assert "(2 compared)" in capsys.readouterr().out


@pytest.mark.parametrize("opset", [13, 17])
def test_older_opsets(tmp_path, opset):
    """Every fork exporter in one net, at the oldest opsets written (axes as attributes,
    Resize without ``axes``), with a dynamic batch."""
    text = (inputs(data=(2, 4, 6, 6))
            + layer('type: "Normalize" norm_param { across_spatial: false }', tops=("n",),
                    name="norm")
            + layer('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', bottoms=("n",),
                    tops=("s",), name="shuffle")
            + layer('type: "ReLU6" relu_param { negative_slope: 0.2 }', bottoms=("s",),
                    tops=("r",), name="relu6")
            + layer('type: "Interp" interp_param { zoom_factor: 2 pad_beg: -1 pad_end: 0 }',
                    bottoms=("r",), tops=("i",), name="interp")
            + layer(POOL.format(k=2, s=2), bottoms=("i",), tops=("p", "m"), name="pool")
            + layer('type: "Upsample" upsample_param { scale: 2 }', bottoms=("p", "m"),
                    tops=("u",), name="up")
            + layer('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }',
                    bottoms=("u",), tops=("t",), name="permute"))
    model = roundtrip(tmp_path, text, opset=opset, dynamic=True)
    assert model.opset_import[0].version == opset
