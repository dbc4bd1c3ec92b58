"""The SSD fork's MultiBoxLoss and the kernels of protonet.multibox: hand-computed matching,
encoding round trips through detection.decode_boxes, mining counts, the normalizations,
the loop references, gradient checks, and one loss recomputed independently with PyTorch."""
import numpy as np
import pytest

from protonet import ProtonetError, detection
from protonet import multibox as mb
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

R = np.random.default_rng
VAR = [0.1, 0.1, 0.2, 0.2]


def grid_priors(n=4, sizes=(0.2, 0.35)):
    """``(n * n * len(sizes), 4)`` square priors centred on an n x n grid."""
    out = []
    for y in range(n):
        for x in range(n):
            cx, cy = (x + 0.5) / n, (y + 0.5) / n
            out += [[cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2] for s in sizes]
    return np.array(out)


def prior_blob(priors, var=VAR):
    """The PriorBox top (1, 2, P * 4): corners, then variances."""
    return np.stack([priors.reshape(-1), np.tile(var, len(priors))])[None]


def label_blob(rows):
    return np.asarray(rows, np.float64).reshape(1, 1, -1, 8)


GT_ROWS = [[0, 1, 0, 0.1, 0.1, 0.4, 0.45, 0],
           [0, 2, 0, 0.5, 0.5, 0.9, 0.8, 0],
           [1, 1, 0, 0.3, 0.2, 0.7, 0.6, 0]]


def spaced_conf(rng, n, p, c):
    """Scores whose per-prior losses are far apart (mining cannot flip within a finite
    difference step): the background logit of each prior from a shuffled ladder."""
    conf = rng.normal(scale=0.3, size=(n, p, c))
    for i in range(n):
        conf[i, :, 0] = rng.permutation(np.linspace(-3, 3, p))
    return conf.reshape(n, -1)


def layer_text(extra="", mbox="", propagate=True):
    pd = ("propagate_down: true propagate_down: true propagate_down: false "
          "propagate_down: false") if propagate else ""
    return (f'type: "MultiBoxLoss" {pd} {extra} multibox_loss_param {{ num_classes: 3 '
            f'code_type: CENTER_SIZE {mbox} }}')


# -- kernels: ground truth and overlaps ----------------------------------------------------------
def test_ground_truth_groups_rows_by_item_skipping_empty_and_difficult():
    rows = [[1, 2, 0, .1, .1, .2, .2, 0], [-1, -1, -1, -1, -1, -1, -1, -1],
            [0, 1, 0, .3, .3, .5, .5, 1], [1, 3, 1, .4, .4, .6, .6, 0]]
    gts = mb.ground_truth(label_blob(rows))
    assert sorted(gts) == [0, 1]
    np.testing.assert_array_equal(gts[1][1], [2, 3])
    np.testing.assert_allclose(gts[1][0], [[.1, .1, .2, .2], [.4, .4, .6, .6]], rtol=1e-6)
    assert sorted(mb.ground_truth(label_blob(rows), use_difficult_gt=False)) == [1]


def test_jaccard_matches_reference_and_detection():
    rng = R(0)
    a = rng.uniform(0, 1, (30, 2))
    a = np.concatenate([a, a + rng.uniform(-0.1, 0.5, (30, 2))], axis=1)
    b = np.concatenate([a[:10] + 0.05, [[0.2, 0.2, 0.2, 0.4]]])        # touching, empty
    fast = mb.jaccard(a, b)
    assert fast.dtype == np.float32
    ref = [[mb.jaccard_reference(x, y) for y in b] for x in a]
    np.testing.assert_array_equal(fast, np.array(ref, np.float32))
    np.testing.assert_allclose(fast, detection.jaccard_overlap(a, b), atol=1e-6)


