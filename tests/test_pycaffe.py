"""pycaffe's Net surface, run the way pycaffe scripts and notebooks use it."""
import importlib.util
import warnings

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.io import parse_net
from protonet.net import Net
from protonet.proto import caffe_pb2
from protonet import pycaffe

LENET = "models/lenet/lenet.prototxt"

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def small(seed=1, **kw):
    return Net(parse_net(SMALL), protonet.TEST, seed=seed, **kw)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- construction -----------------------------------------------------------------------------
def test_the_pycaffe_constructor_forms(tmp_path):
    net = Net(LENET, protonet.TEST)
    weights = str(tmp_path / "lenet.caffemodel")
    net.save(weights)
    with_weights = Net(LENET, protonet.TEST, weights=weights)
    with pytest.warns(DeprecationWarning, match="weights="):
        legacy = Net(LENET, weights, protonet.TEST)
    for name in net.params:
        for a, b, c in zip(net.params[name], with_weights.params[name], legacy.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.data, c.data)
    assert legacy.phase == protonet.TEST
    with pytest.raises(ProtonetError, match="phase third"):
        Net(LENET, weights)
    assert Net(LENET, "TEST").phase == protonet.TEST   # a phase spelled as a string


def test_the_attributes_scripts_read():
    net = Net(LENET, protonet.TEST)
    assert [(k, v.data.shape) for k, v in net.blobs.items()][:3] == [
        ("data", (64, 1, 28, 28)), ("conv1", (64, 20, 24, 24)), ("pool1", (64, 20, 12, 12))]
    assert [(k, v[0].data.shape) for k, v in net.params.items()] == [
        ("conv1", (20, 1, 5, 5)), ("conv2", (50, 20, 5, 5)), ("ip1", (500, 800)),
        ("ip2", (10, 500))]
    assert net.params["conv1"][1].data.shape == (20,)
    assert net._layer_names == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1",
                                "ip2", "prob"]
    assert list(net.layer_dict) == net._layer_names
    assert net.layer_dict["conv1"].type == "Convolution"
    assert net.layers[1] is net.layer_dict["conv1"]
    assert net.layers[1].blobs[0] is net.params["conv1"][0]
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert net.top_names["relu1"] == ["ip1"] and net.bottom_names["ip2"] == ["ip1"]
    assert net.blob_loss_weights["prob"] == 0
    assert net._blob_names == list(net.blobs)
    blob = net.blobs["data"]
    assert blob.count == 64 * 28 * 28 and blob.data.shape == blob.diff.shape == blob.shape
    assert "Net" in (protonet.net.Net.__doc__ or "") and "forward" in Net.forward.__doc__


def test_forward_with_inputs_start_end_and_extra_blobs():
    net = small()
    x = rand(4, 2, 5, 5)
    out = net.forward(data=x)
    assert list(out) == ["prob"] and out["prob"].shape == (4, 6)
    np.testing.assert_allclose(out["prob"].sum(1), 1, rtol=1e-5)
    full = out["prob"].copy()
    # a partial pass up to "ip" returns ip's top; then the rest from "prob"
    part = net.forward(data=x, end="ip", blobs=["conv"])
    assert set(part) == {"ip", "conv"}
    net.blobs["prob"].data[...] = 0
    rest = net.forward(start="prob")
    np.testing.assert_allclose(rest["prob"], full, rtol=1e-6)
    with pytest.raises(ProtonetError, match="no layer named"):
        net.forward(end="nope")
    with pytest.raises(ProtonetError, match="not a blob"):
        net.forward(image=x)


def test_backward_returns_input_diffs_and_matches_finite_differences():
    net = Net(parse_net(SMALL.replace('name: "small"', 'name: "small" force_backward: true')),
              protonet.TEST, seed=2, dtype=np.float64)
    x = rand(4, 2, 5, 5).astype(np.float64)
    net.forward(data=x)
    w = rand(4, 6, seed=3).astype(np.float64)
    grads = net.backward(prob=w)
    assert list(grads) == ["data"]
    # d/dx of sum(w * prob) at one element
    eps, idx = 1e-6, (1, 0, 2, 3)
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    num = (np.sum(w * net.forward(data=xp)["prob"]) - np.sum(w * net.forward(data=xm)["prob"]))
    assert grads["data"][idx] == pytest.approx(num / (2 * eps), rel=1e-5, abs=1e-9)
    with pytest.raises(ProtonetError, match="has shape"):
        net.backward(prob=np.ones((2, 6)))


def test_forward_all_batches_pads_and_concatenates():
    net = small()
    x = rand(10, 2, 5, 5)    # batch 4: two full batches and one padded
    out = net.forward_all(data=x)
    assert out["prob"].shape == (10, 6)
    one_by_one = np.concatenate([net.forward(data=x[i:i + 1])["prob"].copy() for i in range(10)])
    np.testing.assert_allclose(out["prob"], one_by_one, rtol=1e-5, atol=1e-7)
    extra = small().forward_all(blobs=["ip"], data=x)
    assert extra["ip"].shape == (10, 6) and set(extra) == {"prob", "ip"}


