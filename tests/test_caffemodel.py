"""Reading and writing .caffemodel files: fast path, legacy formats, errors."""
import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.io import parse_net
from protonet.io.blobs import array_to_blob_proto
from protonet.io.caffemodel import read_caffemodel, write_caffemodel
from protonet.proto import caffe_pb2

NET = """name: "small"
input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" } 
                      bias_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" }
                        bias_filler { type: "gaussian" } } }
"""


def small_net(seed=0):
    return protonet.Net(parse_net(NET), protonet.TEST, seed=seed)


def test_write_then_read_gives_identical_arrays_and_protobuf_agrees(tmp_path):
    net = small_net()
    path = str(tmp_path / "w.caffemodel")
    write_caffemodel(net, path)
    meta, weights = read_caffemodel(path)
    assert list(weights) == ["conv", "ip"]
    for name in weights:
        for a, b in zip(weights[name], net.params[name]):
            np.testing.assert_array_equal(a, b.data)
    assert [l.name for l in meta.layer] == ["input", "conv", "ip"]
    assert meta.layer[1].convolution_param.num_output == 4 and not len(meta.layer[1].blobs)
    # the protobuf runtime reads the same file the same way (what Caffe's reader does)
    full = caffe_pb2.NetParameter.FromString(open(path, "rb").read())
    assert list(full.layer[1].blobs[0].shape.dim) == [4, 3, 3, 3]
    np.testing.assert_array_equal(np.asarray(full.layer[2].blobs[1].data, np.float32),
                                  net.params["ip"][1].data)


