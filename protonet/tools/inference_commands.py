"""CLI subcommands ``classify`` (Caffe's ``python/classify.py``, printing the top classes)
and ``detect`` (SSD and Faster R-CNN boxes, printed and drawn).

    protonet classify deploy.prototxt weights.caffemodel cat.jpg dog.png \\
        --mean-values 104,117,123 --labels synset_words.txt --top 5
    protonet detect MobileNetSSD_deploy.prototxt MobileNetSSD_deploy.caffemodel street.jpg \\
        --mean-values 127.5,127.5,127.5 --input-scale 0.007843 --labels labels.txt -o boxes.png

Each image is loaded as RGB in [0, 1], resized to ``--images-dim`` (default: the net's
input size), cut into the ten crops pycaffe averages (corners, centre and their mirrors;
``--center-only`` takes the centre crop), then transposed, channel-swapped (default 2,1,0:
RGB to Caffe's BGR), raw-scaled (default 255) and mean-subtracted, as
:class:`protonet.classifier.Classifier` does. The net's first output gives the scores.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import ProtonetError


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ProtonetError(f"{what}: '{text}' is not a comma-separated list of integers") \
            from None


def _floats(text: str, what: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.split(",")], np.float32)
    except ValueError:
        raise ProtonetError(f"{what}: '{text}' is not a comma-separated list of numbers") \
            from None


def read_mean(path: str) -> np.ndarray:
    """A mean image ``(K, H, W)`` from a ``.binaryproto`` (Caffe's compute_image_mean) or a
    ``.npy`` file (pycaffe's), or per-channel values ``(K,)`` from a 1-D ``.npy``."""
    if not os.path.exists(path):
        raise ProtonetError(f"{path}: no such mean file")
    if path.endswith(".npy"):
        try:
            mean = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ProtonetError(f"{path}: not a numpy array file ({e})") from None
    else:
        from ..io.blobs import read_blob_proto
        mean = read_blob_proto(path)
    mean = np.asarray(mean, np.float32)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim not in (1, 3):
        raise ProtonetError(f"{path}: a mean must be K x H x W or K values, got shape "
                            f"{list(mean.shape)}")
    return mean


def read_labels(path: str, classes: int) -> list[str]:
    """One label per line (``synset_words.txt``: ``n01440764 tench, Tinca tinca``)."""
    try:
        with open(path, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ProtonetError(f"{path}: cannot read the labels ({e.strerror})") from None
    if len(labels) < classes:
        raise ProtonetError(f"{path}: {len(labels)} labels for a net with {classes} classes")
    return labels


def classify(args) -> list[dict]:
    """The top ``args.top`` classes of each image: ``[{"image", "top": [{"class",
    "score", "label"}]}]``."""
    from ..classifier import Classifier
    from ..io.pycaffe_io import load_image
    if args.mean_file and args.mean_values:
        raise ProtonetError("give --mean-file or --mean-values, not both")
    mean = read_mean(args.mean_file) if args.mean_file else (
        _floats(args.mean_values, "--mean-values") if args.mean_values else None)
    images = [load_image(path, color=not args.gray) for path in args.images]
    net = Classifier(args.deploy, args.weights,
                     image_dims=_ints(args.images_dim, "--images-dim") if args.images_dim
                     else None,
                     mean=mean, input_scale=args.input_scale, raw_scale=args.raw_scale,
                     channel_swap=_ints(args.channel_swap, "--channel-swap")
                     if args.channel_swap else None,
                     allow_python_layers=args.allow_python_layers, fuse=args.fuse)
    scores = net.predict(images, oversample=not args.center_only)
    scores = scores.reshape(len(images), -1)
    labels = read_labels(args.labels, scores.shape[1]) if args.labels else None
    results = []
    for path, row in zip(args.images, scores):
        order = np.argsort(-row, kind="stable")[:args.top]
        results.append({"image": path, "top": [
            {"class": int(k), "score": float(row[k]),
             "label": labels[k] if labels else str(int(k))} for k in order]})
    if args.output:
        np.save(args.output, scores)
    return results


def cmd_classify(args) -> int:
    results = classify(args)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for result in results:
        print(f"{result['image']}:")
        for entry in result["top"]:
            print(f"  {entry['score']:.4f}  {entry['label']}")
    return 0


def detect(args) -> list[dict]:
    """Detections of each image: ``[{"image", "detections": [{"label", "name", "score",
    "box"}]}]`` (see :mod:`protonet.tools.detect`)."""
    from ..io.pycaffe_io import load_image
    from ..layers import TEST
    from ..net import Net
    from .detect import (detect_rcnn, detect_ssd, detection_kind, draw_detections,
                         read_label_names)
    names = read_label_names(args.labels) if args.labels else {}
    images = [load_image(path) for path in args.images]
    net = Net(args.deploy, TEST, weights=args.weights,
              allow_python_layers=args.allow_python_layers, fuse=args.fuse)
    kind = detection_kind(net)
    if args.output and len(images) > 1 and not os.path.isdir(args.output):
        raise ProtonetError(f"-o {args.output}: with several images, give a directory to "
                            "draw them into")
    mean = _floats(args.mean_values, "--mean-values") if args.mean_values else None
    swap = (_ints(args.channel_swap, "--channel-swap")
            if args.channel_swap and kind == "ssd" else None)
    results = []
    for path, image in zip(args.images, images):
        if kind == "ssd":
            found = detect_ssd(net, image, args.threshold, mean=mean, raw_scale=args.raw_scale,
                               input_scale=args.input_scale or 1.0, channel_swap=swap)
        else:
            kwargs = {} if mean is None else {"mean": mean}
            found = detect_rcnn(net, image, args.threshold, nms_threshold=args.nms,
                                short_side=args.short_side, max_side=args.max_side, **kwargs)
        for d in found:
            d["name"] = names.get(d["label"], str(d["label"]))
        results.append({"image": path, "detections": found})
        if args.output:
            target = args.output
            if os.path.isdir(target):
                stem = os.path.splitext(os.path.basename(path))[0]
                target = os.path.join(target, f"{stem}_boxes.png")
            draw_detections(image, found, target)
    return results


def cmd_detect(args) -> int:
    results = detect(args)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for result in results:
        print(f"{result['image']}: {len(result['detections'])} detection(s)")
        for d in result["detections"]:
            x1, y1, x2, y2 = d["box"]
            print(f"  {d['score']:.3f}  {d['name']:<16} {x1:7.1f} {y1:7.1f} {x2:7.1f} {y2:7.1f}")
    return 0


def add_parsers(sub) -> None:
    """Add this module's subcommands to the ``protonet`` parser."""
    from ..cli import add_fuse_arg
    p = sub.add_parser(
        "classify", help="classify images with a deploy net (Caffe's python/classify.py)",
        description="Print the top classes of each image, preprocessed as pycaffe's "
        "Classifier does.")
    p.add_argument("deploy", help="deploy network definition (.prototxt)")
    p.add_argument("weights", help="trained weights (.caffemodel or .caffemodel.h5)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--mean-file", help="mean image: .binaryproto (compute-mean) or .npy")
    p.add_argument("--mean-values", metavar="B,G,R", help="per-channel mean, in net order")
    p.add_argument("--raw-scale", type=float, default=255.0,
                   help="multiply the [0, 1] image by this before the mean (default 255)")
    p.add_argument("--input-scale", type=float, default=None,
                   help="multiply after the mean is subtracted")
    p.add_argument("--channel-swap", default="2,1,0",
                   help="channel order for the net (default 2,1,0: RGB to BGR; '' for none)")
    p.add_argument("--images-dim", metavar="H,W",
                   help="resize to this before cropping (default: the net's input size)")
    p.add_argument("--center-only", action="store_true",
                   help="one centre crop instead of the average of ten crops")
    p.add_argument("--gray", action="store_true", help="load images as one channel")
    p.add_argument("--labels", help="class names, one per line (synset_words.txt)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-o", "--output", help="also save all scores as .npy (N x classes)")
    p.add_argument("--allow-python-layers", action="store_true",
                   help="let `type: \"Python\"` layers import and run their modules")
    add_fuse_arg(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser(
        "detect", help="detect objects with an SSD or Faster R-CNN deploy net",
        description="Print (and draw) the boxes an SSD (DetectionOutput) or Faster R-CNN "
        "(rois, cls_prob, bbox_pred, im_info) deploy net finds in each image.")
    p.add_argument("deploy", help="deploy network definition (.prototxt)")
    p.add_argument("weights", help="trained weights (.caffemodel or .caffemodel.h5)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--labels", help="class names: a LabelMap prototxt or one name per line "
                   "(line i names label i; label 0 is the background)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="smallest score shown (default 0.5)")
    p.add_argument("-o", "--output", help="draw the boxes: a .png/.jpg file, or a directory "
                   "for several images")
    p.add_argument("--json", action="store_true", help="print JSON")
    ssd = p.add_argument_group("SSD preprocessing (the input is resized to the net's)")
    ssd.add_argument("--mean-values", metavar="B,G,R",
                     help="per-channel mean in net order (Faster R-CNN default: "
                     "py-faster-rcnn's pixel means)")
    ssd.add_argument("--raw-scale", type=float, default=255.0,
                     help="multiply the [0, 1] image by this (default 255)")
    ssd.add_argument("--input-scale", type=float, default=None,
                     help="multiply after the mean (MobileNet-SSD: 0.007843)")
    ssd.add_argument("--channel-swap", default="2,1,0",
                     help="channel order for the net (default 2,1,0: RGB to BGR)")
    rcnn = p.add_argument_group("Faster R-CNN")
    rcnn.add_argument("--short-side", type=int, default=600,
                      help="scale the image's short side to this (default 600)")
    rcnn.add_argument("--max-side", type=int, default=1000,
                      help="but its long side to at most this (default 1000)")
    rcnn.add_argument("--nms", type=float, default=0.3,
                      help="per-class NMS threshold (default 0.3, as the demo)")
    p.add_argument("--allow-python-layers", action="store_true",
                   help="let `type: \"Python\"` layers import and run their modules "
                   "(py-faster-rcnn's proposal layer runs natively without it)")
    add_fuse_arg(p)
    p.set_defaults(func=cmd_detect)