def test_forward_backward_all():
    net = Net(parse_net(SMALL.replace('name: "small"', 'name: "small" force_backward: true')),
              protonet.TEST, seed=2)
    x, d = rand(6, 2, 5, 5), rand(6, 6, seed=1)
    outs, diffs = net.forward_backward_all(data=x, prob=d)
    assert outs["prob"].shape == (6, 6) and diffs["data"].shape == (6, 2, 5, 5)
    for i in range(6):
        net.blobs["data"].reshape(1, 2, 5, 5)
        net.reshape()
        p = net.forward(data=x[i:i + 1])["prob"].copy()
        g = net.backward(prob=d[i:i + 1])["data"].copy()
        np.testing.assert_allclose(outs["prob"][i:i + 1], p, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(diffs["data"][i:i + 1], g, rtol=1e-4, atol=1e-6)


def test_reshape_then_forward_at_a_new_batch_size():
    net = Net(LENET, protonet.TEST)
    net.blobs["data"].reshape(1, 1, 28, 28)
    net.reshape()
    assert net.blobs["prob"].shape == (1, 10)
    assert net.forward(data=rand(1, 1, 28, 28))["prob"].shape == (1, 10)


def test_save_writes_a_caffemodel_caffe_reads(tmp_path):
    net = small()
    path = tmp_path / "small.caffemodel"
    net.save(str(path))
    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(path.read_bytes())   # what Caffe's ReadProtoFromBinaryFile does
    assert proto.name == "small"
    layers = {l.name: l for l in proto.layer}
    assert [l.type for l in proto.layer] == ["Input", "Convolution", "ReLU", "InnerProduct",
                                             "Softmax"]
    conv = layers["conv"]
    assert list(conv.blobs[0].shape.dim) == [3, 2, 3, 3] and list(conv.blobs[1].shape.dim) == [3]
    np.testing.assert_array_equal(np.asarray(conv.blobs[0].data, np.float32).reshape(3, 2, 3, 3),
                                  net.params["conv"][0].data)
    other = small(seed=9)
    other.copy_from(str(path))
    x = rand(4, 2, 5, 5)
    np.testing.assert_array_equal(other.forward(data=x)["prob"], net.forward(data=x)["prob"])


def test_save_hdf5_uses_caffes_layout_and_loads_back(tmp_path):
    h5py = pytest.importorskip("h5py")
    net = small()
    path = str(tmp_path / "small.caffemodel.h5")
    net.save_hdf5(path)
    with h5py.File(path, "r") as f:
        assert set(f["data"]) == set(net.layer_names)
        assert sorted(f["data/conv"]) == ["0", "1"]
        np.testing.assert_array_equal(f["data/ip/0"][()], net.params["ip"][0].data)
        assert f["data/ip/0"].dtype == np.float32
    other = small(seed=5)
    other.load_hdf5(path)
    np.testing.assert_array_equal(other.params["ip"][0].data, net.params["ip"][0].data)
    third = small(seed=6)
    third.copy_from(path)      # copy_from reads .h5 too, as Caffe's CopyTrainedLayersFrom
    np.testing.assert_array_equal(third.params["conv"][1].data, net.params["conv"][1].data)


def test_share_with_shares_weights_by_layer_name():
    train = small(seed=1)
    test = small(seed=2)
    test.share_with(train)
    x = rand(4, 2, 5, 5)
    np.testing.assert_array_equal(test.forward(data=x)["prob"], train.forward(data=x)["prob"])
    train.params["ip"][0].data[...] *= 2          # an update to one is seen by the other
    np.testing.assert_array_equal(test.params["ip"][0].data, train.params["ip"][0].data)
    train.params["ip"][0].diff[...] = 1           # diffs stay separate
    assert not test.params["ip"][0].diff.any()


def test_clear_param_diffs():
    net = Net(parse_net(SMALL.replace('name: "small"', 'name: "small" force_backward: true')),
              protonet.TEST, seed=2)
    net.forward(data=rand(4, 2, 5, 5))
    net.backward(prob=rand(4, 6))
    assert net.params["ip"][0].diff.any()
    net.clear_param_diffs()
    assert not any(b.diff.any() for blobs in net.params.values() for b in blobs)


def test_set_input_arrays_feeds_a_memory_data_layer():
    net = Net(parse_net("""name: "m"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
"""), protonet.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.arange(4, dtype=np.float32))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [0, 1])
    with pytest.raises(ProtonetError, match="MemoryData"):
        small().set_input_arrays(data, np.arange(4))


