"""Object detection with a deploy net: SSD (a ``DetectionOutput`` layer) or Faster R-CNN
(``rois``, ``cls_prob`` and ``bbox_pred`` with an ``im_info`` input), as the forks' demos
run them.

* SSD: the image is resized to the net's input, channel-swapped, raw-scaled,
  mean-subtracted and scaled; the ``DetectionOutput`` rows ``[image, label, score, xmin,
  ymin, xmax, ymax]`` (coordinates relative to the image) are scaled to its pixels.
* Faster R-CNN (py-faster-rcnn's ``im_detect``): the image, BGR in 0..255 less the
  pixel means, is scaled so its short side is ``short_side`` (the long one at most
  ``max_side``), ``im_info = [height, width, scale]``; each ROI is moved by its class's
  ``bbox_pred`` deltas, mapped back to the original image and clipped, and each class
  keeps its boxes above the threshold through NMS at ``nms`` (0.3 in the demo).

A detection is ``{"label": int, "name": str, "score": float, "box": [x1, y1, x2, y2]}`` in
the original image's pixels.
"""
from __future__ import annotations

import numpy as np

from ..errors import ProtonetError

#: py-faster-rcnn's cfg.PIXEL_MEANS (BGR) and test scales
RCNN_PIXEL_MEANS = (102.9801, 115.9465, 122.7717)


def detection_kind(net) -> str:
    """``"ssd"`` or ``"rcnn"``, from the net's layers and inputs."""
    if any(layer.type == "DetectionOutput" for layer in net.layers):
        return "ssd"
    if "im_info" in net.blobs and {"rois", "cls_prob", "bbox_pred"} <= set(net.blobs):
        return "rcnn"
    raise ProtonetError("the net has neither a DetectionOutput layer (SSD) nor an im_info "
                        "input with rois, cls_prob and bbox_pred blobs (Faster R-CNN): "
                        "it is not a detection net protonet knows how to read")


def _preprocess(image: np.ndarray, mean, raw_scale: float, input_scale: float,
                channel_swap) -> np.ndarray:
    """H x W x K floats in [0, 1] -> K x H x W net input."""
    x = image.transpose(2, 0, 1)
    if channel_swap is not None:
        x = x[list(channel_swap)]
    x = x * raw_scale
    if mean is not None:
        x = x - np.asarray(mean, np.float32).reshape(-1, 1, 1)
    return (x * input_scale).astype(np.float32)


def detect_ssd(net, image: np.ndarray, threshold: float, mean=None, raw_scale=255.0,
               input_scale=1.0, channel_swap=(2, 1, 0)) -> list[dict]:
    """SSD detections of one H x W x K image (floats in [0, 1]) scoring >= ``threshold``."""
    from ..io.pycaffe_io import resize_image
    in_ = net.inputs[0]
    shape = net.blobs[in_].shape
    resized = resize_image(image, shape[2:4])
    x = _preprocess(resized, mean, raw_scale, input_scale, channel_swap)
    batch = np.zeros((1,) + x.shape, np.float32)
    batch[0] = x
    out_name = next(net.top_names[name][0] for name, layer in zip(net.layer_names, net.layers)
                    if layer.type == "DetectionOutput")
    rows = net.forward(blobs=[out_name], **{in_: batch})[out_name].reshape(-1, 7)
    h, w = image.shape[:2]
    found = []
    for _, label, score, x1, y1, x2, y2 in rows:
        if label < 0 or score < threshold:
            continue
        box = [float(np.clip(x1, 0, 1) * w), float(np.clip(y1, 0, 1) * h),
               float(np.clip(x2, 0, 1) * w), float(np.clip(y2, 0, 1) * h)]
        found.append({"label": int(label), "score": float(score), "box": box})
    return found


def _linear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis (pixel centres aligned, edges clamped):
    the lower index, the upper one and the upper one's weight, per output index."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    low = np.floor(pos).astype(np.int64)
    frac = pos - low
    frac[low < 0] = 0
    low = np.clip(low, 0, n_in - 1)
    frac[low >= n_in - 1] = 0
    return low, np.minimum(low + 1, n_in - 1), frac.astype(np.float32)