# -- kernels: matching ------------------------------------------------------------------------------
GT = [[0.1, 0.1, 0.5, 0.5], [0.45, 0.45, 0.9, 0.9]]
PRIORS = [[0.1, 0.1, 0.5, 0.5],      # IoU 1 with box 0
          [0.12, 0.1, 0.52, 0.5],    # 0.905 with box 0
          [0.45, 0.45, 0.85, 0.85],  # 0.790 with box 1, 0.008 with box 0
          [0.6, 0.6, 0.7, 0.7],      # 0.049 with box 1
          [0.0, 0.0, 0.05, 0.05],    # nothing
          [0.3, 0.3, 0.6, 0.6]]      # 0.190 with box 0, 0.083 with box 1


def test_bipartite_matching_by_hand():
    idx, ov = mb.match_boxes(GT, PRIORS, mb.BIPARTITE)
    np.testing.assert_array_equal(idx, [0, -1, 1, -1, -1, -1])
    np.testing.assert_allclose(ov, [1, 0.152 / 0.168, 0.16 / 0.2025, 0.01 / 0.2025, 0,
                                    0.04 / 0.21], rtol=1e-5)


def test_per_prediction_matching_by_hand():
    idx, ov = mb.match_boxes(GT, PRIORS, mb.PER_PREDICTION, 0.5)
    np.testing.assert_array_equal(idx, [0, 0, 1, -1, -1, -1])
    idx, _ = mb.match_boxes(GT, PRIORS, mb.PER_PREDICTION, 0.18)
    np.testing.assert_array_equal(idx, [0, 0, 1, -1, -1, 0])
    idx, _ = mb.match_boxes(GT, PRIORS, mb.PER_PREDICTION, 0.95)        # above prior 1's
    np.testing.assert_array_equal(idx, [0, -1, 1, -1, -1, -1])


def test_bipartite_takes_the_largest_overlap_first_and_each_box_once():
    # prior 0 overlaps box 1 best (0.9) and box 0 (0.6); prior 1 overlaps box 0 at 0.5:
    # box 1 goes to prior 0 first, so box 0 falls to prior 1
    gt = [[0.0, 0.0, 0.6, 1.0], [0.0, 0.0, 0.9, 1.0]]
    priors = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.3, 1.0]]
    idx, ov = mb.match_boxes(gt, priors, mb.BIPARTITE)
    np.testing.assert_array_equal(idx, [1, 0])
    np.testing.assert_allclose(ov, [0.9, 0.5], rtol=1e-6)
    idx, _ = mb.match_boxes(gt[:1], [[0, 0, .6, 1], [0, 0, .6, 1]], mb.BIPARTITE)
    np.testing.assert_array_equal(idx, [0, -1])                 # a tie: the lower prior


def test_cross_boundary_priors_are_ignored():
    priors = [[-0.1, 0.1, 0.5, 0.5]] + PRIORS
    idx, ov = mb.match_boxes(GT, priors, mb.PER_PREDICTION, 0.5, ignore_cross_boundary=True)
    np.testing.assert_array_equal(idx, [-2, 0, 0, 1, -1, -1, -1])
    assert ov[0] == 0
    idx, _ = mb.match_boxes(GT, priors, mb.PER_PREDICTION, 0.5)
    assert idx[0] == 0 and idx[1] == 0                           # prior 1 still matches box 0


@pytest.mark.parametrize("match_type", [mb.BIPARTITE, mb.PER_PREDICTION])
@pytest.mark.parametrize("seed", range(4))
def test_matching_matches_reference(match_type, seed):
    rng = R(seed)
    priors = grid_priors(5)
    priors[::9] += 0.06                                         # a few cross the border
    xy = rng.uniform(0, 0.7, (4, 2))
    gt = np.concatenate([xy, xy + rng.uniform(0.1, 0.3, (4, 2))], axis=1)
    for ignore in (False, True):
        fast = mb.match_boxes(gt, priors, match_type, 0.4, ignore)
        ref = mb.match_boxes_reference(gt, priors, match_type, 0.4, ignore)
        np.testing.assert_array_equal(fast[0], ref[0])
        np.testing.assert_array_equal(fast[1], ref[1])


