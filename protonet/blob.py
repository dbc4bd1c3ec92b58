"""Blob: Caffe's n-dimensional array pair (data and diff), NCHW by convention."""
from __future__ import annotations

import math
import threading

import numpy as np

from .errors import ProtonetError

#: net passes running now (:func:`passing`): a pass reads and writes blobs in an order that
#: cannot disturb deferred data, so their watchers wait until it is over
_passes = [0]
#: held while deferred data is computed: a thread reading it meanwhile (the parts of a layer
#: split over threads) waits for the whole of it
_settling = threading.RLock()
_COMPUTING = object()  # a blob's pending computation while it runs
_allocating = threading.Lock()  # held while a blob allocates an array on first use


class passing:
    """``with passing():`` marks a net pass (re-entrant)."""

    def __enter__(self):
        _passes[0] += 1

    def __exit__(self, *exc):
        _passes[0] -= 1


class Blob:
    """Holds ``data`` (values) and ``diff`` (gradients) of one shape and dtype.

    Arrays are allocated with ``np.zeros`` (calloc: untouched pages cost no
    memory), so a network can be shaped without committing memory. Reshaping
    to a new shape replaces both arrays; reshaping to the same shape keeps
    them, so layers may hold views into them between passes.

    A blob's data may be *deferred* (:meth:`defer`): computed by a function the first
    time it is read, for a blob that no layer of the pass reads (the output of a
    convolution that only a folded BatchNorm consumes, :mod:`protonet.fuse`).

    A loss-weighted top's diff holds its loss weight (:meth:`seed_diff`, as
    Caffe's ``Layer::SetLossWeights``): backward reads whatever the diff holds,
    so a gradient a user writes there is the one back-propagated. A diff
    allocated anew after a reshape starts from that weight again.
    """

    __slots__ = ("_shape", "_dtype", "_data", "_diff", "_diff_seed", "name", "_pending",
                 "_watchers", "_on_read")

    def __init__(self, shape=(), dtype=np.float32, name: str = ""):
        self._dtype = np.dtype(dtype)
        self._shape: tuple[int, ...] = ()
        self._data = None
        self._diff = None
        self._diff_seed = 0.0
        self.name = name
        self._pending = None  # computes the deferred data (see defer)
        self._watchers = ()   # blobs whose deferred data is computed from this one
        self._on_read = None  # called once, the first time the data is read outside a pass
        self.reshape(shape)

    # -- shape ---------------------------------------------------------------
    def reshape(self, *shape) -> None:
        """Set a new shape: ``reshape((N, C, H, W))`` or pycaffe's ``reshape(N, C, H, W)``."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ProtonetError(f"blob '{self.name}': negative dimension in shape {list(shape)}")
        if shape == self._shape and (self._data is not None or self._diff is not None):
            return
        self._shape = shape
        self._data = None
        self._diff = None
        self._pending = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def count(self) -> int:
        return math.prod(self._shape)

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    # Caffe's legacy 4-D accessors (pycaffe scripts use blob.num, blob.channels, ...):
    # LegacyShape(i) is dim i, or 1 past the last axis.
    def _legacy(self, index: int) -> int:
        if self.num_axes > 4:
            raise ProtonetError(f"blob '{self.name}': num/channels/height/width need at most "
                                f"4 axes, shape is {list(self._shape)}")
        return int(self._shape[index]) if index < self.num_axes else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def canonical_axis(self, axis: int) -> int:
        """Map a possibly negative axis to ``0..num_axes-1`` (Caffe's CanonicalAxisIndex)."""
        n = self.num_axes
        if not -n <= axis < n:
            raise ProtonetError(
                f"blob '{self.name}': axis {axis} out of range for shape {list(self._shape)}")
        return axis % n if n else 0

    def count_range(self, start: int, end: int | None = None) -> int:
        """Product of dims ``start..end-1`` (Caffe's count(start, end))."""
        return math.prod(self._shape[start:end])

    # -- arrays --------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        if self._on_read is not None and not _passes[0]:
            hook, self._on_read = self._on_read, None
            hook()
        if self._pending is not None or (self._watchers and not _passes[0]):
            self.settle()
        if self._data is None:
            with _allocating:  # parts of a layer on two threads may both come first
                if self._data is None:
                    self._data = np.zeros(self._shape, self._dtype)
        return self._data

    def defer(self, compute=None) -> None:
        """Let ``compute()`` write this blob's data when it is next read (``None``: forget a
        deferred computation, the data is about to be written)."""
        self._pending = compute

    def on_first_read(self, hook) -> None:
        """Call ``hook()`` the first time the data is read outside a net pass (a deferred
        blob that someone looks at is written by every pass from then on: the reader may
        keep the array)."""
        self._on_read = hook

    def watch(self, blobs) -> None:
        """Have reading this blob (outside a net pass) first compute the deferred data of
        ``blobs``, which is computed from this blob's data: it may be about to change."""
        self._watchers += tuple(b for b in blobs if b not in self._watchers)

    @property
    def is_deferred(self) -> bool:
        """Whether the data is yet to be computed (on the next read, or :meth:`settle`)."""
        return self._pending is not None

    def settle(self) -> None:
        """Compute the deferred data of the blobs that watch this one, then this one's."""
        with _settling:
            for blob in self._watchers:
                if blob._pending is not None:
                    blob.settle()
            compute = self._pending
            if compute is None or compute is _COMPUTING:  # (the computation writing it)
                return
            self._pending = _COMPUTING  # until written: other threads wait for the lock
            try:
                with passing():  # its reads are the computation's, not a user's
                    compute()
            finally:
                self._pending = None

    @data.setter
    def data(self, value) -> None:
        value = np.asarray(value)
        if value.shape != self._shape:
            raise ProtonetError(
                f"blob '{self.name}': cannot set data of shape {list(value.shape)} "
                f"into blob of shape {list(self._shape)}")
        self._pending = None
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None:
            with _allocating:  # parts of a layer on two threads may both come first
                if self._diff is None:
                    self._diff = np.full(self._shape, self._diff_seed, self._dtype) \
                        if self._diff_seed else np.zeros(self._shape, self._dtype)
        return self._diff

    def seed_diff(self, weight: float) -> None:
        """Fill the diff with ``weight`` now and whenever it is allocated anew (a loss
        top's seed for backward)."""
        self._diff_seed = float(weight)
        self.diff[...] = weight

    @diff.setter
    def diff(self, value) -> None:
        value = np.asarray(value)
        if value.shape != self._shape:
            raise ProtonetError(
                f"blob '{self.name}': cannot set diff of shape {list(value.shape)} "
                f"into blob of shape {list(self._shape)}")
        self.diff[...] = value

    def share_data(self, other: "Blob") -> None:
        """Use ``other``'s data memory, viewed in this blob's shape (Caffe's ShareData)."""
        if other.count != self.count:
            raise ProtonetError(f"blob '{self.name}': cannot share data of {other.count} "
                                f"elements with a blob of {self.count}")
        self._data = other.data.reshape(self._shape)

    def share_diff(self, other: "Blob") -> None:
        """Use ``other``'s diff memory, viewed in this blob's shape (Caffe's ShareDiff)."""
        if other.count != self.count:
            raise ProtonetError(f"blob '{self.name}': cannot share diff of {other.count} "
                                f"elements with a blob of {self.count}")
        self._diff = other.diff.reshape(self._shape)

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={list(self._shape)}, dtype={self._dtype.name})"
