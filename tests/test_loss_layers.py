"""SoftmaxWithLoss and Accuracy against PyTorch and Caffe's hand-computed rules."""
import numpy as np
import pytest

from protonet import ProtonetError
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")
F = torch.nn.functional

NEG_LOG_FLT_MIN = 87.33654475  # -log(FLT_MIN): what a diverged Caffe net prints


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def labels_for(shape, axis, ignore=None, seed=5):
    """Float labels (outer, inner...) for scores of ``shape`` with classes on ``axis``."""
    axis %= len(shape)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1:])
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.3] = ignore
    return labels.astype(np.float32)


def loss_layer(params="", dtype=np.float32):
    return make_layer(f'type: "SoftmaxWithLoss" {params}', dtype=dtype)


def loss_and_grad(layer, x, labels, loss_weight=1.0, num_top=1):
    bottom, top = setup_layer(layer, [x, labels], num_top=num_top)
    layer.forward(bottom, top)
    top[0].diff[...] = loss_weight
    layer.backward(top, [True, False], bottom)
    return [t.data.copy() for t in top], bottom[0].diff.copy()


# -- SoftmaxWithLoss ------------------------------------------------------------------------

SHAPES = [((6, 4), 1), ((2, 3, 4, 5), 1), ((2, 4, 3), 2), ((3, 2, 5), -1)]
MODES = ["VALID", "FULL", "BATCH_SIZE", "NONE"]


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 1])
def test_softmax_loss_matches_torch(shape, axis, mode, ignore):
    ignore_text = f"ignore_label: {ignore}" if ignore is not None else ""
    layer = loss_layer(f"softmax_param {{ axis: {axis} }} "
                       f"loss_param {{ normalization: {mode} {ignore_text} }}")
    x, labels = randn(*shape), labels_for(shape, axis, ignore)
    (loss,), dx = loss_and_grad(layer, x, labels, loss_weight=2.5)

    a = axis % len(shape)
    outer, classes = int(np.prod(shape[:a])), shape[a]
    tx = torch.from_numpy(x.copy()).requires_grad_()
    scores = tx.reshape(outer, classes, -1)
    target = torch.from_numpy(labels.reshape(outer, -1).astype(np.int64))
    total = F.cross_entropy(scores, target, reduction="sum",
                            ignore_index=ignore if ignore is not None else -100)
    valid = int((target != (ignore if ignore is not None else -100)).sum())
    normalizer = {"VALID": valid, "FULL": target.numel(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    expected = total / max(1, normalizer)
    (2.5 * expected).backward()
    assert loss.shape == () and loss.dtype == np.float32
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params,normalizer", [
    ("", 4),                                    # VALID: non-ignored labels
    ("normalize: true", 4),                     # legacy true -> VALID
    ("normalize: false", 2),                    # legacy false -> BATCH_SIZE
    ("normalize: false normalization: FULL", 6),  # an explicit mode wins
])
def test_softmax_loss_legacy_normalize(params, normalizer):
    x = randn(2, 3, 3)
    labels = np.array([[0, 2, 1], [1, 1, 0]], np.float32)
    # ignore two positions so VALID (4), FULL (6) and BATCH_SIZE (2) differ
    labels[0, 1] = labels[1, 2] = 7
    layer = loss_layer(f"loss_param {{ ignore_label: 7 {params} }}")
    (loss,) = run_layer(layer, [x, labels])
    prob = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    nll = [-np.log(prob[n, int(labels[n, j]), j]) for n in range(2) for j in range(3)
           if labels[n, j] != 7]
    np.testing.assert_allclose(loss, sum(nll) / normalizer, rtol=1e-5)


def test_softmax_loss_clamps_at_flt_min():
    x = np.array([[0.0, 200.0], [0.0, 0.0]], np.float32)
    labels = np.array([0.0, 1.0], np.float32)
    (loss,) = run_layer(loss_layer("loss_param { normalization: NONE }"), [x, labels])
    np.testing.assert_allclose(loss, NEG_LOG_FLT_MIN + np.log(2.0), rtol=1e-6)
    (loss,) = run_layer(loss_layer(), [x[:1], labels[:1]])
    np.testing.assert_allclose(loss, 87.3365, atol=1e-4)


def test_softmax_loss_all_ignored_gives_zero_not_nan():
    x, labels = randn(3, 4), np.full(3, 255, np.float32)
    (loss,), dx = loss_and_grad(loss_layer("loss_param { ignore_label: 255 }"), x, labels)
    assert loss == 0.0
    np.testing.assert_array_equal(dx, 0.0)


def test_softmax_loss_float_labels_truncate():
    x = randn(3, 4)
    (a,) = run_layer(loss_layer(), [x, np.array([1.9, 0.2, 3.999], np.float32)])
    (b,) = run_layer(loss_layer(), [x, np.array([1.0, 0.0, 3.0], np.float32)])
    assert a == b


def test_softmax_loss_second_top_is_probability():
    x, labels = randn(4, 5), labels_for((4, 5), 1)
    (loss, prob), _ = loss_and_grad(loss_layer('top: "loss" top: "prob"'), x, labels, num_top=2)
    np.testing.assert_allclose(prob, torch.softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-5)
    (alone,) = run_layer(loss_layer(), [x, labels])
    assert loss == alone