# -- kernels: encoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [detection.CORNER, detection.CENTER_SIZE, detection.CORNER_SIZE])
@pytest.mark.parametrize("in_target", [False, True])
def test_encode_round_trips_through_decode(code, in_target):
    rng = R(code)
    priors = grid_priors(3)
    var = rng.uniform(0.05, 0.3, (len(priors), 4))
    xy = rng.uniform(0, 0.6, (len(priors), 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.4, (len(priors), 2))], axis=1)
    enc = mb.encode_boxes(priors, var, boxes, code, in_target)
    np.testing.assert_allclose(detection.decode_boxes(priors, var, enc, code, in_target), boxes,
                               atol=2e-6)
    ref = [mb.encode_box_reference(p, v, b, code, in_target) for p, v, b in
           zip(priors, var, boxes)]
    np.testing.assert_allclose(enc, ref, rtol=1e-6, atol=1e-6)


def test_center_size_encoding_by_hand():
    prior, box = [0.2, 0.2, 0.6, 0.4], [0.24, 0.06, 0.64, 0.46]   # see test_ssd_layers
    enc = mb.encode_boxes([prior], [VAR], [box], detection.CENTER_SIZE)
    np.testing.assert_allclose(enc, [[1, -2, 0, 5 * np.log(2)]], atol=1e-5)


# -- kernels: mining ----------------------------------------------------------------------------------
def test_max_negative_mining_counts():
    indices = np.array([0, -1, -1, 1, -1, -1, -1, -1, -1, -2])
    overlaps = np.array([.9, .1, .6, .8, 0, .2, .3, .49, .0, 0])
    losses = np.array([5., 1, 9, 5, 2, 8, 7, 3, 6, 10])
    # 2 positives x 1.5 = 3 negatives among the eligible 1, 4, 5, 6, 7, 8 (2: overlap 0.6)
    np.testing.assert_array_equal(mb.mine_max_negative(losses, indices, overlaps, 1.5, 0.5),
                                  [5, 6, 8])
    np.testing.assert_array_equal(mb.mine_max_negative(losses, indices, overlaps, 3, 0.5),
                                  [1, 4, 5, 6, 7, 8])          # 6 wanted, 6 eligible
    assert len(mb.mine_max_negative(losses, indices, overlaps, 100, 0.5)) == 6
    assert len(mb.mine_max_negative(losses, np.full(10, -1), overlaps, 3, 0.5)) == 0
    np.testing.assert_array_equal(mb.mine_max_negative(losses, indices, overlaps, 1.5, 0.65),
                                  [2, 5, 6])


@pytest.mark.parametrize("seed", range(4))
def test_max_negative_matches_reference(seed):
    rng = R(seed)
    indices = rng.choice([-2, -1, -1, -1, 0, 1], 60)
    overlaps = rng.uniform(0, 1, 60)
    losses = np.round(rng.uniform(0, 5, 60), 1)                 # ties, taken lower first
    fast = mb.mine_max_negative(losses, indices, overlaps, 2.5, 0.5)
    np.testing.assert_array_equal(fast, mb.mine_max_negative_reference(losses, indices,
                                                                       overlaps, 2.5, 0.5))
    boxes = np.concatenate([grid_priors(5), grid_priors(5)[:10]])       # 60, some twice
    fast = mb.mine_max_negative(losses, indices, overlaps, 2.5, 0.5, boxes, 0.4, 40)
    ref = mb.mine_max_negative_reference(losses, indices, overlaps, 2.5, 0.5, boxes, 0.4, 40)
    np.testing.assert_array_equal(fast, ref)


