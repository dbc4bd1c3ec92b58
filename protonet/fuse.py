"""Folding per-channel affine layers (and a ReLU) into the convolution or inner product
before them.

In the TEST phase a BatchNorm with global statistics, a Scale and a Bias are each
``y = a * x + c`` per channel: a chain of them right after a Convolution or an
InnerProduct is one such map of the head's output, which the head applies to each
tile of its output while the tile is still in cache (or to the weights it copies
anyway), instead of the chain's layers each making passes over the whole blob.

It is invisible: every blob that exists after a forward pass holds what Caffe
computes (a blob that a chain layer writes out of place still gets its own values),
the coefficients are computed on every pass from the layers' own blobs (so a change
made through ``net.params`` takes effect on the next forward), a pass that starts or
ends inside a chain runs it layer by layer, and backward through a chain first
replays it layer by layer on scratch blobs, so each layer holds the state its
backward reads. ``Net(..., fuse=False)`` turns it off.

Two blobs that nothing else reads are *deferred* (:meth:`protonet.blob.Blob.defer`):
computed when read (a backward pass reads those it needs), or before what they are
computed from is read or written through its blob outside a pass, or at the end of a
solver's test pass (:meth:`protonet.net.Net.settle_deferred`). Once read from outside a
pass, such a blob is written by every pass again (its reader may keep the array, as
pycaffe code does), so deferral only saves the work for blobs nobody looks at:

* the head's own top, when a member writes the next blob out of place (MobileNet v2's
  ``conv -> BatchNorm -> new blob``): the head's plain forward (:func:`defer_chain_heads`);
* a chain's last blob that only a Concat (along channels) reads, when every bottom of
  that Concat is such a blob (GoogLeNet's and SqueezeNet's branches): the chains write
  straight into the Concat's top, whose copy the pass skips, and each blob is its
  channels of that top (:func:`route_into_concats`).

A chain is found where (:func:`find_chains`):

* the head is a Convolution (2-D or 1-D, channel axis 1, one bottom) or an
  InnerProduct (axis 1), with one top;
* the next layers, in file order with nothing in between, are BatchNorm layers with
  ``use_global_stats``, Scale layers with a learned per-channel scale (one bottom,
  axis 1, one axis) and Bias layers with a learned per-channel bias, each reading the
  blob the previous one wrote (in place or not);
* an in-place ReLU (no negative slope) may end the chain, with or without such layers;
* none of them carries a loss weight.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from . import parallel
from .blob import Blob
from .kernels.affine import Epilogue, batchnorm_coefficients, compose

HEADS = ("Convolution", "InnerProduct")
AFFINE = ("BatchNorm", "Scale", "Bias")


class Chain:
    """A head layer and the layers folded into it (net indices): per-channel affine
    members, then perhaps an in-place ReLU."""

    def __init__(self, net, head: int, members: list[int]):
        self.net, self.head, self.members = net, head, members
        self.last = members[-1]
        #: whether the members' forward state is missing (the last pass ran the chain
        #: fused): backward replays it first
        self.stale = False
        self._cached = None  # (the parameters' bytes, their coefficients, deferred ones)
        #: the head's top if its data can be deferred (:meth:`deferrable`), else None
        self.deferred = None
        #: ``(concat layer, first channel)`` when the chain writes its last blob straight
        #: into a Concat's top (:func:`route_into_concats`); that blob is then deferred
        self.concat = None
        #: ids of the blobs the deferred ones are computed from (a pass that writes one
        #: computes them first)
        self.sources: set[int] = set()
        #: the shapes :meth:`reshape` last left the chain's blobs in (None: reshaped since
        #: by other means, or never)
        self.shaped = None
        self._blobs = None

    @property
    def indices(self) -> range:
        return range(self.head, self.last + 1)

    def reshape(self) -> None:
        """Reshape the chain's layers, as Caffe reshapes every layer on every pass; skipped
        while the chain's blobs and parameters have the shapes its last reshape left (the
        net forgets that on any other reshape of these layers). The members' reshapes cost
        about 10 us each: a tenth of MobileNet v2's pass at batch 1."""
        if self.shaped is not None and self.shaped == self._shapes():
            return
        self.shaped = None
        net = self.net
        for i in self.indices:
            net.layers[i].reshape(net.bottom_vecs[i], net.top_vecs[i])
        self.shaped = self._shapes()

    def _shapes(self) -> tuple:
        net = self.net
        if self._blobs is None:  # the graph is fixed: which blobs these are, once
            self._blobs = [b for i in self.indices for b in
                           (*net.bottom_vecs[i], *net.top_vecs[i], *net.layers[i].blobs)]
        return tuple([b.shape for b in self._blobs])

    def epilogue(self, defer: bool = False, into: np.ndarray | None = None) -> Epilogue:
        """What the head writes: each blob of the chain that exists after the pass, in
        order, as an affine map of the one before (the first of the head's bias-free
        output; the head's top is among them only if no member writes it in place), and
        the ReLU. Coefficients in the head's dtype, from the layers' blobs as they are now
        (recomputed whenever one of those small blobs holds other bytes than last time).
        ``defer``: leave out the head's top (its data is deferred), the next blob then
        being a map of the head's output. ``into``: where the last blob's values go instead
        of its own data (a view of a Concat's top)."""
        key = b"".join([b.data.tobytes() for b in self._sources])
        if self._cached is None or self._cached[0] != key:
            self._cached = (key,) + self._coefficients()
        blobs, relu = self._graph_outputs
        coefficients = self._cached[1]
        if defer:
            blobs, coefficients = blobs[1:], self._cached[2]
        arrays = [b.data for b in blobs[:-1]] + [blobs[-1].data if into is None else into]
        return Epilogue([(a, s, c) for a, (s, c) in zip(arrays, coefficients)], relu)

    @functools.cached_property
    def final(self) -> Blob:
        """The last blob the chain leaves (the net's graph does not change)."""
        return self._graph_outputs[0][-1]

    @functools.cached_property
    def _graph_outputs(self) -> tuple[list[Blob], bool]:
        return self._outputs()

    @functools.cached_property
    def _sources(self) -> list[Blob]:
        """The blobs the coefficients are made of: the members' and the head's bias."""
        net = self.net
        head = net.layers[self.head]
        return [b for i in self.members for b in net.layers[i].blobs] + \
            ([head.blobs[1]] if head.bias_term else [])

    def deferred_blobs(self) -> list[Blob]:
        """The chain's blobs whose data is deferred now."""
        return [b for b in (self.deferred, self.final if self.concat else None)
                if b is not None and b.is_deferred]

    def concat_view(self) -> np.ndarray:
        """Where the routed chain's last blob lies in its Concat's top: ``(N, C, ...)``."""
        j, start = self.concat
        width = self.final.shape[1]
        return self.net.top_vecs[j][0].data[:, start:start + width]

    def compute_routed(self) -> None:
        """Write the routed chain's last blob: its channels of the Concat's top."""
        self.final.data[...] = self.concat_view()

    def _outputs(self) -> tuple[list[Blob], bool]:
        """The blobs the chain leaves (see :meth:`epilogue`) and whether it ends in a ReLU."""
        net = self.net
        blob = net.top_vecs[self.head][0]
        blobs = []
        for i in self.members:
            top = net.top_vecs[i][0]
            if net.layers[i].type != "ReLU" and top is not blob:
                blobs.append(blob)
                blob = top
        return blobs + [blob], net.layers[self.last].type == "ReLU"

    def _coefficients(self):
        """``(scale, shift)`` per blob of :meth:`_outputs`, in the head's dtype, ``None``
        for a scale of exactly 1 or a shift of exactly 0; and the same without the first
        blob (the second one's as a map of the head's output)."""
        net = self.net
        head = net.layers[self.head]
        dtype = head.blobs[0].data.dtype
        channels = head.num_output
        ones = np.ones(channels)
        coef = (ones, head.blobs[1].data.astype(np.float64).reshape(-1) if head.bias_term
                else np.zeros(channels))
        blob = net.top_vecs[self.head][0]
        result = []
        for i in self.members:
            layer, top = net.layers[i], net.top_vecs[i][0]
            if layer.type == "ReLU":
                continue
            if top is not blob:  # the member writes a new blob: the one before is final
                result.append(coef)
                coef = (ones, np.zeros(channels))
            coef = compose(coef, layer_coefficients(layer))
            blob = top
        result.append(coef)
        deferred = [compose(result[0], result[1])] + result[2:] if len(result) > 1 else None

        def cast(pairs):  # an identity scale or shift is None: the kernels skip its pass
            return pairs and [(None if np.all(s == 1) else s.astype(dtype),
                               None if not np.any(c) else c.astype(dtype)) for s, c in pairs]
        return cast(result), cast(deferred)

    def deferrable(self) -> bool:
        """Whether the head's top can be computed only when read: a member writes the next
        blob out of place, no other layer reads the head's top and no later layer writes
        the head's bottom (so reading the top after the pass computes what the pass would
        have written; reading the bottom or the head's parameters first computes it)."""
        net = self.net
        top, bottom = net.top_vecs[self.head][0], net.bottom_vecs[self.head][0]
        blobs = self._outputs()[0]
        if len(blobs) < 2 or blobs[0] is not top:
            return False
        if _readers(net, top) != [self.members[0]] or top.name in net.outputs:
            return False
        return not any(b is bottom for tops in net.top_vecs[self.head:] for b in tops)

    def keep_head_top(self) -> None:
        """Stop deferring the head's top (someone read it): compute it, and let every pass
        write it from now on."""
        if self.deferred is not None:
            blob, self.deferred = self.deferred, None
            blob.settle()

    def compute_deferred(self) -> None:
        """Write the head's top as the unfused pass would: the head's own forward (from the
        inputs as the pass read them, where a recycler keeps them: :mod:`protonet.recycle`)."""
        net, i = self.net, self.head
        recycler = getattr(net, "_recycler", None)
        with parallel.blas_held(), parallel.blas_for(net.layers[i]), \
                (recycler.inputs_as_read() if recycler is not None else contextlib.nullcontext()):
            net.layers[i].forward(net.bottom_vecs[i], net.top_vecs[i])

    def replay(self) -> None:
        """Run the chain layer by layer on scratch copies of its blobs, so that each
        member holds the state its backward reads (Scale's copy of its input in place,
        BatchNorm's deviations); the net's blobs keep their values."""
        net = self.net
        scratch: dict[int, Blob] = {}

        def copy(blob: Blob) -> Blob:
            if id(blob) not in scratch:
                scratch[id(blob)] = Blob(blob.shape, blob.dtype, name=blob.name)
            return scratch[id(blob)]

        head = net.layers[self.head]
        head.forward(net.bottom_vecs[self.head], [copy(net.top_vecs[self.head][0])])
        for i in self.members:
            net.layers[i].forward([copy(net.bottom_vecs[i][0])], [copy(net.top_vecs[i][0])])
        self.stale = False