def resize_like_cv2(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An H x W x C float image resized as ``cv2.resize(..., INTER_LINEAR)`` does for floats
    (py-faster-rcnn's ``prep_im_for_blob``)."""
    y0, y1, fy = _linear_axis(image.shape[0], height)
    x0, x1, fx = _linear_axis(image.shape[1], width)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def detect_rcnn(net, image: np.ndarray, threshold: float, nms_threshold: float = 0.3,
                short_side: int = 600, max_side: int = 1000, mean=RCNN_PIXEL_MEANS) \
        -> list[dict]:
    """Faster R-CNN detections of one H x W x 3 RGB image (floats in [0, 1])."""
    from ..rcnn_boxes import bbox_transform_inv, clip_boxes, nms
    h, w = image.shape[:2]
    scale = float(short_side) / min(h, w)
    if round(scale * max(h, w)) > max_side:
        scale = float(max_side) / max(h, w)
    size = (int(round(h * scale)), int(round(w * scale)))
    bgr = image[:, :, ::-1] * 255.0 - np.asarray(mean, np.float32)
    scaled = resize_like_cv2(bgr.astype(np.float32), size[0], size[1])
    data = scaled.transpose(2, 0, 1)[None].astype(np.float32)
    im_info = np.array([[size[0], size[1], scale]], np.float32)
    out = net.forward(blobs=["rois", "cls_prob", "bbox_pred"], data=data, im_info=im_info)
    rois, probs, deltas = out["rois"], out["cls_prob"], out["bbox_pred"]
    probs = probs.reshape(len(rois), -1)
    boxes = bbox_transform_inv(rois[:, 1:5].astype(np.float32) / scale,
                               deltas.reshape(len(rois), -1))
    clip_boxes(boxes, h, w)
    found = []
    for label in range(1, probs.shape[1]):
        keep = np.flatnonzero(probs[:, label] >= threshold)
        if not keep.size:
            continue
        order = keep[np.argsort(-probs[keep, label], kind="stable")]
        class_boxes = boxes[order, 4 * label:4 * label + 4]
        for k in nms(class_boxes, nms_threshold):
            found.append({"label": label, "score": float(probs[order[k], label]),
                          "box": [float(v) for v in class_boxes[k]]})
    return found


def read_label_names(path: str) -> dict[int, str]:
    """Class names by label: a Caffe ``LabelMap`` prototxt (SSD's labelmap_voc.prototxt:
    ``item { name label display_name }``) or a plain list, one name per line, line ``i``
    naming label ``i``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ProtonetError(f"{path}: cannot read the labels ({e.strerror})") from None
    if "item" in text and "{" in text:
        from ..io.prototxt import parse_text
        from ..proto import caffe_pb2
        label_map = parse_text(text, caffe_pb2.LabelMap(), path)
        return {item.label: item.display_name or item.name for item in label_map.item}
    return {i: line.strip() for i, line in enumerate(text.splitlines()) if line.strip()}


def draw_detections(image: np.ndarray, detections: list[dict], path: str) -> None:
    """Save ``image`` (H x W x 3 floats in [0, 1]) with each detection's box, name and
    score drawn on it (Pillow)."""
    from PIL import Image, ImageDraw
    picture = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    if picture.mode != "RGB":
        picture = picture.convert("RGB")
    pen = ImageDraw.Draw(picture)
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)]
    for d in detections:
        color = palette[d["label"] % len(palette)]
        x1, y1, x2, y2 = d["box"]
        pen.rectangle([x1, y1, x2, y2], outline=color, width=2)
        caption = f"{d.get('name', d['label'])} {d['score']:.2f}"
        left, top, right, bottom = pen.textbbox((x1, y1), caption)
        pen.rectangle([x1, y1 - (bottom - top) - 2, x1 + (right - left) + 4, y1], fill=color)
        pen.text((x1 + 2, y1 - (bottom - top) - 2), caption, fill=(255, 255, 255))
    try:
        picture.save(path)
    except (OSError, ValueError) as e:
        raise ProtonetError(f"{path}: cannot write the picture ({e})") from None
