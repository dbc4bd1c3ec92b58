"""EuclideanLoss, SigmoidCrossEntropyLoss, HingeLoss, MultinomialLogisticLoss, InfogainLoss
and ContrastiveLoss against PyTorch and Caffe's hand-computed rules."""
import numpy as np
import pytest

from protonet import ProtonetError
from protonet.io.blobs import array_to_blob_proto
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")
F = torch.nn.functional


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def item_labels(n, classes, seed=3):
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.float32)


def layer_of(type_name, params="", dtype=np.float32):
    return make_layer(f'type: "{type_name}" {params}', dtype=dtype)


def loss_and_grads(layer, bottoms, propagate, loss_weight=1.0, num_top=1):
    bottom, top = setup_layer(layer, bottoms, num_top=num_top)
    layer.forward(bottom, top)
    top[0].diff[...] = loss_weight
    for b in bottom:
        b.diff[...] = np.nan  # backward must overwrite what it propagates
    layer.backward(top, propagate, bottom)
    return [t.data.copy() for t in top], [b.diff.copy() for b in bottom]


def t(array, grad=False):
    x = torch.from_numpy(np.array(array, dtype=np.float64))
    return x.requires_grad_() if grad else x


@pytest.mark.parametrize("type_name,label_bottom", [
    ("EuclideanLoss", None), ("SigmoidCrossEntropyLoss", 1), ("HingeLoss", 1),
    ("MultinomialLogisticLoss", 1), ("InfogainLoss", 1), ("ContrastiveLoss", 2)])
def test_losses_weight_top_by_one_and_output_a_scalar(type_name, label_bottom):
    arrays = {
        "EuclideanLoss": [randn(3, 2), randn(3, 2, seed=1)],
        "SigmoidCrossEntropyLoss": [randn(3, 2), np.ones((3, 2), np.float32)],
        "HingeLoss": [randn(3, 4), item_labels(3, 4)],
        "MultinomialLogisticLoss": [np.full((3, 4), 0.25, np.float32), item_labels(3, 4)],
        "InfogainLoss": [randn(3, 4), item_labels(3, 4), np.eye(4, dtype=np.float32)],
        "ContrastiveLoss": [randn(3, 2), randn(3, 2, seed=1), np.array([1, 0, 1], np.float32)],
    }[type_name]
    layer = layer_of(type_name)
    bottom, top = setup_layer(layer, arrays)
    layer.forward(bottom, top)
    assert layer.loss_weights == [1.0]
    assert top[0].shape == () and top[0].data.dtype == np.float32
    assert np.isfinite(top[0].data)
    assert layer.allow_force_backward(0)
    if label_bottom is not None:
        assert not layer.allow_force_backward(label_bottom)


# -- EuclideanLoss --------------------------------------------------------------------------

