"""Python layers whose class is defined by code that is already running.

pycaffe's own tests and many notebooks define a ``caffe.Layer`` subclass in the running
script and name that script's module in the prototxt. Using it imports nothing and runs
no new code, so it needs no opt-in; anything else still does.
"""
import sys
import types

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.io import parse_net


class TimesTen(protonet.Layer):
    """y = 10 x (pycaffe's test_python_layer.SimpleLayer)."""

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class NotALayer:
    def setup(self, bottom, top): ...
    def reshape(self, bottom, top): ...
    def forward(self, bottom, top): ...
    def backward(self, top, propagate_down, bottom): ...


def _net(module, layer):
    text = f"""name: "p" force_backward: true
    input: "data" input_shape {{ dim: 2 dim: 3 }}
    layer {{ type: "Python" name: "one" bottom: "data" top: "one"
             python_param {{ module: "{module}" layer: "{layer}" }} }}"""
    return protonet.Net(parse_net(text), protonet.TRAIN)


def test_a_layer_class_of_a_running_module_needs_no_opt_in():
    net = _net(__name__, "TimesTen")
    net.blobs["data"].data[...] = 7
    net.forward()
    np.testing.assert_array_equal(net.blobs["one"].data, np.full((2, 3), 70.0))
    net.blobs["one"].diff[...] = 2
    net.backward()
    np.testing.assert_array_equal(net.blobs["data"].diff, np.full((2, 3), 20.0))


@pytest.mark.parametrize("module, layer", [
    ("os", "system"),                 # an imported module's callable that is not a layer
    ("os", "path"),                   # a module, not a class
    ("collections", "OrderedDict"),   # a class, not a caffe.Layer
    (__name__, "NotALayer"),          # duck-typed like a layer, but not a subclass
    (__name__, "NoSuchClass"),
])
def test_anything_else_of_a_running_module_still_needs_the_opt_in(module, layer):
    with pytest.raises(ProtonetError, match=f"import module '{module}'.*allow"):
        _net(module, layer)


def test_a_module_not_yet_imported_is_not_imported():
    name = "protonet_never_imported_pylayer_xyz"
    assert name not in sys.modules
    with pytest.raises(ProtonetError, match="allow"):
        _net(name, "TimesTen")
    assert name not in sys.modules


def test_a_module_getattr_hook_is_not_run(monkeypatch):
    calls = []
    mod = types.ModuleType("protonet_hooked_module_xyz")
    mod.__getattr__ = lambda attr: calls.append(attr) or TimesTen
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    with pytest.raises(ProtonetError, match="allow"):
        _net(mod.__name__, "TimesTen")
    assert calls == []
