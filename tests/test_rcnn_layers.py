"""The R-CNN family: ROIPooling, PSROIPooling, SmoothL1Loss, Proposal (and py-faster-rcnn's
Python proposal layer run natively), against hand-computed cases, the kernels' references,
PyTorch and OpenCV dnn."""
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import protonet
from protonet import ProtonetError
from protonet import rcnn_boxes as B
from protonet import roi_pooling as P
from protonet.io import parse_net
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

ROIS = np.array([[0, 3, 5, 60, 40], [1, -20, -7, 200, 300], [0, 40, 40, 30, 20],
                 [1, 16.5, 8, 100.4, 90], [0, 0, 0, 0, 0], [1, 150, 10, 170, 50],
                 [0, 24, 8, 24, 8]], np.float32)


def roi_layer(ph=3, pw=4, scale=0.125, dtype=np.float64):
    return make_layer(f'type: "ROIPooling" roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} '
                      f'spatial_scale: {scale} }}', dtype=dtype)


def psroi_layer(dim=2, group=3, scale=0.125, dtype=np.float64):
    return make_layer(f'type: "PSROIPooling" psroi_pooling_param {{ output_dim: {dim} '
                      f'group_size: {group} spatial_scale: {scale} }}', dtype=dtype)


# -- box kernels -------------------------------------------------------------------------------
def test_generate_anchors_are_py_faster_rcnns():
    # what py-faster-rcnn's generate_anchors() returns (its comment's MATLAB table is shifted
    # by one pixel from what the code computes)
    expected = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
    np.testing.assert_array_equal(B.generate_anchors(), expected)


def test_shifted_anchors_order_is_y_x_anchor():
    a = B.shifted_anchors(np.array([[0, 0, 3, 3], [1, 1, 2, 2]], float), 2, 3, 10)
    assert a.shape == (12, 4)
    np.testing.assert_array_equal(a[1], [1, 1, 2, 2])         # cell (0, 0), anchor 1
    np.testing.assert_array_equal(a[2], [10, 0, 13, 3])       # cell (0, 1)
    np.testing.assert_array_equal(a[6], [0, 10, 3, 13])       # cell (1, 0)


def test_bbox_transform_inv_clip_and_min_size_by_hand():
    box = np.array([[0, 0, 15, 15]], float)                   # w = 16, centre 8 (x1 + w/2)
    d = np.array([[0.5, 0, np.log(2), 0]], np.float32)
    out = B.bbox_transform_inv(box, d)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0, 32, 16]], atol=1e-5)
    clipped = B.clip_boxes(np.array([[-5, 3, 40, 50], [10, -1, 12, 2]], np.float32), 20, 30)
    np.testing.assert_array_equal(clipped, [[0, 3, 29, 19], [10, 0, 12, 2]])
    # widths 30 and 3 (inclusive): only the first reaches 4
    np.testing.assert_array_equal(B.min_size_keep(clipped, 4), [0])


def test_nms_suppresses_only_above_the_threshold():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 4], [20, 20, 29, 29]], np.float32)  # IoU 0.5
    np.testing.assert_array_equal(B.nms(boxes, 0.5), [0, 1, 2])
    np.testing.assert_array_equal(B.nms(boxes, 0.49), [0, 2])
    np.testing.assert_array_equal(B.nms(boxes, 0.49, limit=1), [0])


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_nms_matches_reference(thresh):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 60, (150, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 40, (150, 2))], 1).astype(np.float32)
    ref = B.nms_reference(boxes, thresh)
    np.testing.assert_array_equal(B.nms(boxes, thresh), ref)
    np.testing.assert_array_equal(B.nms(boxes, thresh, limit=7), ref[:7])


# -- ROIPooling --------------------------------------------------------------------------------
def test_roi_pooling_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)      # x[h, w] = 4h + w
    # spatial_scale 0.5: corners round(0.5) = 1 and round(2.5) = 3 (C rounds halves away
    # from zero); size 3 in 2 bins: rows [0, 2) and [1, 3) from the start, sharing row 2
    layer = roi_layer(2, 2, 0.5, np.float32)
    (y,) = run_layer(layer, [x, np.array([[0, 1, 1, 5, 5]], np.float32)])
    np.testing.assert_array_equal(y[0, 0], [[10, 11], [14, 15]])
    # scale 1, whole map; a region outside the map has empty bins: 0
    (y,) = run_layer(roi_layer(2, 2, 1.0, np.float32),
                     [x, np.array([[0, 0, 0, 3, 3], [0, 9, 9, 12, 12]], np.float32)])
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(y[1, 0], np.zeros((2, 2)))