def defer_chain_heads(net, chains: list[Chain]) -> None:
    """Defer the top of every chain head that :meth:`Chain.deferrable` allows: the pass
    writes the chain's later blobs only, and the head's top is computed when read. Reading
    what it is computed from first computes it: the head's bottom (and, through Split
    layers, the blob that bottom shares its memory with) and the head's parameters -- but
    where that bottom is a net input of a recycling net, reading it keeps a copy of the
    inputs for the computation instead (:mod:`protonet.recycle`)."""
    watchers: dict[int, tuple] = {}
    for chain in chains:
        if not chain.deferrable():
            continue
        chain.deferred = net.top_vecs[chain.head][0]
        chain.deferred.on_first_read(chain.keep_head_top)
        sources = list(net.layers[chain.head].blobs)
        blob = net.bottom_vecs[chain.head][0]
        while blob is not None:
            sources.append(blob)
            producer = next((i for i, tops in enumerate(net.top_vecs)
                             if any(t is blob for t in tops)), None)
            split = producer is not None and net.layers[producer].type == "Split"
            blob = net.bottom_vecs[producer][0] if split else None
        chain.sources.update(id(b) for b in sources)
        for source in sources:
            blobs = watchers.setdefault(id(source), (source, []))[1]
            blobs.append(chain.deferred)
    for source, blobs in watchers.values():
        source.watch(blobs)


