"""Net: a DAG of layers built from a NetParameter, as Caffe's ``net.cpp`` builds it.

Building: NetState filtering -> Split insertion -> layers created and set up in
file order (file order is execution order) -> learnable blobs shared by
``param { name: }`` -> which layers and bottoms need backward -> unconsumed
tops become outputs (alphabetical, as Caffe's ``std::set`` orders them).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict
from itertools import zip_longest
from typing import Iterable, Iterator, Mapping

import numpy as np

from . import parallel
from .blob import Blob, passing
from .errors import ProtonetError
from .fuse import defer_chain_heads, find_chains, route_into_concats
from .graph import filter_net, insert_splits
from .layers import TEST, TRAIN, create_layer
from .layers.python_layer import OpaqueLayer, native_layer_type
from .memory import check_memory
from .proto import caffe_pb2
from .recycle import recycler_for, recycling, share_layer_scratch

PHASES = {"TRAIN": TRAIN, "TEST": TEST}
#: the name Caffe gives the anonymous top of a loss layer declared without one
AUTOMATIC_TOP = "(automatic)"


class _DefaultLevel(int):
    """The default ``level`` (0), distinguishable from an explicit 0 so that the legacy
    ``Net(prototxt, caffemodel)`` without a phase is caught instead of read as TRAIN."""

    def __repr__(self) -> str:
        return "0"


_LEVEL_DEFAULT = _DefaultLevel(0)


def parse_phase(phase) -> int:
    """``protonet.TRAIN``/``TEST`` (0/1) or the strings "TRAIN"/"TEST" -> 0/1."""
    if isinstance(phase, str):
        try:
            return PHASES[phase.upper()]
        except KeyError:
            raise ProtonetError(f"unknown phase '{phase}' (use TRAIN or TEST)") from None
    if phase not in (TRAIN, TEST):
        raise ProtonetError(f"unknown phase {phase!r} (use protonet.TRAIN or protonet.TEST)")
    return int(phase)


class Net:
    """A Caffe network: layers built from a net definition, run forward and backward.

    The constructor follows pycaffe::

        net = caffe.Net("deploy.prototxt", caffe.TEST)                  # random weights
        net = caffe.Net("deploy.prototxt", caffe.TEST, weights="w.caffemodel")
        net = caffe.Net("train_val.prototxt", caffe.TRAIN, level=1, stages=["x"])
        net = caffe.Net("deploy.prototxt", "w.caffemodel", caffe.TEST)  # legacy (deprecated)

    ``network`` is a path to a text (or binary) net definition, or a ``NetParameter``.
    Keyword-only extras: ``lenient`` (read Netscope's dialect), ``seed`` (fillers and random
    layers draw from it; default: :func:`protonet.set_random_seed`'s, else fresh entropy),
    ``dtype`` (``np.float64`` for double precision), ``init_weights=False`` (shapes only),
    ``shape_overrides`` ({top: shape} for data layers), ``allow_python_layers``, ``fuse``
    (fold BatchNorm/Scale/Bias chains and a ReLU into the convolution or inner product
    before them, invisibly: :mod:`protonet.fuse`; default: in the TEST phase).

    What pycaffe scripts read:

    ==========================  ===============================================================
    ``blobs``                   OrderedDict blob name -> :class:`~protonet.blob.Blob`
                                (``.data``, ``.diff``, ``.shape``, ``.count``, ``.reshape``)
    ``params``                  OrderedDict layer name -> [weights, bias, ...] (layers with blobs)
    ``layers``, ``layer_dict``  layer objects (``.type``, ``.blobs``), by index / by name
    ``_layer_names``            layer names in execution order (auto ``Split`` layers included)
    ``inputs``, ``outputs``     input blob names; unconsumed tops, alphabetically (as Caffe)
    ``top_names``               OrderedDict layer name -> its top blob names
    ``bottom_names``            OrderedDict layer name -> its bottom blob names
    ``blob_loss_weights``       OrderedDict blob name -> loss weight
    ==========================  ===============================================================

    and what they call: :meth:`forward`, :meth:`backward`, :meth:`forward_all`,
    :meth:`forward_backward_all`, :meth:`reshape`, :meth:`copy_from`, :meth:`share_with`,
    :meth:`save`, :meth:`save_hdf5`, :meth:`load_hdf5`, :meth:`clear_param_diffs`,
    :meth:`set_input_arrays`.
    """

    def __init__(self, network, phase=TEST, level: int = _LEVEL_DEFAULT,
                 stages: Iterable[str] | None = None, weights: str | None = None, *,
                 lenient: bool = False, seed: int | None = None, dtype=np.float32,
                 init_weights: bool = True, shape_overrides: dict | None = None,
                 allow_python_layers: bool = False, opaque_python_layers: bool = False,
                 memory_limit: int | None = None, fuse: bool | None = None):
        from .io import read_net
        if _is_weights_path(phase):
            # pycaffe's legacy Net(prototxt, caffemodel, phase)
            if level is _LEVEL_DEFAULT:
                raise ProtonetError(
                    f"Net({str(network)!r}, {str(phase)!r}): the legacy form takes the phase "
                    f"third: Net(prototxt, caffemodel, caffe.TEST) -- or better "
                    f"Net(prototxt, caffe.TEST, weights={str(phase)!r})")
            if weights is not None:
                raise ProtonetError("give the weights once: Net(prototxt, phase, weights=...)")
            weights, phase, level = os.fspath(phase), level, 0
            spelled = "caffe.TRAIN" if parse_phase(phase) == TRAIN else "caffe.TEST"
            warnings.warn(
                "deprecated use of the Python interface: Net(prototxt, caffemodel, phase); use "
                f"Net({str(network)!r}, {spelled}, weights={weights!r}) instead",
                DeprecationWarning, stacklevel=2)
        if isinstance(network, caffe_pb2.NetParameter):
            param, self.source = network, "<NetParameter>"
        else:
            param, self.source = read_net(os.fspath(network), lenient=lenient), str(network)
        if seed is None:
            from .pycaffe import next_net_seed
            seed = next_net_seed()
        self.phase = parse_phase(phase)
        self.dtype = np.dtype(dtype)
        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        state.phase = self.phase
        state.level = int(level)
        state.stage.extend(stages or [])
        self.state = state
        self.name = param.name
        self.force_backward = param.force_backward
        self.param = insert_splits(filter_net(param, state))
        self._seeds = np.random.SeedSequence(seed)
        self.allow_python_layers = allow_python_layers
        self.opaque_python_layers = opaque_python_layers
        self._build(shape_overrides or {})
        self.fuse = self.phase == TEST if fuse is None else bool(fuse)
        self._chains = find_chains(self) if self.fuse else []
        self._chain_at = {i: c for c in self._chains for i in c.indices}
        defer_chain_heads(self, self._chains)
        self._routes = route_into_concats(self, self._chains)
        self._recycler = recycler_for(self)  # blobs share buffers (protonet.recycle)
        if self.fuse and self.phase == TEST:
            share_layer_scratch(self)  # so do the layers' scratch buffers
        try:
            check_memory(self, memory_limit)
        except ProtonetError:
            self.close()
            raise
        if init_weights:
            self._fill_params()
        if weights is not None:
            self.copy_from(weights)

    # -- building -----------------------------------------------------------------------------
    def _build(self, shape_overrides):
        self.layers = []
        self.layer_names: list[str] = []
        self.blobs: "OrderedDict[str, Blob]" = OrderedDict()
        #: per layer index: its bottom / top blob names (right even where two layers share
        #: a name, which Caffe allows; ``bottom_names``/``top_names`` keep the last, as pycaffe)
        self.layer_bottoms: list[list[str]] = []
        self.layer_tops: list[list[str]] = []
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_need_backward: list[list[bool]] = []
        self.layer_need_backward: list[bool] = []
        self.inputs: list[str] = []
        self.blob_loss_weights: "OrderedDict[str, float]" = OrderedDict()
        self._reseed: list[list] = []  # per layer: (in-place loss top, weight)
        self.learnable_params: list[Blob] = []  # owners only, in creation order
        self.param_specs: list = []            # ParamSpec (or None) per owner
        self._param_owner_by_name: dict[str, int] = {}
        blob_need_backward: dict[str, bool] = {}
        available: set[str] = set()

        for lp in self.param.layer:
            phase = lp.phase if lp.HasField("phase") else self.phase
            rng = np.random.default_rng(self._seeds.spawn(1)[0])
            if (lp.type == "Python" and self.opaque_python_layers and not self.allow_python_layers
                    and native_layer_type(lp) is None):
                layer = OpaqueLayer(lp, phase=phase, dtype=self.dtype, rng=rng)
            else:
                layer = create_layer(lp, phase=phase, dtype=self.dtype, rng=rng,
                                     allow_python=self.allow_python_layers)
            layer.shape_overrides = {
                t: tuple(shape_overrides[t]) for t in lp.top
                if t in shape_overrides and (not len(lp.bottom) or isinstance(layer, OpaqueLayer))}
            if len(lp.propagate_down) not in (0, len(lp.bottom)):
                raise layer.error(f"propagate_down must be given 0 or {len(lp.bottom)} times "
                                  f"(once per bottom), got {len(lp.propagate_down)}")
            bottoms, need_bottom, need_backward = [], [], False
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise layer.error(f"unknown bottom blob '{name}' (bottom {j}): no earlier "
                                      "layer produces it, or it was consumed already")
                available.discard(name)
                bottoms.append(self.blobs[name])
                want = lp.propagate_down[j] if len(lp.propagate_down) else True
                need = blob_need_backward[name] and want
                need_bottom.append(need)
                need_backward |= need
            tops = []
            top_names = list(lp.top)
            if layer.is_loss:
                # Caffe's AutoTopBlobs: a loss layer given too few tops gets anonymous ones,
                # which count in the loss but cannot be read by other layers
                needed = max(layer.min_num_top or 0, layer.exact_num_top or 0)
                top_names += [AUTOMATIC_TOP] * max(0, needed - len(top_names))
            for j, name in enumerate(top_names):
                if j >= len(lp.top):
                    blob = Blob((), self.dtype, name=name)
                    self.blobs[name] = blob   # the last one, as pycaffe's blobs dict shows
                    tops.append(blob)
                    continue
                if j < len(lp.bottom) and lp.bottom[j] == name:
                    tops.append(self.blobs[name])  # in place
                elif name in self.blobs:
                    raise layer.error(f"top blob '{name}' is produced by more than one layer")
                else:
                    blob = Blob((), self.dtype, name=name)
                    self.blobs[name] = blob
                    tops.append(blob)
                available.add(name)
            try:
                layer.setup(bottoms, tops)
            except ValueError as e:  # numpy shape errors escaping a layer
                raise layer.shape_error(str(e), bottoms) from None
            if lp.type == "Input":
                self.inputs.extend(lp.top)
            for j, name in enumerate(top_names):
                self.blob_loss_weights[name] = layer.loss_weights[j]
            # an in-place layer's backward overwrites its loss top's diff with the bottom's
            # gradient; such a seed is written again after each forward (Caffe leaves it lost)
            self._reseed.append([(t, w) for t, w in zip(tops, layer.loss_weights)
                                 if w and any(t is b for b in bottoms)])
            self._append_params(layer, lp)
            propagate = []
            for k in range(len(layer.blobs)):
                lr = lp.param[k].lr_mult if k < len(lp.param) else 1.0
                propagate.append(lr != 0)
                need_backward |= lr != 0
            layer.param_propagate_down = propagate
            for name in lp.top:
                blob_need_backward[name] = need_backward
            self.layers.append(layer)
            self.layer_names.append(lp.name)
            self.layer_bottoms.append(list(lp.bottom))
            self.layer_tops.append(top_names)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_need_backward.append(need_bottom)
            self.layer_need_backward.append(need_backward)

        self.bottom_names: "OrderedDict[str, list[str]]" = OrderedDict(
            zip(self.layer_names, self.layer_bottoms))
        self.top_names: "OrderedDict[str, list[str]]" = OrderedDict(
            zip(self.layer_names, self.layer_tops))
        self._prune_backward()
        self.outputs = sorted(available)
        for name, blob in self.blobs.items():
            blob.name = name

    def _append_params(self, layer, lp):
        """Register the layer's learnable blobs; ``param { name: }`` shares an earlier one."""
        if len(lp.blobs):
            self._load_inline_blobs(layer, lp)
            layer.blob_fillers = [None] * len(layer.blobs)  # given: never filled
        for k, blob in enumerate(layer.blobs):
            spec = lp.param[k] if k < len(lp.param) else None
            name = spec.name if spec is not None else ""
            if not name or name not in self._param_owner_by_name:
                if name:
                    self._param_owner_by_name[name] = len(self.learnable_params)
                self.learnable_params.append(blob)
                self.param_specs.append(spec)
                continue
            owner_id = self._param_owner_by_name[name]
            owner, owner_spec = self.learnable_params[owner_id], self.param_specs[owner_id]
            strict = spec.share_mode == caffe_pb2.ParamSpec.STRICT
            if strict and owner.shape != blob.shape:
                raise layer.error(
                    f"cannot share param '{name}': shape {list(blob.shape)} differs from the "
                    f"owner's {list(owner.shape)} (share_mode STRICT)")
            if not strict and owner.count != blob.count:
                raise layer.error(
                    f"cannot share param '{name}': count {blob.count} differs from the "
                    f"owner's {owner.count} (share_mode PERMISSIVE)")
            for field in ("lr_mult", "decay_mult"):
                if spec.HasField(field) and owner_spec is not None and owner_spec.HasField(field) \
                        and getattr(spec, field) != getattr(owner_spec, field):
                    raise layer.error(f"shared param '{name}' has mismatched {field}")
            blob.share_data(owner)
            blob.share_diff(owner)

    def _fill_params(self) -> None:
        """Initialise learnable blobs from their fillers, once every shape is known (and the
        memory they need checked). Each layer draws from its own generator, in blob order; a
        blob shared from an earlier layer keeps the owner's values (its draws are discarded,
        so every layer's random stream is the same as if it had filled its own)."""
        from .fillers import fill
        owners = {id(b) for b in self.learnable_params}
        for layer in self.layers:
            for blob, filler in zip(layer.blobs, layer.blob_fillers):
                if filler is None:
                    continue
                target = blob.data if id(blob) in owners else np.empty(blob.shape, blob.dtype)
                fill(target, filler, layer.rng)

    def close(self) -> None:
        """Stop the layers' background work (data prefetch threads) and release files."""
        for layer in getattr(self, "layers", []):
            closer = getattr(layer, "close", None)
            if callable(closer):
                closer()

    def _load_inline_blobs(self, layer, lp):
        from .io.blobs import blob_proto_to_array
        if len(lp.blobs) != len(layer.blobs):
            raise layer.error(f"the prototxt gives {len(lp.blobs)} blobs, the layer has "
                              f"{len(layer.blobs)}")
        for blob, proto in zip(layer.blobs, lp.blobs):
            array = blob_proto_to_array(proto)
            if array.size != blob.count:
                raise layer.error(f"inline blob of shape {list(array.shape)} does not fit "
                                  f"param of shape {list(blob.shape)}")
            blob.data[...] = array.reshape(blob.shape)

    def _prune_backward(self):
        """Skip backward where no loss is reached or nothing below needs gradients."""
        under_loss: set[str] = set()
        skip: set[str] = set()
        for i in reversed(range(len(self.layers))):
            layer, tops = self.layers[i], self.layer_tops[i]
            contributes = any(w != 0 or t in under_loss
                              for t, w in zip(tops, layer.loss_weights))
            skip_down = all(t in skip for t in tops) if tops else True
            if self.layer_need_backward[i] and skip_down:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_need_backward[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, name in enumerate(self.layer_bottoms[i]):
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip.add(name)
        if self.force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                self.bottom_need_backward[i] = [
                    need or layer.allow_force_backward(j)
                    for j, need in enumerate(self.bottom_need_backward[i])]
                layer.param_propagate_down = [True] * len(layer.blobs)

    # -- running ------------------------------------------------------------------------------
    def forward_from_to(self, start: int = 0, end: int | None = None) -> float:
        """Run layers ``start..end`` (inclusive); returns the weighted loss they produce."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        self._forget_deferred(start, end)
        routed: dict[int, int] = {}  # Concat layer -> chains that wrote into its top
        with parallel.blas_held(), passing(), self._explained(), \
                recycling(self._recycler, start, end):
            i = start
            while i <= end:
                chain = self._chain_at.get(i)
                if chain is not None and i == chain.head and chain.last <= end:
                    into = chain.concat is not None and chain.concat[0] <= end
                    i = self._forward_chain(chain, into)
                    if into:
                        routed[chain.concat[0]] = routed.get(chain.concat[0], 0) + 1
                    continue
                if chain is not None:  # its layers run themselves
                    chain.shaped = None
                    if i == chain.members[0]:
                        chain.stale = False
                layer, bottom, top = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
                layer.reshape(bottom, top)
                if routed.get(i, -1) == len(self._routes.get(i, ())):
                    i += 1  # every bottom already wrote its part of this Concat's top
                    continue
                with parallel.blas_for(layer):
                    layer.forward(bottom, top)
                for blob, weight in self._reseed[i]:
                    blob.diff[...] = weight
                for blob, weight in zip(top, layer.loss_weights):
                    if weight:
                        loss += _weighted_loss(blob, weight)
                i += 1
        return loss

    @contextlib.contextmanager
    def _explained(self):
        """A numpy error inside a pass becomes a layer's own error when its cause is a
        learnable blob reshaped since setup (checked only once something failed)."""
        try:
            yield
        except (ValueError, IndexError) as exc:
            for layer in self.layers:
                error = layer.param_shape_error()
                if error is not None:
                    raise error from exc
            raise

    def _forward_chain(self, chain, into_concat: bool = False) -> int:
        """Run a folded chain (:mod:`protonet.fuse`) as its head layer alone, writing every
        blob of the chain (its last one into its Concat's top if ``into_concat``); returns
        the index after it."""
        chain.reshape()
        if into_concat:  # the Concat's top shaped for this pass (its reshape checks the rest)
            top, shape = self.top_vecs[chain.concat[0]][0], chain.final.shape
            top.reshape(shape[:1] + top.shape[1:2] + shape[2:])
        head, deferred = self.layers[chain.head], chain.deferred
        with parallel.blas_for(head):
            head.forward(self.bottom_vecs[chain.head], self.top_vecs[chain.head],
                         epilogue=chain.epilogue(defer=deferred is not None,
                                                 into=chain.concat_view() if into_concat
                                                 else None))
        if deferred is not None:
            deferred.defer(chain.compute_deferred)
        if into_concat:
            chain.final.defer(chain.compute_routed)
        chain.stale = True
        return chain.last + 1

    def backward_from_to(self, start: int | None = None, end: int = 0) -> None:
        """Backward through layers ``start`` down to ``end`` (inclusive)."""
        start = len(self.layers) - 1 if start is None else start
        with parallel.blas_held(), passing(), self._explained():
            for i in range(start, end - 1, -1):
                layer, top = self.layers[i], self.top_vecs[i]
                chain = self._chain_at.get(i)
                if chain is not None and chain.stale and self.layer_need_backward[i]:
                    chain.replay()  # the members' state for their backward
                if self.layer_need_backward[i]:
                    with parallel.blas_for(layer):
                        layer.backward(top, self.bottom_need_backward[i], self.bottom_vecs[i])

    def _forget_deferred(self, start: int, end: int) -> None:
        """Before a pass over layers ``start..end``: drop the deferred data of the chains
        it runs (it writes their blobs anew), and compute now that of the others whose
        sources it writes."""
        written = None
        for chain in self._chains:
            blobs = chain.deferred_blobs()
            if not blobs:
                continue
            if start <= chain.head <= end:
                for blob in blobs:
                    blob.defer(None)
                continue
            if written is None:
                written = {id(t) for tops in self.top_vecs[start:end + 1] for t in tops}
            if chain.sources & written:
                for blob in blobs:
                    blob.settle()

    def settle_deferred(self) -> None:
        """Compute now every blob whose data the last pass deferred (:mod:`protonet.fuse`):
        before the parameters or inputs it depends on change where its reading would not
        notice (a solver's update through parameters another net shares). Blobs sharing
        buffers (:mod:`protonet.recycle`) get memory of their own from then on."""
        if self._recycler is not None:
            self._recycler.settle()
            self._recycler.stop()
        for chain in self._chains:
            for blob in chain.deferred_blobs():
                blob.settle()

    def forward_backward(self) -> float:
        """One forward and one backward pass over the whole net; returns the loss."""
        loss = self.forward_from_to()
        self.backward_from_to()
        return loss

    def forward(self, blobs: Iterable[str] | None = None, start: str | None = None,
                end: str | None = None, **inputs) -> dict[str, np.ndarray]:
        """Run the net forward (pycaffe's ``net.forward``); return ``{blob name: data}``.

        ``inputs``: arrays to copy into blobs by name first (``net.forward(data=x)``); an
        array of another shape reshapes the blob, and the layers above follow. ``start``/
        ``end``: layer names to run from/to (inclusive). Returned: the net's outputs -- or
        the tops of ``end`` when given -- plus the blobs named in ``blobs``. The arrays
        are the blobs' own memory (copy them to keep them past the next pass).
        """
        first = self._layer_index(start) if start is not None else 0
        last = self._layer_index(end) if end is not None else len(self.layers) - 1
        self._forget_deferred(first, last)  # (before the inputs change what they are from)
        if self._recycler is not None and first == 0 and last == len(self.layers) - 1:
            self._recycler.replacing_inputs()
        for name, value in inputs.items():
            if name not in self.blobs:
                raise ProtonetError(f"forward: '{name}' is not a blob of this net "
                                    f"(inputs: {', '.join(self.inputs) or 'none'})")
            value = np.asarray(value, dtype=self.dtype)
            if value.shape != self.blobs[name].shape:
                self.blobs[name].reshape(value.shape)
            self.blobs[name].data[...] = value
        self.forward_from_to(first, last)
        names = list(self.outputs if end is None else self.layer_tops[last])
        names += [b for b in (blobs or []) if b not in names]
        self._check_blob_names(names, "forward")
        return {n: self.blobs[n].data for n in names}

    def backward(self, diffs: Iterable[str] | None = None, start: str | None = None,
                 end: str | None = None, **top_diffs) -> dict[str, np.ndarray]:
        """Run the net backward (pycaffe's ``net.backward``); return ``{blob name: diff}``.

        ``top_diffs``: gradients to copy into blobs' diffs by name first (a loss top's diff
        holds its loss weight from setup on, as in Caffe, until someone writes another). ``start``/``end``: layer names to run from/down to
        (inclusive). Returned: the diffs of the net's inputs -- or of ``end``'s bottoms when
        given -- plus the blobs named in ``diffs``.
        """
        for name, value in top_diffs.items():
            if name not in self.blobs:
                raise ProtonetError(f"backward: '{name}' is not a blob of this net "
                                    f"(outputs: {', '.join(self.outputs) or 'none'})")
            value = np.asarray(value, dtype=self.dtype)
            if value.shape != self.blobs[name].shape:
                raise ProtonetError(f"backward: diff for '{name}' has shape {list(value.shape)}, "
                                    f"the blob {list(self.blobs[name].shape)}")
            self.blobs[name].diff[...] = value
        first = self._layer_index(start) if start is not None else len(self.layers) - 1
        last = self._layer_index(end) if end is not None else 0
        self.backward_from_to(first, last)
        names = list(self.inputs if end is None else self.layer_bottoms[last])
        names += [d for d in (diffs or []) if d not in names]
        self._check_blob_names(names, "backward")
        return {n: self.blobs[n].diff for n in names}

    def forward_all(self, blobs: Iterable[str] | None = None,
                    **inputs) -> dict[str, np.ndarray]:
        """Forward any number of samples in batches of the net's batch size (pycaffe's
        ``forward_all``): ``inputs`` are arrays of N samples each; the last batch is padded
        with zeros. Returns ``{blob: array of N results}`` (copies) for the outputs and
        ``blobs``; a blob without a batch axis (a scalar loss) gives one value per batch.
        """
        names = list(dict.fromkeys(list(self.outputs) + list(blobs or [])))
        if not inputs:
            outs = self.forward(blobs=blobs)
            return {n: np.array(outs[n]) for n in names}
        total = self._num_samples(inputs)
        collected: dict[str, list] = {n: [] for n in names}
        for batch in self._batch(inputs):
            outs = self.forward(blobs=blobs, **batch)
            for n in names:
                collected[n].append(np.array(outs[n]))
        return {n: _join_batches(v, total) for n, v in collected.items()}

    def forward_backward_all(self, blobs: Iterable[str] | None = None,
                             diffs: Iterable[str] | None = None, **kwargs
                             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Forward and backward in batches (pycaffe's ``forward_backward_all``).

        ``kwargs`` holds input arrays (by input name) and top diffs (by output name), N
        samples each. Returns ``(outputs, diffs)``: ``{blob: data}`` for the outputs and
        ``blobs``, ``{blob: diff}`` for the inputs and ``diffs``, N rows each.
        """
        out_names = list(dict.fromkeys(list(self.outputs) + list(blobs or [])))
        diff_names = list(dict.fromkeys(list(self.inputs) + list(diffs or [])))
        unknown = [k for k in kwargs if k not in self.inputs and k not in self.outputs]
        if unknown:
            raise ProtonetError(f"forward_backward_all: {', '.join(unknown)} is neither an "
                                f"input ({', '.join(self.inputs) or 'none'}) nor an output "
                                f"({', '.join(self.outputs)})")
        if not kwargs:  # nothing given: one pass on what the blobs hold
            outs = {n: np.array(a) for n, a in self.forward(blobs=blobs).items()}
            grads = self.backward(diffs=diffs)
            return ({n: outs[n] for n in out_names}, {n: np.array(grads[n]) for n in diff_names})
        total = self._num_samples(kwargs)
        fwd = {k: v for k, v in kwargs.items() if k in self.inputs}
        bwd = {k: v for k, v in kwargs.items() if k in self.outputs}
        all_outs: dict[str, list] = {n: [] for n in out_names}
        all_diffs: dict[str, list] = {n: [] for n in diff_names}
        batches = zip_longest(self._batch(fwd) if fwd else iter(()),
                              self._batch(bwd) if bwd else iter(()), fillvalue={})
        for fb, bb in batches:
            outs = self.forward(blobs=blobs, **fb)
            for n in out_names:
                all_outs[n].append(np.array(outs[n]))
            grads = self.backward(diffs=diffs, **bb)
            for n in diff_names:
                all_diffs[n].append(np.array(grads[n]))
        return ({n: _join_batches(v, total) for n, v in all_outs.items()},
                {n: _join_batches(v, total) for n, v in all_diffs.items()})

    def _num_samples(self, arrays: Mapping[str, np.ndarray]) -> int:
        counts = {k: len(v) for k, v in arrays.items()}
        if len(set(counts.values())) > 1:
            raise ProtonetError("the arrays hold different numbers of samples: " +
                                ", ".join(f"{k} {n}" for k, n in counts.items()))
        return next(iter(counts.values()))

    def _batch(self, arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Split ``{blob: N samples}`` into batches of the net's batch size (the first named
        blob's first axis), zero-padding the last one (pycaffe's ``Net._batch``)."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self._check_blob_names(arrays, "batching")
        num = self._num_samples(arrays)
        first = next(iter(arrays))
        if not self.blobs[first].shape:
            raise ProtonetError(f"blob '{first}' has no batch axis to split along")
        size = self.blobs[first].shape[0]
        if size < 1:
            raise ProtonetError(f"blob '{first}' has batch size 0")
        for i in range(0, num - num % size, size):
            yield {k: v[i:i + size] for k, v in arrays.items()}
        rest = num % size
        if rest:
            yield {k: np.concatenate([v[num - rest:],
                                      np.zeros((size - rest,) + v.shape[1:], v.dtype)])
                   for k, v in arrays.items()}

    def reshape(self) -> None:
        """Propagate shapes through every layer (after ``net.blobs[name].reshape(...)``)."""
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)
        for chain in self._chains:
            chain.shaped = None

    def clear_param_diffs(self) -> None:
        """Zero the diffs of every learnable blob (the solver does this every iteration)."""
        for blob in self.learnable_params:
            blob.diff[...] = 0

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Give the net's first layer, a ``MemoryData`` layer, arrays to serve
        (``data`` N x C x H x W, ``labels`` N values)."""
        if not self.layers or self.layers[0].type != "MemoryData":
            raise ProtonetError("set_input_arrays needs a net whose first layer is MemoryData")
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[:, None, None, None]
        self.layers[0].set_input_arrays(data, labels)

    def _layer_index(self, name: str) -> int:
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise ProtonetError(f"no layer named '{name}' in net '{self.name}'") from None

    def _check_blob_names(self, names, what: str) -> None:
        missing = [n for n in names if n not in self.blobs]
        if missing:
            raise ProtonetError(f"{what}: no blob named {', '.join(map(repr, missing))} in net "
                                f"'{self.name}'")

    # -- views --------------------------------------------------------------------------------
    @property
    def params(self) -> "OrderedDict[str, list[Blob]]":
        """Layer name -> learnable blobs, for layers that have any (pycaffe's net.params)."""
        return OrderedDict((n, l.blobs) for n, l in zip(self.layer_names, self.layers) if l.blobs)

    @property
    def layer_dict(self) -> "OrderedDict":
        """Layer name -> layer object."""
        return OrderedDict(zip(self.layer_names, self.layers))

    @property
    def _layer_names(self) -> list[str]:
        return list(self.layer_names)

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def _blobs(self) -> list[Blob]:
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self) -> list[float]:
        return list(self.blob_loss_weights.values())

    @property
    def _inputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.outputs]

    # -- weights ------------------------------------------------------------------------------
    def copy_from(self, weights: str) -> None:
        """Copy trained weights by layer name from a ``.caffemodel`` (binary, any version) or,
        for a name ending in ``.h5``, a ``.caffemodel.h5`` (Caffe's CopyTrainedLayersFrom)."""
        from .io.weights import copy_trained_layers
        copy_trained_layers(self, os.fspath(weights))

    def share_with(self, other: "Net") -> None:
        """Share ``other``'s learnable blobs (their data, not their diffs) by layer name, as
        Caffe's ShareTrainedLayersWith: layers ``other`` has and this net lacks are ignored."""
        mine = self.layer_dict
        for name, source in zip(other.layer_names, other.layers):
            target = mine.get(name)
            if target is None or not source.blobs:
                continue
            if len(target.blobs) != len(source.blobs):
                raise ProtonetError(f"share_with: layer '{name}' has {len(source.blobs)} blobs "
                                    f"in the source net but {len(target.blobs)} here")
            for j, (dst, src) in enumerate(zip(target.blobs, source.blobs)):
                if dst.shape != src.shape:
                    raise ProtonetError(
                        f"share_with: cannot share param {j} of layer '{name}': shape "
                        f"{list(src.shape)} in the source net, {list(dst.shape)} here")
                dst.share_data(src)
        if self._recycler is not None:  # its parameters change between its passes
            self._recycler.stop()

    def share_scratch_with(self, other: "Net") -> None:
        """Let layers use the scratch buffers of ``other``'s same-named layers of their type.

        For nets that run one after the other, as a solver's test nets between
        training iterations: each buffer then takes the larger net's size once
        instead of both nets keeping their own. A layer that finds its buffers
        overwritten by the other net recomputes what it had kept there.
        """
        mine = self.layer_dict
        for name, source in zip(other.layer_names, other.layers):
            target = mine.get(name)
            if (target is not None and target is not source and type(target) is type(source)
                    and source.shares_scratch):
                target._buf = source._buf

    def save(self, filename: str) -> None:
        """Write the layers and their learnable blobs as a binary ``.caffemodel`` that Caffe
        (and :meth:`copy_from`) reads (Caffe's ``Net::ToProto`` + WriteProtoToBinaryFile)."""
        from .io.caffemodel import write_caffemodel
        write_caffemodel(self, os.fspath(filename))

    def save_hdf5(self, filename: str) -> None:
        """Write the learnable blobs in Caffe's HDF5 layout: ``/data/<layer>/<i>`` (float32;
        a shared blob only under its owner), as ``Net::ToHDF5``. Needs h5py."""
        from .solvers.snapshot import write_caffemodel_h5
        write_caffemodel_h5(self, os.fspath(filename))

    def load_hdf5(self, filename: str) -> None:
        """Copy weights by layer name from Caffe's HDF5 layout (``Net::CopyTrainedLayersFromHDF5``).
        Needs h5py."""
        from .io.weights import copy_trained_layers_hdf5
        copy_trained_layers_hdf5(self, os.fspath(filename))

    def to_onnx(self, path: str, **options):
        """Write the net as an ONNX model, checked against this net in onnxruntime when it is
        installed (:func:`protonet.export.to_onnx`: ``opset``, ``dynamic_batch``, ``check``,
        ``seed``, ``tolerance``). Needs ``pip install 'protonet[onnx]'``."""
        from .export import to_onnx
        return to_onnx(self, path, **options)

    def __repr__(self) -> str:
        return (f"<Net '{self.name}' phase={'TRAIN' if self.phase == TRAIN else 'TEST'} "
                f"layers={len(self.layers)} blobs={len(self.blobs)}>")


def _weighted_loss(blob, weight: float) -> float:
    """A loss top's contribution, Caffe's ``dot(data, diff)``: the diff holds the loss weight
    (then ``weight * sum(data)``, in float64 with the exact weight) unless someone wrote
    another one there."""
    data, diff = blob.data, blob.diff
    seed = diff.dtype.type(weight)
    if diff.size == 1 and diff.flat[0] == seed:
        return weight * float(data.flat[0])
    if diff.size > 1 and diff.flat[0] == seed and np.all(diff == seed):
        return weight * float(np.sum(data, dtype=np.float64))
    return float(np.vdot(data.astype(np.float64), diff.astype(np.float64)))


def _is_weights_path(phase) -> bool:
    """Whether Net's second argument is a caffemodel path (the legacy signature)."""
    if isinstance(phase, os.PathLike):
        return True
    return isinstance(phase, str) and phase.upper() not in PHASES


def _join_batches(parts: list, total: int) -> np.ndarray:
    """Concatenate per-batch results along the batch axis and drop the padding rows."""
    if not parts:
        return np.zeros((0,), np.float32)
    if parts[0].ndim == 0:
        return np.stack(parts)
    return np.concatenate(parts)[:total]
