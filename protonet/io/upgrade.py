"""Legacy net and solver definitions brought up to date, as Caffe's upgrade_proto does.

Order (``upgrade_net``): V0 -> V1 (nested ``layers { layer { ... } }``, padding
layers folded into the following conv/pool), data-transformation fields moved
into ``transform_param``, V1 -> V2 (``layers { type: ENUM }`` -> ``layer { type:
"String" }``), ``input``/``input_dim``/``input_shape`` -> an ``Input`` layer,
three-``param`` BatchNorm layers frozen. Solvers: ``solver_type`` enum -> ``type``.
"""
from __future__ import annotations

import os

from ..errors import ProtonetError
from ..proto import caffe_pb2
from .pbcompat import is_repeated

V1 = caffe_pb2.V1LayerParameter

#: V1 enum name -> V2 type string (UpgradeV1LayerType)
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

#: V0 type string -> V1 enum name (UpgradeV0LayerType)
V0_TYPE_NAMES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

#: The 61 type strings BVLC Caffe registers (for lenient type guessing and messages).
BVLC_LAYER_TYPES = (
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip",
    "Concat", "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout",
    "DummyData", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten",
    "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData", "InfogainLoss",
    "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN",
    "Reduction", "ReLU", "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss",
    "Silence", "Slice", "Softmax", "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold",
    "Tile", "WindowData",
)

# V0 flat field -> {V0 type: (V1 sub-message, field)}; a field whose target is
# None lives in transform_param whatever the type.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}
_V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file",
                        "cropsize": "crop_size", "mirror": "mirror"}


class UpgradeLog:
    """Collects the notes an upgrade makes (Caffe logs them; we return them)."""

    def __init__(self):
        self.notes: list[str] = []

    def __call__(self, message: str) -> None:
        self.notes.append(message)


# -- V0 -> V1 ---------------------------------------------------------------------------
def needs_v0_upgrade(net) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def _fold_v0_padding(net) -> list:
    """Drop V0 ``padding`` layers, moving their pad into the conv/pool that reads them."""
    producer: dict[str, int] = {name: -1 for name in net.input}
    kept = []
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        new = None
        if v0.type != "padding":
            new = V1()
            new.CopyFrom(conn)
            kept.append(new)
        for j, blob in enumerate(conn.bottom):
            if blob not in producer:
                raise ProtonetError(f"V0 layer '{v0.name}': unknown bottom blob '{blob}'")
            src = producer[blob]
            if src == -1:
                continue
            source = net.layers[src]
            if source.layer.type == "padding":
                if v0.type not in ("conv", "pool"):
                    raise ProtonetError(
                        f"V0 layer '{v0.name}': a padding layer feeds a '{v0.type}' layer; "
                        "only conv and pool layers can absorb padding")
                if len(conn.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                    raise ProtonetError(
                        f"V0 padding layer '{source.layer.name}' must have one bottom and one top")
                if new is not None:
                    new.layer.pad = source.layer.pad
                    new.bottom[j] = source.bottom[0]
        for blob in conn.top:
            producer[blob] = i
    return kept


def _upgrade_v0_layer(conn, log: UpgradeLog):
    """One V0 ``layers { layer { ... } }`` entry -> a V1LayerParameter."""
    v0 = conn.layer
    out = V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    kind = v0.type
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_TYPE_NAMES:
            raise ProtonetError(f"V0 layer '{v0.name}': unknown V0 layer type '{kind}'")
        out.type = V1.LayerType.Value(V0_TYPE_NAMES[kind])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not _has(v0, field):
            continue
        if kind not in targets:
            log(f"V0 layer '{v0.name}': parameter '{field}' does not apply to type '{kind}'; dropped")
            continue
        sub_name, sub_field = targets[kind]
        sub = getattr(out, sub_name)
        value = getattr(v0, field)
        if sub_field is None:
            sub.CopyFrom(value)
        elif field == "pool":
            sub.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(
                caffe_pb2.V0LayerParameter.PoolMethod.Name(value))
        else:
            _assign(sub, sub_field, value)
    for field, target in _V0_TRANSFORM_FIELDS.items():
        if v0.HasField(field):
            setattr(out.transform_param, target, getattr(v0, field))
    return out


def upgrade_v0_net(net, log: UpgradeLog):
    kept = _fold_v0_padding(net)
    upgraded = caffe_pb2.NetParameter()
    if net.HasField("name"):
        upgraded.name = net.name
    for conn in kept:
        upgraded.layers.append(_upgrade_v0_layer(conn, log))
    upgraded.input.extend(net.input)
    upgraded.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        upgraded.force_backward = net.force_backward
    net.CopyFrom(upgraded)


# -- data transformation --------------------------------------------------------------------
_DATA_PARAM_OF = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                  "WINDOW_DATA": "window_data_param"}