def route_into_concats(net, chains: list[Chain]) -> dict[int, list[Chain]]:
    """Let chains write their last blob straight into the top of the Concat that joins them
    (``{concat layer: its chains}``): where every bottom of a Concat along the channel axis
    is the last blob of a convolution's chain, read by nothing but the Concat, and no later
    layer writes the Concat's top. The pass then skips the Concat's copy; each such blob
    is deferred, copied out of the top when read (reading or writing the top through its
    blob outside a pass copies them first)."""
    final = {}
    for chain in chains:
        if net.layers[chain.head].type == "Convolution":
            final[id(chain.final)] = chain
    routes = {}
    for j, layer in enumerate(net.layers):
        top = net.top_vecs[j][0] if net.top_vecs[j] else None
        if layer.type != "Concat" or getattr(layer, "axis", None) != 1 or top.num_axes < 2:
            continue
        bottoms = net.bottom_vecs[j]
        routed = [final.get(id(b)) for b in bottoms]
        if any(c is None for c in routed) or len({id(b) for b in bottoms}) != len(bottoms):
            continue
        readers = [[i for i in _readers(net, b) if i not in chain.indices]  # besides its own
                   for b, chain in zip(bottoms, routed)]
        if any(r != [j] for r in readers) or any(b.name in net.outputs for b in bottoms):
            continue
        if any(t is top for tops in net.top_vecs[j + 1:] for t in tops):
            continue
        start = 0
        for b, chain in zip(bottoms, routed):
            chain.concat = (j, start)
            chain.sources.add(id(top))
            b.on_first_read(lambda j=j: unroute(routes, j))
            start += b.shape[1]
        routes[j] = routed
        top.watch(bottoms)
    return routes


