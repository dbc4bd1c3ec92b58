"""Run a pycaffe script unchanged: ``python -m protonet.caffe SCRIPT.py [ARGS...]``.

The script's ``import caffe``, ``from caffe import layers as L``, ``import caffe.io``,
``from caffe.proto import caffe_pb2``, ``from caffe.coord_map import crop`` ... resolve to
protonet's modules of the same names (``caffe`` is :mod:`protonet`, ``caffe.X`` is
``protonet.X``). The alias lives in this process only, as an import hook: nothing named
``caffe`` is installed, so a real Caffe on the same machine stays importable elsewhere.

    python -m protonet.caffe classify.py --gpu 0 image.jpg   # a script and its arguments
    python -m protonet.caffe -m pytest caffe/python/caffe/test  # a module, as python -m

From Python, :func:`install` sets up the same alias for the rest of the process.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import runpy
import sys

ALIAS = "caffe"
TARGET = "protonet"

USAGE = ("usage: python -m protonet.caffe SCRIPT.py [ARGS...]\n"
         "       python -m protonet.caffe -m MODULE [ARGS...]\n"
         "runs a pycaffe script with 'import caffe' meaning protonet")


def target_name(name: str) -> str | None:
    """The protonet module a ``caffe`` module name stands for, or None."""
    if name == ALIAS:
        return TARGET
    if name.startswith(ALIAS + "."):
        return TARGET + name[len(ALIAS):]
    return None


class CaffeAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: ``caffe[.X]`` is the already-importable module ``protonet[.X]``.

    The loader hands the import system protonet's own module object, so both names
    share one module (one set of globals, one registry of layers); it puts back the
    module's own ``__spec__``, which the import system overwrites with the alias's.
    """

    def find_spec(self, name, path=None, target=None):
        real = target_name(name)
        if real is None or importlib.util.find_spec(real) is None:
            return None
        return importlib.util.spec_from_loader(name, self)

    def __init__(self):
        self._own_specs: dict = {}

    def create_module(self, spec):
        module = importlib.import_module(target_name(spec.name))
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # the module already ran when protonet imported it; only its spec was replaced
        module.__spec__ = self._own_specs.pop(module.__spec__.name)


def install() -> None:
    """Let ``import caffe`` (and ``caffe.X``) load protonet in this process. A ``caffe``
    imported before this call is replaced only for later imports."""
    if not any(isinstance(f, CaffeAlias) for f in sys.meta_path):
        sys.meta_path.insert(0, CaffeAlias())
    for name in [n for n in sys.modules if target_name(n)]:
        if not getattr(sys.modules[name], "__name__", "").startswith(TARGET):
            del sys.modules[name]  # a real Caffe imported earlier would shadow the alias


def main(argv: list[str] | None = None) -> int:
    """Run ``SCRIPT [ARGS]`` or ``-m MODULE [ARGS]`` as ``__main__`` with the alias
    installed; ``sys.argv`` is what the script would see run directly."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"protonet.caffe: error: no such script: {script}", file=sys.stderr)
        return 2
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as python SCRIPT does
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
