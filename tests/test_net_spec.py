"""pycaffe's NetSpec: BVLC's python/caffe/test/test_net_spec.py, and where keywords go."""
import re

import numpy as np
import pytest

import protonet
from protonet.io import parse_net
from protonet.net import Net
from protonet.net_spec import NetSpec, layers as L, params as P, to_proto
from protonet.proto import caffe_pb2


def lenet(batch_size):
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                         dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size):
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                     dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type='xavier'))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type='xavier'))
    loss = L.SoftmaxWithLoss(ip2, label)
    return loss.to_proto()


def silent_net():
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    return n.to_proto()


def load(net_proto, phase=protonet.TRAIN):
    """As BVLC's test: through text, the way a prototxt file carries it."""
    return Net(parse_net(str(net_proto)), phase, seed=0)


def test_lenet():
    net_proto = lenet(50)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top   # relu is in place
    net = load(net_proto)
    assert len(net.layers) == 9
    net_proto = anon_lenet(50)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top
    net = load(net_proto)
    assert len(net.layers) == 9
    assert [l.name for l in net_proto.layer][:3] == ["DummyData1", "Convolution1", "Pooling1"]
    assert list(net_proto.layer[0].top) == ["DummyData1", "DummyData2"]


def test_zero_tops():
    net = load(silent_net())
    assert len(net.forward()) == 0


def test_type_error():
    data = L.DummyData(ntop=2)
    r = r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"
    with pytest.raises(TypeError, match=r):
        L.Silence(data, ntop=0)
    with pytest.raises(TypeError, match=r"^Silence input 1 is not a Top"):
        L.Silence(data[0], data, ntop=0)


def test_lenet_text_is_strict_prototxt_and_runs():
    text = str(lenet(8))
    param = parse_net(text)                   # strict: exactly what Caffe's parser accepts
    conv1 = param.layer[1]
    assert conv1.convolution_param.kernel_size == [5]
    assert conv1.convolution_param.weight_filler.type == "xavier"
    assert param.layer[2].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert param.layer[0].transform_param.scale == pytest.approx(1 / 255)
    net = Net(param, protonet.TRAIN, seed=1)
    net.blobs["data"].data[...] = np.random.default_rng(0).random((8, 1, 28, 28))
    loss = net.forward()["loss"]
    assert np.isfinite(loss) and loss > 0


def test_where_keywords_go():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1,
                           param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                           bias_filler=dict(type="constant", value=0.1), name="conv_custom",
                           loss_weight=0, propagate_down=True)
    n.acc = L.Accuracy(n.conv, n.data, include=dict(phase=protonet.TEST), top_k=5)
    n.py = L.Python(n.conv, module="mymod", layer="MyLayer", param_str="'x': 1")
    n.drop = L.Dropout(n.conv, dropout_param=dict(dropout_ratio=0.3), in_place=True)
    proto = n.to_proto()
    by_name = {l.name: l for l in proto.layer}
    data = by_name["data"]
    assert list(data.input_param.shape[0].dim) == [2, 3, 8, 8]
    conv = proto.layer[1]
    # a layer-level field named in kwargs overrides the name from the NetSpec attribute
    assert conv.name == "conv_custom" and list(conv.top) == ["conv"]
    assert list(conv.convolution_param.pad) == [1]           # scalar -> repeated
    assert [p.lr_mult for p in conv.param] == [1, 2]          # list of dicts -> messages
    assert conv.convolution_param.bias_filler.value == pytest.approx(0.1)
    assert list(conv.loss_weight) == [0] and list(conv.propagate_down) == [True]
    acc = by_name["acc"]
    assert acc.include[0].phase == caffe_pb2.TEST and acc.accuracy_param.top_k == 5
    py = by_name["py"]
    assert (py.python_param.module, py.python_param.layer) == ("mymod", "MyLayer")
    drop = by_name["drop"]
    assert list(drop.bottom) == list(drop.top) == ["conv"]
    assert drop.dropout_param.dropout_ratio == pytest.approx(0.3)


def test_to_proto_of_several_tops_and_spec_access():
    data, label = L.DummyData(shape=[dict(dim=[2, 3]), dict(dim=[2])], ntop=2)
    ip = L.InnerProduct(data, num_output=4)
    proto = to_proto(ip, label)
    assert [l.type for l in proto.layer] == ["DummyData", "InnerProduct"]
    n = NetSpec()
    n["ip"] = ip
    assert n["ip"] is n.ip and "ip" in n and n.keys() == ["ip"] and n.vals() == [ip]
    with pytest.raises(AttributeError):
        n.missing
    with pytest.raises(KeyError):
        n["missing"]
    assert not hasattr(n, "missing")
    del n["ip"]
    assert n.keys() == []


def test_params_gives_enum_values():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    with pytest.raises(AttributeError):
        P.NoSuchLayer.X


def test_an_inception_like_branching_spec_builds():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 8, 6, 6]))
    branches = []
    for i, k in enumerate((1, 3, 5)):
        conv = L.Convolution(n.data, num_output=4, kernel_size=k, pad=k // 2,
                             weight_filler=dict(type="xavier"))
        setattr(n, f"b{i}", conv)
        setattr(n, f"b{i}_relu", L.ReLU(conv, in_place=True))
        branches.append(conv)
    n.out = L.Concat(*branches)
    n.sum = L.Eltwise(n.b0, n.b1, operation=P.Eltwise.SUM)
    net = Net(parse_net(str(n.to_proto())), protonet.TEST, seed=0)
    assert net.blobs["out"].shape == (1, 12, 6, 6) and net.blobs["sum"].shape == (1, 4, 6, 6)
    assert re.search(r"operation: SUM", str(n.to_proto()))
