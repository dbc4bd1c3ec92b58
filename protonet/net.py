"""Net: a DAG of layers built from a NetParameter, as Caffe's ``net.cpp`` builds it.

Building: NetState filtering -> Split insertion -> layers created and set up in
file order (file order is execution order) -> learnable blobs shared by
``param { name: }`` -> which layers and bottoms need backward -> unconsumed
tops become outputs (alphabetical, as Caffe's ``std::set`` orders them).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .blob import Blob
from .errors import ProtonetError
from .graph import filter_net, insert_splits
from .layers import TEST, TRAIN, create_layer
from .proto import caffe_pb2

PHASES = {"TRAIN": TRAIN, "TEST": TEST}


def parse_phase(phase) -> int:
    if isinstance(phase, str):
        try:
            return PHASES[phase.upper()]
        except KeyError:
            raise ProtonetError(f"unknown phase '{phase}' (use TRAIN or TEST)") from None
    if phase not in (TRAIN, TEST):
        raise ProtonetError(f"unknown phase {phase!r} (use protonet.TRAIN or protonet.TEST)")
    return int(phase)


class Net:
    """A network built from a prototxt (path, text-parsed or NetParameter message).

    ``Net(path, phase)`` mirrors pycaffe's ``caffe.Net(network_file, phase, level=0,
    stages=None, weights=None)``. ``blobs`` maps blob names to :class:`Blob` in
    creation order; ``params`` maps layer names to their learnable blobs.
    """

    def __init__(self, network, phase=TEST, level: int = 0, stages=None, weights=None, *,
                 lenient: bool = False, seed: int | None = None, dtype=np.float32,
                 init_weights: bool = True, shape_overrides: dict | None = None,
                 allow_python_layers: bool = False):
        from .io import read_net
        if isinstance(network, caffe_pb2.NetParameter):
            param, self.source = network, "<NetParameter>"
        else:
            param, self.source = read_net(str(network), lenient=lenient), str(network)
        self.phase = parse_phase(phase)
        self.dtype = np.dtype(dtype)
        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        state.phase = self.phase
        state.level = level
        state.stage.extend(stages or [])
        self.state = state
        self.name = param.name
        self.force_backward = param.force_backward
        self.param = insert_splits(filter_net(param, state))
        self._seeds = np.random.SeedSequence(seed)
        self.allow_python_layers = allow_python_layers
        self._build(shape_overrides or {}, init_weights)
        if weights is not None:
            self.copy_from(weights)

    # -- building -----------------------------------------------------------------------------
    def _build(self, shape_overrides, init_weights):
        self.layers = []
        self.layer_names: list[str] = []
        self.blobs: "OrderedDict[str, Blob]" = OrderedDict()
        self.bottom_names: "OrderedDict[str, list[str]]" = OrderedDict()
        self.top_names: "OrderedDict[str, list[str]]" = OrderedDict()
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_need_backward: list[list[bool]] = []
        self.layer_need_backward: list[bool] = []
        self.inputs: list[str] = []
        self.blob_loss_weights: "OrderedDict[str, float]" = OrderedDict()
        self.learnable_params: list[Blob] = []  # owners only, in creation order
        self.param_specs: list = []            # ParamSpec (or None) per owner
        self._param_owner_by_name: dict[str, int] = {}
        blob_need_backward: dict[str, bool] = {}
        available: set[str] = set()

        for lp in self.param.layer:
            if lp.name in self.top_names:
                raise ProtonetError(f"layer name '{lp.name}' is used by more than one layer")
            phase = lp.phase if lp.HasField("phase") else self.phase
            rng = np.random.default_rng(self._seeds.spawn(1)[0])
            layer = create_layer(lp, phase=phase, dtype=self.dtype, rng=rng,
                                 allow_python=self.allow_python_layers)
            layer.shape_overrides = {t: tuple(shape_overrides[t]) for t in lp.top
                                     if t in shape_overrides and not len(lp.bottom)}
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
            for j, name in enumerate(lp.top):
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
            for j, name in enumerate(lp.top):
                self.blob_loss_weights[name] = layer.loss_weights[j]
            self._append_params(layer, lp, init_weights)
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
            self.bottom_names[lp.name] = list(lp.bottom)
            self.top_names[lp.name] = list(lp.top)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_need_backward.append(need_bottom)
            self.layer_need_backward.append(need_backward)

        self._prune_backward()
        self.outputs = sorted(available)
        for name, blob in self.blobs.items():
            blob.name = name

    def _append_params(self, layer, lp, init_weights):
        """Register the layer's learnable blobs; ``param { name: }`` shares an earlier one."""
        if len(lp.blobs):
            self._load_inline_blobs(layer, lp)
        elif init_weights:
            layer.fill_params()
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
            layer, tops = self.layers[i], self.top_names[self.layer_names[i]]
            contributes = any(w != 0 or t in under_loss
                              for t, w in zip(tops, layer.loss_weights))
            skip_down = all(t in skip for t in tops) if tops else True
            if self.layer_need_backward[i] and skip_down:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_need_backward[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, name in enumerate(self.bottom_names[self.layer_names[i]]):
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
        for i in range(start, end + 1):
            layer, bottom, top = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            for blob, weight in zip(top, layer.loss_weights):
                if weight:
                    loss += weight * float(np.sum(blob.data, dtype=np.float64))
        return loss

    def backward_from_to(self, start: int | None = None, end: int = 0) -> None:
        """Backward through layers ``start`` down to ``end`` (inclusive)."""
        start = len(self.layers) - 1 if start is None else start
        for i in range(start, end - 1, -1):
            layer, top = self.layers[i], self.top_vecs[i]
            for blob, weight in zip(top, layer.loss_weights):
                if weight:
                    blob.diff[...] = weight
            if self.layer_need_backward[i]:
                layer.backward(top, self.bottom_need_backward[i], self.bottom_vecs[i])

    def forward_backward(self) -> float:
        loss = self.forward_from_to()
        self.backward_from_to()
        return loss

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """pycaffe's forward: set ``inputs`` by blob name, run, return {output: array}."""
        for name, value in inputs.items():
            if name not in self.blobs:
                raise ProtonetError(f"forward: '{name}' is not a blob of this net")
            value = np.asarray(value, dtype=self.dtype)
            if value.shape != self.blobs[name].shape:
                self.blobs[name].reshape(value.shape)
            self.blobs[name].data[...] = value
        first = self._layer_index(start) if start is not None else 0
        last = self._layer_index(end) if end is not None else len(self.layers) - 1
        self.forward_from_to(first, last)
        names = set(self.outputs if end is None else self.top_names[self.layer_names[last]])
        names.update(blobs or [])
        return {n: self.blobs[n].data for n in sorted(names)}

    def backward(self, diffs=None, start=None, end=None, **top_diffs):
        """pycaffe's backward: set ``top_diffs`` by blob name, run, return {input: diff}."""
        for name, value in top_diffs.items():
            self.blobs[name].diff[...] = value
        first = self._layer_index(start) if start is not None else len(self.layers) - 1
        last = self._layer_index(end) if end is not None else 0
        self.backward_from_to(first, last)
        names = set(self.inputs if end is None else self.bottom_names[self.layer_names[last]])
        names.update(diffs or [])
        return {n: self.blobs[n].diff for n in sorted(names)}

    def reshape(self) -> None:
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)

    def clear_param_diffs(self) -> None:
        for blob in self.learnable_params:
            blob.diff[...] = 0

    def _layer_index(self, name: str) -> int:
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise ProtonetError(f"no layer named '{name}' in net '{self.name}'") from None

    # -- views --------------------------------------------------------------------------------
    @property
    def params(self) -> "OrderedDict[str, list[Blob]]":
        """Layer name -> learnable blobs, for layers that have any (pycaffe's net.params)."""
        return OrderedDict((n, l.blobs) for n, l in zip(self.layer_names, self.layers) if l.blobs)

    @property
    def layer_dict(self) -> "OrderedDict":
        return OrderedDict(zip(self.layer_names, self.layers))

    @property
    def _layer_names(self) -> list[str]:
        return list(self.layer_names)

    def copy_from(self, weights: str) -> None:
        from .io.weights import copy_trained_layers
        copy_trained_layers(self, weights)

    def __repr__(self) -> str:
        return (f"<Net '{self.name}' phase={'TRAIN' if self.phase == TRAIN else 'TEST'} "
                f"layers={len(self.layers)} blobs={len(self.blobs)}>")