@pytest.mark.parametrize("params,shape,axis", [
    ("", (4, 5), 1),
    ("loss_param { ignore_label: 0 normalization: FULL }", (2, 3, 2, 2), 1),
    ("softmax_param { axis: -1 } loss_param { normalization: BATCH_SIZE }", (2, 3, 4), -1),
])
def test_softmax_loss_gradients(params, shape, axis):
    layer = loss_layer(params, dtype=np.float64)
    check_gradients(layer, [randn(*shape).astype(float), labels_for(shape, axis, 0)],
                    check_bottoms=[0])


def test_softmax_loss_shape_errors():
    with pytest.raises(ProtonetError, match=r"'loss'.*number of labels \(6\).*\(8\)"):
        run_layer(loss_layer('name: "loss"'), [randn(2, 3, 4), np.zeros((2, 1, 3), np.float32)])
    with pytest.raises(ProtonetError, match="first dimension"):
        run_layer(loss_layer(), [randn(2, 3), np.zeros((1, 2), np.float32)])
    with pytest.raises(ProtonetError, match="label 3 is out of range for 3 classes"):
        run_layer(loss_layer(), [randn(2, 3), np.array([0, 3], np.float32)])
    with pytest.raises(ProtonetError, match="axis 2"):
        run_layer(loss_layer("softmax_param { axis: 2 }"), [randn(2, 3), np.zeros(2, np.float32)])


def test_softmax_loss_refuses_label_gradient():
    layer = loss_layer()
    bottom, top = setup_layer(layer, [randn(2, 3), np.zeros(2, np.float32)])
    layer.forward(bottom, top)
    with pytest.raises(ProtonetError, match="label"):
        layer.backward(top, [True, True], bottom)
    assert layer.loss_weights == [1.0]
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


# -- Accuracy -------------------------------------------------------------------------------

def accuracy(params="", dtype=np.float32):
    return make_layer(f'type: "Accuracy" accuracy_param {{ {params} }}', dtype=dtype)


@pytest.mark.parametrize("shape,axis", [((10, 5), 1), ((2, 6, 3, 2), 1), ((4, 3, 6), -1)])
@pytest.mark.parametrize("top_k", [1, 3])
def test_accuracy_matches_torch_topk(shape, axis, top_k):
    x, labels = randn(*shape), labels_for(shape, axis, seed=2)
    (acc,) = run_layer(accuracy(f"top_k: {top_k} axis: {axis}"), [x, labels])
    top = torch.topk(torch.from_numpy(x), top_k, dim=axis).indices.movedim(axis % len(shape), -1)
    hit = (top == torch.from_numpy(labels.astype(np.int64))[..., None]).any(-1)
    assert acc.shape == ()
    np.testing.assert_allclose(acc, hit.float().mean().item(), rtol=1e-6)


def test_accuracy_ties_count_against_the_true_class():
    x = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [0.0, 5.0, 1.0]], np.float32)
    labels = np.array([0.0, 2.0, 2.0], np.float32)
    (top1,) = run_layer(accuracy("top_k: 1"), [x, labels])
    (top2,) = run_layer(accuracy("top_k: 2"), [x, labels])
    (top3,) = run_layer(accuracy("top_k: 3"), [x, labels])
    assert top1 == 0.0            # a tie for first place is a miss
    np.testing.assert_allclose(top2, 2 / 3)  # [1,1,0] label 0 and [0,5,1] label 2 hit
    assert top3 == 1.0


def test_accuracy_ignore_label_and_per_class():
    x = np.array([[3, 1, 0], [0, 3, 1], [3, 0, 1], [0, 0, 3], [1, 3, 0]], np.float32)
    labels = np.array([0, 1, 1, 2, 9], np.float32)  # the last one is ignored
    (acc, per_class) = run_layer(accuracy("ignore_label: 9"), [x, labels], num_top=2)
    np.testing.assert_allclose(acc, 3 / 4)
    np.testing.assert_allclose(per_class, [1.0, 0.5, 1.0])
    assert per_class.shape == (3,)
    (acc, per_class) = run_layer(accuracy("ignore_label: 9"), [x, np.full(5, 9, np.float32)],
                                 num_top=2)
    assert acc == 0.0
    np.testing.assert_array_equal(per_class, 0.0)


def test_accuracy_has_no_backward_and_checks_shapes():
    layer = accuracy()
    assert not layer.has_backward
    bottom, top = setup_layer(layer, [randn(2, 3), np.zeros(2, np.float32)])
    with pytest.raises(ProtonetError):
        layer.backward(top, [True, False], bottom)
    with pytest.raises(ProtonetError, match=r"top_k \(4\).*classes \(3\)"):
        run_layer(accuracy("top_k: 4"), [randn(2, 3), np.zeros(2, np.float32)])
    with pytest.raises(ProtonetError, match=r"'accuracy'.*number of labels"):
        run_layer(accuracy(), [randn(2, 3), np.zeros(3, np.float32)])