def _readers(net, blob: Blob) -> list[int]:
    """The layers that have ``blob`` among their bottoms."""
    return [i for i, bottoms in enumerate(net.bottom_vecs) if any(b is blob for b in bottoms)]


def unroute(routes: dict[int, list[Chain]], j: int) -> None:
    """Stop writing Concat ``j``'s bottoms into its top: each is written by its own chain
    again, and the Concat copies them (the deferred ones are computed first)."""
    for chain in routes.pop(j, ()):
        chain.final.settle()
        chain.final.on_first_read(None)
        chain.concat = None


def layer_coefficients(layer) -> tuple[np.ndarray, np.ndarray]:
    """A member's map as ``(scale, shift)`` (float64, ``(C,)``), from its blobs now."""
    if layer.type == "BatchNorm":
        return batchnorm_coefficients(layer.blobs[0].data, layer.blobs[1].data,
                                      layer.blobs[2].data, layer.eps)
    if layer.type == "Scale":
        gamma = layer.blobs[0].data.astype(np.float64).reshape(-1)
        beta = (layer.blobs[1].data.astype(np.float64).reshape(-1) if layer.bias_term
                else np.zeros_like(gamma))
        return gamma, beta
    beta = layer.blobs[0].data.astype(np.float64).reshape(-1)  # Bias
    return np.ones_like(beta), beta


def find_chains(net) -> list[Chain]:
    """The chains of ``net`` that can be folded (see the module docstring)."""
    chains = []
    n = len(net.layers)
    i = 0
    while i < n:
        members = []
        if _is_head(net, i):
            blob, channels = net.top_vecs[i][0], net.layers[i].num_output
            j = i + 1
            while j < n and _is_member(net, j, blob, channels):
                members.append(j)
                blob = net.top_vecs[j][0]
                j += 1
            if j < n and _is_relu(net, j, blob):
                members.append(j)
        if members:
            chains.append(Chain(net, i, members))
            i = members[-1] + 1
        else:
            i += 1
    return chains


def _no_loss(layer) -> bool:
    return not any(getattr(layer, "loss_weights", None) or [])


def _is_head(net, i: int) -> bool:
    layer = net.layers[i]
    if type(layer).__name__ not in ("ConvolutionLayer", "InnerProductLayer"):
        return False  # exactly these classes: not Deconvolution, not a Python layer
    if len(net.bottom_vecs[i]) != 1 or len(net.top_vecs[i]) != 1 or not _no_loss(layer):
        return False
    if net.top_vecs[i][0] is net.bottom_vecs[i][0]:
        return False
    if layer.type == "Convolution":
        return layer.axis == 1 and layer.num_spatial <= 2
    return layer.axis == 1 and net.top_vecs[i][0].num_axes == 2  # InnerProduct


def _is_relu(net, j: int, blob: Blob) -> bool:
    """Whether layer ``j`` is a plain ReLU (slope 0) of ``blob``, in place."""
    layer = net.layers[j]
    return (type(layer).__name__ == "ReLULayer" and layer.slope == 0.0 and _no_loss(layer)
            and len(net.bottom_vecs[j]) == 1 and net.bottom_vecs[j][0] is blob
            and len(net.top_vecs[j]) == 1 and net.top_vecs[j][0] is blob)


def _is_member(net, j: int, blob: Blob, channels: int) -> bool:
    """Whether layer ``j`` is a per-channel affine map of ``blob`` (``channels`` wide)."""
    layer = net.layers[j]
    if layer.type not in AFFINE or not _no_loss(layer):
        return False
    if len(net.bottom_vecs[j]) != 1 or net.bottom_vecs[j][0] is not blob:
        return False
    if len(net.top_vecs[j]) != 1 or blob.num_axes < 2 or blob.shape[1] != channels:
        return False
    if layer.type == "BatchNorm":
        return layer.use_global_stats and len(layer.blobs) == 3
    if layer.type == "Scale":
        p = layer.param.scale_param
        return (len(layer.blobs) >= 1 and layer.blobs[0].count == channels
                and p.axis in (1, 1 - blob.num_axes) and p.num_axes == 1)
    p = layer.param.bias_param  # Bias
    return (len(layer.blobs) == 1 and layer.blobs[0].count == channels
            and p.axis in (1, 1 - blob.num_axes) and p.num_axes == 1)