def test_roi_pooling_backward_goes_to_the_first_maximum():
    layer = roi_layer(2, 2, 1.0, np.float32)
    bottom, top = setup_layer(layer, [np.zeros((1, 1, 4, 4)), np.array([[0, 0, 0, 3, 3]])])
    layer.forward(bottom, top)
    top[0].diff[...] = [[[[1, 2], [3, 4]]]]
    layer.backward(top, [True, False], bottom)
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expected)


@pytest.mark.parametrize("scale", [1 / 16, 0.125, 0.3])
@pytest.mark.parametrize("ties", [False, True])
def test_roi_pooling_kernels_match_reference(scale, ties):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 11)).astype(np.float32)
    if ties:
        x = np.maximum(x, 0).round(0)       # ReLU-like: many equal values in a bin
    batch = P.batch_indices(ROIS, 2)
    top, argmax = P.roi_max_pool(x, ROIS, batch, 3, 4, scale)
    ref_top, ref_argmax = P.roi_max_pool_reference(x, ROIS, 3, 4, scale)
    np.testing.assert_array_equal(top, ref_top)
    np.testing.assert_array_equal(argmax, ref_argmax)
    dtop = rng.normal(size=top.shape).astype(np.float32)
    np.testing.assert_allclose(P.roi_max_pool_backward(dtop, argmax, ROIS, batch, x.shape, scale),
                               P.roi_max_pool_backward_reference(dtop, argmax, ROIS, x.shape,
                                                                 scale), atol=1e-6)


def test_roi_pooling_gradients():
    rng = np.random.default_rng(1)
    # distinct values 0.01 apart: no maximum changes within the finite-difference step
    x = rng.permutation(2 * 3 * 9 * 11).reshape(2, 3, 9, 11) * 0.01
    well_formed = np.delete(ROIS, 2, axis=0).astype(np.float64)    # see the next test
    check_gradients(roi_layer(), [x, well_formed], check_bottoms=[0], max_checks=None)


def test_roi_pooling_backward_skips_cells_outside_the_region_as_the_fork():
    # a region with end < start is pooled as one cell at its start, but the fork's backward
    # only visits cells between start and end: nothing flows back (no true gradient)
    layer = roi_layer(1, 1, 1.0)
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    bottom, top = setup_layer(layer, [x, np.array([[0, 2, 2, 1, 1]])])
    layer.forward(bottom, top)
    assert top[0].data.item() == 10.0
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    assert not bottom[0].diff.any()


def test_roi_pooling_errors():
    layer = roi_layer(2, 2, 1.0)
    with pytest.raises(ProtonetError, match=r"roipooling.*batch index 3"):
        run_layer(layer, [np.zeros((2, 1, 4, 4)), np.array([[3, 0, 0, 1, 1]])])
    with pytest.raises(ProtonetError, match=r"R x 5"):
        run_layer(roi_layer(), [np.zeros((1, 1, 4, 4)), np.zeros((2, 4))])
    with pytest.raises(ProtonetError, match=r"roi_pooling_param.pooled_w must be > 0"):
        run_layer(make_layer('type: "ROIPooling" roi_pooling_param { pooled_h: 2 }'),
                  [np.zeros((1, 1, 4, 4)), np.zeros((1, 5))])


# -- PSROIPooling ------------------------------------------------------------------------------
def test_psroi_pooling_by_hand():
    # output_dim 1, group 2: bin (i, j) reads channel 2i + j; region [0, 0, 3, 3] at scale
    # 1 spans 4 cells, so every bin is 2 x 2
    x = np.stack([np.full((4, 4), 10.0 * k) for k in range(4)])[None]
    x[0, 3, 2:, 2:] = [[1, 2], [3, 4]]
    layer = psroi_layer(1, 2, 1.0, np.float32)
    (y,) = run_layer(layer, [x, np.array([[0, 0, 0, 3, 3], [0, 8, 8, 9, 9]], np.float32)])
    np.testing.assert_allclose(y[0, 0], [[0, 10], [20, 2.5]])
    np.testing.assert_array_equal(y[1], np.zeros((1, 2, 2)))   # outside: empty bins