@pytest.mark.parametrize("shape_a,shape_b", [((4, 3), (4, 3)), ((2, 3, 2, 2), (2, 12))])
def test_euclidean_matches_torch_mse(shape_a, shape_b):
    a, b = randn(*shape_a), randn(*shape_b, seed=1)
    (loss,), (da, db) = loss_and_grads(layer_of("EuclideanLoss"), [a, b], [True, True],
                                       loss_weight=3.0)
    ta, tb = t(a, True), t(b, True)
    expected = F.mse_loss(ta, tb.reshape(ta.shape), reduction="sum") / shape_a[0] / 2
    (3.0 * expected).backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(da, ta.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert da.dtype == db.dtype == np.float32
    assert db.shape == shape_b


def test_euclidean_hand_value_and_one_sided_backward():
    a = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
    b = np.array([[0.0, 0.0], [3.0, 0.0]], np.float32)
    (loss,), (da, db) = loss_and_grads(layer_of("EuclideanLoss"), [a, b], [False, True])
    assert loss == pytest.approx((1 + 4 + 9) / 2 / 2)
    np.testing.assert_array_equal(db, -(a - b) / 2)
    assert np.isnan(da).all()  # bottom 0 was not asked for
    assert layer_of("EuclideanLoss").allow_force_backward(1)


def test_euclidean_gradients_and_shape_errors():
    check_gradients(layer_of("EuclideanLoss", dtype=np.float64),
                    [randn(3, 4).astype(float), randn(3, 2, 2, seed=1).astype(float)])
    with pytest.raises(ProtonetError, match="same dimension"):
        run_layer(layer_of("EuclideanLoss"), [randn(3, 4), randn(3, 5)])
    with pytest.raises(ProtonetError, match="first dimension"):
        run_layer(layer_of("EuclideanLoss"), [randn(3, 4), randn(4, 3)])


# -- SigmoidCrossEntropyLoss ------------------------------------------------------------------

@pytest.mark.parametrize("params,divide", [
    ("", "N"),                                      # Caffe's default for this layer
    ("loss_param { normalization: VALID }", "valid"),
    ("loss_param { normalization: FULL }", "all"),
    ("loss_param { normalization: NONE }", "one"),
    ("loss_param { normalize: true }", "valid"),    # legacy switch
    ("loss_param { normalize: false }", "N"),
])
@pytest.mark.parametrize("ignore", [None, -1])
def test_sigmoid_cross_entropy_matches_torch(params, divide, ignore):
    x = randn(3, 2, 4) * 3
    target = np.random.default_rng(2).random(x.shape).astype(np.float32)
    target[:, 0, :2] = 1.0
    if ignore is not None:
        target[1, 1, :3] = ignore
        params = params.replace("loss_param {", "loss_param { ignore_label: -1") \
            if params else "loss_param { ignore_label: -1 }"
    (loss,), (dx, _) = loss_and_grads(layer_of("SigmoidCrossEntropyLoss", params),
                                      [x, target], [True, False], loss_weight=0.5)
    valid = np.ones(x.shape, bool) if ignore is None else target != ignore
    tx = t(x, True)
    per = F.binary_cross_entropy_with_logits(tx, t(np.where(valid, target, 0)),
                                             reduction="none")
    total = (per * t(valid)).sum()
    n = {"N": 3, "valid": valid.sum(), "all": x.size, "one": 1}[divide]
    (0.5 * total / n).backward()
    np.testing.assert_allclose(loss, total.item() / n, rtol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert (dx[~valid] == 0).all()


def test_sigmoid_cross_entropy_is_stable_for_large_scores():
    x = np.array([[100.0, -100.0, 0.0]], np.float32)
    target = np.array([[1.0, 0.0, 1.0]], np.float32)
    (loss,), (dx, _) = loss_and_grads(layer_of("SigmoidCrossEntropyLoss"), [x, target],
                                      [True, False])
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)   # only the x = 0 term counts
    np.testing.assert_allclose(dx, [[0.0, 0.0, -0.5]], atol=1e-7)
    (loss,) = run_layer(layer_of("SigmoidCrossEntropyLoss"),
                        [x, np.array([[0.0, 1.0, 0.0]], np.float32)])
    np.testing.assert_allclose(loss, 200 + np.log(2.0), rtol=1e-6)


def test_sigmoid_cross_entropy_all_ignored_and_errors():
    x = randn(2, 3)
    (loss,), (dx, _) = loss_and_grads(
        layer_of("SigmoidCrossEntropyLoss",
                 "loss_param { ignore_label: 7 normalization: VALID }"),
        [x, np.full((2, 3), 7, np.float32)], [True, False])
    assert loss == 0.0 and (dx == 0).all()
    with pytest.raises(ProtonetError, match="same count"):
        run_layer(layer_of("SigmoidCrossEntropyLoss"), [randn(2, 3), randn(2, 4)])
    layer = layer_of("SigmoidCrossEntropyLoss")
    bottom, top = setup_layer(layer, [x, np.zeros((2, 3), np.float32)])
    layer.forward(bottom, top)
    with pytest.raises(ProtonetError, match="target"):
        layer.backward(top, [True, True], bottom)


@pytest.mark.parametrize("params", ["", "loss_param { ignore_label: -1 normalization: VALID }"])
def test_sigmoid_cross_entropy_gradients(params):
    target = np.random.default_rng(4).random((3, 5))
    target[0, :2] = -1
    check_gradients(layer_of("SigmoidCrossEntropyLoss", params, dtype=np.float64),
                    [randn(3, 5).astype(float) * 2, target], check_bottoms=[0])


# -- HingeLoss --------------------------------------------------------------------------------

def hinge_scores(*shape, seed=0):
    """Scores kept away from the kinks at +-1."""
    x = randn(*shape, seed=seed) * 1.5
    x[np.abs(np.abs(x) - 1) < 0.05] = 0.3
    return x


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 2, 2)])
def test_hinge_matches_torch_written_out(norm, shape):
    x, labels = hinge_scores(*shape), item_labels(shape[0], int(np.prod(shape[1:])))
    layer = layer_of("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}")
    (loss,), (dx, _) = loss_and_grads(layer, [x, labels], [True, False], loss_weight=2.0)
    tx = t(x, True)
    flat = tx.reshape(shape[0], -1)
    sign = torch.ones_like(flat)
    sign[torch.arange(shape[0]), torch.from_numpy(labels.astype(np.int64))] = -1
    margin = torch.clamp(1 + sign * flat, min=0)
    expected = (margin if norm == "L1" else margin ** 2).sum() / shape[0]
    (2.0 * expected).backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_hinge_hand_values():
    x = np.array([[0.5, -2.0, 1.5]], np.float32)
    label = np.array([0.0], np.float32)
    # signs (-1, +1, +1): margins max(0, 0.5), max(0, -1), max(0, 2.5)
    (l1,) = run_layer(layer_of("HingeLoss"), [x, label])
    (l2,) = run_layer(layer_of("HingeLoss", "hinge_loss_param { norm: L2 }"), [x, label])
    assert l1 == pytest.approx(3.0) and l2 == pytest.approx(6.5)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradients(norm):
    check_gradients(layer_of("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}", np.float64),
                    [hinge_scores(4, 3).astype(float), item_labels(4, 3)], check_bottoms=[0])


