"""The SSD fork's inference layers (Normalize, Permute, PriorBox, DetectionOutput) and the
box kernels of protonet.detection: hand-computed values, the loop references, gradients,
OpenCV dnn as an independent implementation, and MobileNet-SSD / SSD300 end to end."""
import json
import math
import warnings

import numpy as np
import pytest

import protonet
from protonet import detection
from protonet.errors import ProtonetError
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

R = np.random.default_rng


def random_boxes(rng, n, scale=1.0):
    """``(n, 4)`` valid boxes inside ``[0, scale]``, with some invalid and some tiny ones."""
    xy = rng.uniform(0, 0.8, (n, 2)) * scale
    wh = rng.uniform(0.01, 0.5, (n, 2)) * scale
    boxes = np.concatenate([xy, xy + wh], axis=1)
    boxes[::7, 2] = boxes[::7, 0] - 0.01 * scale          # a few invalid (xmax < xmin)
    return boxes


# -- kernels: prior boxes -------------------------------------------------------------------------
def test_aspect_ratios_deduplicate_and_flip():
    assert detection.aspect_ratio_list([2, 3], flip=True) == pytest.approx([1, 2, 0.5, 3, 1 / 3])
    assert detection.aspect_ratio_list([2, 0.5, 1, 2], flip=True) == pytest.approx([1, 2, 0.5])
    assert detection.aspect_ratio_list([2, 0.5], flip=False) == pytest.approx([1, 2, 0.5])


def test_prior_sizes_in_the_forks_order_and_truncated():
    w, h = detection.prior_sizes([4.9, 10], [9, 20.5], [2], flip=True)
    s2 = math.sqrt(2)
    np.testing.assert_allclose(w, [4, 6, 4 * s2, 4 / s2, 10, math.sqrt(200), 10 * s2, 10 / s2])
    np.testing.assert_allclose(h, [4, 6, 4 / s2, 4 * s2, 10, math.sqrt(200), 10 / s2, 10 * s2])
    w, _ = detection.prior_sizes([4.9], truncate=False)
    assert w.tolist() == [4.9]


@pytest.mark.parametrize("clip", [False, True])
def test_prior_boxes_match_reference(clip):
    rng = R(3)
    widths, heights = rng.uniform(1, 40, 5), rng.uniform(1, 40, 5)
    args = (3, 4, 30.0, 41.0, 8.0, 9.5, widths, heights, (0.2, 0.7), (0.5, 0.1), clip)
    fast = detection.prior_boxes(*args)
    assert fast.shape == (3 * 4 * 5 * 2, 4)
    np.testing.assert_allclose(fast, detection.prior_boxes_reference(*args), rtol=1e-12)


# -- kernels: decoding -----------------------------------------------------------------------------
PRIOR = [0.2, 0.2, 0.6, 0.4]           # 0.4 wide, 0.2 high, centre (0.4, 0.3)
VAR = [0.1, 0.1, 0.2, 0.2]


@pytest.mark.parametrize("code, encoded, delta, expected", [
    (detection.CORNER, False, [1, -2, 0, 3], [0.3, 0.0, 0.6, 1.0]),
    (detection.CORNER, True, [0.1, -0.2, 0, 0.6], [0.3, 0.0, 0.6, 1.0]),
    (detection.CENTER_SIZE, False, [1, -2, 0, 5 * math.log(2)], [0.24, 0.06, 0.64, 0.46]),
    (detection.CENTER_SIZE, True, [0.1, -0.2, 0, math.log(2)], [0.24, 0.06, 0.64, 0.46]),
    (detection.CORNER_SIZE, False, [1, -2, 0, 3], [0.24, 0.16, 0.6, 0.52]),
    (detection.CORNER_SIZE, True, [0.1, -0.2, 0, 0.6], [0.24, 0.16, 0.6, 0.52]),
])
def test_decode_by_hand(code, encoded, delta, expected):
    got = detection.decode_boxes(PRIOR, VAR, delta, code, encoded)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    ref = detection.decode_box_reference(PRIOR, VAR, delta, code, encoded)
    np.testing.assert_allclose(ref, expected, atol=1e-12)


