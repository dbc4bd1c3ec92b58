"""``python -m protonet.caffe SCRIPT`` runs pycaffe scripts whose imports say ``caffe``."""
import importlib.util
import subprocess
import sys
import textwrap

import pytest

import protonet
from protonet import caffe as alias

SCRIPT = '''
import sys
import caffe
import caffe.io, caffe.draw, caffe.net_spec, caffe.classifier, caffe.detector, caffe.coord_map
from caffe.proto import caffe_pb2
from caffe import layers as L, params as P
from caffe.coord_map import coord_map_from_to, crop
import protonet

assert caffe is protonet and caffe.io is protonet.io and caffe.draw is protonet.draw
assert caffe_pb2 is protonet.proto.caffe_pb2 and caffe.detector.Detector.__module__ == "protonet.detector"
assert protonet.__spec__.name == "protonet"        # the alias leaves protonet's spec alone
assert caffe.classifier.Classifier is caffe.Classifier and caffe.Detector is caffe.detector.Detector


class TimesTwo(caffe.Layer):      # a layer defined by the running script itself
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data


with open("net.prototxt", "w") as f:
    f.write("""input: "data" input_shape { dim: 1 dim: 3 }
    layer { type: "Python" name: "two" bottom: "data" top: "two"
            python_param { module: "__main__" layer: "TimesTwo" } }""")
net = caffe.Net("net.prototxt", caffe.TEST)
net.blobs["data"].data[...] = 4
print("out", net.forward()["two"].tolist(), "argv", sys.argv[1:])
sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
'''


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "protonet.caffe", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_a_pycaffe_script_runs_unchanged(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    done = run(["script.py", "--gpu", "0"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "out [[8.0, 8.0, 8.0]] argv ['--gpu', '0']" in done.stdout


def test_the_scripts_exit_status_is_kept(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    assert run(["script.py", "3"], tmp_path).returncode == 3


def test_a_module_runs_with_dash_m(tmp_path):
    (tmp_path / "caffe_user.py").write_text(textwrap.dedent('''
        import sys
        from caffe.proto import caffe_pb2
        print(__name__, caffe_pb2.NetParameter(name="x").name, sys.argv[1:])
    '''))
    done = run(["-m", "caffe_user", "a"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["__main__", "x", "['a']"]


@pytest.mark.parametrize("args, message", [([], "usage"), (["missing.py"], "no such script"),
                                           (["-m"], "usage")])
def test_bad_invocations_exit_2_with_a_message(tmp_path, args, message):
    done = run(args, tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_nothing_named_caffe_is_installed(tmp_path):
    """The alias exists only in a process that asked for it."""
    spec = importlib.util.find_spec("caffe")
    if spec is not None and "protonet" not in str(spec.origin):
        pytest.skip("a real Caffe is installed here")
    assert spec is None
    done = subprocess.run([sys.executable, "-c", "import caffe"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'caffe'" in done.stderr


def test_install_in_process_maps_every_submodule(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        monkeypatch.delitem(sys.modules, name)
    alias.install()
    alias.install()   # twice: one hook
    assert sum(isinstance(f, alias.CaffeAlias) for f in sys.meta_path) == 1
    try:
        import caffe.coord_map
        import caffe.proto.caffe_pb2
        assert caffe.coord_map is protonet.coord_map
        assert caffe.proto.caffe_pb2 is protonet.proto.caffe_pb2
        assert protonet.coord_map.__spec__.name == "protonet.coord_map"
        with pytest.raises(ModuleNotFoundError):
            import caffe.no_such_module  # noqa: F401
    finally:
        for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
            del sys.modules[name]