@pytest.mark.parametrize("scale", [1 / 16, 0.125, 0.3])
def test_psroi_pooling_kernels_match_reference(scale):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 18, 7, 8)).astype(np.float32)
    batch = P.batch_indices(ROIS, 2)
    top = P.psroi_avg_pool(x, ROIS, batch, 2, 3, scale)
    np.testing.assert_allclose(top, P.psroi_avg_pool_reference(x, ROIS, 2, 3, scale),
                               rtol=1e-6, atol=1e-6)
    dtop = rng.normal(size=top.shape).astype(np.float32)
    np.testing.assert_allclose(P.psroi_avg_pool_backward(dtop, ROIS, batch, x.shape, 3, scale),
                               P.psroi_avg_pool_backward_reference(dtop, ROIS, x.shape, 3, scale),
                               rtol=1e-5, atol=1e-6)


def test_psroi_pooling_gradients():
    x = np.random.default_rng(4).normal(size=(2, 18, 7, 8))
    check_gradients(psroi_layer(), [x, ROIS.astype(np.float64)], check_bottoms=[0],
                    max_checks=300)


def test_psroi_pooling_checks_channels():
    with pytest.raises(ProtonetError, match=r"output_dim x group_size\^2 = 2 x 3\^2 = 18"):
        run_layer(psroi_layer(), [np.zeros((1, 16, 4, 4)), np.zeros((1, 5))])


# -- SmoothL1Loss ------------------------------------------------------------------------------
def smooth_l1_inputs(weights: bool, sigma: float, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 8, 2, 2))
    d = rng.uniform(-3, 3, size=x.shape)
    w_in = rng.uniform(0.5, 2, x.shape) if weights else np.ones_like(x)
    # keep w_in * d away from the kink at +-1/sigma^2 and from 0
    kink = 1 / sigma ** 2
    wd = w_in * d
    near = np.abs(np.abs(wd) - kink) < 0.05
    d[near] += 0.2 * np.sign(d[near])
    t = x - d
    arrays = [x, t]
    if weights:
        arrays += [w_in, rng.uniform(0, 2, x.shape)]
    return arrays


def torch_smooth_l1(arrays, sigma):
    import torch
    ts = [torch.tensor(a, requires_grad=(k < 2)) for k, a in enumerate(arrays)]
    d = ts[0] - ts[1]
    if len(ts) == 4:
        d = d * ts[2]
    err = torch.nn.functional.smooth_l1_loss(d, torch.zeros_like(d), reduction="none",
                                             beta=1 / sigma ** 2)
    if len(ts) == 4:
        err = err * ts[3]
    loss = err.sum() / arrays[0].shape[0]
    loss.backward()
    return loss.item(), ts[0].grad.numpy(), ts[1].grad.numpy()


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_smooth_l1_matches_torch(weights, sigma):
    pytest.importorskip("torch")
    arrays = smooth_l1_inputs(weights, sigma)
    layer = make_layer(f'type: "SmoothL1Loss" smooth_l1_loss_param {{ sigma: {sigma} }}')
    bottom, top = setup_layer(layer, arrays)
    layer.forward(bottom, top)
    loss, gx, gt = torch_smooth_l1(arrays, sigma)
    assert top[0].data.shape == ()
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    top[0].diff[...] = 2.0                                     # a loss weight of 2
    layer.backward(top, [True, True] + [False] * (len(arrays) - 2), bottom)
    np.testing.assert_allclose(bottom[0].diff, 2 * gx, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bottom[1].diff, 2 * gt, rtol=1e-12, atol=1e-15)