@pytest.mark.parametrize("code", [detection.CORNER, detection.CENTER_SIZE, detection.CORNER_SIZE])
@pytest.mark.parametrize("encoded", [False, True])
def test_decode_matches_reference(code, encoded):
    rng = R(code * 2 + encoded)
    priors, var = random_boxes(rng, 50), rng.uniform(0.05, 0.3, (50, 4))
    deltas = rng.normal(size=(50, 4))
    fast = detection.decode_boxes(priors, var, deltas, code, encoded)
    ref = [detection.decode_box_reference(p, v, d, code, encoded)
           for p, v, d in zip(priors, var, deltas)]
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)


# -- kernels: overlap and NMS ----------------------------------------------------------------------
def test_jaccard_by_hand():
    a = [[0, 0, 2, 2]]
    b = [[1, 1, 3, 3], [2, 0, 3, 1], [5, 5, 6, 6], [0, 0, 2, 2], [1, 1, 0, 0]]
    np.testing.assert_allclose(detection.jaccard_overlap(a, b)[0], [1 / 7, 0, 0, 1, 0])
    # pixels: inclusive widths, so touching boxes share a column
    np.testing.assert_allclose(detection.jaccard_overlap(a, b, normalized=False)[0],
                               [4 / 14, 2 / 11, 0, 1, 0])


@pytest.mark.parametrize("normalized", [True, False])
def test_jaccard_matches_reference(normalized):
    rng = R(5)
    scale = 1.0 if normalized else 50.0
    a, b = random_boxes(rng, 30, scale), random_boxes(rng, 20, scale)
    ref = [[detection.jaccard_overlap_reference(x, y, normalized) for y in b] for x in a]
    np.testing.assert_allclose(detection.jaccard_overlap(a, b, normalized), ref, rtol=1e-12)
    assert np.count_nonzero(ref) > 20


def test_nms_by_hand():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.4], [0.05, 0, 1.05, 1], [2, 2, 3, 3]])
    scores = np.array([0.9, 0.8, 0.85, 0.1])
    # IoU(0, 1) = 0.4, IoU(0, 2) = 0.95/1.05; candidates in score order 0, 2, 1, 3
    assert detection.nms(boxes, scores, 0.6).tolist() == [0, 1, 3]
    assert detection.nms(boxes, scores, 0.6, score_threshold=0.1).tolist() == [0, 1]
    assert detection.nms(boxes, scores, 0.6, top_k=2).tolist() == [0]
    assert detection.nms(boxes, scores, 0.6, top_k=0).tolist() == []
    # adaptive: after box 0 the threshold becomes 0.3, which suppresses box 1 (IoU 0.4)
    assert detection.nms(boxes, scores, 0.6, eta=0.5).tolist() == [0, 3]
    # ... but not below 0.5: from 0.55 it drops once, to 0.495, and box 1 stays
    assert detection.nms(boxes, scores, 0.55, eta=0.9).tolist() == [0, 1, 3]
    # equal scores keep index order
    assert detection.nms(boxes, np.ones(4), 0.3).tolist() == [0, 3]


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_reference(seed):
    rng = R(seed)
    boxes = random_boxes(rng, 80)
    scores = rng.uniform(size=80).astype(np.float32)
    scores[::5] = scores[1::5]                               # some ties
    for kwargs in ({}, {"score_threshold": 0.3}, {"top_k": 25}, {"eta": 0.8}):
        fast = detection.nms(boxes, scores, 0.45 if "eta" not in kwargs else 0.9, **kwargs)
        ref = detection.nms_reference(boxes, scores, 0.45 if "eta" not in kwargs else 0.9,
                                      **kwargs)
        assert fast.tolist() == ref