def test_hinge_label_errors():
    with pytest.raises(ProtonetError, match="label 3 is out of range for 3 classes"):
        run_layer(layer_of("HingeLoss"), [randn(2, 3), np.array([0, 3], np.float32)])
    with pytest.raises(ProtonetError, match="one label per item"):
        run_layer(layer_of("HingeLoss"), [randn(2, 3), np.zeros((2, 2), np.float32)])


# -- MultinomialLogisticLoss -------------------------------------------------------------------

def probabilities(n, c, seed=0):
    p = np.random.default_rng(seed).random((n, c)).astype(np.float32) + 0.05
    return p / p.sum(1, keepdims=True)


def test_multinomial_logistic_matches_torch_nll():
    p, labels = probabilities(6, 5), item_labels(6, 5)
    (loss,), (dp, _) = loss_and_grads(layer_of("MultinomialLogisticLoss"), [p, labels],
                                      [True, False], loss_weight=1.5)
    tp = t(p, True)
    expected = F.nll_loss(torch.log(tp), torch.from_numpy(labels.astype(np.int64)))
    (1.5 * expected).backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(dp, tp.grad.numpy(), rtol=1e-5)
    assert (dp[~np.eye(5, dtype=bool)[labels.astype(int)]] == 0).all()  # only the labels


def test_multinomial_logistic_clamps_at_1e_minus_20():
    p = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    labels = np.array([0.0, 1.0], np.float32)
    (loss,), (dp, _) = loss_and_grads(layer_of("MultinomialLogisticLoss"), [p, labels],
                                      [True, False])
    np.testing.assert_allclose(loss, (-np.log(1e-20) + np.log(2)) / 2, rtol=1e-6)
    np.testing.assert_allclose(dp[0, 0], -0.5 / np.float32(1e-20), rtol=1e-6)
    assert np.isfinite(dp).all()
    p = np.random.default_rng(1).uniform(0.2, 1.0, (3, 4))
    check_gradients(layer_of("MultinomialLogisticLoss", dtype=np.float64),
                    [p, item_labels(3, 4)], check_bottoms=[0])


# -- InfogainLoss -----------------------------------------------------------------------------

