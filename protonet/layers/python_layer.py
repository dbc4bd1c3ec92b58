"""``type: "Python"``: layers written in Python, the pycaffe way (Caffe's ``python_layer.hpp``).

    layer { name: "loss" type: "Python" bottom: "pred" bottom: "label" top: "loss"
            python_param { module: "pyloss" layer: "EuclideanLossLayer" param_str: "..." }
            loss_weight: 1 }

``module`` is imported with :mod:`importlib` from ``sys.path`` (so from PYTHONPATH, as
pycaffe's embedded interpreter does) and ``layer`` names a class in it, normally a
subclass of :class:`PythonLayerBase` (pycaffe's ``caffe.Layer``). The class is called with
the ``LayerParameter``; before its ``setup`` the object gets ``param_str`` and ``phase``.
Then, as in pycaffe::

    setup(bottom, top)                      once, when the net is built
    reshape(bottom, top)                    before every forward
    forward(bottom, top)
    backward(top, propagate_down, bottom)

``bottom`` and ``top`` are lists of pycaffe-shaped blob views (:class:`PyBlob`: ``data``,
``diff``, ``shape``, ``count``, ``num``/``channels``/``height``/``width``,
``reshape(*dims)``). Learnable blobs go in ``self.blobs`` (``self.blobs.add_blob(*shape)``);
the net shares, saves and loads them like any layer's. A Python layer is not a loss
unless ``loss_weight`` is given, as in Caffe.

Importing user code runs it, so a net must be built with
``Net(..., allow_python_layers=True)`` to contain one.
"""
from __future__ import annotations

import importlib
import inspect
import os

import numpy as np

from ..blob import Blob
from ..errors import ProtonetError
from .base import TEST, Layer, register


class PyBlob:
    """A pycaffe-shaped view of a :class:`Blob`: what a Python layer's code sees."""

    __slots__ = ("_blob",)

    def __init__(self, blob: Blob):
        self._blob = blob

    @property
    def data(self) -> np.ndarray:
        return self._blob.data

    @data.setter
    def data(self, value) -> None:
        self._blob.data = value

    @property
    def diff(self) -> np.ndarray:
        return self._blob.diff

    @diff.setter
    def diff(self, value) -> None:
        self._blob.diff = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self._blob.shape

    @property
    def count(self) -> int:
        return self._blob.count

    def reshape(self, *dims) -> None:
        """pycaffe's ``blob.reshape(n, c, h, w)`` (a single tuple works too)."""
        if len(dims) == 1 and not isinstance(dims[0], (int, np.integer)):
            dims = tuple(dims[0])
        self._blob.reshape(tuple(int(d) for d in dims))

    def _legacy(self, index: int) -> int:
        """Caffe's LegacyShape: 1 for the axes a blob of fewer than 4 axes lacks."""
        if self._blob.num_axes > 4:
            raise ProtonetError(f"blob '{self._blob.name}': num/channels/height/width need at "
                                f"most 4 axes, shape is {list(self._blob.shape)}")
        return self._blob.shape[index] if index < self._blob.num_axes else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    @property
    def blob(self) -> Blob:
        """The protonet Blob behind this view."""
        return self._blob

    def __getattr__(self, name):
        return getattr(self._blob, name)

    def __repr__(self) -> str:
        return f"PyBlob({self._blob!r})"


class BlobVec(list):
    """A Python layer's learnable blobs (pycaffe's ``BlobVec``)."""

    def __init__(self, dtype=np.float32, owner: str = ""):
        super().__init__()
        self.dtype = np.dtype(dtype)
        self.owner = owner

    def add_blob(self, *shape) -> None:
        """Append a zero-filled learnable blob of ``shape`` (pycaffe: ``add_blob(n, c, ...)``)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        self.append(Blob(tuple(int(d) for d in shape), self.dtype,
                         name=f"{self.owner}[{len(self)}]"))


class PythonLayerBase:
    """Base class of Python layers: pycaffe's ``caffe.Layer``, with no-op defaults.

    Subclass it and override ``setup``, ``reshape``, ``forward`` and ``backward``; read
    your settings from ``self.param_str`` and keep learnable blobs in ``self.blobs``.
    """

    type = "Python"

    def __init__(self, param=None):
        self.param_str: str = param.python_param.param_str if param is not None else ""
        self.phase: int = TEST
        self.blobs = BlobVec(owner=getattr(param, "name", ""))

    def setup(self, bottom, top) -> None:
        """Once, when the net is built: check the bottoms, read ``param_str``, add blobs."""

    def reshape(self, bottom, top) -> None:
        """Before every forward: shape the tops (``top[0].reshape(...)``)."""

    def forward(self, bottom, top) -> None:
        """Compute ``top[k].data`` from ``bottom[k].data``."""

    def backward(self, top, propagate_down, bottom) -> None:
        """Compute ``bottom[k].diff`` where ``propagate_down[k]``, and the blobs' diffs."""


_METHODS = ("setup", "reshape", "forward", "backward")

#: Python layers that protonet runs natively instead, importing nothing (py-faster-rcnn's
#: proposal layer, which OpenCV runs as its native Proposal layer once the prototxt is
#: rewritten): (python_param.module, python_param.layer) -> the registered type that runs
#: them, reading the same ``param_str``.
NATIVE_PYTHON_LAYERS = {("rpn.proposal_layer", "ProposalLayer"): "Proposal"}


