"""Recycled activation memory: blobs whose lifetimes in a TEST pass do not overlap share
buffers, and a blob whose buffer was reused is recomputed when someone reads it.

Caffe gives every blob memory of its own, and a forward pass writes each of them once:
MobileNet v2 at batch 8 writes 282 MB, so every layer writes its tops into cache lines
evicted long ago and reads its bottoms back from main memory. Most blobs are read only by
the next layer or two. Planned over the pass's steps, a handful of buffers hold them all
(a greedy best fit, in pass order; MobileNet v2: 3 buffers, 64 MB), and what a layer
writes is still in cache when the next one reads it: MobileNet v2 at batch 8 runs in 0.81
of the time.

Invisible to users, as Caffe's semantics require of every blob after a pass:

* after a pass, a blob whose buffer a later blob of the pass took over is *deferred*
  (:meth:`~protonet.blob.Blob.defer`): reading it -- ``net.blobs[name].data``, a pass that
  starts after it (``forward(start=...)``), backward -- runs the steps that wrote it again
  (:meth:`Recycler.materialize`), after those of its bottoms that are deferred too, in
  pass order (no recursion however deep the net);
* it is computed from what that pass read: the first read of an input from outside a pass
  after it keeps a copy of the inputs, and the first read of a parameter computes every
  deferred blob first;
* a blob read from outside a pass, or recomputed, gets memory of its own and keeps it:
  the reader may hold the array, and every later pass writes into it, as in Caffe; so does
  one a pass writes only in part (the pass starts or ends among the layers writing it), and
  one no pass has written since the plan holds zeros;
* net inputs and outputs, tops of layers without bottoms, loss tops and the blobs
  :mod:`protonet.fuse` defers are never shared.

Only TEST-phase nets with fusing on (``Net(..., fuse=False)`` turns both off) whose every
layer type writes the whole of its tops and nothing else (:data:`RECYCLABLE`) recycle; a
net whose parameters another net shares (:meth:`Net.share_with`, a solver's test net)
stops recycling, and so does :meth:`Net.settle_deferred` before parameters change.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

#: layer types whose forward writes every element of every top (and reads nothing else of
#: them unless in place), with no state and no randomness in the TEST phase
RECYCLABLE = frozenset((
    "Input", "Convolution", "Deconvolution", "Pooling", "InnerProduct", "LRN", "Softmax",
    "Concat", "Slice", "Eltwise", "Split", "Flatten", "Reshape", "Crop", "Dropout",
    "BatchNorm", "Scale", "Bias", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal",
    "BNLL", "Power", "Exp", "Log",
    "Permute", "Normalize", "PriorBox", "DetectionOutput"))  # SSD's

#: layer types whose tops are views of their first bottom
ALIASING = frozenset(("Split", "Reshape"))

#: buffers start on this boundary (a cache line; AVX-512 loads)
ALIGN = 64


class _Group:
    """Blobs that are one memory (a blob and the tops that share its data: Split,
    Reshape). ``first``: the layer that writes it first in the pass; ``ready``: the layer by
    whose end it is whole (a Concat whose chains write into it); ``writers_end``: the last
    layer writing it (in place); ``last``: the last layer reading or writing it."""

    __slots__ = ("blobs", "first", "ready", "writers_end", "last", "writers", "nbytes",
                 "buffer", "view", "compute", "written")

    def __init__(self, blobs, first, ready, writers_end, last, writers):
        self.blobs, self.first, self.ready, self.writers = blobs, first, ready, writers
        self.writers_end, self.last = writers_end, last
        self.nbytes = blobs[0].count * blobs[0].dtype.itemsize
        self.buffer = None  # index into Recycler.buffers; None once it has its own memory
        self.written = False  # by a pass since the plan (else it holds zeros, as in Caffe)
        self.view = None    # the array the plan gave blobs[0]
        self.compute = None

    @property
    def pending(self) -> bool:
        return self.blobs[0]._pending is not None


def eligible(net) -> bool:
    """Whether ``net`` may recycle: TEST phase, fusing on, known layer types, and its
    layers without bottoms (whose tops are never shared) before all the others."""
    from .net import TEST
    if net.phase != TEST or not net.fuse:
        return False
    if any(layer.type not in RECYCLABLE for layer in net.layers):
        return False
    sources = [not bottoms for bottoms in net.bottom_vecs]
    return sources == sorted(sources, reverse=True)


class Recycler:
    """Plans the shared buffers of a net's blobs and keeps every blob's data right."""

    def __init__(self, net):
        self.net = net
        self.active = True
        self.groups: list[_Group] = []
        self.by_blob: dict[int, _Group] = {}
        self.buffers: list[np.ndarray] = []
        self.holder: list[_Group | None] = []  # per buffer: the group whose data it holds
        self.pinned_ids: set[int] = set()      # blobs with memory of their own, for good
        self._written: dict[tuple[int, int], tuple[list[_Group], set[int]]] = {}
        self._graph = None
        self._internal = 0  # depth of recomputations running
        #: copies of the inputs as the last pass read them (taken when first read after it)
        self.shadows: dict[int, tuple] = {}
        self._plan()  # now, before anyone holds a blob's array
        # reading any parameter from outside a pass first computes the deferred groups
        from .blob import Blob
        self._sentinel = Blob((), name="recycled blobs")
        for layer in net.layers:
            for p in layer.blobs:
                p.watch([self._sentinel])
        # the folded heads' deferred tops computed from an input read it as the pass did
        # (through the copy kept below): reading the input no longer computes them first
        sources = self._graph.sources
        self._heads = [c.deferred for c in net._chains if c.deferred is not None and
                       any(net.bottom_vecs[c.head][0] is b for b in sources)]
        for b in sources:
            b._watchers = tuple(w for w in b._watchers if all(w is not h for h in self._heads))

    # -- the pass's hooks ---------------------------------------------------------------
    @contextlib.contextmanager
    def pass_over(self, start: int, end: int):
        """Around a pass over layers ``start..end``.

        Before it: a partial pass first computes every deferred group it does not write
        whole (from what the pass that left it read); groups it writes only in part, and
        holders of the buffers it writes, take memory of their own with their data. After
        it: each buffer holds the last group written into it, the others written there are
        deferred. A recomputation's own passes (:meth:`materialize`) only run."""
        internal = self._internal > 0
        full = start == 0 and end == len(self.net.layers) - 1
        if full and self.active and not internal:
            if self._inputs_reshaped():  # the layers' shapes first, then a plan for them
                self.net.reshape()
                self._plan()
            elif self._stale():
                self._plan()
        written, ids, touched = self._written_by(start, end)
        if not full and not internal:
            for g in self.groups:
                if g.pending and id(g) not in ids:
                    self.materialize(g)
        for g in touched:
            self._pin(g, keep=True)
            g.written = True
            if start <= g.first:  # written from its first writer on
                for b in g.blobs:
                    b._pending = None
        if not full:  # never written since the plan and not now: zeros, as unallocated
            for g in self.groups:
                if not g.written and id(g) not in ids:
                    self._pin(g, keep=True)
        for g in written:
            g.written = True
            for b in g.blobs:
                b._pending = None
            if g.buffer is not None:
                h = self.holder[g.buffer]
                if h is not None and id(h) not in ids:
                    self._pin(h, keep=True)  # about to be overwritten
                self.holder[g.buffer] = None
        ok = False
        try:
            yield
            ok = True
        finally:
            if ok:  # groups come in pass order: each buffer holds the last written into it
                for g in written:
                    if g.buffer is not None:
                        self.holder[g.buffer] = g
            for g in written:  # the rest are deferred (all of them, after a failed pass)
                if g.buffer is not None and self.holder[g.buffer] is not g:
                    self._defer(g)
            if not internal:
                self._watch_sources(any(g.pending for g in self.groups)
                                    or any(h.is_deferred for h in self._heads))

    def _watch_sources(self, pending: bool) -> None:
        """After a pass: while groups are deferred, the first read of an input from outside
        a pass keeps a copy of the inputs (what a recomputation must read), and the first
        read of a parameter computes them all (they must not see its change)."""
        self.shadows.clear()
        hook = self._keep_inputs if pending else None
        for b in self._graph.sources:
            b._on_read = hook
        self._sentinel._pending = self.settle if pending else None

    def _keep_inputs(self) -> None:
        for b in self._graph.sources:
            b._on_read = None
            if b._data is not None:
                self.shadows[id(b)] = (b, b._data.copy())

    def replacing_inputs(self) -> None:
        """The inputs are about to be replaced for a pass over the whole net, which writes
        every group anew: nothing deferred can be read before, no copy is needed."""
        for b in self._graph.sources:
            b._on_read = None

    def _written_by(self, start: int, end: int):
        """The groups a pass over ``start..end`` writes whole, in pass order, their ids, and
        the groups it writes only in part (from or up to one of their in-place writers)."""
        key = (start, end)
        written = self._written.get(key)
        if written is None:
            whole = [g for g in self.groups if start <= g.first and g.ready <= end]
            ids = {id(g) for g in whole}
            part = [g for g in self.groups
                    if id(g) not in ids and any(start <= w <= end for w in g.writers)]
            written = self._written[key] = (whole, ids, part)
        return written

    def _defer(self, g: _Group) -> None:
        for b in g.blobs:
            b._pending = g.compute

    # -- planning -----------------------------------------------------------------------
    def _inputs_reshaped(self) -> bool:
        """Whether an input has another shape than when the plan was made."""
        return any(b.shape != shape for b, shape in zip(self._graph.sources, self._shapes))

    def _stale(self) -> bool:
        """Whether a blob of the plan has other data now (a reshape gave it a new size)."""
        return any(g.blobs[0]._data is not g.view for g in self.groups if g.buffer is not None)

    def _plan(self) -> None:
        """Group the blobs, find each group's steps, and fit the groups into buffers."""
        net = self.net
        for g in self.groups:  # this pass writes every blob: the old plan's data can go
            if g.buffer is not None:
                for b in g.blobs:
                    b._data, b._pending, b._on_read = None, None, None
        self.groups, self.by_blob, self._written = [], {}, {}
        self.buffers, self.holder = [], []
        graph = self._graph = self._graph or _Graph(net)
        parent = {id(b): id(b) for b in graph.blobs}

        def find(k):
            while parent[k] != k:
                parent[k] = k = parent[parent[k]]
            return k
        memory: dict[int, int] = {}
        for b in graph.blobs:  # one memory: by the layers' sharing, or already allocated so
            for other in [memory.setdefault(_memory_of(b), id(b))] + graph.aliases.get(id(b), []):
                parent[find(id(b))] = find(other)
        members: dict[int, list] = {}
        for b in graph.blobs:
            members.setdefault(find(id(b)), []).append(b)
        for blobs in members.values():
            g = self._group(blobs, graph)
            if g is not None:
                self.groups.append(g)
        self.groups.sort(key=lambda g: g.first)
        self._shapes = [b.shape for b in graph.sources]
        self._fit()
        for g in self.groups:
            g.compute = functools.partial(self.materialize, g)
            for b in g.blobs:
                self.by_blob[id(b)] = g
                b.on_first_read(functools.partial(self._pin, g, True))

    def _group(self, blobs, graph) -> _Group | None:
        """The group of ``blobs`` (one memory) if it may be shared, else None."""
        if any(id(b) in graph.kept or id(b) in self.pinned_ids for b in blobs):
            return None
        nbytes = blobs[0].count * blobs[0].dtype.itemsize
        for b in blobs:
            if b.count * b.dtype.itemsize != nbytes or b.dtype != blobs[0].dtype:
                return None
            if b._data is not None and not b._data.flags.c_contiguous:
                return None
        owner = next((b for b in blobs if id(b) not in graph.alias_tops), blobs[0])
        blobs = [owner] + [b for b in blobs if b is not owner]
        spans = [graph.span[id(b)] for b in blobs if id(b) in graph.span]
        if not spans or nbytes == 0:
            return None
        first = min(s[0] for s in spans)
        ready = max(s[1] for s in spans)
        writers_end = max(s[2] for s in spans)
        last = max(s[3] for s in spans)
        writers = sorted({w for b in blobs for w in graph.writers.get(id(b), ())})
        return _Group(blobs, first, ready, writers_end, last, writers)

    def _fit(self) -> None:
        """Greedy: each group, in pass order, takes the free buffer that fits it best
        (else the largest free one, grown; else a new one)."""
        sizes: list[int] = []
        free_after: list[int] = []  # per buffer: the last layer of its last group
        for g in self.groups:
            free = [k for k in range(len(sizes)) if free_after[k] < g.first]
            fits = [k for k in free if sizes[k] >= g.nbytes]
            if fits:
                k = min(fits, key=lambda k: sizes[k])
            elif free:
                k = max(free, key=lambda k: sizes[k])
                sizes[k] = g.nbytes
            else:
                k = len(sizes)
                sizes.append(g.nbytes)
                free_after.append(-1)
            g.buffer, free_after[k] = k, g.last
        for size in sizes:
            raw = np.zeros(size + ALIGN, np.uint8)
            skip = -raw.ctypes.data % ALIGN
            self.buffers.append(raw[skip:skip + size])
            self.holder.append(None)
        for g in self.groups:
            _point(g.blobs, self.buffers[g.buffer][:g.nbytes])
            g.view = g.blobs[0]._data

    # -- memory of its own, recomputing ---------------------------------------------------
    def _pin(self, g: _Group, keep: bool = False) -> None:
        """Give ``g`` memory of its own for good (``keep``: with the data it holds, if it
        holds its own)."""
        if g.buffer is None:
            return
        old, owner = g.blobs[0]._data, g.blobs[0]
        valid = keep and not g.pending and self.holder[g.buffer] is g and old is g.view \
            and old.shape == owner.shape
        if self.holder[g.buffer] is g:
            self.holder[g.buffer] = None
        nbytes = owner.count * owner.dtype.itemsize
        if keep and not g.written:  # nothing written since the plan: zeros, as unallocated
            _point(g.blobs, np.zeros(nbytes, np.uint8))
        elif valid:
            _point(g.blobs, np.empty(nbytes, np.uint8))
            np.copyto(g.blobs[0]._data, old)
        else:
            _point(g.blobs, np.empty(nbytes, np.uint8))
            self._defer(g)
        g.buffer = None
        self.pinned_ids.update(id(b) for b in g.blobs)
        for b in g.blobs:
            b._on_read = None

    def stop(self) -> None:
        """Share nothing from now on: every group gets memory of its own (keeping its data);
        deferred ones are still computed when read."""
        self.active = False
        for g in self.groups:
            self._pin(g, keep=True)

    def settle(self) -> None:
        """Compute every deferred group now (each then keeps its memory)."""
        for g in self.groups:
            if g.pending:
                self.materialize(g)
        self._sentinel._pending = None

    def materialize(self, target: _Group) -> None:
        """Compute ``target``'s data: the layers that write it run again, into memory of
        its own, after those of the deferred groups they read (in pass order)."""
        net, graph = self.net, self._graph
        self._internal += 1
        try:
            with self.inputs_as_read():
                self._run_needed(target, net, graph)
        finally:
            self._internal -= 1

    def _run_needed(self, target: _Group, net, graph) -> None:
        for g in self._needed(target):
            if not g.pending and g is not target:
                continue
            a, b = graph.run_range(g.first, g.writers_end)
            for h in self.groups:  # a recomputation writes no shared buffer
                if a <= h.first <= b:
                    self._pin(h, keep=True)
            self._pin(g)
            net.forward_from_to(a, b)

    @contextlib.contextmanager
    def inputs_as_read(self):
        """The inputs hold what the last pass read while this runs (the copies taken when
        they were first read after it, if they still have that shape)."""
        swapped = [(b, b._data) for b, copy in self.shadows.values() if copy.shape == b.shape]
        try:
            for b, _ in swapped:
                b._data = self.shadows[id(b)][1]
            yield
        finally:
            for b, data in swapped:
                b._data = data

    def _needed(self, target: _Group) -> list[_Group]:
        """``target`` and the deferred groups its recomputation reads, transitively, in
        pass order."""
        graph = self._graph
        need, stack = {id(target): target}, [target]
        while stack:
            g = stack.pop()
            a, b = graph.run_range(g.first, g.writers_end)
            inside: set[int] = set()
            for i in range(a, b + 1):
                for blob in self.net.bottom_vecs[i]:
                    h = self.by_blob.get(id(blob))
                    if (h is not None and id(blob) not in inside and id(h) not in need
                            and h.pending):
                        need[id(h)] = h
                        stack.append(h)
                inside.update(id(t) for t in self.net.top_vecs[i])
        return sorted(need.values(), key=lambda g: g.first)