def infogain_expected(x, labels, h, axis, ignore=None, mode="VALID"):
    """Caffe's infogain loss, written out in torch on (outer, C, inner) scores."""
    a = axis % x.ndim
    outer, classes = int(np.prod(x.shape[:a])), x.shape[a]
    tx = t(x, True)
    prob = torch.softmax(tx.reshape(outer, classes, -1), dim=1)
    lab = torch.from_numpy(labels.reshape(outer, -1).astype(np.int64))
    valid = torch.ones_like(lab, dtype=torch.bool) if ignore is None else lab != ignore
    rows = t(h)[torch.where(valid, lab, 0)]                        # (outer, inner, C)
    per = -(rows * torch.log(torch.clamp(prob, min=1e-20)).transpose(1, 2)).sum(-1)
    total = (per * valid).sum()
    n = {"VALID": int(valid.sum()), "FULL": lab.numel(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    return tx, total / max(1, n)


@pytest.mark.parametrize("shape,axis", [((5, 4), 1), ((2, 3, 2, 2), 1), ((2, 3, 4), -1)])
@pytest.mark.parametrize("mode", ["VALID", "BATCH_SIZE", "FULL", "NONE"])
def test_infogain_matches_torch_with_matrix_bottom(shape, axis, mode):
    classes = shape[axis]
    x = randn(*shape)
    labels = np.random.default_rng(1).integers(0, classes, shape[:axis % len(shape)]
                                               + shape[axis % len(shape) + 1:])
    labels = labels.astype(np.float32)
    labels.flat[0] = 9
    h = np.random.default_rng(2).random((classes, classes)).astype(np.float32)
    params = (f"infogain_loss_param {{ axis: {axis} }} "
              f"loss_param {{ ignore_label: 9 normalization: {mode} }}")
    (loss,), (dx, _, _) = loss_and_grads(layer_of("InfogainLoss", params), [x, labels, h],
                                         [True, False, False], loss_weight=2.0)
    tx, expected = infogain_expected(x, labels, h, axis, ignore=9, mode=mode)
    (2.0 * expected).backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_infogain_identity_is_softmax_loss_and_second_top_is_prob():
    x, labels = randn(6, 5), item_labels(6, 5)
    layer = layer_of("InfogainLoss", 'top: "loss" top: "prob"')
    (loss, prob), _ = loss_and_grads(layer, [x, labels, np.eye(5, dtype=np.float32)],
                                     [True, False, False], num_top=2)
    (softmax_loss,) = run_layer(layer_of("SoftmaxWithLoss"), [x, labels])
    np.testing.assert_allclose(loss, softmax_loss, rtol=1e-6)
    np.testing.assert_allclose(prob, torch.softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-6)


def test_infogain_reads_matrix_from_binaryproto(tmp_path):
    h = np.random.default_rng(5).random((4, 4)).astype(np.float32)
    path = tmp_path / "H.binaryproto"
    # Caffe's tools write H as a legacy 1 x 1 x C x C blob
    path.write_bytes(array_to_blob_proto(h[None, None], legacy_4d=True).SerializeToString())
    x, labels = randn(3, 4), item_labels(3, 4)
    from_source = f'infogain_loss_param {{ source: "{path}" }}'
    (from_file,) = run_layer(layer_of("InfogainLoss", from_source), [x, labels])
    (from_bottom,) = run_layer(layer_of("InfogainLoss"), [x, labels, h])
    assert from_file == from_bottom
    _, expected = infogain_expected(x, labels, h, 1)
    np.testing.assert_allclose(from_file, expected.item(), rtol=1e-5)
    check_gradients(layer_of("InfogainLoss", from_source, np.float64),
                    [x.astype(float), labels], check_bottoms=[0])


def test_infogain_gradients_with_ignore_and_spatial_axis():
    x = randn(2, 3, 2, 2).astype(float)
    labels = np.random.default_rng(0).integers(0, 3, (2, 2, 2)).astype(float)
    labels[0, 0, 1] = 255
    h = np.random.default_rng(1).random((3, 3))
    check_gradients(layer_of("InfogainLoss", "loss_param { ignore_label: 255 }", np.float64),
                    [x, labels, h], check_bottoms=[0])


def test_infogain_errors(tmp_path):
    x, labels = randn(3, 4), item_labels(3, 4)
    with pytest.raises(ProtonetError, match="infogain_loss_param.source"):
        run_layer(layer_of("InfogainLoss"), [x, labels])
    with pytest.raises(ProtonetError, match="cannot read infogain matrix"):
        run_layer(layer_of("InfogainLoss", f'infogain_loss_param {{ source: "{tmp_path}/no" }}'),
                  [x, labels])
    with pytest.raises(ProtonetError, match="4x4"):
        run_layer(layer_of("InfogainLoss"), [x, labels, np.eye(3, dtype=np.float32)])
    with pytest.raises(ProtonetError, match="normalize is deprecated"):
        run_layer(layer_of("InfogainLoss", "loss_param { normalize: true }"),
                  [x, labels, np.eye(4, dtype=np.float32)])
    with pytest.raises(ProtonetError, match="out of range"):
        run_layer(layer_of("InfogainLoss"), [x, np.array([0, 1, 4], np.float32), np.eye(4)])
    layer = layer_of("InfogainLoss")
    bottom, top = setup_layer(layer, [x, labels, np.eye(4, dtype=np.float32)])
    layer.forward(bottom, top)
    with pytest.raises(ProtonetError, match="infogain matrix"):
        layer.backward(top, [True, False, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(2)


# -- ContrastiveLoss --------------------------------------------------------------------------

def contrastive_torch(a, b, y, margin, legacy):
    ta, tb = t(a, True), t(b, True)
    d2 = ((ta - tb) ** 2).reshape(len(a), -1).sum(1)
    similar = t(y.astype(np.int64) != 0)
    if legacy:
        apart = torch.clamp(margin - d2, min=0)
    else:
        apart = torch.clamp(margin - torch.sqrt(d2), min=0) ** 2
    return ta, tb, (similar * d2 + (1 - similar) * apart).sum() / len(a) / 2


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("margin", [1.0, 2.5])
def test_contrastive_matches_torch(legacy, margin):
    a, b = randn(8, 3) * 0.6, randn(8, 3, seed=1) * 0.6
    y = np.array([1, 0, 0, 1, 0, 0, 1, 0], np.float32)
    params = (f"contrastive_loss_param {{ margin: {margin} "
              f"legacy_version: {str(legacy).lower()} }}")
    (loss,), (da, db, _) = loss_and_grads(layer_of("ContrastiveLoss", params), [a, b, y],
                                          [True, True, False], loss_weight=2.0)
    ta, tb, expected = contrastive_torch(a, b, y, margin, legacy)
    (2.0 * expected).backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    # Caffe's non-legacy gradient divides by (d + 1e-4), hence the looser tolerance
    np.testing.assert_allclose(da, ta.grad.numpy(), rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=2e-3, atol=1e-5)
    np.testing.assert_array_equal(da, -db)


def test_contrastive_hand_values_and_caffe_epsilon():
    a = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32)
    b = np.array([[3.0, 4.0], [0.3, 0.4], [0.6, 0.8]], np.float32)   # d = 5, 0.5, 1
    y = np.array([1.0, 0.0, 0.5], np.float32)                        # 0.5 -> int 0: dissimilar
    (loss,), (da, _, _) = loss_and_grads(layer_of("ContrastiveLoss"), [a, b, y],
                                         [True, False, False])
    # similar: 25; dissimilar (margin 1): (1 - 0.5)^2 = 0.25 and (1 - 1)^2 = 0
    assert loss == pytest.approx((25 + 0.25 + 0) / 3 / 2)
    coeff = -(1 - 0.5) / (0.5 + 1e-4)
    np.testing.assert_allclose(da[1], coeff * (a[1] - b[1]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(da[2], 0.0)                         # margin met
    np.testing.assert_allclose(da[0], (a[0] - b[0]) / 3, rtol=1e-6)
    (legacy,) = run_layer(layer_of("ContrastiveLoss",
                                   "contrastive_loss_param { legacy_version: true }"), [a, b, y])
    # legacy dissimilar: max(1 - d^2, 0) = 0.75 and 0
    assert legacy == pytest.approx((25 + 0.75) / 3 / 2)


@pytest.mark.parametrize("legacy", ["false", "true"])
def test_contrastive_gradients(legacy):
    a = randn(6, 2, 1, 1).astype(float) * 0.5
    b = randn(6, 2, 1, 1, seed=1).astype(float) * 0.5
    y = np.array([1, 0, 0, 1, 0, 0], float).reshape(6, 1, 1, 1)
    check_gradients(layer_of("ContrastiveLoss",
                             f"contrastive_loss_param {{ margin: 1.5 legacy_version: {legacy} }}",
                             np.float64), [a, b, y], check_bottoms=[0, 1])


def test_contrastive_errors():
    with pytest.raises(ProtonetError, match="one similarity label per pair"):
        run_layer(layer_of("ContrastiveLoss"), [randn(3, 2), randn(3, 2), np.ones(2, np.float32)])
    with pytest.raises(ProtonetError, match="same shape"):
        run_layer(layer_of("ContrastiveLoss"), [randn(3, 2), randn(3, 3), np.ones(3, np.float32)])
    layer = layer_of("ContrastiveLoss")
    assert layer.allow_force_backward(1) and not layer.allow_force_backward(2)