def test_smooth_l1_by_hand():
    # sigma 1: |d| < 1 -> d^2 / 2, else |d| - 1/2; N = 2
    x = np.array([[0.5, 3.0], [-2.0, 0.0]])
    (loss,) = run_layer(make_layer('type: "SmoothL1Loss"'), [x, np.zeros_like(x)])
    np.testing.assert_allclose(loss, (0.125 + 2.5 + 1.5 + 0) / 2)


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_smooth_l1_gradients(weights, sigma):
    layer = make_layer(f'type: "SmoothL1Loss" smooth_l1_loss_param {{ sigma: {sigma} }}')
    check_gradients(layer, smooth_l1_inputs(weights, sigma, seed=5), check_bottoms=[0, 1])


def test_smooth_l1_errors():
    a = np.zeros((2, 3))
    with pytest.raises(ProtonetError, match="both the inside and the outside weights"):
        run_layer(make_layer('type: "SmoothL1Loss"'), [a, a, a])
    with pytest.raises(ProtonetError, match="channels, height and width"):
        run_layer(make_layer('type: "SmoothL1Loss"'), [a, np.zeros((2, 4))])


# -- Proposal ----------------------------------------------------------------------------------
def proposal_reference(prob, deltas, im_info, stride, pre, post, thresh, min_size,
                       ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    """py-faster-rcnn's ProposalLayer.forward, written out here with plain loops for the
    anchors and the NMS (ties in score: earlier anchor first)."""
    base = np.array([0, 0, 15, 15], float)
    w, h = base[2] - base[0] + 1, base[3] - base[1] + 1
    cx, cy = base[0] + 0.5 * (w - 1), base[1] + 0.5 * (h - 1)
    cell = []
    for r in ratios:
        ws = np.round(np.sqrt(w * h / r))
        hs = np.round(ws * r)
        for s in scales:
            cell.append([cx - 0.5 * (ws * s - 1), cy - 0.5 * (hs * s - 1),
                         cx + 0.5 * (ws * s - 1), cy + 0.5 * (hs * s - 1)])
    a = len(cell)
    _, _, fh, fw = prob.shape
    found = []
    for y in range(fh):
        for x in range(fw):
            for k in range(a):
                anchor = np.array(cell[k]) + [x * stride, y * stride, x * stride, y * stride]
                d = deltas[0, 4 * k:4 * k + 4, y, x]
                bw, bh = anchor[2] - anchor[0] + 1, anchor[3] - anchor[1] + 1
                pcx, pcy = d[0] * bw + anchor[0] + 0.5 * bw, d[1] * bh + anchor[1] + 0.5 * bh
                pw, ph = np.exp(d[2]) * bw, np.exp(d[3]) * bh
                box = np.array([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph])
                box = np.clip(box, 0, [im_info[1] - 1, im_info[0] - 1] * 2)
                if min(box[2] - box[0] + 1, box[3] - box[1] + 1) >= min_size * im_info[2]:
                    found.append((-prob[0, a + k, y, x], len(found), box))
    found.sort(key=lambda f: (f[0], f[1]))
    found = found[:pre] if pre > 0 else found
    kept = B.nms_reference(np.array([f[2] for f in found]), thresh)
    kept = kept[:post] if post > 0 else kept
    return np.array([[0, *found[i][2]] for i in kept]), np.array([-found[i][0] for i in kept])


def rpn_inputs(h, w, seed=0, a=9, delta_std=0.3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(1, 2, a, h, w))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    deltas = rng.normal(0, delta_std, (1, 4 * a, h, w))
    return prob.reshape(1, 2 * a, h, w), deltas


PROPOSAL = ('type: "Proposal" top: "rois" top: "scores" proposal_param {{ feat_stride: 16 '
            'ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32 pre_nms_topn: {pre} '
            'post_nms_topn: {post} nms_thresh: {nms} min_size: {min_size} }}')


@pytest.mark.parametrize("pre, post, nms, min_size", [(6000, 300, 0.7, 16), (100, 20, 0.5, 16),
                                                      (0, 0, 0.7, 4)])
def test_proposal_matches_reference(pre, post, nms, min_size):
    prob, deltas = rpn_inputs(6, 7, delta_std=0.6)
    info = np.array([[90, 110, 1.5]])
    layer = make_layer(PROPOSAL.format(pre=pre, post=post, nms=nms, min_size=min_size))
    rois, scores = run_layer(layer, [prob, deltas, info])
    ref_rois, ref_scores = proposal_reference(prob, deltas, info[0], 16, pre, post, nms, min_size)
    assert rois.shape == ref_rois.shape and scores.shape == (len(ref_rois), 1)
    np.testing.assert_allclose(rois, ref_rois, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(scores[:, 0], ref_scores)


def test_proposal_by_hand():
    # one cell, one anchor [0, 0, 15, 15] per ratio/scale 1: a second, tiny one is dropped
    layer = make_layer('type: "Proposal" top: "rois" top: "scores" proposal_param { '
                       'feat_stride: 16 ratio: 1 scale: 1 min_size: 8 }')
    prob = np.array([0.2, 0.8, 0.6, 0.4]).reshape(1, 2, 1, 2)       # fg: 0.6, 0.4
    deltas = np.zeros((1, 4, 1, 2))
    deltas[0, 2:, 0, 1] = np.log(0.25)                              # second box: 4 x 4
    rois, scores = run_layer(layer, [prob, deltas, np.array([[40, 40, 1]])])
    np.testing.assert_allclose(rois, [[0, 0, 0, 16, 16]])           # (7.5+.5) +- 8
    np.testing.assert_allclose(scores, [[0.6]])


def test_proposal_top_shape_before_forward():
    layer = make_layer(PROPOSAL.format(pre=6000, post=300, nms=0.7, min_size=16))
    prob, deltas = rpn_inputs(3, 4)
    bottom, top = setup_layer(layer, [prob, deltas, np.array([[48, 64, 1]])])
    assert top[0].shape == (3 * 4 * 9, 5) and top[1].shape == (108, 1)    # fewer than 300
    with pytest.raises(ProtonetError, match="single-image"):
        setup_layer(make_layer(PROPOSAL.format(pre=1, post=1, nms=0.7, min_size=1)),
                    [np.zeros((2, 18, 3, 4)), np.zeros((2, 36, 3, 4)), np.zeros((2, 3))])


# -- py-faster-rcnn's Python proposal layer --------------------------------------------------
RPN_NET = """input: "prob" input_shape {{ dim: 1 dim: 18 dim: 6 dim: 7 }}
input: "deltas" input_shape {{ dim: 1 dim: 36 dim: 6 dim: 7 }}
input: "im_info" input_shape {{ dim: 1 dim: 3 }}
layer {{ name: "proposal" {body} bottom: "prob" bottom: "deltas" bottom: "im_info"
         top: "rois" }}
"""
PYTHON_BODY = ("type: 'Python' python_param {{ module: '{module}' layer: 'ProposalLayer' "
               "param_str: \"{param_str}\" }}")
NATIVE_BODY = ('type: "Proposal" proposal_param { feat_stride: 16 ratio: 0.5 ratio: 1 '
               'ratio: 2 scale: 8 scale: 16 scale: 32 }')


def run_rpn_net(body, phase=protonet.TEST):
    net = protonet.Net(parse_net(RPN_NET.format(body=body)), phase)
    prob, deltas = rpn_inputs(6, 7, seed=1, delta_std=0.5)
    out = net.forward(prob=prob, deltas=deltas, im_info=np.array([[90, 110, 0.5]]))
    return net, np.array(out["rois"])


def test_python_proposal_layer_runs_natively():
    before = set(sys.modules)
    net, rois = run_rpn_net(PYTHON_BODY.format(module="rpn.proposal_layer",
                                               param_str="'feat_stride': 16"))
    assert not any(m == "rpn" or m.startswith("rpn.") for m in set(sys.modules) - before)
    assert type(net.layers[-1]).__name__ == "ProposalLayer"
    _, native = run_rpn_net(NATIVE_BODY)
    assert len(rois) > 10
    np.testing.assert_array_equal(rois, native)


def test_python_proposal_layer_param_str_forms_and_phase():
    yaml_lines = "'feat_stride': 16\\n'scales': !!python/tuple [8, 16, 32]"
    _, rois = run_rpn_net(PYTHON_BODY.format(module="rpn.proposal_layer", param_str=yaml_lines))
    _, native = run_rpn_net(NATIVE_BODY)
    np.testing.assert_array_equal(rois, native)
    body = PYTHON_BODY.format(module="rpn.proposal_layer", param_str="'feat_stride': 16")
    layer = protonet.Net(parse_net(RPN_NET.format(body=body)), protonet.TRAIN).layers[-1]
    assert (layer.pre_nms, layer.post_nms) == (12000, 2000)    # py-faster-rcnn's cfg.TRAIN


@pytest.mark.parametrize("param_str, message", [
    ("'feat_stride': __import__('os')", r"python_param.param_str .* cannot be read"),
    ("'feat_stride': 16, 'num_classes': 21", r"key\(s\) 'num_classes'"),
    ("'scales': [8]", r"must give 'feat_stride'"),
])
def test_python_proposal_layer_param_str_errors(param_str, message):
    body = PYTHON_BODY.format(module="rpn.proposal_layer", param_str=param_str)
    with pytest.raises(ProtonetError, match=r"layer 'proposal'.*" + message):
        run_rpn_net(body)


def test_other_python_layers_are_still_refused():
    body = PYTHON_BODY.format(module="rpn.anchor_target_layer", param_str="'feat_stride': 16")
    with pytest.raises(ProtonetError, match=r"layer 'proposal'.*allow-python-layers"):
        run_rpn_net(body)


# -- Dropout's scale_train (caffe-fast-rcnn), used by py-faster-rcnn's nets ----------------------
def test_dropout_scale_train_false_scales_at_test_time():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false }')
    bottom, top = setup_layer(layer, [np.ones((2, 3))])
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, 0.7)
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, 0.7)
    train = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.5 scale_train: false }',
                       phase=protonet.TRAIN)
    (y,) = run_layer(train, [np.ones((1000,))])
    assert set(np.unique(y)) == {0.0, 1.0}                      # kept values unscaled