def native_layer_type(param) -> str | None:
    """The registered type that runs this ``type: "Python"`` layer natively, else None."""
    if param.type != "Python":
        return None
    p = param.python_param
    return NATIVE_PYTHON_LAYERS.get((p.module, p.layer))


def load_layer_class(module: str, name: str, layer: Layer):
    """Import ``module`` and return its class ``name``; errors name both and PYTHONPATH."""
    if not module or not name:
        raise layer.error("python_param needs both 'module' and 'layer' (the class name)")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing == module or module.startswith(missing + "."):
            pythonpath = os.environ.get("PYTHONPATH")
            raise layer.error(
                f"cannot import Python module '{module}': not found on sys.path "
                f"(PYTHONPATH={pythonpath!r}); add the directory holding {module}.py to "
                "PYTHONPATH, as for pycaffe") from None
        raise layer.error(f"importing Python module '{module}' failed: it imports '{missing}', "
                          "which is not installed") from e
    except Exception as e:  # the user's module failed while running
        raise layer.error(f"importing Python module '{module}' failed: "
                          f"{type(e).__name__}: {e}") from e
    cls = getattr(mod, name, None)
    if cls is None:
        classes = sorted(n for n, v in vars(mod).items()
                         if inspect.isclass(v) and v.__module__ == mod.__name__)
        where = getattr(mod, "__file__", None) or module
        raise layer.error(f"Python module '{module}' ({where}) has no class '{name}'"
                          + (f" (it defines: {', '.join(classes)})" if classes else ""))
    missing = [m for m in _METHODS if not callable(getattr(cls, m, None))]
    if missing or not callable(cls):
        raise layer.error(f"'{module}.{name}' is not a Python layer: it lacks "
                          f"{', '.join(missing) or 'a constructor'} (subclass "
                          "protonet.layers.python_layer.PythonLayerBase, pycaffe's caffe.Layer)")
    return cls


@register("Python")
class PythonLayer(Layer):
    """Runs a user's Python layer object (``self.py``) under the layer contract.

    Attributes the net does not know are looked up on the user's object, so
    ``net.layers[i].my_method()`` reaches it as in pycaffe.
    """

    runs_gemms = True  # the user's code may: it gets BLAS's threads

    def __init__(self, param, **kwargs):
        super().__init__(param, **kwargs)
        p = param.python_param
        self.module, self.class_name = p.module, p.layer
        cls = load_layer_class(p.module, p.layer, self)
        py = cls(param)
        blobs = getattr(py, "blobs", None)
        if not isinstance(blobs, list):
            py.blobs = blobs = BlobVec(self.dtype, owner=self.name)
        if isinstance(blobs, BlobVec) and not len(blobs):
            blobs.dtype, blobs.owner = self.dtype, self.name
        self.py = py
        self.blobs = blobs

    def layer_setup(self, bottom, top):
        self.py.param_str = self.param.python_param.param_str
        self.py.phase = self.phase
        self.py.setup(_views(bottom), _views(top))
        self._sync_blobs()

    def _sync_blobs(self):
        """The user's blobs are this layer's learnable blobs (the net reads ``self.blobs``)."""
        self.blobs = self.py.blobs
        for k, b in enumerate(self.blobs):
            if not isinstance(b, Blob):
                raise self.error(f"blobs[{k}] is a {type(b).__name__}, not a blob: add "
                                 "learnable blobs with self.blobs.add_blob(*shape)")
        extra = len(self.blobs) - len(self.param_propagate_down)
        if extra > 0:
            self.param_propagate_down += [True] * extra

    def reshape(self, bottom, top):
        self.py.reshape(_views(bottom), _views(top))

    def forward(self, bottom, top):
        self.py.forward(_views(bottom), _views(top))

    def backward(self, top, propagate_down, bottom):
        self.py.backward(_views(top), list(propagate_down), _views(bottom))

    def __getattr__(self, name):
        # only reached for attributes this object lacks
        py = self.__dict__.get("py")
        if py is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(py, name)

    def __repr__(self) -> str:
        return f"<PythonLayer '{self.name}' {self.module}.{self.class_name}>"


def _views(blobs) -> list[PyBlob]:
    return [PyBlob(b) for b in blobs]


class OpaqueLayer(Layer):
    """A ``type: "Python"`` layer while a net is only inspected (``summary``, ``draw``): shown
    with its declared tops, never imported. Its tops' shapes come from ``--input-shape``."""

    type = "Python"
    has_backward = False

    def reshape(self, bottom, top):
        for name, blob in zip(self.param.top, top):
            shape = self.shape_overrides.get(name)
            if shape is None:
                raise self.error(
                    f"is a Python layer (module '{self.param.python_param.module}'), which "
                    f"protonet does not import to inspect a net; give the shape of its top "
                    f"'{name}' with --input-shape {name}=N,C,H,W")
            blob.reshape(shape)

    def forward(self, bottom, top):
        raise self.error("is an opaque Python layer: build the net with "
                         "allow_python_layers=True to run it")