def test_hard_example_mining_selects_by_loss_and_drops_unselected_matches():
    indices = np.array([0, -1, 1, -1, -2, -1])
    losses = np.array([1.0, 5.0, 4.0, 0.5, 9.0, 3.0])
    new, neg = mb.mine_hard_examples(losses, indices, 3)
    # the 3 largest: priors 4 (ignored), 1 (negative), 2 (kept match); prior 0 unmatched now
    np.testing.assert_array_equal(new, [-1, -1, 1, -1, -2, -1])
    np.testing.assert_array_equal(neg, [1])
    boxes = [[0, 0, .5, .5], [0, 0, .5, .5], [.5, .5, 1, 1], [0, 0, .1, .1],
             [0, 0, .001, .001], [.5, .5, 1, 1]]
    kept = mb.nms_by_loss(boxes, losses, 0.5)
    np.testing.assert_array_equal(kept, [1, 2, 3])              # 4 too small, 0/5 overlap
    new, neg = mb.mine_hard_examples(losses, indices, 3, boxes, 0.5)
    np.testing.assert_array_equal(neg, [1, 3])


@pytest.mark.parametrize("nms", [False, True])
def test_hard_example_mining_matches_reference(nms):
    rng = R(8)
    indices = rng.choice([-2, -1, -1, 0, 1, 2], 50)
    losses = np.round(rng.uniform(0, 4, 50), 1)
    boxes = grid_priors(5)[:50] if nms else None
    for size in (5, 20, 80):
        fast = mb.mine_hard_examples(losses, indices, size, boxes, 0.3 if nms else 0.0, 30)
        ref = mb.mine_hard_examples_reference(losses, indices, size, boxes,
                                              0.3 if nms else 0.0, 30)
        np.testing.assert_array_equal(fast[0], ref[0])
        np.testing.assert_array_equal(fast[1], ref[1])


def test_conf_losses_match_reference():
    rng = R(3)
    scores = rng.normal(scale=3, size=(20, 5))
    labels = rng.integers(0, 5, 20)
    for kind in (mb.SOFTMAX, mb.LOGISTIC):
        np.testing.assert_allclose(mb.conf_losses(scores, labels, kind),
                                   mb.conf_losses_reference(scores, labels, kind), rtol=1e-12)


# -- the layer ------------------------------------------------------------------------------------
def inputs(seed=0, n=2, priors=None, c=3, loc_classes=1):
    rng = R(seed)
    priors = grid_priors() if priors is None else priors
    p = len(priors)
    loc = rng.normal(scale=0.3, size=(n, p * loc_classes * 4))
    return [loc, spaced_conf(rng, n, p, c), prior_blob(priors), label_blob(GT_ROWS)]


def torch_loss(bottoms, neg_pos_ratio=3.0, normalize_by="valid"):
    """The fork's loss for share_location, PER_PREDICTION 0.5, CENTER_SIZE, SmoothL1,
    softmax and MAX_NEGATIVE mining, recomputed with the loop references and PyTorch."""
    import torch
    loc, conf, prior, label = bottoms
    n = loc.shape[0]
    priors = prior[0, 0].reshape(-1, 4)
    var = prior[0, 1].reshape(-1, 4)
    p = len(priors)
    loc = torch.tensor(loc.reshape(n, p, 4))
    conf = torch.tensor(conf.reshape(n, p, 3))
    rows = np.asarray(label).reshape(-1, 8)
    loc_loss, conf_loss, matches = 0.0, 0.0, 0
    for i in range(n):
        mine = rows[rows[:, 0] == i]
        if not len(mine):
            continue
        idx, ov = mb.match_boxes_reference(mine[:, 3:7], priors, mb.PER_PREDICTION, 0.5)
        pos = [j for j in range(p) if idx[j] > -1]
        target = torch.tensor([mb.encode_box_reference(priors[j], var[j], mine[idx[j], 3:7],
                                                       detection.CENTER_SIZE) for j in pos])
        loc_loss = loc_loss + torch.nn.functional.smooth_l1_loss(
            loc[i, pos], target.to(loc.dtype), reduction="sum", beta=1.0)
        bg_loss = -torch.log_softmax(conf[i], dim=1)[:, 0]
        eligible = [j for j in range(p) if idx[j] == -1 and ov[j] < 0.5]
        eligible.sort(key=lambda j: -float(bg_loss[j]))
        neg = eligible[:int(len(pos) * neg_pos_ratio)]
        labels = [int(mine[idx[j], 1]) for j in pos] + [0] * len(neg)
        conf_loss = conf_loss + torch.nn.functional.cross_entropy(
            conf[i, pos + neg], torch.tensor(labels), reduction="sum")
        matches += len(pos)
    norm = {"valid": max(matches, 1), "none": 1}[normalize_by]
    return float((loc_loss + conf_loss) / norm)


