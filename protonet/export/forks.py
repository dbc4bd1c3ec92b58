"""The Caffe forks' layers: exported where ONNX expresses them exactly, refused with the
reason where it does not.

Exported:

* ``Normalize`` (SSD, ParseNet): ``x / sqrt(sum(x^2) + eps) * s`` -- ``eps`` inside the
  square root, as the fork adds it to the sum -- with the sum over the channels at each
  position (``ReduceSumSquare`` over axis 1) or over the whole item (``across_spatial``),
  and ``s`` one value (``channel_shared``) or one per channel.
* ``Permute``: ``Transpose`` by the layer's full axis order.
* ``PriorBox``: its output depends on the shapes of its bottoms only (the feature map's
  and the image's), never on their values or the batch, so it is a constant: the layer
  is run at export time and its top becomes an initializer. It holds for the input size
  the net was exported at (which the graph fixes anyway).
* ``Interp`` (DeepLab, PSPNet): a ``Slice`` for the negative pads, then ``Resize``
  (``linear``, ``align_corners``) to the layer's own output size.
* ``ShuffleChannel``: ``Reshape (N, g, C/g, -1)`` -> ``Transpose`` -> ``Reshape`` back.
* ``ReLU6``: ``Clip(x, 0, 6)``; with ``negative_slope``, ``Clip(x, 0, 6) +
  negative_slope * Min(x, 0)`` as the layer computes it.
* ``Axpy`` (SENet): ``y + a * x``, ``a`` reshaped to ``(N, C, 1, ...)`` to broadcast.
* ``Upsample`` (SegNet): ``MaxUnpool`` (kernel 1, the layer's output shape). The mask
  holds positions in each ``(n, c)`` output plane; ONNX's indices count over the whole
  ``N x C x H x W`` output, so each plane's offset ``(n*C + c) * Ho*Wo`` is added (from
  the runtime batch when it is dynamic). Where two mask entries name one position the
  later value wins in onnxruntime, as in the layer (ONNX leaves that order open; entries of
  a pooling mask that clash hold the same value anyway). The check draws a mask input as
  valid positions.
* ``ROIPooling`` (Fast/Faster R-CNN): ``MaxRoiPool``. ONNX's text does not pin down
  the bins' rounding, but onnxruntime's kernel is Fast R-CNN's (corners ``round(v *
  scale)``, bins ``floor``/``ceil`` of float32 products, empty bins 0); the tests compare
  the two bit for bit on random regions, reversed and out-of-image ones included.
  onnxruntime runs MaxRoiPool only up to opset 21 (opset 22 versioned the op anew), so
  the default opset of a net with ROIPooling is at most 21. The check feeds a regions
  input valid regions on the image.

Refused, with the reason (export the net up to the layer's bottoms with ``outputs=`` /
``--outputs``):

* ``DetectionOutput``: ONNX's ``NonMaxSuppression`` has no adaptive ``eta``, applies
  its per-class limit after suppression where the fork's ``nms_param.top_k`` limits
  the candidates before it, and gives selected indices, not the fork's rows
  ``[image, label, score, box]`` ordered by class and score after ``keep_top_k``
  across classes (a ``-1`` row when nothing is found).
* ``Proposal`` (and py-faster-rcnn's Python proposal layer, which protonet runs as it):
  py-faster-rcnn's NMS counts box sizes with the ``+1`` pixel convention, which ONNX's
  ``NonMaxSuppression`` does not, and drops boxes under a minimum size, so even the
  number of rows depends on the data.
* ``PSROIPooling`` (R-FCN): ONNX has no position-sensitive pooling (``RoiAlign``
  samples bilinearly, ``MaxRoiPool`` takes maxima over whole channels).

``SmoothL1Loss`` is a loss, dropped as training-only like the others; Dropout's
``scale_train: false`` is in :mod:`~protonet.export.common`, Pooling's ``ceil_mode``
in :mod:`~protonet.export.vision` (the layer's output size is used as it is).
"""
from __future__ import annotations