def upgrade_v1_data_transform(layer) -> bool:
    """Move scale/mean_file/crop_size/mirror of a V1 data layer into transform_param."""
    sub_name = _DATA_PARAM_OF.get(V1.LayerType.Name(layer.type))
    if sub_name is None or not layer.HasField(sub_name):
        return False
    sub = getattr(layer, sub_name)
    moved = False
    for field in ("scale", "mean_file", "crop_size", "mirror"):
        if sub.HasField(field):
            setattr(layer.transform_param, field, getattr(sub, field))
            sub.ClearField(field)
            moved = True
    return moved


# -- V1 -> V2 ----------------------------------------------------------------------------
def upgrade_v1_layer(v1, type_override: str | None = None):
    """One V1LayerParameter -> LayerParameter (UpgradeV1LayerParameter)."""
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if type_override is not None:
        out.type = type_override
    elif v1.HasField("type"):
        out.type = V1_TYPE_NAMES[V1.LayerType.Name(v1.type)]
    out.blobs.extend(v1.blobs)

    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    # Every *_param message (and transform_param/loss_param) carries over by name.
    for field, value in v1.ListFields():
        if field.message_type is not None and field.name.endswith("_param") \
                and not is_repeated(field):
            getattr(out, field.name).CopyFrom(value)
    return out


def upgrade_v1_net(net, path: str, log: UpgradeLog) -> None:
    if len(net.layer):
        raise ProtonetError(
            f"{path}: mixes 'layer' and legacy 'layers' entries; Caffe refuses such a file "
            "(load it with --lenient, as Netscope does)")
    layers = list(net.layers)
    net.ClearField("layers")
    for v1 in layers:
        if v1.HasField("layer"):
            log(f"layer '{v1.name}': nested V0 layer ignored")
        net.layer.append(upgrade_v1_layer(v1))


# -- inputs and BatchNorm --------------------------------------------------------------------
def upgrade_net_input(net) -> None:
    """``input`` + ``input_dim``/``input_shape`` -> an ``Input`` layer at the front."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        if has_shape and len(net.input_shape) != len(net.input):
            raise ProtonetError(
                f"net '{net.name}': {len(net.input)} input(s) but {len(net.input_shape)} input_shape(s)")
        if has_dim and len(net.input_dim) != 4 * len(net.input):
            raise ProtonetError(
                f"net '{net.name}': {len(net.input)} input(s) need {4 * len(net.input)} "
                f"input_dim values, got {len(net.input_dim)}")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, blob in enumerate(net.input):
            layer.top.append(blob)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i: 4 * i + 4])
        rest = list(net.layer)
        net.ClearField("layer")
        net.layer.append(layer)
        net.layer.extend(rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def upgrade_batch_norm(net) -> bool:
    changed = False
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
            changed = True
    return changed


def upgrade_net(net, path: str = "<net>") -> list[str]:
    """Upgrade ``net`` (a NetParameter) in place; returns notes on what was upgraded."""
    log = UpgradeLog()
    if needs_v0_upgrade(net):
        upgrade_v0_net(net, log)
        log("upgraded V0 layer definitions (layers { layer { ... } })")
    if any(upgrade_v1_data_transform(layer) for layer in net.layers):
        log("moved legacy data transformation fields into transform_param")
    if len(net.layers):
        upgrade_v1_net(net, path, log)
        log("upgraded V1 layer definitions (layers { type: ENUM })")
    if len(net.input):
        upgrade_net_input(net)
        log("converted input/input_dim/input_shape into an Input layer")
    if upgrade_batch_norm(net):
        log("froze BatchNorm statistics blobs (lr_mult 0)")
    return log.notes


def upgrade_solver(solver, path: str | None = None) -> list[str]:
    """``solver_type`` enum -> ``type`` string; default/directory ``snapshot_prefix``."""
    notes = []
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise ProtonetError(
                f"{path or 'solver'}: both the legacy 'solver_type' and 'type' are given; keep one")
        solver.type = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                       "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}[
            caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
        solver.ClearField("solver_type")
        notes.append(f"upgraded solver_type to type: \"{solver.type}\"")
    if path is not None:
        if not solver.HasField("snapshot_prefix"):
            solver.snapshot_prefix = os.path.splitext(path)[0]
        elif os.path.isdir(solver.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(path))[0]
            solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
    return notes


# -- helpers ---------------------------------------------------------------------------------
def _has(msg, field: str) -> bool:
    fd = msg.DESCRIPTOR.fields_by_name[field]
    if is_repeated(fd):
        return len(getattr(msg, field)) > 0
    return msg.HasField(field)


def _assign(msg, field: str, value) -> None:
    fd = msg.DESCRIPTOR.fields_by_name[field]
    if is_repeated(fd):
        getattr(msg, field).append(value)
    elif fd.message_type is not None:
        getattr(msg, field).CopyFrom(value)
    else:
        setattr(msg, field, value)