class _Graph:
    """What the plan needs of a net's fixed graph: for each blob its steps, and which blobs
    are never shared. A folded chain (:mod:`protonet.fuse`) runs all at once, so a blob it
    touches is taken as touched over the chain's whole span."""

    def __init__(self, net):
        self.net = net
        n = len(net.layers)
        chain_span = {i: (c.head, c.last) for c in net._chains for i in c.indices}
        blobs: dict[int, object] = {}
        span: dict[int, list[int]] = {}  # blob -> [first write, ready, last write, last use]
        writers: dict[int, set[int]] = {}  # blob -> the layers that write it
        for i in range(n):
            lo, hi = chain_span.get(i, (i, i))
            for b in net.bottom_vecs[i]:
                blobs[id(b)] = b
                s = span.get(id(b))
                if s is not None:
                    s[3] = max(s[3], hi)
            for t in net.top_vecs[i]:
                blobs[id(t)] = t
                writers.setdefault(id(t), set()).update((lo, i))
                s = span.setdefault(id(t), [lo, hi, hi, hi])
                s[1], s[2], s[3] = max(s[1], hi), max(s[2], hi), max(s[3], hi)
        for j, chains in net._routes.items():  # written by its chains, whole after the Concat
            top = net.top_vecs[j][0]
            s = span[id(top)]
            s[0] = min([s[0]] + [c.head for c in chains])
            writers[id(top)].update(c.head for c in chains)
        kept = {id(net.blobs[name]) for name in net.outputs if name in net.blobs}
        #: the tops of layers without bottoms: what every recomputation starts from
        self.sources = [t for i in range(n) if not net.bottom_vecs[i] for t in net.top_vecs[i]]
        kept.update(id(t) for t in self.sources)
        for i in range(n):
            layer = net.layers[i]
            kept.update(id(t) for t, w in zip(net.top_vecs[i], layer.loss_weights) if w)
        for c in net._chains:
            kept.update(id(b) for b in (c.deferred, c.final if c.concat else None)
                        if b is not None)
        self.blobs = list(blobs.values())
        #: tops that are views of their layer's bottom (Split, Reshape, a Slice into one
        #: top): blob id -> [the bottom's id]
        self.aliases: dict[int, list[int]] = {}
        for i in range(n):
            layer = net.layers[i]
            if layer.type in ALIASING or (layer.type == "Slice" and len(net.top_vecs[i]) == 1):
                for t in net.top_vecs[i]:
                    self.aliases.setdefault(id(t), []).append(id(net.bottom_vecs[i][0]))
        self.alias_tops = set(self.aliases)
        self.span = {k: tuple(v) for k, v in span.items()}
        self.writers = writers
        self.kept = kept
        #: per layer, the last layer that writes (in place) any of its tops
        self._writes_end = [max([self.span[id(t)][2] for t in net.top_vecs[i]] + [i])
                            for i in range(n)]

    def run_range(self, a: int, b: int) -> tuple[int, int]:
        """Layers to run again to recompute what layers ``a..b`` wrote: extended until every
        blob written in it has had all its writers (so none is left half done)."""
        end, i = b, a
        while i <= end:
            end = max(end, self._writes_end[i])
            i += 1
        return a, end


