"""Net level: LeNet (train_test, DummyData) against PyTorch with the same weights."""
import numpy as np
import pytest

import protonet
from protonet.io import parse_net

torch = pytest.importorskip("torch")

LENET = """name: "LeNet"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 16 dim: 1 dim: 28 dim: 28 } shape { dim: 16 }
                     data_filler { type: "gaussian" std: 1 }
                     data_filler { type: "uniform" min: 0 max: 9.999 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500
    weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10
    weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def torch_lenet(net, data, label):
    """The same network written in PyTorch, with ``net``'s weights; returns (loss, logits, grads)."""
    F = torch.nn.functional
    p = {name: [torch.tensor(b.data.astype(np.float64), requires_grad=True) for b in blobs]
         for name, blobs in net.params.items()}
    x = torch.tensor(data.astype(np.float64))
    x = F.conv2d(x, *p["conv1"])
    x = F.max_pool2d(x, 2, 2)
    x = F.conv2d(x, *p["conv2"])
    x = F.max_pool2d(x, 2, 2)
    x = F.relu(F.linear(x.flatten(1), *p["ip1"]))
    logits = F.linear(x, *p["ip2"])
    loss = F.cross_entropy(logits, torch.tensor(label.astype(np.int64)))
    loss.backward()
    return loss.item(), logits.detach().numpy(), {k: [t.grad.numpy() for t in v]
                                                  for k, v in p.items()}


@pytest.mark.parametrize("phase", [protonet.TRAIN, protonet.TEST])
def test_lenet_loss_and_every_gradient_match_pytorch(phase):
    net = protonet.Net(parse_net(LENET), phase, seed=5)
    assert net.layer_names[0] == "data" and ("accuracy" in net.layer_names) == (phase == 1)
    loss = net.forward_from_to()
    net.clear_param_diffs()
    net.backward_from_to()
    data, label = net.blobs["data"].data.copy(), net.blobs["label"].data.copy()
    assert len(np.unique(label.astype(int))) > 3  # labels drawn over 0..9
    ref_loss, logits, grads = torch_lenet(net, data, label.astype(int))
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(net.blobs["ip2"].data, logits, rtol=1e-4, atol=1e-5)
    for name, blobs in net.params.items():
        for k, blob in enumerate(blobs):
            scale = np.abs(grads[name][k]).max()
            np.testing.assert_allclose(blob.diff, grads[name][k], rtol=1e-3, atol=1e-5 * scale,
                                       err_msg=f"{name}[{k}]")
    if phase == protonet.TEST:
        expected = np.mean(logits.argmax(1) == label.astype(int))
        assert float(net.blobs["accuracy"].data) == pytest.approx(expected)


def test_dummy_data_redraws_each_forward_but_is_seeded():
    a = protonet.Net(parse_net(LENET), protonet.TRAIN, seed=11)
    b = protonet.Net(parse_net(LENET), protonet.TRAIN, seed=11)
    a.forward_from_to()
    first = a.blobs["data"].data.copy()
    a.forward_from_to()
    assert not np.array_equal(first, a.blobs["data"].data)
    b.forward_from_to()
    np.testing.assert_array_equal(first, b.blobs["data"].data)
