"""Untrusted input: no code runs, no machine-sized allocations, full disks fail cleanly."""
import ast
import errno
import os
import pathlib
import sys

import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.cli import main
from protonet.io import parse_net
from protonet.io.caffemodel import read_caffemodel, write_caffemodel

from conftest import REPO

HUGE = """name: "huge"
input: "data" input_dim: 100000 input_dim: 3 input_dim: 224 input_dim: 224
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
"""


def test_a_machine_sized_net_is_refused_before_anything_is_allocated():
    with pytest.raises(ProtonetError) as err:
        protonet.Net(parse_net(HUGE), protonet.TEST, memory_limit=1 << 30)
    message = str(err.value)
    assert "needs" in message and "GiB" in message and "conv1" in message and "data" in message
    assert "--memory-limit" in message and "PROTONET_MEMORY_LIMIT" in message


def test_the_default_limit_is_the_memory_available():
    with pytest.raises(ProtonetError, match="more than the .* GiB limit"):
        protonet.Net(parse_net(HUGE), protonet.TEST)  # 100000 x 64 x 224 x 224 floats


def test_memory_limit_from_the_environment_and_off_switch(monkeypatch):
    small = HUGE.replace("input_dim: 100000", "input_dim: 2")
    monkeypatch.setenv("PROTONET_MEMORY_LIMIT", "1M")
    with pytest.raises(ProtonetError, match="1M|0.00 GiB limit"):
        protonet.Net(parse_net(small), protonet.TEST)
    monkeypatch.setenv("PROTONET_MEMORY_LIMIT", "0")
    assert protonet.Net(parse_net(small), protonet.TEST).blobs["conv1"].shape == (2, 64, 224, 224)


def test_cli_refuses_with_one_line_and_summary_still_shows_the_shapes(write, capsys):
    path = write(HUGE)
    assert main(["time", path, "--memory-limit", "2G", "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs" in err and "Traceback" not in err
    assert main(["summary", path]) == 0  # shapes only: nothing is allocated
    assert "100000x64x224x224" in capsys.readouterr().out


FCN_PYTHON = """name: "fcn"
layer { name: "data" type: "Python" top: "data" top: "label"
        python_param { module: "evil_module_that_must_not_load" layer: "Data" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
"""


def test_inspection_never_imports_python_layers(tmp_path, write, capsys, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_module_that_must_not_load.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nclass Data: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(FCN_PYTHON)
    assert main(["summary", "--strict", path]) == 1
    err = capsys.readouterr().err
    assert "Python layer (module 'evil_module_that_must_not_load')" in err and "--input-shape" in err
    assert main(["summary", path]) == 0  # by default: an opaque layer with ? tops, and a warning
    err = capsys.readouterr().err
    assert "Python layer (module 'evil_module_that_must_not_load')" in err and "--input-shape" in err
    assert main(["summary", path, "--input-shape", "data=1,3,8,8",
                 "--input-shape", "label=1,6,6", "--json"]) == 0
    assert '"type": "Python"' in capsys.readouterr().out
    assert main(["draw", path, str(tmp_path / "net.svg")]) == 0
    assert main(["upgrade", path, str(tmp_path / "up.prototxt")]) == 0
    assert main(["time", path, "--iterations", "1"]) == 1
    assert "--allow-python-layers" in capsys.readouterr().err
    assert not marker.exists() and "evil_module_that_must_not_load" not in sys.modules


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
            getattr(n.func, "attr", getattr(n.func, "id", None)) == name]


def test_no_pickle_anywhere_in_the_package():
    for path in sorted(pathlib.Path(REPO, "protonet").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any(n.split(".")[0] in ("pickle", "cPickle", "dill") for n in names), path
        for call in _calls(tree, "load"):
            if getattr(call.func, "value", None) is not None and \
                    getattr(call.func.value, "id", "") == "np":
                kw = {k.arg: k.value for k in call.keywords}
                assert "allow_pickle" in kw and getattr(kw["allow_pickle"], "value", True) is False, \
                    f"{path}:{call.lineno}: np.load without allow_pickle=False"


def test_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    net = protonet.Net(parse_net(HUGE.replace("input_dim: 100000", "input_dim: 1")
                                 .replace("224", "8")), protonet.TEST, seed=1)
    path = str(tmp_path / "w.caffemodel")
    write_caffemodel(net, path)
    before = open(path, "rb").read()
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *args, **kw):
        f = real_open(file, mode, *args, **kw)
        return FullDisk(f) if "w" in mode and ".protonet-tmp-" in str(file) else f

    monkeypatch.setattr("builtins.open", fake_open)
    net.params["conv1"][0].data[...] += 1
    with pytest.raises(ProtonetError, match="No space left on device"):
        write_caffemodel(net, path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before  # the old file, whole
    assert not [p for p in os.listdir(tmp_path) if ".protonet-tmp-" in p]  # no litter
    np.testing.assert_array_equal(read_caffemodel(path)[1]["conv1"][0],
                                  net.params["conv1"][0].data - 1)
