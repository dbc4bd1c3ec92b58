"""Reading prototxt: strict errors with locations, the lenient Netscope dialect, binary files."""
import pytest

from protonet import ProtonetError
from protonet.io import parse_net, read_net, read_solver
from protonet.io.prototxt import ProtonetWarning
from protonet.proto import caffe_pb2

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_strict_parse_reads_fields():
    net = parse_net(NET)
    assert net.name == "tiny"
    assert [l.type for l in net.layer] == ["Input", "Pooling"]
    assert net.layer[1].pooling_param.kernel_size == 2


@pytest.mark.parametrize("text, where, words", [
    ('name: "x"\nlayer { name: "a" type: "Input" bogus: 1 }\n', ":2:33:", "no field named \"bogus\""),
    ('layer {\n  pooling_param { pool: MAXIMUM }\n}\n', ":2:25:", "MAXIMUM"),
    ('layer {\n  convolution_param { num_output: "ten" }\n}\n', ":2:35:", "num_output"),
    ('layer { name: "a"\n', ":1:15:", "Expected \"}\""),
])
def test_strict_errors_name_file_line_column_and_token(write, text, where, words):
    path = write(text)
    with pytest.raises(ProtonetError) as err:
        read_net(path)
    message = str(err.value)
    assert message.startswith(path + where), message
    assert words in message
    assert "\n" not in message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ProtonetError, match="no such file"):
        read_net(str(tmp_path / "nope.prototxt"))


def test_binary_net_is_read_and_upgraded(tmp_path):
    v1 = caffe_pb2.NetParameter(name="bin")
    layer = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.blobs_lr.extend([1, 2])
    path = tmp_path / "w.caffemodel"
    path.write_bytes(v1.SerializeToString())
    net = read_net(str(path))
    assert net.layer[0].type == "InnerProduct"
    assert [p.lr_mult for p in net.layer[0].param] == [1, 2]


def test_garbage_binary_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(b"\xff\xfe\x00garbage\x13")
    with pytest.raises(ProtonetError, match="not a valid binary NetParameter"):
        read_net(str(path))


# -- lenient (Netscope) dialect --------------------------------------------------------------
LENIENT = """name: 'mixed'
layer {
  type: 'data'  NAME: 'data'  top: 'data'
  input_param: { shape: { dim: [1, 3, 16, 16] } }
  force_backward: true
}
layers { name: 'conv' type: CONVOLUTION bottom: 'data' top: 'conv'
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 engine: caffe } }
layer { name: 'relu' type: 'relu' bottom: 'conv' top: 'conv' }
layers { type: CROP name: 'crop' bottom: 'conv' bottom: 'data' top: 'crop' }
"""


def test_lenient_reads_netscope_superset_with_one_warning_per_item():
    with pytest.warns(ProtonetWarning) as record:
        net = parse_net(LENIENT, "mixed.prototxt", lenient=True)
    notes = [str(w.message) for w in record]
    assert [l.name for l in net.layer] == ["data", "conv", "relu", "crop"]  # file order kept
    assert [l.type for l in net.layer] == ["Input", "Convolution", "ReLU", "Crop"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 16, 16]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert net.layer[1].convolution_param.engine == caffe_pb2.ConvolutionParameter.CAFFE

    def one(fragment):
        hits = [n for n in notes if fragment in n]
        assert len(hits) == 1, (fragment, notes)
        return hits[0]

    assert one("dropped unknown field 'force_backward'").startswith("mixed.prototxt:5:3:")
    one("field 'NAME' read as 'name'")
    one("enum value 'caffe' read as 'CAFFE'")
    one("type 'data' read as 'Input'")
    one("type 'relu' read as 'ReLU'")
    one("V1 type 'CROP' read as 'Crop'")


def test_strict_refuses_what_lenient_accepts():
    with pytest.raises(ProtonetError):
        parse_net(LENIENT, "mixed.prototxt")


def test_lenient_syntax_errors_still_name_the_place():
    with pytest.raises(ProtonetError, match=r"^x.prototxt:2:15: expected a value"):
        parse_net("name: 'a'\nlayer { name: } ", "x.prototxt", lenient=True)
    with pytest.raises(ProtonetError, match=r"missing '}'"):
        parse_net("layer { name: 'a' ", "x.prototxt", lenient=True)


def test_lenient_accepts_old_float_and_single_quotes():
    net = parse_net("layer { name: 'a' type: 'Dropout' dropout_param { dropout_ratio: 1. } }",
                    lenient=True)
    assert net.layer[0].dropout_param.dropout_ratio == 1.0


def test_solver_reads_and_upgrades_solver_type(write):
    path = write('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: ADAM\n', "solver.prototxt")
    solver = read_solver(path)
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert solver.snapshot_prefix == path[: -len(".prototxt")]  # Caffe's default prefix


def test_solver_with_both_type_fields_is_refused(write):
    path = write('type: "SGD"\nsolver_type: ADAM\n', "solver.prototxt")
    with pytest.raises(ProtonetError, match="solver_type"):
        read_solver(path)


def test_solver_snapshot_prefix_directory(write, tmp_path):
    (tmp_path / "snaps").mkdir()
    path = write(f'snapshot_prefix: "{tmp_path / "snaps"}"\n', "my_solver.prototxt")
    assert read_solver(path).snapshot_prefix == str(tmp_path / "snaps" / "my_solver")
