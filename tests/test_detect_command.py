"""protonet detect: SSD and Faster R-CNN boxes from deploy nets, printed and drawn."""
import json

import numpy as np
import pytest
from PIL import Image

import protonet
from protonet.cli import main
from protonet.io.pycaffe_io import load_image, resize_image
from protonet.rcnn_boxes import bbox_transform_inv, clip_boxes
from protonet.tools.detect import RCNN_PIXEL_MEANS, resize_like_cv2

SSD = """name: "tiny_ssd" input: "data" input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "feat" type: "Convolution" bottom: "data" top: "feat"
  convolution_param { num_output: 8 kernel_size: 3 stride: 4 pad: 1
                      weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loc" type: "Convolution" bottom: "feat" top: "loc"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "feat" top: "conf"
  convolution_param { num_output: 6 kernel_size: 1 weight_filler { type: "gaussian" std: 2 } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "conf_rs" type: "Reshape" bottom: "conf_flat" top: "conf_rs"
  reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_sm" type: "Softmax" bottom: "conf_rs" top: "conf_sm" softmax_param { axis: 2 } }
layer { name: "conf_out" type: "Flatten" bottom: "conf_sm" top: "conf_out" }
layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "data" top: "prior"
  prior_box_param { min_size: 6 max_size: 12 clip: true
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_out"
  bottom: "prior" top: "detection_out"
  detection_output_param { num_classes: 3 background_label_id: 0 code_type: CENTER_SIZE
    nms_param { nms_threshold: 0.45 top_k: 100 } keep_top_k: 50 confidence_threshold: 0.01 } }
"""

RCNN = """name: "tiny_frcnn"
input: "data" input_shape { dim: 1 dim: 3 dim: 64 dim: 64 }
input: "im_info" input_shape { dim: 1 dim: 3 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 8 kernel_size: 16 stride: 16
                      weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "rpn_cls_score" type: "Convolution" bottom: "conv" top: "rpn_cls_score"
  convolution_param { num_output: 18 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "conv" top: "rpn_bbox_pred"
  convolution_param { num_output: 36 kernel_size: 1
                      weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "rpn_cls_score_reshape" type: "Reshape" bottom: "rpn_cls_score"
  top: "rpn_cls_score_reshape" reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }
layer { name: "rpn_cls_prob_reshape" type: "Reshape" bottom: "rpn_cls_prob"
  top: "rpn_cls_prob_reshape" reshape_param { shape { dim: 0 dim: 18 dim: -1 dim: 0 } } }
layer { name: "proposal" type: "Python" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred"
  bottom: "im_info" top: "rois"
  python_param { module: "rpn.proposal_layer" layer: "ProposalLayer"
                 param_str: "'feat_stride': 16" } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "conv" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_w: 2 pooled_h: 2 spatial_scale: 0.0625 } }
layer { name: "cls_score" type: "InnerProduct" bottom: "pool" top: "cls_score"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 3 } } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "pool" top: "bbox_pred"
  inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
"""