# -- OpenCV ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0625, 0.3])
def test_roi_and_psroi_pooling_agree_with_opencv(tmp_path, scale):
    from opencv_oracle import protonet_and_opencv
    rng = np.random.default_rng(0)
    rois = np.concatenate([ROIS, [[1, 33.5, 2.5, 70, 61]]]).astype(np.float32)
    net = f"""input: "data" input_shape {{ dim: 2 dim: 18 dim: 9 dim: 11 }}
    input: "rois" input_shape {{ dim: {len(rois)} dim: 5 }}
    layer {{ name: "pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool"
      roi_pooling_param {{ pooled_h: 3 pooled_w: 4 spatial_scale: {scale} }} }}
    layer {{ name: "ps" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "ps"
      psroi_pooling_param {{ output_dim: 2 group_size: 3 spatial_scale: {scale} }} }}"""
    x = rng.normal(size=(2, 18, 9, 11)).astype(np.float32)
    ours, theirs = protonet_and_opencv(tmp_path, net, {"data": x, "rois": rois}, ["pool", "ps"])
    np.testing.assert_array_equal(ours["pool"], theirs["pool"])
    np.testing.assert_allclose(ours["ps"], theirs["ps"], rtol=1e-5, atol=1e-6)


def test_proposal_agrees_with_opencv(tmp_path):
    from opencv_oracle import protonet_and_opencv
    h, w = 12, 15
    net = f"""input: "prob" input_shape {{ dim: 1 dim: 18 dim: {h} dim: {w} }}
    input: "deltas" input_shape {{ dim: 1 dim: 36 dim: {h} dim: {w} }}
    input: "im_info" input_shape {{ dim: 1 dim: 3 }}
    layer {{ name: "proposal" {NATIVE_BODY} bottom: "prob" bottom: "deltas"
             bottom: "im_info" top: "proposal" }}"""
    for seed in range(3):
        prob, deltas = rpn_inputs(h, w, seed=seed)
        # OpenCV drops no small boxes: a scale of 1/16 makes the minimum size 1 pixel
        info = np.array([[h * 16 - 5, w * 16 + 3, 1 / 16]], np.float32)
        ours, theirs = protonet_and_opencv(
            tmp_path, net, {"prob": prob.astype(np.float32),
                            "deltas": deltas.astype(np.float32), "im_info": info}, ["proposal"])
        r = len(ours["proposal"])
        assert 50 < r < 300 and theirs["proposal"].shape == (300, 5)   # OpenCV pads with zeros
        np.testing.assert_allclose(ours["proposal"], theirs["proposal"][:r], rtol=1e-5, atol=1e-3)
        assert not theirs["proposal"][r:].any()