def test_detect_keeps_the_best_per_class_then_overall():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.9, 0.9]])
    scores = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.2, 0.5]])
    labels, idx = detection.detect(boxes, scores, 0.45, score_threshold=0.15,
                                   background_label=0)
    assert labels.tolist() == [1, 1, 2] and idx.tolist() == [0, 2, 2]
    labels, idx = detection.detect(boxes, scores, 0.45, score_threshold=0.15, keep_top_k=2,
                                   background_label=0)
    assert labels.tolist() == [1, 2] and idx.tolist() == [0, 2]
    labels, idx = detection.detect(boxes, scores, 0.45, score_threshold=0.15, keep_top_k=3)
    assert labels.tolist() == [0, 1, 2] and idx.tolist() == [2, 0, 2]   # class 0 counts too
    per_class = np.repeat(boxes[:, None], 3, axis=1)
    per_class[2, 2] = [0.1, 0.1, 0.3, 0.3]                  # class 2's prior 2 moves
    labels, idx = detection.detect(per_class, scores, 0.45, score_threshold=0.15,
                                   background_label=0)
    assert labels.tolist() == [1, 1, 2] and idx.tolist() == [0, 2, 2]


# -- Normalize ------------------------------------------------------------------------------------
def norm_layer(across, shared, dtype=np.float64, filler='type: "uniform" min: 0.5 max: 3'):
    return make_layer(f'name: "norm" type: "Normalize" norm_param {{ '
                      f'across_spatial: {str(across).lower()} '
                      f'channel_shared: {str(shared).lower()} '
                      f'scale_filler {{ {filler} }} }}', dtype=dtype)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_forward_by_definition(across, shared):
    x = R(0).normal(size=(2, 3, 4, 5))
    layer = norm_layer(across, shared)
    (y,) = run_layer(layer, [x])
    axes = (1, 2, 3) if across else (1,)
    norm = np.sqrt((x * x).sum(axis=axes, keepdims=True) + 1e-10)
    s = layer.blobs[0].data
    assert s.shape == (() if shared else (3,))
    np.testing.assert_allclose(y, x / norm * (s if shared else s.reshape(1, 3, 1, 1)),
                               rtol=1e-12)


def test_normalize_default_scale_is_one_and_eps_counts():
    layer = make_layer('name: "norm" type: "Normalize" norm_param { eps: 0.75 }')
    (y,) = run_layer(layer, [np.array([[3.0, 4.0]])])       # 2 axes: (N, C)
    np.testing.assert_allclose(y, [[3, 4]] / np.sqrt(25.75), rtol=1e-12)
    assert layer.blobs[0].data.shape == () and layer.blobs[0].data == 1.0


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_gradients(across, shared):
    x = R(1).normal(size=(2, 3, 3, 2))
    check_gradients(norm_layer(across, shared), [x], max_checks=None)


def test_normalize_errors():
    layer = make_layer('name: "n4" type: "Normalize" norm_param { channel_shared: false }')
    bottom, top = setup_layer(layer, [np.ones((1, 3, 2, 2))])
    bottom[0].reshape((1, 4, 2, 2))                   # more channels than the scale was made for
    with pytest.raises(ProtonetError, match="layer 'n4'.*4 channels, the scale was made for 3"):
        layer.reshape(bottom, top)
    with pytest.raises(ProtonetError, match="layer 'n4'.*in place"):
        layer.reshape(bottom, bottom)
    with pytest.raises(ProtonetError, match="layer 'n1'.*at least 2 axes"):
        run_layer(make_layer('name: "n1" type: "Normalize"'), [np.ones(3)])


# -- Permute --------------------------------------------------------------------------------------
@pytest.mark.parametrize("order, full", [([0, 2, 3, 1], [0, 2, 3, 1]), ([0, 2], [0, 2, 1, 3]),
                                         ([3], [3, 0, 1, 2]), ([], [0, 1, 2, 3])])
def test_permute_forward_and_gradients(order, full):
    x = R(2).normal(size=(2, 3, 4, 5))
    text = "".join(f" order: {o}" for o in order)
    layer = make_layer(f'name: "perm" type: "Permute" permute_param {{{text} }}')
    (y,) = run_layer(layer, [x])
    np.testing.assert_array_equal(y, x.transpose(full))
    check_gradients(make_layer(f'name: "perm" type: "Permute" permute_param {{{text} }}'), [x])


@pytest.mark.parametrize("order, message", [("order: 0 order: 4", "axis 4 is out of range"),
                                            ("order: 1 order: 1", "axis 1 is given twice")])
def test_permute_errors(order, message):
    layer = make_layer(f'name: "p" type: "Permute" permute_param {{ {order} }}')
    with pytest.raises(ProtonetError, match=f"layer 'p'.*permute_param.order: {message}"):
        run_layer(layer, [np.ones((1, 2, 3, 4))])