import numpy as np

from .registry import OPSET_LIMITS, exporter

#: onnxruntime implements MaxRoiPool as opset 1 defines it; opset 22 gave the op a new
#: version, which it does not run: the default opset stops at 21 for a net with ROIPooling
OPSET_LIMITS["ROIPooling"] = 21


# -- SSD ------------------------------------------------------------------------------------------
@exporter("Normalize")
def normalize(L):
    p = L.layer
    rank = len(L.in_shapes[0])
    x = L.inputs[0]
    axes = list(range(1, rank)) if p.across_spatial else [1]
    squares = L.reduce("ReduceSumSquare", x, axes, keepdims=1)
    norm = L.node("Sqrt", [L.binary("Add", squares, np.float32(p.eps), "eps")])
    scale = L.weight(0)
    if p.channel_shared:
        scale = scale.reshape(())
    else:
        scale = scale.reshape((-1,) + (1,) * (rank - 2))
    L.binary("Mul", L.node("Div", [x, norm]), scale, "scale", out=L.out(0))


@exporter("Permute")
def permute(L):
    L.node("Transpose", [L.inputs[0]], [L.out(0)], perm=[int(a) for a in L.layer.order])


@exporter("PriorBox")
def prior_box(L):
    """The layer run on its bottoms' shapes: a constant."""
    from ..blob import Blob
    top = Blob(L.out_shapes[0], np.float64)
    L.layer.forward(L.bottom_blobs, [top])
    L.alias(0, L.const(top.data, "priors"))


@exporter("DetectionOutput")
def detection_output(L):
    L.fail("ONNX's NonMaxSuppression cannot give the SSD fork's detections: it has no "
           "adaptive eta, limits boxes per class after suppression where nms_param.top_k "
           "limits the candidates before it, and returns indices, not rows [image, label, "
           "score, box] ordered by class and score after keep_top_k across classes; export "
           f"up to its inputs instead (outputs={','.join(L.bottoms[:3])})")


# -- R-CNN ----------------------------------------------------------------------------------------
@exporter("ROIPooling")
def roi_pooling(L):
    p = L.layer
    n, c, h, w = L.in_shapes[0]
    rois = L.inputs[1]
    if len(L.in_shapes[1]) != 2:
        rois = L.reshape(rois, [-1, 5])
    L.region_input(1, (h / p.spatial_scale, w / p.spatial_scale))
    if L.opset > OPSET_LIMITS["ROIPooling"]:
        L.note(f"MaxRoiPool at opset {L.opset}: onnxruntime runs it up to opset "
               f"{OPSET_LIMITS['ROIPooling']} (the default opset for this net)")
    L.node("MaxRoiPool", [L.inputs[0], rois], [L.out(0)], pooled_shape=list(p.pooled),
           spatial_scale=float(np.float32(p.spatial_scale)))


@exporter("PSROIPooling")
def psroi_pooling(L):
    L.fail("ONNX has no position-sensitive ROI pooling: RoiAlign samples bilinearly and "
           "MaxRoiPool takes maxima, where R-FCN averages each bin of its own channel; "
           f"export up to its inputs instead (outputs={L.bottoms[0]})")


@exporter("Proposal")
def proposal(L):
    L.fail("ONNX's NonMaxSuppression measures box overlap without py-faster-rcnn's +1 "
           "pixel convention, and the proposals' count depends on the data (boxes under "
           "min_size dropped); export up to its inputs instead "
           f"(outputs={','.join(L.bottoms[:2])})")


# -- small fork layers ----------------------------------------------------------------------------
@exporter("ReLU6")
def relu6(L):
    x = L.inputs[0]
    bounds = [L.const(np.float32(0), "zero"), L.const(np.float32(6), "six")]
    if not L.layer.slope:
        L.node("Clip", [x] + bounds, [L.out(0)])
        return
    clipped = L.node("Clip", [x] + bounds)
    negative = L.binary("Mul", L.binary("Min", x, np.float32(0), "zero"),
                        np.float32(L.layer.slope), "slope")
    L.node("Add", [clipped, negative], [L.out(0)])


