"""Legacy V0/V1 definitions upgraded as Caffe's upgrade_proto does."""
import pytest

from protonet import ProtonetError
from protonet.cli import main
from protonet.io import parse_net, read_net
from protonet.io.upgrade import BVLC_LAYER_TYPES, V1_TYPE_NAMES
from protonet.proto import caffe_pb2

V0 = """name: "v0"
input: "data" input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 1
                 blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0.
                 weight_filler { type: "gaussian" std: 0.01 } }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool1" top: "pool1" }
layers { layer { name: "data2" type: "data" source: "db" batchsize: 4 cropsize: 5
                 meanfile: "m.binaryproto" mirror: true scale: 0.5 } top: "d2" top: "l2" }
"""


def test_v0_net_upgrades_like_caffe():
    net = parse_net(V0)
    assert [l.name for l in net.layer] == ["input", "conv1", "pool1", "drop", "data2"]
    assert [l.type for l in net.layer] == ["Input", "Convolution", "Pooling", "Dropout", "Data"]
    inp, conv, pool, drop, data = net.layer
    assert list(inp.input_param.shape[0].dim) == [1, 3, 10, 10] and list(inp.top) == ["data"]
    # the padding layer is folded into the conv that reads it
    assert list(conv.bottom) == ["data"] and list(conv.convolution_param.pad) == [2]
    assert conv.convolution_param.num_output == 8
    assert list(conv.convolution_param.kernel_size) == [5]
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert drop.dropout_param.dropout_ratio == pytest.approx(0.3)
    assert data.data_param.source == "db" and data.data_param.batch_size == 4
    t = data.transform_param
    assert (t.crop_size, t.mean_file, t.mirror, t.scale) == (5, "m.binaryproto", True, 0.5)


def test_v1_data_fields_move_to_transform_param():
    net = parse_net("""layers { name: "d" type: DATA top: "x"
        data_param { source: "db" batch_size: 2 scale: 0.25 crop_size: 3 mirror: true
                     mean_file: "m" } }""")
    layer = net.layer[0]
    assert layer.type == "Data"
    assert not layer.data_param.HasField("scale") and not layer.data_param.HasField("crop_size")
    t = layer.transform_param
    assert (t.scale, t.crop_size, t.mirror, t.mean_file) == (0.25, 3, True, "m")


def test_v1_layer_fields_carry_over():
    net = parse_net("""layers { name: "ip" type: INNER_PRODUCT bottom: "a" top: "b"
        param: "shared_w" blob_share_mode: PERMISSIVE blobs_lr: 3 weight_decay: 0.5
        loss_weight: 2 include { phase: TRAIN } inner_product_param { num_output: 7 } }""")
    layer = net.layer[0]
    assert layer.param[0].name == "shared_w" and layer.param[0].lr_mult == 3
    assert layer.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert layer.param[0].decay_mult == 0.5 and list(layer.loss_weight) == [2]
    assert layer.include[0].phase == caffe_pb2.TRAIN
    assert layer.inner_product_param.num_output == 7


def test_every_v1_enum_maps_to_a_bvlc_type():
    for value in caffe_pb2.V1LayerParameter.LayerType.values():
        name = caffe_pb2.V1LayerParameter.LayerType.Name(value)
        assert name in V1_TYPE_NAMES
        assert V1_TYPE_NAMES[name] in BVLC_LAYER_TYPES or name == "NONE"


def test_input_shape_becomes_input_layer_in_front():
    net = parse_net("""input: "a" input_shape { dim: 1 dim: 2 }
        input: "b" input_shape { dim: 3 }
        layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }""")
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2], [3]]
    assert not len(net.input) and not len(net.input_shape)


def test_bad_input_dim_count_is_an_error():
    with pytest.raises(ProtonetError, match="input_dim"):
        parse_net('input: "a" input_dim: 1 input_dim: 2')


def test_batchnorm_with_three_params_is_frozen():
    net = parse_net("""layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
        param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }""")
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3


def test_v1_era_lenet_upgrades_to_the_v2_lenet(corpus):
    old = read_net(str(corpus / "BVLC/caffe@c7f63da/examples/mnist/lenet_train_test.prototxt"))
    new = read_net(str(corpus / "BVLC/caffe/examples/mnist/lenet_train_test.prototxt"))
    assert [(l.name, l.type, list(l.bottom), list(l.top)) for l in old.layer] == \
           [(l.name, l.type, list(l.bottom), list(l.top)) for l in new.layer]
    for a, b in zip(old.layer, new.layer):
        assert [(p.lr_mult) for p in a.param] == [(p.lr_mult) for p in b.param]


def test_upgrade_command_writes_text_caffe_reads(corpus, tmp_path, capsys):
    out = tmp_path / "vgg.prototxt"
    src = corpus / "ethereon/netscope/presets/vgg-16.prototxt"
    assert main(["upgrade", str(src), str(out)]) == 0
    text = out.read_text()
    assert "layers {" not in text and 'type: "Convolution"' in text
    again = read_net(str(out))  # strict, no upgrade needed
    assert again.layer[0].type == "Input" and len(again.layer) == len(read_net(str(src)).layer)


def test_upgrade_command_handles_solvers(corpus, tmp_path):
    out = tmp_path / "solver.prototxt"
    src = corpus / "BVLC/caffe/examples/mnist/lenet_consolidated_solver.prototxt"
    assert main(["upgrade", str(src), str(out)]) == 0
    text = out.read_text()
    assert "net_param {" in text and "layers {" not in text and "layer {" in text