# -- PriorBox -------------------------------------------------------------------------------------
def prior_layer(body, name="pb"):
    return make_layer(f'name: "{name}" type: "PriorBox" prior_box_param {{ {body} }}')


def test_prior_box_by_hand():
    # 2x2 map of a 10x10 image (img_size), step 5, offset 0.5: centres 2.5 and 7.5.
    # Sizes: 4 (min), 6 (sqrt(4*9)), 4*sqrt2 x 4/sqrt2 (ar 2), 4/sqrt2 x 4*sqrt2 (ar 1/2)
    layer = prior_layer("min_size: 4 max_size: 9 aspect_ratio: 2 flip: true clip: true "
                        "img_size: 10 step: 5 offset: 0.5 variance: 0.1")
    (top,) = run_layer(layer, [np.zeros((1, 8, 2, 2))])
    assert top.shape == (1, 2, 2 * 2 * 4 * 4)
    a, b, c, d = 0.0, 0.10857864, 0.53284271, 0.39142136     # 2.5 -+ 2.828427, -+ 1.414214
    e, f, g = 0.46715729, 0.60857864, 0.89142136             # 7.5 - 2.83, -1.41, +1.41
    cell00 = [[0.05, 0.05, 0.45, 0.45], [0, 0, 0.55, 0.55], [a, b, c, d], [b, a, d, c]]
    cell01 = [[0.55, 0.05, 0.95, 0.45], [0.45, 0, 1, 0.55], [e, b, 1, d], [f, a, g, c]]
    cell10 = [[0.05, 0.55, 0.45, 0.95], [0, 0.45, 0.55, 1], [a, f, c, g], [b, e, d, 1]]
    cell11 = [[0.55, 0.55, 0.95, 0.95], [0.45, 0.45, 1, 1], [e, f, 1, g], [f, e, g, 1]]
    expected = np.array(cell00 + cell01 + cell10 + cell11)
    np.testing.assert_allclose(top[0, 0].reshape(-1, 4), expected, atol=1e-7)
    np.testing.assert_allclose(top[0, 1], 0.1, rtol=1e-7)


def test_prior_box_image_bottom_step_variances_and_truncation():
    feat, image = np.zeros((2, 1, 3, 2)), np.zeros((2, 3, 30, 20))
    (top,) = run_layer(prior_layer("min_size: 4.9 flip: false clip: false variance: 0.1 "
                                   "variance: 0.2 variance: 0.3 variance: 0.4"), [feat, image])
    # default step: 20/2 = 10 across, 30/3 = 10 down; the size 4.9 is read as 4, as in the fork
    boxes = top[0, 0].reshape(3, 2, 4)
    np.testing.assert_allclose(boxes[1, 1], [(15 - 2) / 20, (15 - 2) / 30, 17 / 20, 17 / 30])
    np.testing.assert_allclose(top[0, 1].reshape(-1, 4), np.tile([0.1, 0.2, 0.3, 0.4], (6, 1)),
                               rtol=1e-7)
    (top,) = run_layer(prior_layer("min_size: 4 img_h: 30 img_w: 20 step_h: 12 step_w: 7 "
                                   "offset: 0"), [feat])
    np.testing.assert_allclose(top[0, 0].reshape(3, 2, 4)[2, 1],
                               [(7 - 2) / 20, (24 - 2) / 30, 9 / 20, 26 / 30])


@pytest.mark.parametrize("body, message", [
    ("clip: true", "min_size is required"),
    ("min_size: 0", "min_size must be positive"),
    ("min_size: 4 max_size: 4", "max_size 4 must be greater than min_size 4"),
    ("min_size: 4 min_size: 5 max_size: 9", "max_size: give one per min_size"),
    ("min_size: 4 variance: 0.1 variance: 0.2", "variance: give one value or four"),
    ("min_size: 4 variance: -1", "variance must be positive"),
    ("min_size: 4 img_size: 10 img_h: 10 img_w: 10", "either img_size or img_h/img_w"),
    ("min_size: 4 img_h: 10", "img_h and img_w must both be positive"),
    ("min_size: 4 step: 8 step_w: 4 step_h: 4", "either step or step_h/step_w"),
    ("width: 3 height: 4 min_size: 2", "exclude min_size"),
    ("width: 3 width: 4 height: 4", "width and height must be as many"),
    ("min_size: 4 offset_w: 0.5", "offset_w and offset_h must be as many"),
])
def test_prior_box_errors_name_layer_and_field(body, message):
    where = "layer 'pb' \\(PriorBox\\): prior_box_param"
    with pytest.raises(ProtonetError, match=f"{where}.*{message}"):
        run_layer(prior_layer(body), [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 8, 8))])