def test_loss_agrees_with_an_independent_pytorch_computation():
    pytest.importorskip("torch")
    bottoms = inputs(1)
    (y,) = run_layer(make_layer(layer_text()), bottoms)
    assert float(y) == pytest.approx(torch_loss(bottoms), rel=1e-7)
    (y,) = run_layer(make_layer(layer_text('loss_param { normalization: NONE }')), bottoms)
    assert float(y) == pytest.approx(torch_loss(bottoms, normalize_by="none"), rel=1e-7)


def test_normalizations_divide_the_same_sum():
    bottoms = inputs(2)
    losses, counts = {}, {}
    for mode in ("VALID", "FULL", "BATCH_SIZE", "NONE"):
        layer = make_layer(layer_text(f"loss_param {{ normalization: {mode} }}"))
        (y,) = run_layer(layer, bottoms)
        losses[mode], counts[mode] = float(y), layer.num_matches
    total = losses["NONE"]
    p = len(grid_priors())
    assert losses["VALID"] == pytest.approx(total / counts["VALID"])
    assert losses["FULL"] == pytest.approx(total / (2 * p))
    assert losses["BATCH_SIZE"] == pytest.approx(total / 2)
    legacy = make_layer(layer_text("loss_param { normalize: false }"))
    assert float(run_layer(legacy, bottoms)[0]) == pytest.approx(losses["BATCH_SIZE"])


def test_loc_weight_and_propagate_down_pick_the_parts():
    bottoms = inputs(3)
    full = float(run_layer(make_layer(layer_text()), bottoms)[0])
    double = float(run_layer(make_layer(layer_text(mbox="loc_weight: 2")), bottoms)[0])
    conf_only = make_layer('type: "MultiBoxLoss" propagate_down: false propagate_down: true '
                           'propagate_down: false propagate_down: false multibox_loss_param { '
                           'num_classes: 3 code_type: CENTER_SIZE }')
    conf_part = float(run_layer(conf_only, bottoms)[0])
    loc_part = full - conf_part
    assert loc_part > 0 and conf_part > 0
    assert double == pytest.approx(conf_part + 2 * loc_part)
    # no propagate_down given: the fork's default, both parts
    assert float(run_layer(make_layer(layer_text(propagate=False)), bottoms)[0]) == \
        pytest.approx(full)


def test_mining_counts_in_the_layer():
    layer = make_layer(layer_text(mbox="neg_pos_ratio: 2"))
    run_layer(layer, inputs(4))
    positives = [int(np.sum(layer.pos[0] == i)) for i in range(2)]
    assert layer.num_matches == sum(positives) >= 3
    assert [len(n) for n in layer.negatives] == [2 * k for k in positives]
    none = make_layer(layer_text(mbox="mining_type: NONE"))
    run_layer(none, inputs(4))
    assert len(none.conf_rows[0]) == 2 * len(grid_priors())      # every prior


def test_an_image_without_boxes_adds_no_negatives_and_a_batch_without_boxes_is_zero():
    bottoms = inputs(5, n=3)
    layer = make_layer(layer_text())
    run_layer(layer, bottoms)
    assert len(layer.negatives[2]) == 0
    empty = bottoms[:3] + [label_blob([[-1] * 8])]
    (y,) = run_layer(make_layer(layer_text()), empty)
    assert float(y) == 0.0
    (y,) = run_layer(make_layer(layer_text(mbox="mining_type: NONE")), empty)
    assert float(y) > 0                                           # every prior background