def _memory_of(blob) -> int:
    """An id for the memory ``blob``'s data lies in (its own id while unallocated)."""
    a = blob._data
    if a is None:
        return id(blob)
    while isinstance(a.base, np.ndarray):
        a = a.base
    return id(a)


def _point(blobs, raw: np.ndarray) -> None:
    """Make every blob of a group a view of ``raw`` (bytes), in its own shape (one whose
    size no longer fits, reshaped since, is left to allocate its own)."""
    for b in blobs:
        data = raw.view(b.dtype)
        b._data = data.reshape(b.shape) if data.size == b.count else None


def recycler_for(net) -> Recycler | None:
    """A :class:`Recycler` for ``net`` if it may recycle (:func:`eligible`), else None."""
    return Recycler(net) if eligible(net) else None


def share_layer_scratch(net) -> None:
    """Let the layers of ``net`` of one type whose scratch may be shared (``shares_scratch``:
    the convolutions) use one scratch dict, as a net's layers run one after the other.

    Each convolution kept its own column or frame buffers, up to a few MB each: every pass
    wrote them into lines evicted since the layer's last pass (SqueezeNet 1.1 at batch 1:
    its im2col took 0.21 ms in the pass against 0.08 alone); shared, the buffer is still
    in cache from the previous layer (the whole pass 0.95-0.96 of the time). What a layer
    keeps there for backward is stamped with its token and recomputed when another layer
    wrote over it (:meth:`protonet.net.Net.share_scratch_with` relies on the same).
    """
    shared: dict[type, dict] = {}
    for layer in net.layers:
        if layer.shares_scratch:
            layer._buf = shared.setdefault(type(layer), layer._buf)


def recycling(recycler: Recycler | None, start: int, end: int):
    """The context a pass over layers ``start..end`` runs in (nothing without a recycler)."""
    return contextlib.nullcontext() if recycler is None else recycler.pass_over(start, end)