def test_prior_box_needs_an_image_size():
    with pytest.raises(ProtonetError, match="layer 'pb'.*second bottom.*img_size"):
        run_layer(prior_layer("min_size: 4"), [np.zeros((1, 1, 2, 2))])


# -- DetectionOutput ------------------------------------------------------------------------------
def det_layer(body, name="det"):
    return make_layer(f'name: "{name}" type: "DetectionOutput" '
                      f'detection_output_param {{ {body} }}', dtype=np.float32)


PRIORS = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.9, 0.9]])


def prior_blob(priors=PRIORS, variance=(0.1, 0.1, 0.2, 0.2)):
    return np.stack([priors.reshape(-1), np.tile(variance, len(priors))])[None]


def test_detection_output_by_hand():
    conf = np.array([[[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.2, 0.5]],
                     [[0.9, 0.05, 0.05]] * 3]).reshape(2, -1)
    loc = np.zeros((2, 12))
    loc[1] = 1                                                 # image 1 moves, finds nothing
    body = ("num_classes: 3 share_location: true background_label_id: 0 code_type: CENTER_SIZE "
            "confidence_threshold: 0.15 ")
    nms = "nms_param { nms_threshold: 0.45 }"
    (top,) = run_layer(det_layer(body + nms), [loc, conf, prior_blob()])
    # class 1: prior 0 (0.8) suppresses prior 1 (0.7, IoU 0.82); prior 2 (0.2) stays
    np.testing.assert_allclose(top[0, 0], [[0, 1, 0.8, *PRIORS[0]], [0, 1, 0.2, *PRIORS[2]],
                                           [0, 2, 0.5, *PRIORS[2]]], rtol=1e-6, atol=1e-7)
    (top,) = run_layer(det_layer(body + nms + " keep_top_k: 2"), [loc, conf, prior_blob()])
    np.testing.assert_allclose(top[0, 0], [[0, 1, 0.8, *PRIORS[0]], [0, 2, 0.5, *PRIORS[2]]],
                               rtol=1e-6, atol=1e-7)
    (top,) = run_layer(det_layer(body + "nms_param { nms_threshold: 0.45 top_k: 1 }"),
                       [loc, conf, prior_blob()])
    assert top[0, 0, :, :3].tolist() == [[0, 1, pytest.approx(0.8)], [0, 2, 0.5]]


def test_detection_output_with_no_detection_gives_one_row_of_minus_ones_per_image():
    conf = np.full((2, 9), 0.1)
    body = "num_classes: 3 confidence_threshold: 0.5 nms_param { nms_threshold: 0.45 }"
    (top,) = run_layer(det_layer(body), [np.zeros((2, 12)), conf, prior_blob()])
    assert top.shape == (1, 1, 2, 7)
    assert top[0, 0].tolist() == [[0] + [-1] * 6, [1] + [-1] * 6]


def test_detection_output_per_class_locations_and_corner_code():
    rng = R(4)
    loc = rng.normal(size=(1, 3, 3, 4))                         # prior, class, coordinate
    conf = rng.uniform(size=(1, 9))
    body = ("num_classes: 3 share_location: false background_label_id: -1 code_type: CORNER "
            "nms_param { nms_threshold: 0.3 } variance_encoded_in_target: true")
    (top,) = run_layer(det_layer(body), [loc.reshape(1, -1), conf, prior_blob()])
    rows = top[0, 0]
    for image, label, score, *box in rows:
        matches = [p for p in range(3) if np.isclose(conf[0, p * 3 + int(label)], score)]
        assert len(matches) == 1
        np.testing.assert_allclose(box, PRIORS[matches[0]] + loc[0, matches[0], int(label)],
                                   rtol=1e-5, atol=1e-6)
    assert set(rows[:, 1].astype(int)) == {0, 1, 2}            # no background class
    order = np.lexsort((-rows[:, 2], rows[:, 1]))              # by class, then best first
    np.testing.assert_array_equal(order, np.arange(len(rows)))


