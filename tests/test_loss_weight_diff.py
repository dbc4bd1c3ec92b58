"""A loss-weighted top's diff, as Caffe keeps it (``Layer::SetLossWeights``).

Caffe writes a top's ``loss_weight`` into its diff once, at setup. Forward's loss
is then ``dot(data, diff)`` and backward starts from whatever the diff holds, so a
gradient the user writes there (pycaffe: ``net.blobs[y].diff[...] = g;
net.backward()``) is the one back-propagated.
"""
import numpy as np
import pytest

import protonet
from protonet.io import parse_net

HEAD = """name: "t" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 4 } } }
"""


def _net(body, **kw):
    return protonet.Net(parse_net(HEAD + body), protonet.TRAIN, seed=5, dtype=np.float64, **kw)


IP = ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" loss_weight: 2 '
      'inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 } '
      'bias_filler { type: "gaussian" std: 1 } } }\n')


def _ip_grads(net, x, g):
    """Hand-computed gradients of an InnerProduct y = x W^T + b given dL/dy = g."""
    w = net.params["ip"][0].data
    return g @ w, g.T @ x, g.sum(0)


def test_the_weight_is_in_the_diff_from_setup_on():
    net = _net(IP)
    np.testing.assert_array_equal(net.blobs["y"].diff, np.full((3, 5), 2.0))


def test_backward_without_a_written_diff_starts_from_the_loss_weight():
    net = _net(IP)
    x = np.random.default_rng(0).normal(size=(3, 4))
    net.blobs["data"].data[...] = x
    loss = net.forward_from_to()
    assert loss == pytest.approx(2 * net.blobs["y"].data.sum(), rel=1e-12)
    net.clear_param_diffs()
    net.backward()
    dx, dw, db = _ip_grads(net, x, np.full((3, 5), 2.0))
    np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-12)
    np.testing.assert_allclose(net.params["ip"][0].diff, dw, rtol=1e-12)
    np.testing.assert_allclose(net.params["ip"][1].diff, db, rtol=1e-12)


@pytest.mark.parametrize("how", ["blob", "keyword"])
def test_a_diff_the_user_writes_is_back_propagated(how):
    net = _net(IP)
    rng = np.random.default_rng(1)
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 5))
    net.blobs["data"].data[...] = x
    net.forward()
    net.clear_param_diffs()
    if how == "blob":
        net.blobs["y"].diff[...] = g
        net.backward()
    else:
        net.backward(y=g)
    dx, dw, db = _ip_grads(net, x, g)
    np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-12)
    np.testing.assert_allclose(net.params["ip"][0].diff, dw, rtol=1e-12)
    np.testing.assert_allclose(net.params["ip"][1].diff, db, rtol=1e-12)
    # the written diff stays: the next backward uses it again, as in Caffe
    net.clear_param_diffs()
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, dw, rtol=1e-12)


def test_forward_loss_is_the_dot_of_data_and_diff():
    net = _net(IP)
    g = np.random.default_rng(2).normal(size=(3, 5))
    net.blobs["y"].diff[...] = g
    loss = net.forward_from_to()
    assert loss == pytest.approx(float(np.vdot(net.blobs["y"].data, g)), rel=1e-12)


def test_a_reshaped_loss_top_is_seeded_again():
    net = _net(IP)
    net.blobs["data"].reshape(7, 4)
    net.reshape()
    np.testing.assert_array_equal(net.blobs["y"].diff, np.full((7, 5), 2.0))


@pytest.mark.parametrize("layer", [
    'layer { name: "embed" type: "Embed" bottom: "idx" top: "y" loss_weight: 1 '
    'embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" std: 1 } } }',
    'layer { name: "reindex" type: "BatchReindex" bottom: "v" bottom: "idx" top: "y" '
    'loss_weight: 1 }',
    'layer { name: "p" type: "Parameter" top: "y" loss_weight: 1 '
    'parameter_param { shape { dim: 4 dim: 3 } } }',
    'layer { name: "sel" type: "Filter" bottom: "v" bottom: "idx" top: "y" loss_weight: 1 }',
])
def test_every_layer_type_back_propagates_the_users_diff(layer):
    """The layers pycaffe users hit it with: Embed, BatchReindex, Filter, Parameter."""
    head = """name: "t" force_backward: true
layer { name: "in" type: "Input" top: "idx" top: "v"
        input_param { shape { dim: 4 } shape { dim: 4 dim: 3 } } }
"""
    net = protonet.Net(parse_net(head + layer), protonet.TRAIN, seed=5, dtype=np.float64)
    net.blobs["idx"].data[...] = [1, 0, 3, 1]
    net.blobs["v"].data[...] = np.arange(12.0).reshape(4, 3)
    net.forward()
    g = np.random.default_rng(3).normal(size=net.blobs["y"].shape)
    net.clear_param_diffs()
    net.blobs["y"].diff[...] = g
    net.backward()
    if "Embed" in layer:     # each row of the table gets the gradient of the rows using it
        expected = np.zeros((5, 3))
        np.add.at(expected, [1, 0, 3, 1], g)
        got = net.params["embed"][0].diff
    elif "BatchReindex" in layer:
        expected = np.zeros((4, 3))
        np.add.at(expected, [1, 0, 3, 1], g)
        got = net.blobs["v"].diff
    elif "Filter" in layer:  # the selector [1, 0, 3, 1] keeps rows 0, 2 and 3
        expected = np.zeros((4, 3))
        expected[[0, 2, 3]] = g
        got = net.blobs["v"].diff
    else:
        expected, got = g, net.params["p"][0].diff
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_an_in_place_loss_top_is_seeded_again_after_each_forward():
    """An in-place layer's backward overwrites its top's diff with the bottom gradient;
    training must not see that as the next iteration's seed."""
    net = _net('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "h" '
               'inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }\n'
               'layer { name: "act" type: "TanH" bottom: "h" top: "h" loss_weight: 3 }\n')
    net.blobs["data"].data[...] = np.random.default_rng(4).normal(size=(3, 4))
    grads = []
    for _ in range(2):
        net.clear_param_diffs()
        net.forward()
        net.backward()
        grads.append(net.params["ip"][0].diff.copy())
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.any(grads[0] != 0)


def test_training_losses_are_those_of_the_weighted_sum():
    """A solver step's loss is sum(weight * top) for scalar losses, as before."""
    body = ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" '
            'inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }\n'
            'layer { name: "z" type: "DummyData" top: "z" '
            'dummy_data_param { shape { dim: 3 dim: 5 } } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "z" top: "l" '
            'loss_weight: 0.3 }\n')
    net = protonet.Net(parse_net(HEAD + body), protonet.TRAIN, seed=5)  # float32
    net.blobs["data"].data[...] = np.random.default_rng(5).normal(size=(3, 4))
    loss = net.forward_from_to()
    weight = float(np.float32(0.3))  # loss_weight is a proto float
    assert loss == weight * float(net.blobs["l"].data)