def test_copy_from_round_trip(tmp_path):
    a, b = small_net(1), small_net(2)
    path = str(tmp_path / "a.caffemodel")
    write_caffemodel(a, path)
    b.copy_from(path)
    for name in a.params:
        for x, y in zip(a.params[name], b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    out = protonet.Net(parse_net(NET), protonet.TEST, weights=path)
    np.testing.assert_array_equal(out.params["conv"][0].data, a.params["conv"][0].data)


def test_v1_caffemodel_with_legacy_4d_blobs_and_doubles(tmp_path):
    net = small_net(3)
    v1 = caffe_pb2.NetParameter(name="old")
    layer = v1.layers.add(name="conv", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    layer.blobs.append(array_to_blob_proto(net.params["conv"][0].data, legacy_4d=True))
    layer.blobs.append(array_to_blob_proto(net.params["conv"][1].data.reshape(1, 1, 1, 4),
                                           legacy_4d=True))
    layer = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    w = net.params["ip"][0].data.astype(np.float64)
    layer.blobs.append(array_to_blob_proto(w.reshape(1, 1, *w.shape), legacy_4d=True))
    layer.blobs.append(array_to_blob_proto(net.params["ip"][1].data))
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(v1.SerializeToString())
    meta, weights = read_caffemodel(str(path))
    assert [l.type for l in meta.layer] == ["Convolution", "InnerProduct"]
    assert weights["ip"][0].dtype == np.float64
    target = small_net(9)
    target.copy_from(str(path))
    for name in ("conv", "ip"):
        for x, y in zip(net.params[name], target.params[name]):
            np.testing.assert_allclose(x.data, y.data, rtol=1e-7)


def test_v0_caffemodel(tmp_path):
    v0 = caffe_pb2.NetParameter(name="v0")
    conn = v0.layers.add()
    conn.layer.name, conn.layer.type = "ip", "innerproduct"
    conn.layer.blobs.append(array_to_blob_proto(np.ones((1, 1, 5, 3), np.float32),
                                                legacy_4d=True))
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(v0.SerializeToString())
    meta, weights = read_caffemodel(str(path))
    assert meta.layer[0].type == "InnerProduct" and weights["ip"][0].shape == (1, 1, 5, 3)


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    other = NET.replace("num_output: 5", "num_output: 6")
    path = str(tmp_path / "w.caffemodel")
    write_caffemodel(protonet.Net(parse_net(other), protonet.TEST), path)
    with pytest.raises(ProtonetError) as err:
        small_net().copy_from(path)
    message = str(err.value)
    assert "layer 'ip'" in message and "[6, 144]" in message and "[5, 144]" in message
    assert "rename the layer" in message


def test_transposed_same_size_blob_is_still_a_mismatch(tmp_path):
    net = small_net()
    bad = caffe_pb2.NetParameter()
    layer = bad.layer.add(name="ip", type="InnerProduct")
    layer.blobs.append(array_to_blob_proto(net.params["ip"][0].data.T.copy()))
    layer.blobs.append(array_to_blob_proto(net.params["ip"][1].data))
    path = tmp_path / "t.caffemodel"
    path.write_bytes(bad.SerializeToString())
    with pytest.raises(ProtonetError, match="cannot copy param 0 of layer 'ip'"):
        net.copy_from(str(path))


def test_unknown_source_layers_are_ignored_with_a_note(tmp_path):
    extra = caffe_pb2.NetParameter()
    extra.layer.add(name="fc_other", type="InnerProduct").blobs.append(
        array_to_blob_proto(np.zeros((2, 2), np.float32)))
    path = tmp_path / "x.caffemodel"
    path.write_bytes(extra.SerializeToString())
    with pytest.warns(protonet.io.ProtonetWarning, match="ignoring source layer 'fc_other'"):
        small_net().copy_from(str(path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_give_a_clear_error(tmp_path, damage):
    path = str(tmp_path / "w.caffemodel")
    write_caffemodel(small_net(), path)
    data = open(path, "rb").read()
    data = {"truncate": data[: len(data) - 37], "garbage": b"\x0f\xff" * 40,
            "empty": data[:0]}[damage]
    open(path, "wb").write(data)
    if damage == "empty":  # an empty NetParameter is valid protobuf: nothing to copy
        assert read_caffemodel(path)[1] == {}
        return
    with pytest.raises(ProtonetError, match="not a valid caffemodel"):
        small_net().copy_from(path)


def test_hdf5_weights(tmp_path):
    h5py = pytest.importorskip("h5py")
    net = small_net(4)
    path = str(tmp_path / "w.caffemodel.h5")
    with h5py.File(path, "w") as f:
        for name, blobs in net.params.items():
            for i, b in enumerate(blobs):
                f.create_dataset(f"data/{name}/{i}", data=b.data)
    target = small_net(5)
    target.copy_from(path)
    np.testing.assert_array_equal(target.params["ip"][0].data, net.params["ip"][0].data)


def test_binaryproto_and_blobprotovector_files(tmp_path):
    from protonet.io.blobs import (read_blob_proto, read_blob_proto_vector, write_blob_proto,
                                   write_blob_proto_vector)
    mean = np.random.default_rng(0).random((1, 3, 5, 4)).astype(np.float32)
    path = str(tmp_path / "mean.binaryproto")
    write_blob_proto(path, mean)
    proto = caffe_pb2.BlobProto.FromString(open(path, "rb").read())
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 3, 5, 4)  # as Caffe
    np.testing.assert_array_equal(read_blob_proto(path), mean)
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float64)]
    vec = str(tmp_path / "v.binaryproto")
    write_blob_proto_vector(vec, arrays)
    back = read_blob_proto_vector(vec)
    assert [a.shape for a in back] == [(2, 3), (4,)] and back[1].dtype == np.float64
    np.testing.assert_array_equal(back[0], arrays[0])
    with pytest.raises(ProtonetError, match="not a valid binary BlobProtoVector"):
        open(vec, "wb").write(b"\xff\xff\xff")
        read_blob_proto_vector(vec)


def test_legacy_fields_win_over_shape_as_in_caffe():
    from protonet.io.blobs import blob_proto_to_array
    proto = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    proto.shape.dim.extend([6])
    proto.data.extend(range(6))
    assert blob_proto_to_array(proto).shape == (1, 2, 1, 3)


def test_a_zero_axis_blob_is_written_without_a_shape_as_caffe_does():
    """Caffe's Blob::ToProto adds dims one by one, so a 0-axis blob (a channel-shared
    Normalize or PReLU scale) has no shape field; OpenCV cannot read an empty one."""
    import numpy as np
    from protonet.io.blobs import array_to_blob_proto, blob_proto_to_array
    proto = array_to_blob_proto(np.array(2.5, np.float32))
    assert not proto.HasField("shape") and list(proto.data) == [2.5]
    assert blob_proto_to_array(proto).reshape(()) == 2.5


def test_a_saved_zero_axis_param_has_no_shape_field(tmp_path):
    import numpy as np
    import protonet
    from protonet.io import parse_net
    from protonet.proto import caffe_pb2
    net = protonet.Net(parse_net(
        'input: "x" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
        'layer { name: "p" type: "PReLU" bottom: "x" top: "y" '
        'prelu_param { channel_shared: true filler { type: "constant" value: 0.3 } } }'),
        protonet.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    saved = caffe_pb2.NetParameter()
    saved.ParseFromString((tmp_path / "w.caffemodel").read_bytes())
    (blob,) = [b for layer in saved.layer for b in layer.blobs]
    assert not blob.HasField("shape") and np.allclose(blob.data, [0.3])
    again = protonet.Net(parse_net(
        'input: "x" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
        'layer { name: "p" type: "PReLU" bottom: "x" top: "y" '
        'prelu_param { channel_shared: true } }'), protonet.TEST)
    again.copy_from(str(tmp_path / "w.caffemodel"))
    assert np.allclose(again.params["p"][0].data, 0.3)