def test_detection_output_shared_locations_without_background():
    conf = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.2, 0.5]]).reshape(1, -1)
    body = ("num_classes: 3 background_label_id: -1 confidence_threshold: 0.15 "
            "nms_param { nms_threshold: 0.45 }")
    (top,) = run_layer(det_layer(body), [np.zeros((1, 12)), conf, prior_blob()])
    assert top[0, 0, :, 1].tolist() == [0, 0, 1, 1, 2]       # class 0: priors 2 and 1


def test_prior_box_passes_no_gradient():
    layer = prior_layer("min_size: 4 img_size: 10")
    bottom, top = setup_layer(layer, [np.ones((1, 2, 2, 2))])
    layer.forward(bottom, top)
    bottom[0].diff[...] = 7
    layer.backward(top, [True], bottom)
    assert not bottom[0].diff.any()


@pytest.mark.parametrize("body, bottoms, message", [
    ("share_location: true", None, "num_classes is required"),
    ("num_classes: 3 nms_param { nms_threshold: -0.1 }", None, "nms_threshold must be non-neg"),
    ("num_classes: 3 nms_param { eta: 0 }", None, "eta must be in"),
    ("num_classes: 4", None, "confidences .* must hold 12 values per image"),
    ("num_classes: 3 share_location: false", None, "must hold 36 values per image"),
    ("num_classes: 3", "one channel", "second channel of variances"),
])
def test_detection_output_errors(body, bottoms, message):
    prior = prior_blob()[:, :1] if bottoms else prior_blob()
    with pytest.raises(ProtonetError, match=f"layer 'det' \\(DetectionOutput\\).*{message}"):
        run_layer(det_layer(body), [np.zeros((1, 12)), np.zeros((1, 9)), prior])


def test_detection_output_refuses_degenerate_priors_for_size_codes():
    priors = PRIORS.copy()
    priors[1, 2] = priors[1, 0]
    body = "num_classes: 3 code_type: CENTER_SIZE nms_param { nms_threshold: 0.5 }"
    with pytest.raises(ProtonetError, match="layer 'det'.*prior 1 has no positive width"):
        run_layer(det_layer(body), [np.zeros((1, 12)), np.zeros((1, 9)), prior_blob(priors)])


# -- against OpenCV dnn ---------------------------------------------------------------------------
def run_both(tmp_path, text, inputs, outputs, seed=0):
    """Build ``text`` in protonet with random weights (BatchNorm statistics set to mean 0,
    variance 1), save them, load both files in OpenCV dnn and run both on ``inputs``
    ({blob: array}; ``None`` for the "data" input: a random image). OpenCV names outputs
    by layer: ask for tops named like their layers."""
    cv2 = pytest.importorskip("cv2")
    from protonet.io.prototxt import read_net
    path, weights = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # SSD300's save_output_param is ignored
        net = protonet.Net(read_net(str(path), lenient=True), protonet.TEST, seed=seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, var, factor = (b.data for b in layer.blobs)
            mean[...], var[...], factor[...] = 0, 1, 1
    net.save(str(weights))   # a channel-shared scale is a 0-axis blob: no shape field
    if inputs is None:
        inputs = {"data": R(seed).uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)}
    ours = net.forward(blobs=list(outputs), **inputs)
    ours = {k: np.array(ours[k]) for k in outputs}
    cv = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    for name, value in inputs.items():
        cv.setInput(np.ascontiguousarray(value, np.float32), name)
    return ours, dict(zip(outputs, cv.forward(list(outputs))))


