"""type: "Python" layers: user modules imported from sys.path, driven as pycaffe drives them."""
import itertools
import sys
import textwrap

import numpy as np
import pytest

import protonet.layers.python_layer  # noqa: F401  (until protonet.layers imports it)
from protonet import Net, ProtonetError
from protonet.layers.base import TEST, TRAIN, create_layer
from protonet.layers.python_layer import BlobVec, PyBlob, PythonLayer, PythonLayerBase
from protonet.blob import Blob
from protonet.testing import check_gradients, layer_param, make_layer, setup_layer

LAYERS = '''
import json
import numpy as np
from protonet.layers.python_layer import PythonLayerBase


class EuclideanLoss(PythonLayerBase):
    """Like Caffe's examples/pycaffe/layers/pyloss.py, but honouring the loss weight."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in enumerate((1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num


class LearnedScale(PythonLayerBase):
    """y = w * x with one learnable scalar w, initialised from param_str (JSON)."""

    def setup(self, bottom, top):
        self.seen = (self.param_str, self.phase)
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = json.loads(self.param_str or "{}").get("init", 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff

    def hello(self):
        return "hello from " + type(self).__name__


class NoBackward:
    def setup(self, bottom, top):
        pass
'''

_names = itertools.count()


@pytest.fixture
def pymodule(tmp_path, monkeypatch):
    """pymodule(source) -> the name of a fresh module holding ``source``, on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def _make(source: str = LAYERS) -> str:
        name = f"protonet_test_pylayers_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return name
    yield _make
    for name in made:
        sys.modules.pop(name, None)


def python_layer(module, cls, extra="", dtype=np.float64, phase=TEST):
    param = layer_param(f'name: "py" type: "Python" python_param {{ module: "{module}" '
                        f'layer: "{cls}" {extra} }}')
    return create_layer(param, phase=phase, dtype=dtype, allow_python=True)


NET = '''
name: "pynet"
layer {{ name: "data" type: "Input" top: "x" top: "y"
        input_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 dim: 3 }} }} }}
layer {{ name: "scale" type: "Python" bottom: "x" top: "sx"
        python_param {{ module: "{m}" layer: "LearnedScale" param_str: '{{"init": 0.5}}' }} }}
layer {{ name: "loss" type: "Python" bottom: "sx" bottom: "y" top: "loss"
        python_param {{ module: "{m}" layer: "EuclideanLoss" }} {loss_weight} }}
'''


def build_net(pymodule, write, loss_weight="loss_weight: 2", phase="TRAIN"):
    m = pymodule()
    return Net(write(NET.format(m=m, loss_weight=loss_weight)), phase, allow_python_layers=True)


def test_python_layers_forward_and_backward_through_a_net(pymodule, write):
    net = build_net(pymodule, write)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = y
    net.clear_param_diffs()
    loss = net.forward_backward()
    sx = np.float32(0.5) * x.astype(np.float32)
    expected = 2 * np.sum((sx - y.astype(np.float32)) ** 2) / 4 / 2
    assert loss == pytest.approx(expected, rel=1e-5)
    assert net.blobs["loss"].shape == (1,)
    d_sx = 2 * (sx - y.astype(np.float32)) / 4
    np.testing.assert_allclose(net.blobs["sx"].diff, d_sx, rtol=1e-5)
    # the learnable scalar is a real param of the net, with its gradient accumulated
    (w,) = net.params["scale"]
    assert w.shape == (1,) and w.data[0] == 0.5
    assert w in net.learnable_params
    np.testing.assert_allclose(w.diff[0], np.sum(d_sx * x.astype(np.float32)), rtol=1e-5)


def test_python_loss_equals_builtin_euclidean_loss(pymodule):
    m = pymodule()
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 3))
    ours = python_layer(m, "EuclideanLoss")
    builtin = make_layer('type: "EuclideanLoss"', dtype=np.float64)
    results = []
    for layer in (ours, builtin):
        bottom, top = setup_layer(layer, [a, b])
        layer.forward(bottom, top)
        top[0].diff[...] = 3.0
        layer.backward(top, [True, True], bottom)
        results.append((float(top[0].data.sum()), bottom[0].diff.copy(), bottom[1].diff.copy()))
    assert results[0][0] == pytest.approx(results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1])
    np.testing.assert_allclose(results[0][2], results[1][2])


def test_param_str_phase_and_attribute_delegation(pymodule, write):
    net = build_net(pymodule, write, phase="TRAIN")
    layer = net.layer_dict["scale"]
    assert isinstance(layer, PythonLayer) and layer.type == "Python"
    assert layer.seen == ('{"init": 0.5}', TRAIN)       # set before setup() ran
    assert layer.hello() == "hello from LearnedScale"    # reaches the user's object
    assert isinstance(layer.py, PythonLayerBase)
    # weights written through net.params are what the user's code uses
    net.params["scale"][0].data[...] = 3.0
    net.blobs["x"].data[...] = 1.0
    net.forward()
    np.testing.assert_array_equal(net.blobs["sx"].data, 3.0)


def test_python_layers_are_not_losses_unless_weighted(pymodule, write):
    net = build_net(pymodule, write, loss_weight="")
    assert net.layer_dict["loss"].loss_weights == [0.0]
    assert net.blob_loss_weights["loss"] == 0.0
    weighted = build_net(pymodule, write, loss_weight="loss_weight: 0.5")
    assert weighted.layer_dict["loss"].loss_weights == [0.5]


def test_python_layer_gradients(pymodule):
    m = pymodule()
    rng = np.random.default_rng(2)
    check_gradients(python_layer(m, "LearnedScale", "param_str: '{\"init\": 1.7}'"),
                    [rng.standard_normal((3, 4))])
    check_gradients(python_layer(m, "EuclideanLoss"),
                    [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))])


def test_python_layer_blobs_take_the_net_dtype(pymodule):
    layer = python_layer(pymodule(), "LearnedScale", dtype=np.float32)
    setup_layer(layer, [np.ones((2, 2), np.float32)])
    assert layer.blobs[0].data.dtype == np.float32 and layer.param_propagate_down == [True]
    assert layer.blobs is layer.py.blobs


def test_python_layers_need_opt_in(pymodule, write):
    m = pymodule()
    with pytest.raises(ProtonetError, match=f"import module '{m}'.*allow"):
        Net(write(NET.format(m=m, loss_weight="")), "TRAIN")
    with pytest.raises(ProtonetError, match="allow"):
        make_layer(f'type: "Python" python_param {{ module: "{m}" layer: "EuclideanLoss" }}')


def test_missing_module_names_it_and_pythonpath(pymodule, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/some/where")
    with pytest.raises(ProtonetError, match=r"layer 'py'.*'no_such_pylayer_mod'.*"
                                            r"PYTHONPATH='/some/where'"):
        python_layer("no_such_pylayer_mod", "Anything")


def test_missing_class_names_module_and_class(pymodule):
    m = pymodule()
    with pytest.raises(ProtonetError, match=f"module '{m}'.*no class 'Nope'.*EuclideanLoss"):
        python_layer(m, "Nope")
    with pytest.raises(ProtonetError, match=f"'{m}.NoBackward' is not a Python layer.*backward"):
        python_layer(m, "NoBackward")
    with pytest.raises(ProtonetError, match="needs both 'module' and 'layer'"):
        python_layer(m, "")


def test_broken_modules_are_reported(pymodule):
    dep = pymodule("import not_installed_dependency_xyz\n")
    with pytest.raises(ProtonetError, match=f"'{dep}'.*imports 'not_installed_dependency_xyz'"):
        python_layer(dep, "X")
    boom = pymodule("raise RuntimeError('boom at import')\n")
    with pytest.raises(ProtonetError, match=f"'{boom}' failed: RuntimeError: boom at import"):
        python_layer(boom, "X")


def test_user_errors_propagate_unchanged(pymodule):
    layer = python_layer(pymodule(), "EuclideanLoss")
    with pytest.raises(Exception, match="Need two inputs"):
        setup_layer(layer, [np.zeros((2, 2))])


def test_pyblob_is_pycaffe_shaped():
    blob = Blob((2, 3), np.float32, name="b")
    view = PyBlob(blob)
    assert (view.num, view.channels, view.height, view.width, view.count) == (2, 3, 1, 1, 6)
    view.reshape(4, 1, 2, 2)
    assert blob.shape == (4, 1, 2, 2) and view.shape == (4, 1, 2, 2)
    view.reshape((5,))
    assert blob.shape == (5,) and (view.num, view.channels) == (5, 1)
    view.data[...] = 2
    assert (blob.data == 2).all() and view.dtype == np.float32 and view.blob is blob
    view.reshape(1, 1, 1, 1, 2)
    with pytest.raises(ProtonetError, match="at most 4 axes"):
        view.num
    vec = BlobVec(np.float64, owner="L")
    vec.add_blob(2, 3)
    vec.add_blob((4,))
    assert [b.shape for b in vec] == [(2, 3), (4,)] and vec[0].dtype == np.float64