# -- acceptance: py-faster-rcnn's ZF test net in protonet and OpenCV ---------------------------------
ZF = "rbgirshick/py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_end2end/test.prototxt"


def _layer(net, name):
    return next(layer for layer in net.layers if layer.name == name)


def test_py_faster_rcnn_zf_agrees_with_opencv(corpus, tmp_path):
    cv2 = pytest.importorskip("cv2")
    text = (corpus / ZF).read_text()
    net = protonet.Net(parse_net(text), protonet.TEST)       # the Python layer runs natively
    rng = np.random.default_rng(0)
    for layer in net.layers:
        for k, blob in enumerate(layer.blobs):
            fan_in = int(np.prod(blob.shape[1:])) if k == 0 else 1
            blob.data[...] = rng.normal(0, np.sqrt(2.0 / fan_in) if k == 0 else 0.1, blob.shape)
    x = rng.normal(0, 50, (1, 3, 224, 224)).astype(np.float32)
    # OpenCV's Proposal drops no small boxes: scale 1/16 makes py-faster-rcnn's 16 pixels 1
    info = np.array([[224, 224, 1 / 16]], np.float32)
    with np.errstate(over="ignore"):
        net.forward(data=x, im_info=info)
    # RPN logits of spread ~1.5 (scores not all ties), deltas ~0.3, class logits ~2
    for name, spread in (("rpn_cls_score", 1.5), ("rpn_bbox_pred", 0.3), ("cls_score", 2.0),
                         ("bbox_pred", 1.0)):
        std = float(net.blobs[name].data.std())
        for blob in _layer(net, name).blobs:
            blob.data[...] *= spread / std
    ours = net.forward(blobs=["rois", "cls_prob", "bbox_pred"], data=x, im_info=info)
    ours = {k: np.array(v) for k, v in ours.items()}
    net.save(str(tmp_path / "zf.caffemodel"))

    # OpenCV refuses type "Python": give it the same layer as its native Proposal
    param = parse_net(text)
    lp = next(lp for lp in param.layer if lp.type == "Python")
    lp.type = "Proposal"
    lp.ClearField("python_param")
    lp.proposal_param.feat_stride = 16
    lp.proposal_param.ratio.extend([0.5, 1, 2])
    lp.proposal_param.scale.extend([8, 16, 32])
    (tmp_path / "zf.prototxt").write_text(text_format.MessageToString(param))
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "zf.prototxt"), str(tmp_path / "zf.caffemodel"))
    cv.setInput(x, "data")
    cv.setInput(info, "im_info")
    rois, cls_prob, bbox_pred = cv.forward(["proposal", "cls_prob", "bbox_pred"])

    r = len(ours["rois"])
    assert 100 < r <= 300 and not rois[r:].any()           # OpenCV: 300 rows, zeros after R
    theirs = {"rois": rois[:r], "cls_prob": cls_prob[:r], "bbox_pred": bbox_pred[:r]}
    if not np.allclose(ours["rois"], theirs["rois"], rtol=1e-4, atol=1e-2):
        # near-equal scores may come out in either order: compare row sets
        for d in (ours, theirs):
            order = np.lexsort(np.round(d["rois"], 2).T[::-1])
            for k in d:
                d[k] = d[k][order]
    for k in ("rois", "cls_prob", "bbox_pred"):
        scale = float(np.abs(theirs[k]).max())
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-4, atol=1e-4 * scale, err_msg=k)
    assert np.ptp(ours["cls_prob"]) > 0.1 and len(np.unique(ours["rois"][:, 1])) > 50


def test_summary_runs_the_native_proposal_layer(corpus):
    from protonet.tools.shapes import summarize_param
    summary = summarize_param(parse_net((corpus / ZF).read_text()))
    rows = {row["name"]: row for row in summary["layers"]}
    assert rows["proposal"]["top_shapes"] == [[300, 5]]
    assert rows["fc6"]["top_shapes"] == [[300, 4096]]