@exporter("Axpy")
def axpy(L):
    """``F = Y + a * X``."""
    rank = len(L.in_shapes[1])
    a = L.inputs[0]
    if len(L.in_shapes[0]) != rank:
        a = L.reshape(a, [0, 0] + [1] * (rank - 2))
    L.node("Add", [L.inputs[2], L.node("Mul", [a, L.inputs[1]])], [L.out(0)])


@exporter("ShuffleChannel")
def shuffle_channel(L):
    shape = L.in_shapes[0]
    g = L.layer.group
    grid = L.reshape(L.inputs[0], [0, g, shape[1] // g, -1])
    swapped = L.node("Transpose", [grid], perm=[0, 2, 1, 3])
    L.reshape(swapped, [0] + list(shape[1:]), L.out(0))


def _resize(L, x: str, hw, out: str) -> None:
    """``x`` resized to ``hw`` (``align_corners``): from opset 18 the sizes of axes 2 and
    3 alone; before, sizes for all four axes (from ``x``'s runtime batch when it is
    dynamic)."""
    attrs = dict(mode="linear", coordinate_transformation_mode="align_corners")
    if L.opset >= 18:
        L.node("Resize", [x, "", "", L.ints(list(hw), "sizes")], [out], axes=[2, 3], **attrs)
        return
    if L.dynamic:
        head = L.node("Slice", [L.node("Shape", [x]), L.ints([0], "zero"), L.ints([2], "two")])
        sizes = L.node("Concat", [head, L.ints(list(hw), "hw")], axis=0)
    else:
        sizes = L.ints(list(L.in_shapes[0][:2]) + list(hw), "sizes")
    L.node("Resize", [x, "", "", sizes], [out], **attrs)


@exporter("Interp")
def interp(L):
    p = L.layer
    x = L.inputs[0]
    in_hw, out_hw = tuple(p.in_hw), tuple(p.out_hw)
    if p.pad_beg or p.pad_end:
        begin = -p.pad_beg
        x = L.node("Slice", [x, L.ints([begin, begin], "starts"),
                             L.ints([begin + in_hw[0], begin + in_hw[1]], "ends"),
                             L.ints([2, 3], "axes")])
    if in_hw == out_hw:
        L.node("Identity", [x], [L.out(0)])
        return
    _resize(L, x, out_hw, L.out(0))


@exporter("Upsample")
def upsample(L):
    n, c = L.in_shapes[0][:2]
    ho, wo = L.out_shapes[0][2:]
    plane = ho * wo
    L.index_input(1, plane)
    index = L.node("Cast", [L.inputs[1]], to=7)
    if L.dynamic:
        batch = L.node("Slice", [L.node("Shape", [L.inputs[0]]), L.ints([0], "zero"),
                                 L.ints([1], "one")])
        total = L.node("Squeeze", [L.node("Mul", [batch, L.ints([c * plane], "item")]),
                                   L.ints([0], "axis")])
        starts = L.node("Range", [L.const(np.int64(0), "start", np.int64), total,
                                  L.const(np.int64(plane), "plane", np.int64)])
        offsets = L.reshape(starts, [-1, c, 1, 1])
        shape = L.node("Concat", [batch, L.ints([c, ho, wo], "chw")], axis=0)
    else:
        offsets = L.const((np.arange(n * c, dtype=np.int64) * plane).reshape(n, c, 1, 1),
                          "offsets", np.int64)
        shape = L.ints([n, c, ho, wo], "shape")
    flat = L.node("Add", [index, offsets])
    L.node("MaxUnpool", [L.inputs[0], flat, shape], [L.out(0)], kernel_shape=[1, 1])
