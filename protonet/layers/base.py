"""The layer contract, after Caffe's ``include/caffe/layer.hpp``.

A layer is built from its ``LayerParameter`` and then driven by the net:

    setup(bottom, top)     check blob counts -> layer_setup -> reshape -> loss weights
    reshape(bottom, top)   compute top shapes from bottom shapes (no arithmetic)
    forward(bottom, top)   top.data from bottom.data
    backward(top, propagate_down, bottom)
                           bottom.diff from top.diff (overwritten);
                           parameter diffs are *accumulated* (the net zeroes them)

Subclasses declare their arity with the ``*_num_bottom``/``*_num_top`` class
attributes and register under their Caffe ``type:`` string with
:func:`register`. Learnable blobs are created in ``layer_setup`` through
:meth:`Layer.add_param`, which records the filler; the net fills them.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from ..blob import Blob
from ..errors import ProtonetError

TRAIN, TEST = 0, 1  # caffe.Phase values

LAYER_REGISTRY: dict[str, type["Layer"]] = {}


def register(type_name: str):
    """Class decorator: make a layer class available under a Caffe type string."""
    def decorate(cls):
        if type_name in LAYER_REGISTRY and LAYER_REGISTRY[type_name] is not cls:
            raise RuntimeError(f"layer type '{type_name}' registered twice")
        cls.type = type_name
        LAYER_REGISTRY[type_name] = cls
        return cls
    return decorate


def layer_type_list() -> list[str]:
    """Every registered Caffe type string, sorted (pycaffe's layer_type_list)."""
    return sorted(LAYER_REGISTRY)


def create_layer(param, phase: int = TEST, dtype=np.float32, rng=None,
                 allow_python: bool = False) -> "Layer":
    """Instantiate the layer registered for ``param.type``.

    ``type: "Python"`` imports and runs user code, so it needs ``allow_python`` -- unless
    its class is a ``caffe.Layer`` subclass of a module already imported (code that is
    running: the pycaffe pattern of a script defining its own layer).
    """
    # py-faster-rcnn's proposal layer (a Python layer) runs as protonet's native Proposal
    # layer with its param_str: nothing is imported (python_layer.NATIVE_PYTHON_LAYERS)
    from .python_layer import native_layer_type
    native = native_layer_type(param)
    if native is not None:
        return LAYER_REGISTRY[native](param, phase=phase, dtype=dtype, rng=rng)
    if param.type == "Python" and not allow_python and not _running_layer_class(param):
        p = param.python_param
        raise ProtonetError(
            f"layer '{param.name}': Python layer would import module '{p.module}' and run its "
            f"class '{p.layer}'; allow it with --allow-python-layers "
            "(or Net(..., allow_python_layers=True))")
    cls = LAYER_REGISTRY.get(param.type)
    if cls is None:
        raise ProtonetError(
            f"layer '{param.name}': unknown layer type '{param.type}' "
            f"(known types: {', '.join(layer_type_list())})")
    return cls(param, phase=phase, dtype=dtype, rng=rng)


def _running_layer_class(param) -> bool:
    """Whether ``python_param`` names a :class:`PythonLayerBase` subclass in a module that
    is already in ``sys.modules``: using it imports and runs nothing new. Read without
    ``getattr`` so a module's ``__getattr__`` hook runs no code either."""
    from .python_layer import PythonLayerBase
    p = param.python_param
    module = sys.modules.get(p.module) if p.module else None
    if module is None:
        return False
    cls = vars(module).get(p.layer) if p.layer else None
    return isinstance(cls, type) and issubclass(cls, PythonLayerBase)


def elementwise_macc(layer, bottom, top) -> int:
    """MACC of element-wise arithmetic: one operation per element of the first bottom."""
    return int(bottom[0].count) if bottom else 0


class Layer:
    """Base class of every layer. See the module docstring for the contract."""

    type = "Layer"
    exact_num_bottom: int | None = None
    min_num_bottom: int | None = None
    max_num_bottom: int | None = None
    exact_num_top: int | None = None
    min_num_top: int | None = None
    max_num_top: int | None = None
    equal_num_bottom_top = False
    #: loss layers weight their first top by 1 unless ``loss_weight`` is given
    is_loss = False
    #: False for layers that cannot propagate to their bottoms (data, Accuracy)
    has_backward = True
    #: True for layers whose scratch buffers (``self._buf``) a same-named layer of another
    #: net may use between their passes (see :meth:`protonet.net.Net.share_scratch_with`)
    shares_scratch = False
    #: True for layers that split their own work over threads (:mod:`protonet.parallel`)
    splits_work = False
    #: True for layers that leave large GEMMs to BLAS without splitting their work: a net
    #: pass gives BLAS its threads back around them (only: raising BLAS's thread count
    #: wakes its workers, which then spin on the cores for a while)
    runs_gemms = False

    def __init__(self, param, phase: int = TEST, dtype=np.float32, rng=None):
        self.param = param
        self.name: str = param.name
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.rng: np.random.Generator = rng if rng is not None else np.random.default_rng()
        self.blobs: list[Blob] = []
        self.blob_fillers: list = []
        self._param_shapes: list[tuple] = []  # as set up, for param_shape_error
        #: per learnable blob: whether backward must compute its gradient (lr_mult != 0)
        self.param_propagate_down: list[bool] = []
        self.loss_weights: list[float] = []

    # -- contract ----------------------------------------------------------------
    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """One-time setup: read parameters, create learnable blobs."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if any(propagate_down):
            raise self.error("this layer cannot propagate gradients to its bottoms")

    # -- learnable blobs -------------------------------------------------------------
    def add_param(self, shape, filler=None) -> Blob:
        """Create a learnable blob of ``shape`` to be filled by ``filler`` (a FillerParameter)."""
        blob = Blob(shape, self.dtype, name=f"{self.name}[{len(self.blobs)}]")
        self.blobs.append(blob)
        self._param_shapes.append(blob.shape)
        self.blob_fillers.append(filler)
        self.param_propagate_down.append(True)
        return blob

    def fill_params(self) -> None:
        """Initialise every learnable blob from its filler, drawing from ``self.rng``."""
        from ..fillers import fill
        for blob, filler in zip(self.blobs, self.blob_fillers):
            if filler is not None:
                fill(blob.data, filler, self.rng)

    # -- state that a snapshot must keep (beyond the learnable blobs) ----------------------------
    def get_state(self) -> dict:
        """Everything needed to continue this layer's trajectory exactly: the random
        generator's state, plus what subclasses add (a data layer's read position).
        Values are JSON-compatible."""
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    # -- bookkeeping ---------------------------------------------------------------
    def check_blob_counts(self, bottom: list[Blob], top: list[Blob]) -> None:
        nb, nt = len(bottom), len(top)

        def bad(what, n, rule):
            return self.error(f"takes {rule} {what} blob(s), got {n}")

        if self.exact_num_bottom is not None and nb != self.exact_num_bottom:
            raise bad("bottom", nb, f"exactly {self.exact_num_bottom}")
        if self.min_num_bottom is not None and nb < self.min_num_bottom:
            raise bad("bottom", nb, f"at least {self.min_num_bottom}")
        if self.max_num_bottom is not None and nb > self.max_num_bottom:
            raise bad("bottom", nb, f"at most {self.max_num_bottom}")
        if self.exact_num_top is not None and nt != self.exact_num_top:
            raise bad("top", nt, f"exactly {self.exact_num_top}")
        if self.min_num_top is not None and nt < self.min_num_top:
            raise bad("top", nt, f"at least {self.min_num_top}")
        if self.max_num_top is not None and nt > self.max_num_top:
            raise bad("top", nt, f"at most {self.max_num_top}")
        if self.equal_num_bottom_top and nb != nt:
            raise self.error(f"needs as many tops as bottoms, got {nb} bottom(s) and {nt} top(s)")

    def set_loss_weights(self, top: list[Blob]) -> None:
        given = list(self.param.loss_weight)
        if given and len(given) != len(top):
            raise self.error(
                f"loss_weight must be given once per top blob ({len(top)}), got {len(given)}")
        if not given:
            given = [1.0 if (self.is_loss and i == 0) else 0.0 for i in range(len(top))]
        self.loss_weights = [float(w) for w in given]
        # Caffe writes the weight into the top's diff once, here; the loss is then
        # dot(data, diff) and backward starts from whatever the diff holds
        for blob, weight in zip(top, self.loss_weights):
            if weight:
                blob.seed_diff(weight)

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether ``force_backward`` may request a gradient for this bottom."""
        return self.has_backward

    def macc(self, bottom: list[Blob], top: list[Blob]) -> int:
        """Multiply-accumulate operations of one forward pass (for ``summary``)."""
        return 0

    def error(self, message: str) -> ProtonetError:
        return ProtonetError(f"layer '{self.name}' ({self.type}): {message}")

    def param_shape_error(self) -> ProtonetError | None:
        """The error for a learnable blob whose size is no longer the one it was set up
        with (a parameter reshaped from outside), or None if every one still fits."""
        for k, (blob, shape) in enumerate(zip(self.blobs, self._param_shapes)):
            if blob.count != math.prod(shape):
                return self.error(
                    f"learnable blob {k} has shape {list(blob.shape)}, the layer was set up "
                    f"for {list(shape)}: reshape it back, or build the net again")
        return None

    def shape_error(self, message: str, bottom: list[Blob]) -> ProtonetError:
        """An error naming the layer, its bottoms and their shapes."""
        shapes = ", ".join(f"{b.name or '?'} {list(b.shape)}" for b in bottom)
        return self.error(f"{message} (bottoms: {shapes})")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"