def write(tmp_path, name, text, seed=3):
    deploy, weights = tmp_path / f"{name}.prototxt", tmp_path / f"{name}.caffemodel"
    deploy.write_text(text)
    protonet.Net(str(deploy), protonet.TEST, seed=seed).save(str(weights))
    return str(deploy), str(weights)


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "street.png"
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_ssd_boxes_are_the_detection_output_rows_in_pixels(tmp_path, image, capsys):
    deploy, weights = write(tmp_path, "ssd", SSD)
    labels = tmp_path / "labelmap.prototxt"
    labels.write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                      'item { name: "n1" label: 1 display_name: "cat" }\n'
                      'item { name: "n2" label: 2 display_name: "dog" }\n')
    picture = tmp_path / "boxes.png"
    assert main(["detect", deploy, weights, image, "--threshold", "0.2", "--json",
                 "--mean-values", "104,117,123", "--labels", str(labels),
                 "-o", str(picture)]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    # what the net says for the preprocessed image
    net = protonet.Net(deploy, protonet.TEST, weights=weights)
    x = resize_image(load_image(image), (16, 16)).transpose(2, 0, 1)[::-1] * 255
    x = x - np.array([104, 117, 123.0])[:, None, None]
    rows = net.forward(data=x[None])["detection_out"].reshape(-1, 7)
    rows = rows[rows[:, 2] >= 0.2]
    assert len(rows) == len(result["detections"]) > 0
    for row, d in zip(rows, result["detections"]):
        assert d["label"] == int(row[1]) and d["name"] == ["background", "cat", "dog"][d["label"]]
        assert d["score"] == pytest.approx(float(row[2]), rel=1e-5)
        expected = np.clip(row[3:7], 0, 1) * [32, 24, 32, 24]
        np.testing.assert_allclose(d["box"], expected, rtol=1e-4, atol=1e-4)
    drawn = np.asarray(Image.open(picture))
    assert drawn.shape == (24, 32, 3)
    assert np.any(drawn != np.asarray(Image.open(image)))


def test_faster_rcnn_boxes_follow_im_detect(tmp_path, image, capsys):
    deploy, weights = write(tmp_path, "frcnn", RCNN)
    assert main(["detect", deploy, weights, image, "--threshold", "0.3", "--json",
                 "--short-side", "64", "--max-side", "100"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    # py-faster-rcnn's im_detect written out: scale 64/24 (long side 85 <= 100)
    img = load_image(image)
    scale = 64 / 24
    bgr = img[:, :, ::-1] * 255.0 - np.array(RCNN_PIXEL_MEANS, np.float32)
    data = resize_like_cv2(bgr.astype(np.float32), 64, 85).transpose(2, 0, 1)[None]
    net = protonet.Net(deploy, protonet.TEST, weights=weights)
    out = net.forward(blobs=["rois", "cls_prob", "bbox_pred"], data=data,
                      im_info=np.array([[64, 85, scale]], np.float32))
    boxes = clip_boxes(bbox_transform_inv(out["rois"][:, 1:] / np.float32(scale),
                                          out["bbox_pred"]), 24, 32)
    expected = []
    for label in (1, 2):
        p = out["cls_prob"][:, label]
        keep = [i for i in np.argsort(-p, kind="stable") if p[i] >= 0.3]
        kept = []
        for i in keep:      # greedy NMS at 0.3, inclusive-pixel IoU
            b = boxes[i, 4 * label:4 * label + 4]
            def iou(a, c):
                w = max(0.0, min(a[2], c[2]) - max(a[0], c[0]) + 1)
                h = max(0.0, min(a[3], c[3]) - max(a[1], c[1]) + 1)
                area = lambda z: (z[2] - z[0] + 1) * (z[3] - z[1] + 1)
                return w * h / (area(a) + area(c) - w * h)
            if all(iou(b, boxes[j, 4 * label:4 * label + 4]) <= 0.3 for j in kept):
                kept.append(i)
        expected += [(label, float(p[i]), boxes[i, 4 * label:4 * label + 4]) for i in kept]
    got = result["detections"]
    assert len(got) == len(expected) > 0
    for d, (label, score, box) in zip(got, expected):
        assert d["label"] == label and d["score"] == pytest.approx(score, rel=1e-6)
        np.testing.assert_allclose(d["box"], box, rtol=1e-5)


def test_the_rcnn_resize_is_opencvs():
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(1).uniform(-100, 150, (24, 32, 3)).astype(np.float32)
    for size in ((64, 85), (10, 13), (24, 32)):
        np.testing.assert_allclose(resize_like_cv2(img, *size),
                                   cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR),
                                   rtol=1e-5, atol=1e-3)


def test_detect_prints_a_line_per_box_and_draws_into_a_directory(tmp_path, image, capsys):
    deploy, weights = write(tmp_path, "ssd", SSD)
    names = tmp_path / "names.txt"
    names.write_text("background\ncat\ndog\n")
    out_dir = tmp_path / "drawn"
    out_dir.mkdir()
    assert main(["detect", deploy, weights, image, image, "--threshold", "0.2",
                 "--labels", str(names), "-o", str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{image}: ") and "detection(s)" in lines[0]
    assert any(" cat " in line or " dog " in line for line in lines[1:])
    assert (out_dir / "street_boxes.png").exists()


@pytest.mark.parametrize("case, message", [
    ("classifier", "neither a DetectionOutput layer"),
    ("several", "give a directory"),
])
def test_detect_errors_are_one_line(tmp_path, image, capsys, case, message):
    if case == "classifier":
        deploy, weights = write(tmp_path, "cls", 'input: "data" input_shape { dim: 1 dim: 3 '
                                'dim: 4 dim: 4 }\nlayer { name: "ip" type: "InnerProduct" '
                                'bottom: "data" top: "ip" inner_product_param { num_output: 2 } }')
        args = [image]
    else:
        deploy, weights = write(tmp_path, "ssd", SSD)
        args = [image, image, "-o", str(tmp_path / "one.png")]
    assert main(["detect", deploy, weights, *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