def close(ours, theirs, rel=1e-4):
    """Equal within ``rel`` of the blob's largest magnitude."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    scale = max(np.abs(theirs).max(), 1e-12)
    assert np.abs(ours - theirs).max() <= rel * scale, np.abs(ours - theirs).max() / scale


def opencv_detections(out):
    """OpenCV pads its detections with rows of zeros up to keep_top_k per image."""
    rows = np.asarray(out, np.float64).reshape(-1, 7)
    return rows[np.any(rows != 0, axis=1)]


def assert_same_detections(ours, theirs, tol=1e-4):
    """The same rows, in any order (OpenCV sorts by score, the fork by class)."""
    ours = np.asarray(ours, np.float64).reshape(-1, 7)
    theirs = np.asarray(theirs, np.float64).reshape(-1, 7)
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    free = list(range(len(theirs)))
    for row in ours:
        hit = [j for j in free if np.all(np.abs(theirs[j] - row) <= tol)]
        assert hit, f"protonet's detection {row.tolist()} is not among OpenCV's"
        free.remove(hit[0])


# OpenCV has no per-channel scale when it normalizes across positions
@pytest.mark.parametrize("across, shared", [(True, True), (False, True), (False, False)])
def test_normalize_and_permute_agree_with_opencv(tmp_path, across, shared):
    net = f"""input: "data" input_shape {{ dim: 2 dim: 3 dim: 6 dim: 5 }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param {{ num_output: 4 kernel_size: 3 pad: 1
        weight_filler {{ type: "gaussian" std: 1 }} bias_filler {{ type: "gaussian" std: 1 }} }} }}
    layer {{ name: "norm" type: "Normalize" bottom: "conv" top: "norm"
      norm_param {{ across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()}
        scale_filler {{ type: "uniform" min: 1 max: 20 }} }} }}
    layer {{ name: "perm" type: "Permute" bottom: "norm" top: "perm"
      permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}"""
    x = R(6).normal(size=(2, 3, 6, 5)).astype(np.float32)
    ours, theirs = run_both(tmp_path, net, {"data": x}, ["norm", "perm"])
    assert ours["perm"].shape == (2, 6, 5, 4)
    for name in ("norm", "perm"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("body", [
    "min_size: 4 max_size: 9 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: true variance: 0.1",
    "min_size: 4 min_size: 7 max_size: 6 max_size: 10 aspect_ratio: 2 flip: false clip: false "
    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step_h: 3 step_w: 5 offset: 0.3",
    "width: 3 width: 5 height: 4 height: 2 clip: false variance: 0.1 "
    "offset_h: 0.2 offset_h: 0.7 offset_w: 0.3 offset_w: 0.6",
])
def test_prior_box_agrees_with_opencv(tmp_path, body):
    net = f"""input: "data" input_shape {{ dim: 1 dim: 3 dim: 12 dim: 16 }}
    input: "feat" input_shape {{ dim: 1 dim: 2 dim: 3 dim: 4 }}
    layer {{ name: "pb" type: "PriorBox" bottom: "feat" bottom: "data" top: "pb"
      prior_box_param {{ {body} }} }}"""
    inputs = {"data": np.zeros((1, 3, 12, 16), np.float32),
              "feat": np.zeros((1, 2, 3, 4), np.float32)}
    ours, theirs = run_both(tmp_path, net, inputs, ["pb"])
    np.testing.assert_allclose(ours["pb"], theirs["pb"], atol=1e-6)


@pytest.mark.parametrize("params", [
    "share_location: true background_label_id: 0 code_type: CENTER_SIZE keep_top_k: 50 "
    "nms_param { nms_threshold: 0.45 }",
    "share_location: true background_label_id: 0 code_type: CENTER_SIZE keep_top_k: 7 "
    "nms_param { nms_threshold: 0.45 top_k: 5 }",
    "share_location: false background_label_id: 2 code_type: CORNER keep_top_k: 40 "
    "nms_param { nms_threshold: 0.3 }",
])
def test_detection_output_agrees_with_opencv(tmp_path, params):
    classes, batch = 4, 2
    net = f"""input: "data" input_shape {{ dim: {batch} dim: 3 dim: 40 dim: 40 }}
    input: "feat" input_shape {{ dim: {batch} dim: 2 dim: 4 dim: 4 }}
    input: "loc" input_shape {{ dim: {batch} dim: LOC }}
    input: "conf" input_shape {{ dim: {batch} dim: {16 * 4 * classes} }}
    layer {{ name: "pb" type: "PriorBox" bottom: "feat" bottom: "data" top: "pb"
      prior_box_param {{ min_size: 12 max_size: 20 aspect_ratio: 2 flip: true clip: false
        variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }} }}
    layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "pb"
      top: "det" detection_output_param {{ num_classes: {classes} {params}
        confidence_threshold: 0.3 }} }}"""
    loc_classes = 1 if "share_location: true" in params else classes
    net = net.replace("LOC", str(16 * 4 * 4 * loc_classes))
    rng = R(7)
    loc = rng.normal(scale=0.5, size=(batch, 16 * 4 * 4 * loc_classes))
    inputs = {"data": np.zeros((batch, 3, 40, 40), np.float32),
              "feat": np.zeros((batch, 2, 4, 4), np.float32),
              "loc": loc.astype(np.float32),
              "conf": rng.uniform(size=(batch, 16 * 4 * classes)).astype(np.float32)}
    ours, theirs = run_both(tmp_path, net, inputs, ["det"])
    assert len(ours["det"][0, 0]) > 5
    assert_same_detections(ours["det"], opencv_detections(theirs["det"]))


# -- whole nets: MobileNet-SSD and SSD300 ----------------------------------------------------------
MOBILENET = "chuanqi305/MobileNet-SSD/voc/MobileNetSSD_deploy.prototxt"
MOBILENET_BN = "chuanqi305/MobileNet-SSD/deploy.prototxt"
SSD300 = "dgschwend/netscope/presets/SSD300.prototxt"
HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"]


def check_ssd_net(tmp_path, text, extra=()):
    ours, theirs = run_both(tmp_path, text, None, HEADS + list(extra))
    for name in ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", *extra]:
        close(ours[name], theirs[name])
    dets = ours["detection_out"][0, 0]
    assert len(dets) > 10 and np.all(dets[:, 1] >= 1)
    assert_same_detections(dets, opencv_detections(theirs["detection_out"]))
    return dets


@pytest.mark.parametrize("threshold", [None, "0.5"])
def test_mobilenet_ssd_agrees_with_opencv(corpus, tmp_path, threshold):
    text = (corpus / MOBILENET).read_text()
    if threshold:                           # fewer boxes than keep_top_k: no truncation
        text = text.replace("confidence_threshold: 0.25", f"confidence_threshold: {threshold}")
    dets = check_ssd_net(tmp_path, text)
    assert (len(dets) == 100) == (threshold is None)


def test_mobilenet_ssd_with_batchnorm_agrees_with_opencv(corpus, tmp_path):
    check_ssd_net(tmp_path, (corpus / MOBILENET_BN).read_text())


def test_ssd300_agrees_with_opencv(corpus, tmp_path):
    text = (corpus / SSD300).read_text()
    dets = check_ssd_net(tmp_path, text, extra=["conv4_3_norm"])
    assert len(dets) == 200                                       # keep_top_k


def test_summary_shapes_of_the_ssd_nets(corpus, capsys):
    from protonet.cli import main

    def shapes(rel):
        assert main(["summary", str(corpus / rel), "--json"]) == 0
        s = json.loads(capsys.readouterr().out)
        return {t: sh for l in s["layers"] for t, sh in zip(l["tops"], l["top_shapes"])}

    sh = shapes(MOBILENET)
    assert sh["conv11_mbox_loc_perm"] == [1, 19, 19, 12]
    assert sh["conv11_mbox_priorbox"] == [1, 2, 19 * 19 * 3 * 4]
    assert sh["mbox_loc"] == [1, 1917 * 4] and sh["mbox_priorbox"] == [1, 2, 1917 * 4]
    assert sh["mbox_conf_flatten"] == [1, 1917 * 21] and sh["detection_out"] == [1, 1, 1, 7]
    sh = shapes(SSD300)
    assert sh["conv4_3_norm"] == [1, 512, 38, 38]
    assert sh["conv4_3_norm_mbox_conf_perm"] == [1, 38, 38, 84]
    assert sh["mbox_priorbox"] == [1, 2, 8732 * 4] and sh["mbox_loc"] == [1, 8732 * 4]
    assert sh["mbox_conf_flatten"] == [1, 8732 * 21] and sh["detection_out"] == [1, 1, 1, 7]