def test_difficult_boxes_and_agnostic_labels():
    rows = [r[:] for r in GT_ROWS]
    rows[1][7] = 1
    bottoms = inputs(6)[:3] + [label_blob(rows)]
    with_difficult = make_layer(layer_text())
    run_layer(with_difficult, bottoms)
    without = make_layer(layer_text(mbox="use_difficult_gt: false"))
    run_layer(without, bottoms)
    assert without.num_matches < with_difficult.num_matches
    agnostic = make_layer('type: "MultiBoxLoss" multibox_loss_param { num_classes: 2 '
                          'map_object_to_agnostic: true code_type: CENTER_SIZE }')
    b = inputs(6, c=2)
    run_layer(agnostic, b)
    assert set(agnostic.conf_rows[2].tolist()) == {0, 1}


@pytest.mark.parametrize("mbox", [
    "",
    "conf_loss_type: LOGISTIC",
    "mining_type: NONE",
    "mining_type: NONE conf_loss_type: LOGISTIC loc_loss_type: L2",
    "mining_type: HARD_EXAMPLE sample_size: 12",
    "encode_variance_in_target: true match_type: BIPARTITE",
    "bp_inside: true loc_weight: 0.5",
    "nms_param { nms_threshold: 0.3 top_k: 20 } use_prior_for_nms: true",
])
def test_gradients(mbox):
    check_gradients(make_layer(layer_text(mbox=mbox)), inputs(7), check_bottoms=[0, 1])


@pytest.mark.parametrize("mbox", ["share_location: false mining_type: NONE code_type: CORNER",
                                  "share_location: false mining_type: NONE "
                                  "use_prior_for_matching: false"])
def test_unshared_locations(mbox):
    text = f'type: "MultiBoxLoss" multibox_loss_param {{ num_classes: 3 {mbox} }}'
    bottoms = inputs(8, loc_classes=3)
    if "use_prior_for_matching" not in mbox:
        check_gradients(make_layer(text), bottoms, check_bottoms=[0, 1])
    layer = make_layer(text)
    run_layer(layer, bottoms)
    assert set(layer.pos[1].tolist()) <= {1, 2} and layer.num_matches > 0


def test_matching_against_predictions():
    bottoms = inputs(9)
    bottoms[0][...] = 0                              # predictions decode to the priors
    a = make_layer(layer_text(mbox="use_prior_for_matching: false"))
    b = make_layer(layer_text())
    ya, yb = run_layer(a, bottoms), run_layer(b, bottoms)
    assert float(ya[0]) == pytest.approx(float(yb[0]), rel=1e-6)
    assert a.num_matches == b.num_matches


@pytest.mark.parametrize("text, message", [
    ('type: "MultiBoxLoss" multibox_loss_param { }', "num_classes"),
    ('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 share_location: false }',
     "share_location"),
    ('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 do_neg_mining: false }',
     "do_neg_mining"),
    ('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 background_label_id: 3 }',
     "background_label_id"),
])
def test_parameter_errors_name_the_field(text, message):
    with pytest.raises(ProtonetError, match=message):
        run_layer(make_layer(text), inputs())


def test_data_errors():
    bottoms = inputs()
    bad = [r[:] for r in GT_ROWS]
    bad[0][1] = 0
    with pytest.raises(ProtonetError, match="background"):
        run_layer(make_layer(layer_text()), bottoms[:3] + [label_blob(bad)])
    with pytest.raises(ProtonetError, match="mbox_conf"):
        run_layer(make_layer(layer_text()), [bottoms[0], bottoms[1][:, :-3]] + bottoms[2:])
    layer = make_layer(layer_text())
    bottom, top = setup_layer(layer, bottoms)
    layer.forward(bottom, top)
    with pytest.raises(ProtonetError, match="prior"):
        layer.backward(top, [True, True, True, False], bottom)