# -- process-wide switches ----------------------------------------------------------------------
def test_modes_device_and_the_gpu_warning(monkeypatch):
    monkeypatch.setitem(pycaffe._state, "gpu_warned", False)
    pycaffe.set_mode_cpu()
    with pytest.warns(RuntimeWarning, match="no GPU backend"):
        pycaffe.set_mode_gpu()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pycaffe.set_mode_gpu()             # warns once only
    pycaffe.set_device(0)
    assert pycaffe.get_mode() == "CPU"
    assert pycaffe.has_nccl() == (importlib.util.find_spec("mpi4py") is not None)
    pycaffe.set_mode_cpu()


def test_set_random_seed_makes_new_nets_reproducible(monkeypatch):
    monkeypatch.setitem(pycaffe._state, "seeds", None)
    pycaffe.set_random_seed(7)
    a1, a2 = Net(LENET, protonet.TEST), Net(LENET, protonet.TEST)
    pycaffe.set_random_seed(7)
    b1, b2 = Net(LENET, protonet.TEST), Net(LENET, protonet.TEST)
    np.testing.assert_array_equal(a1.params["conv1"][0].data, b1.params["conv1"][0].data)
    np.testing.assert_array_equal(a2.params["ip1"][0].data, b2.params["ip1"][0].data)
    assert not np.array_equal(a1.params["conv1"][0].data, a2.params["conv1"][0].data)
    monkeypatch.setitem(pycaffe._state, "seeds", None)
    c = Net(LENET, protonet.TEST)
    assert not np.array_equal(c.params["conv1"][0].data, a1.params["conv1"][0].data)


# -- net surgery (examples/net_surgery.ipynb) ------------------------------------------------------
def test_net_surgery_edits_params_in_place():
    net = Net(parse_net("""name: "surgery"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 } } }
"""), protonet.TEST)
    # a hand-made filter bank: identity (centre tap), horizontal and vertical gradients
    filters = np.zeros((3, 1, 3, 3), np.float32)
    filters[0, 0, 1, 1] = 1
    filters[1, 0, 1, :] = [-1, 0, 1]
    filters[2, 0, :, 1] = [-1, 0, 1]
    net.params["conv"][0].data[...] = filters
    net.params["conv"][1].data[...] = [0, 0, 0.5]
    img = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    net.blobs["data"].data[...] = img
    out = net.forward()["conv"]
    np.testing.assert_array_equal(out[0, 0], img[0, 0, 1:5, 1:5])
    np.testing.assert_array_equal(out[0, 1], np.full((4, 4), 2))       # +1 per column
    np.testing.assert_array_equal(out[0, 2], np.full((4, 4), 12.5))    # +6 per row, + bias


def test_net_surgery_casts_inner_products_to_convolutions():
    """The notebook's "casting a classifier into a fully convolutional network"."""
    fc = Net(parse_net("""name: "fc"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "data" top: "fc6"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "gaussian" std: 0.3 } } }
"""), protonet.TEST, seed=4)
    conv = Net(parse_net("""name: "fc_conv"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "fc6-conv" type: "Convolution" bottom: "data" top: "fc6-conv"
        convolution_param { num_output: 5 kernel_size: 4 } }
"""), protonet.TEST, seed=5)
    params, params_full_conv = ["fc6"], ["fc6-conv"]
    for pr, pr_conv in zip(params, params_full_conv):
        conv.params[pr_conv][0].data.flat = fc.params[pr][0].data.flat
        conv.params[pr_conv][1].data[...] = fc.params[pr][1].data
    x = rand(2, 3, 6, 6)
    dense = conv.forward(data=x)["fc6-conv"]
    assert dense.shape == (2, 5, 3, 3)
    for i in range(3):
        for j in range(3):
            window = fc.forward(data=x[:, :, i:i + 4, j:j + 4])["fc6"]
            np.testing.assert_allclose(dense[:, :, i, j], window, rtol=1e-4, atol=1e-5)


def test_a_loss_layer_without_a_top_gets_caffes_automatic_one():
    net = Net(parse_net("""name: "auto" force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" }
"""), protonet.TRAIN)
    assert net.top_names["loss"] == ["(automatic)"]
    assert net.blob_loss_weights["(automatic)"] == 1 and net.outputs == []
    net.blobs["data"].data[...] = 0
    assert net.forward_backward() == pytest.approx(np.log(4), rel=1e-6)
    assert net.blobs["data"].diff.any()


def test_two_layers_may_share_a_name_as_in_caffe():
    """BVLC's mnist_autoencoder names two loss layers "loss"; Caffe builds it."""
    net = Net(parse_net("""name: "dup"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 4 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "data" bottom: "label" top: "l2" }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "data" bottom: "label" top: "xent"
        loss_weight: 0 }
"""), protonet.TRAIN)
    assert net.layer_names == ["data", "data_data_0_split", "label_data_1_split", "loss", "loss"]
    assert net.layer_tops[3] == ["l2"] and net.layer_tops[4] == ["xent"]
    assert net.top_names["loss"] == ["xent"]          # the last, as pycaffe's dict keeps it
    assert net.outputs == ["l2", "xent"]
    assert np.isfinite(net.forward_backward())
