"""Tests for protonet's Caffe schema (proto/caffe.proto) and its generated module.

Covers: staleness of protonet/proto/caffe_pb2.py, wire compatibility with
BVLC Caffe (field numbers, labels, types, defaults, packed encoding, enum
values -- the tables below are facts taken from BVLC/caffe master's
src/caffe/proto/caffe.proto at 9b891540), text/binary round trips, and (slow)
loading under the oldest supported protobuf runtime.

The schema also carries the Caffe forks' messages and fields
(tests/test_schema_forks.py lists them); the BVLC checks here leave exactly
those out and require everything else to be BVLC's, in BVLC's order.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format

from protonet.proto import caffe_pb2

from test_schema_forks import FORK_FIELDS, FORK_MESSAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILE = REPO_ROOT / "proto" / "caffe.proto"
PB2_FILE = REPO_ROOT / "protonet" / "proto" / "caffe_pb2.py"
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_proto.py"

_LABELS = {
    descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL: "optional",
    descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED: "required",
    descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED: "repeated",
}


# ---------------------------------------------------------------------------
# helpers


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto embedded in caffe_pb2 (portable across runtimes)."""
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.ParseFromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    return fdp


def _messages(fdp):
    """Yield (full_name, DescriptorProto) for every message, depth first, in order."""

    def walk(msg, prefix):
        name = prefix + msg.name
        yield name, msg
        for nested in msg.nested_type:
            yield from walk(nested, name + ".")

    for msg in fdp.message_type:
        yield from walk(msg, "")


def _canon(row):
    """Normalise a (name, number, label, type, default) row's default value.

    protoc records float defaults in different spellings depending on the
    output (".999" in the source, "0.999" in a descriptor set,
    "0.999000013" in Python gencode); compare them as float32 values."""
    name, number, label, type_name, default = row
    if default is not None and type_name == "float":
        default = struct.unpack("<f", struct.pack("<f", float(default)))[0]
    elif default is not None and type_name == "double":
        default = float(default)
    return (name, number, label, type_name, default)


def _field_row(f):
    type_name = descriptor_pb2.FieldDescriptorProto.Type.Name(f.type)[len("TYPE_"):].lower()
    if type_name in ("message", "enum"):
        type_name = f.type_name
    default = f.default_value if f.HasField("default_value") else None
    return _canon((f.name, f.number, _LABELS[f.label], type_name, default))


def _fields(message_name, forks=False):
    """The rows of a message's fields; BVLC's only unless ``forks``."""
    msgs = dict(_messages(_file_proto()))
    return [_field_row(f) for f in msgs[message_name].field
            if forks or (message_name, f.name) not in FORK_FIELDS]


def _is_fork_message(full_name):
    return full_name.split(".")[0] in FORK_MESSAGES


def bvlc_part(fdp):
    """A copy of ``fdp`` without the forks' messages and fields: BVLC's schema."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fdp)
    keep = [m for m in out.message_type if m.name not in FORK_MESSAGES]
    del out.message_type[:]
    out.message_type.extend(keep)

    def strip(msg, prefix):
        full = prefix + msg.name
        kept = [f for f in msg.field if (full, f.name) not in FORK_FIELDS]
        del msg.field[:]
        msg.field.extend(kept)
        for nested in msg.nested_type:
            strip(nested, full + ".")

    for msg in out.message_type:
        strip(msg, "")
    return out


def schema_rows(fdp):
    """Canonical, runtime-independent listing of everything that affects the
    wire format and text format: package, messages, fields (name, number,
    label, type, type name, default, packed) and enums, in declaration order.
    json_name is ignored (protoc does not embed it in Python gencode)."""
    rows = [("file", fdp.name, fdp.package, fdp.syntax or "proto2")]

    def enum_rows(enum, prefix):
        rows.append(("enum", prefix + enum.name))
        for v in enum.value:
            rows.append(("value", prefix + enum.name, v.name, v.number))

    for full, msg in _messages(fdp):
        rows.append(("message", full))
        for f in msg.field:
            packed = f.options.packed if f.options.HasField("packed") else None
            rows.append(("field", full) + _field_row(f) + (packed,))
        for enum in msg.enum_type:
            enum_rows(enum, full + ".")
    for enum in fdp.enum_type:
        enum_rows(enum, "")
    return rows


def schema_fingerprint(fdp) -> str:
    text = "\n".join(repr(r) for r in schema_rows(fdp))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location("protonet_gen_proto", GEN_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------
# BVLC facts

#: schema_fingerprint() of the descriptor protoc 3.21 builds from BVLC's own
#: caffe.proto (master @ 9b891540).  Any change to a message, field, number,
#: label, type, default, packed option or enum value -- or their order --
#: changes it.
BVLC_SCHEMA_FINGERPRINT = "b644f81721fb98008b8df394ca768e6e5835beafdcd9b7307cc56192437846ea"

#: Every top-level message of BVLC's file, in order.
BVLC_MESSAGES = [
    "BlobShape", "BlobProto", "BlobProtoVector", "Datum", "FillerParameter",
    "NetParameter", "SolverParameter", "SolverState", "NetState",
    "NetStateRule", "ParamSpec", "LayerParameter", "TransformationParameter",
    "LossParameter", "AccuracyParameter", "ArgMaxParameter", "ClipParameter",
    "ConcatParameter", "BatchNormParameter", "BiasParameter",
    "ContrastiveLossParameter", "ConvolutionParameter", "CropParameter",
    "DataParameter", "DropoutParameter", "DummyDataParameter",
    "EltwiseParameter", "ELUParameter", "EmbedParameter", "ExpParameter",
    "FlattenParameter", "HDF5DataParameter", "HDF5OutputParameter",
    "HingeLossParameter", "ImageDataParameter", "InfogainLossParameter",
    "InnerProductParameter", "InputParameter", "LogParameter", "LRNParameter",
    "MemoryDataParameter", "MVNParameter", "ParameterParameter",
    "PoolingParameter", "PowerParameter", "PythonParameter",
    "RecurrentParameter", "ReductionParameter", "ReLUParameter",
    "ReshapeParameter", "ScaleParameter", "SigmoidParameter",
    "SliceParameter", "SoftmaxParameter", "SwishParameter", "TanHParameter",
    "TileParameter", "ThresholdParameter", "WindowDataParameter",
    "SPPParameter", "V1LayerParameter", "V0LayerParameter", "PReLUParameter",
]

# (name, number, label, type or type name, default as protoc records it)
NET_PARAMETER_FIELDS = [
    ('name', 1, 'optional', 'string', None),
    ('input', 3, 'repeated', 'string', None),
    ('input_shape', 8, 'repeated', '.caffe.BlobShape', None),
    ('input_dim', 4, 'repeated', 'int32', None),
    ('force_backward', 5, 'optional', 'bool', 'false'),
    ('state', 6, 'optional', '.caffe.NetState', None),
    ('debug_info', 7, 'optional', 'bool', 'false'),
    ('layer', 100, 'repeated', '.caffe.LayerParameter', None),
    ('layers', 2, 'repeated', '.caffe.V1LayerParameter', None),
]

LAYER_PARAMETER_FIELDS = [
    ('name', 1, 'optional', 'string', None),
    ('type', 2, 'optional', 'string', None),
    ('bottom', 3, 'repeated', 'string', None),
    ('top', 4, 'repeated', 'string', None),
    ('phase', 10, 'optional', '.caffe.Phase', None),
    ('loss_weight', 5, 'repeated', 'float', None),
    ('param', 6, 'repeated', '.caffe.ParamSpec', None),
    ('blobs', 7, 'repeated', '.caffe.BlobProto', None),
    ('propagate_down', 11, 'repeated', 'bool', None),
    ('include', 8, 'repeated', '.caffe.NetStateRule', None),
    ('exclude', 9, 'repeated', '.caffe.NetStateRule', None),
    ('transform_param', 100, 'optional', '.caffe.TransformationParameter', None),
    ('loss_param', 101, 'optional', '.caffe.LossParameter', None),
    ('accuracy_param', 102, 'optional', '.caffe.AccuracyParameter', None),
    ('argmax_param', 103, 'optional', '.caffe.ArgMaxParameter', None),
    ('batch_norm_param', 139, 'optional', '.caffe.BatchNormParameter', None),
    ('bias_param', 141, 'optional', '.caffe.BiasParameter', None),
    ('clip_param', 148, 'optional', '.caffe.ClipParameter', None),
    ('concat_param', 104, 'optional', '.caffe.ConcatParameter', None),
    ('contrastive_loss_param', 105, 'optional', '.caffe.ContrastiveLossParameter', None),
    ('convolution_param', 106, 'optional', '.caffe.ConvolutionParameter', None),
    ('crop_param', 144, 'optional', '.caffe.CropParameter', None),
    ('data_param', 107, 'optional', '.caffe.DataParameter', None),
    ('dropout_param', 108, 'optional', '.caffe.DropoutParameter', None),
    ('dummy_data_param', 109, 'optional', '.caffe.DummyDataParameter', None),
    ('eltwise_param', 110, 'optional', '.caffe.EltwiseParameter', None),
    ('elu_param', 140, 'optional', '.caffe.ELUParameter', None),
    ('embed_param', 137, 'optional', '.caffe.EmbedParameter', None),
    ('exp_param', 111, 'optional', '.caffe.ExpParameter', None),
    ('flatten_param', 135, 'optional', '.caffe.FlattenParameter', None),
    ('hdf5_data_param', 112, 'optional', '.caffe.HDF5DataParameter', None),
    ('hdf5_output_param', 113, 'optional', '.caffe.HDF5OutputParameter', None),
    ('hinge_loss_param', 114, 'optional', '.caffe.HingeLossParameter', None),
    ('image_data_param', 115, 'optional', '.caffe.ImageDataParameter', None),
    ('infogain_loss_param', 116, 'optional', '.caffe.InfogainLossParameter', None),
    ('inner_product_param', 117, 'optional', '.caffe.InnerProductParameter', None),
    ('input_param', 143, 'optional', '.caffe.InputParameter', None),
    ('log_param', 134, 'optional', '.caffe.LogParameter', None),
    ('lrn_param', 118, 'optional', '.caffe.LRNParameter', None),
    ('memory_data_param', 119, 'optional', '.caffe.MemoryDataParameter', None),
    ('mvn_param', 120, 'optional', '.caffe.MVNParameter', None),
    ('parameter_param', 145, 'optional', '.caffe.ParameterParameter', None),
    ('pooling_param', 121, 'optional', '.caffe.PoolingParameter', None),
    ('power_param', 122, 'optional', '.caffe.PowerParameter', None),
    ('prelu_param', 131, 'optional', '.caffe.PReLUParameter', None),
    ('python_param', 130, 'optional', '.caffe.PythonParameter', None),
    ('recurrent_param', 146, 'optional', '.caffe.RecurrentParameter', None),
    ('reduction_param', 136, 'optional', '.caffe.ReductionParameter', None),
    ('relu_param', 123, 'optional', '.caffe.ReLUParameter', None),
    ('reshape_param', 133, 'optional', '.caffe.ReshapeParameter', None),
    ('scale_param', 142, 'optional', '.caffe.ScaleParameter', None),
    ('sigmoid_param', 124, 'optional', '.caffe.SigmoidParameter', None),
    ('softmax_param', 125, 'optional', '.caffe.SoftmaxParameter', None),
    ('spp_param', 132, 'optional', '.caffe.SPPParameter', None),
    ('slice_param', 126, 'optional', '.caffe.SliceParameter', None),
    ('swish_param', 147, 'optional', '.caffe.SwishParameter', None),
    ('tanh_param', 127, 'optional', '.caffe.TanHParameter', None),
    ('threshold_param', 128, 'optional', '.caffe.ThresholdParameter', None),
    ('tile_param', 138, 'optional', '.caffe.TileParameter', None),
    ('window_data_param', 129, 'optional', '.caffe.WindowDataParameter', None),
]

SOLVER_PARAMETER_FIELDS = [
    ('net', 24, 'optional', 'string', None),
    ('net_param', 25, 'optional', '.caffe.NetParameter', None),
    ('train_net', 1, 'optional', 'string', None),
    ('test_net', 2, 'repeated', 'string', None),
    ('train_net_param', 21, 'optional', '.caffe.NetParameter', None),
    ('test_net_param', 22, 'repeated', '.caffe.NetParameter', None),
    ('train_state', 26, 'optional', '.caffe.NetState', None),
    ('test_state', 27, 'repeated', '.caffe.NetState', None),
    ('test_iter', 3, 'repeated', 'int32', None),
    ('test_interval', 4, 'optional', 'int32', '0'),
    ('test_compute_loss', 19, 'optional', 'bool', 'false'),
    ('test_initialization', 32, 'optional', 'bool', 'true'),
    ('base_lr', 5, 'optional', 'float', None),
    ('display', 6, 'optional', 'int32', None),
    ('average_loss', 33, 'optional', 'int32', '1'),
    ('max_iter', 7, 'optional', 'int32', None),
    ('iter_size', 36, 'optional', 'int32', '1'),
    ('lr_policy', 8, 'optional', 'string', None),
    ('gamma', 9, 'optional', 'float', None),
    ('power', 10, 'optional', 'float', None),
    ('momentum', 11, 'optional', 'float', None),
    ('weight_decay', 12, 'optional', 'float', None),
    ('regularization_type', 29, 'optional', 'string', 'L2'),
    ('stepsize', 13, 'optional', 'int32', None),
    ('stepvalue', 34, 'repeated', 'int32', None),
    ('clip_gradients', 35, 'optional', 'float', '-1'),
    ('snapshot', 14, 'optional', 'int32', '0'),
    ('snapshot_prefix', 15, 'optional', 'string', None),
    ('snapshot_diff', 16, 'optional', 'bool', 'false'),
    ('snapshot_format', 37, 'optional', '.caffe.SolverParameter.SnapshotFormat', 'BINARYPROTO'),
    ('solver_mode', 17, 'optional', '.caffe.SolverParameter.SolverMode', 'GPU'),
    ('device_id', 18, 'optional', 'int32', '0'),
    ('random_seed', 20, 'optional', 'int64', '-1'),
    ('type', 40, 'optional', 'string', 'SGD'),
    ('delta', 31, 'optional', 'float', '1e-08'),
    ('momentum2', 39, 'optional', 'float', '0.999'),
    ('rms_decay', 38, 'optional', 'float', '0.99'),
    ('debug_info', 23, 'optional', 'bool', 'false'),
    ('snapshot_after_train', 28, 'optional', 'bool', 'true'),
    ('solver_type', 30, 'optional', '.caffe.SolverParameter.SolverType', 'SGD'),
    ('layer_wise_reduce', 41, 'optional', 'bool', 'true'),
    ('weights', 42, 'repeated', 'string', None),
]

V1_LAYER_PARAMETER_FIELDS = [
    ('bottom', 2, 'repeated', 'string', None),
    ('top', 3, 'repeated', 'string', None),
    ('name', 4, 'optional', 'string', None),
    ('include', 32, 'repeated', '.caffe.NetStateRule', None),
    ('exclude', 33, 'repeated', '.caffe.NetStateRule', None),
    ('type', 5, 'optional', '.caffe.V1LayerParameter.LayerType', None),
    ('blobs', 6, 'repeated', '.caffe.BlobProto', None),
    ('param', 1001, 'repeated', 'string', None),
    ('blob_share_mode', 1002, 'repeated', '.caffe.V1LayerParameter.DimCheckMode', None),
    ('blobs_lr', 7, 'repeated', 'float', None),
    ('weight_decay', 8, 'repeated', 'float', None),
    ('loss_weight', 35, 'repeated', 'float', None),
    ('accuracy_param', 27, 'optional', '.caffe.AccuracyParameter', None),
    ('argmax_param', 23, 'optional', '.caffe.ArgMaxParameter', None),
    ('concat_param', 9, 'optional', '.caffe.ConcatParameter', None),
    ('contrastive_loss_param', 40, 'optional', '.caffe.ContrastiveLossParameter', None),
    ('convolution_param', 10, 'optional', '.caffe.ConvolutionParameter', None),
    ('data_param', 11, 'optional', '.caffe.DataParameter', None),
    ('dropout_param', 12, 'optional', '.caffe.DropoutParameter', None),
    ('dummy_data_param', 26, 'optional', '.caffe.DummyDataParameter', None),
    ('eltwise_param', 24, 'optional', '.caffe.EltwiseParameter', None),
    ('exp_param', 41, 'optional', '.caffe.ExpParameter', None),
    ('hdf5_data_param', 13, 'optional', '.caffe.HDF5DataParameter', None),
    ('hdf5_output_param', 14, 'optional', '.caffe.HDF5OutputParameter', None),
    ('hinge_loss_param', 29, 'optional', '.caffe.HingeLossParameter', None),
    ('image_data_param', 15, 'optional', '.caffe.ImageDataParameter', None),
    ('infogain_loss_param', 16, 'optional', '.caffe.InfogainLossParameter', None),
    ('inner_product_param', 17, 'optional', '.caffe.InnerProductParameter', None),
    ('lrn_param', 18, 'optional', '.caffe.LRNParameter', None),
    ('memory_data_param', 22, 'optional', '.caffe.MemoryDataParameter', None),
    ('mvn_param', 34, 'optional', '.caffe.MVNParameter', None),
    ('pooling_param', 19, 'optional', '.caffe.PoolingParameter', None),
    ('power_param', 21, 'optional', '.caffe.PowerParameter', None),
    ('relu_param', 30, 'optional', '.caffe.ReLUParameter', None),
    ('sigmoid_param', 38, 'optional', '.caffe.SigmoidParameter', None),
    ('softmax_param', 39, 'optional', '.caffe.SoftmaxParameter', None),
    ('slice_param', 31, 'optional', '.caffe.SliceParameter', None),
    ('tanh_param', 37, 'optional', '.caffe.TanHParameter', None),
    ('threshold_param', 25, 'optional', '.caffe.ThresholdParameter', None),
    ('window_data_param', 20, 'optional', '.caffe.WindowDataParameter', None),
    ('transform_param', 36, 'optional', '.caffe.TransformationParameter', None),
    ('loss_param', 42, 'optional', '.caffe.LossParameter', None),
    ('layer', 1, 'optional', '.caffe.V0LayerParameter', None),
]

V0_LAYER_PARAMETER_FIELDS = [
    ('name', 1, 'optional', 'string', None),
    ('type', 2, 'optional', 'string', None),
    ('num_output', 3, 'optional', 'uint32', None),
    ('biasterm', 4, 'optional', 'bool', 'true'),
    ('weight_filler', 5, 'optional', '.caffe.FillerParameter', None),
    ('bias_filler', 6, 'optional', '.caffe.FillerParameter', None),
    ('pad', 7, 'optional', 'uint32', '0'),
    ('kernelsize', 8, 'optional', 'uint32', None),
    ('group', 9, 'optional', 'uint32', '1'),
    ('stride', 10, 'optional', 'uint32', '1'),
    ('pool', 11, 'optional', '.caffe.V0LayerParameter.PoolMethod', 'MAX'),
    ('dropout_ratio', 12, 'optional', 'float', '0.5'),
    ('local_size', 13, 'optional', 'uint32', '5'),
    ('alpha', 14, 'optional', 'float', '1'),
    ('beta', 15, 'optional', 'float', '0.75'),
    ('k', 22, 'optional', 'float', '1'),
    ('source', 16, 'optional', 'string', None),
    ('scale', 17, 'optional', 'float', '1'),
    ('meanfile', 18, 'optional', 'string', None),
    ('batchsize', 19, 'optional', 'uint32', None),
    ('cropsize', 20, 'optional', 'uint32', '0'),
    ('mirror', 21, 'optional', 'bool', 'false'),
    ('blobs', 50, 'repeated', '.caffe.BlobProto', None),
    ('blobs_lr', 51, 'repeated', 'float', None),
    ('weight_decay', 52, 'repeated', 'float', None),
    ('rand_skip', 53, 'optional', 'uint32', '0'),
    ('det_fg_threshold', 54, 'optional', 'float', '0.5'),
    ('det_bg_threshold', 55, 'optional', 'float', '0.5'),
    ('det_fg_fraction', 56, 'optional', 'float', '0.25'),
    ('det_context_pad', 58, 'optional', 'uint32', '0'),
    ('det_crop_mode', 59, 'optional', 'string', 'warp'),
    ('new_num', 60, 'optional', 'int32', '0'),
    ('new_channels', 61, 'optional', 'int32', '0'),
    ('new_height', 62, 'optional', 'int32', '0'),
    ('new_width', 63, 'optional', 'int32', '0'),
    ('shuffle_images', 64, 'optional', 'bool', 'false'),
    ('concat_dim', 65, 'optional', 'uint32', '1'),
    ('hdf5_output_param', 1001, 'optional', '.caffe.HDF5OutputParameter', None),
]

#: V1LayerParameter.LayerType: all 40 values, in declaration order.
V1_LAYER_TYPES = [
    ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2),
    ("CONCAT", 3), ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5),
    ("DECONVOLUTION", 39), ("DROPOUT", 6), ("DUMMY_DATA", 32),
    ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8),
    ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11),
    ("IMAGE_DATA", 12), ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14),
    ("LRN", 15), ("MEMORY_DATA", 29), ("MULTINOMIAL_LOGISTIC_LOSS", 16),
    ("MVN", 34), ("POOLING", 17), ("POWER", 26), ("RELU", 18),
    ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27), ("SILENCE", 36),
    ("SOFTMAX", 20), ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33),
    ("TANH", 23), ("WINDOW_DATA", 24), ("THRESHOLD", 31),
]

#: Other enums: full name -> [(value name, number)].
ENUMS = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
    "FillerParameter.VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)],
    "SolverParameter.SnapshotFormat": [("HDF5", 0), ("BINARYPROTO", 1)],
    "SolverParameter.SolverMode": [("CPU", 0), ("GPU", 1)],
    "SolverParameter.SolverType": [
        ("SGD", 0), ("NESTEROV", 1), ("ADAGRAD", 2), ("RMSPROP", 3),
        ("ADADELTA", 4), ("ADAM", 5),
    ],
    "ParamSpec.DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "LossParameter.NormalizationMode": [
        ("FULL", 0), ("VALID", 1), ("BATCH_SIZE", 2), ("NONE", 3),
    ],
    "ConvolutionParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "DataParameter.DB": [("LEVELDB", 0), ("LMDB", 1)],
    "EltwiseParameter.EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "HingeLossParameter.Norm": [("L1", 1), ("L2", 2)],
    "LRNParameter.NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
    "PoolingParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "PoolingParameter.RoundMode": [("CEIL", 0), ("FLOOR", 1)],
    "ReductionParameter.ReductionOp": [("SUM", 1), ("ASUM", 2), ("SUMSQ", 3), ("MEAN", 4)],
    "SPPParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "V1LayerParameter.DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "V0LayerParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
}

#: (message, field, value an unset field reads as).  Floats are float32 in
#: the schema, so they are compared approximately.
DEFAULTS = [
    ("BlobProto", "num", 0),
    ("Datum", "encoded", False),
    ("FillerParameter", "type", "constant"),
    ("FillerParameter", "value", 0.0),
    ("FillerParameter", "min", 0.0),
    ("FillerParameter", "max", 1.0),
    ("FillerParameter", "mean", 0.0),
    ("FillerParameter", "std", 1.0),
    ("FillerParameter", "sparse", -1),
    ("FillerParameter", "variance_norm", 0),  # FAN_IN
    ("NetParameter", "force_backward", False),
    ("NetParameter", "debug_info", False),
    ("SolverParameter", "type", "SGD"),
    ("SolverParameter", "solver_mode", 1),  # GPU
    ("SolverParameter", "solver_type", 0),  # SGD
    ("SolverParameter", "snapshot_format", 1),  # BINARYPROTO
    ("SolverParameter", "momentum2", 0.999),
    ("SolverParameter", "delta", 1e-8),
    ("SolverParameter", "rms_decay", 0.99),
    ("SolverParameter", "regularization_type", "L2"),
    ("SolverParameter", "test_initialization", True),
    ("SolverParameter", "snapshot_after_train", True),
    ("SolverParameter", "layer_wise_reduce", True),
    ("SolverParameter", "average_loss", 1),
    ("SolverParameter", "iter_size", 1),
    ("SolverParameter", "clip_gradients", -1.0),
    ("SolverParameter", "random_seed", -1),
    ("SolverParameter", "test_interval", 0),
    ("SolverParameter", "device_id", 0),
    ("SolverState", "current_step", 0),
    ("NetState", "phase", 1),  # TEST
    ("NetState", "level", 0),
    ("ParamSpec", "lr_mult", 1.0),
    ("ParamSpec", "decay_mult", 1.0),
    ("TransformationParameter", "scale", 1.0),
    ("TransformationParameter", "crop_size", 0),
    ("LossParameter", "normalization", 1),  # VALID
    ("AccuracyParameter", "top_k", 1),
    ("AccuracyParameter", "axis", 1),
    ("ArgMaxParameter", "top_k", 1),
    ("ConcatParameter", "axis", 1),
    ("ConcatParameter", "concat_dim", 1),
    ("BatchNormParameter", "moving_average_fraction", 0.999),
    ("BatchNormParameter", "eps", 1e-5),
    ("BiasParameter", "axis", 1),
    ("BiasParameter", "num_axes", 1),
    ("ContrastiveLossParameter", "margin", 1.0),
    ("ConvolutionParameter", "bias_term", True),
    ("ConvolutionParameter", "group", 1),
    ("ConvolutionParameter", "axis", 1),
    ("ConvolutionParameter", "pad_h", 0),
    ("ConvolutionParameter", "engine", 0),  # DEFAULT
    ("ConvolutionParameter", "force_nd_im2col", False),
    ("CropParameter", "axis", 2),
    ("DataParameter", "backend", 0),  # LEVELDB
    ("DataParameter", "prefetch", 4),
    ("DataParameter", "scale", 1.0),
    ("DropoutParameter", "dropout_ratio", 0.5),
    ("EltwiseParameter", "operation", 1),  # SUM
    ("EltwiseParameter", "stable_prod_grad", True),
    ("ELUParameter", "alpha", 1.0),
    ("EmbedParameter", "bias_term", True),
    ("ExpParameter", "base", -1.0),
    ("ExpParameter", "scale", 1.0),
    ("ExpParameter", "shift", 0.0),
    ("FlattenParameter", "axis", 1),
    ("FlattenParameter", "end_axis", -1),
    ("HingeLossParameter", "norm", 1),  # L1
    ("ImageDataParameter", "batch_size", 1),
    ("ImageDataParameter", "is_color", True),
    ("ImageDataParameter", "root_folder", ""),
    ("InfogainLossParameter", "axis", 1),
    ("InnerProductParameter", "bias_term", True),
    ("InnerProductParameter", "axis", 1),
    ("InnerProductParameter", "transpose", False),
    ("LogParameter", "base", -1.0),
    ("LRNParameter", "local_size", 5),
    ("LRNParameter", "alpha", 1.0),
    ("LRNParameter", "beta", 0.75),
    ("LRNParameter", "k", 1.0),
    ("LRNParameter", "norm_region", 0),  # ACROSS_CHANNELS
    ("MVNParameter", "normalize_variance", True),
    ("MVNParameter", "across_channels", False),
    ("MVNParameter", "eps", 1e-9),
    ("PoolingParameter", "pool", 0),  # MAX
    ("PoolingParameter", "pad", 0),
    ("PoolingParameter", "stride", 1),
    ("PoolingParameter", "global_pooling", False),
    ("PoolingParameter", "round_mode", 0),  # CEIL
    ("PowerParameter", "power", 1.0),
    ("PowerParameter", "scale", 1.0),
    ("PowerParameter", "shift", 0.0),
    ("PythonParameter", "param_str", ""),
    ("RecurrentParameter", "num_output", 0),
    ("ReductionParameter", "operation", 1),  # SUM
    ("ReductionParameter", "axis", 0),
    ("ReductionParameter", "coeff", 1.0),
    ("ReLUParameter", "negative_slope", 0.0),
    ("ReshapeParameter", "axis", 0),
    ("ReshapeParameter", "num_axes", -1),
    ("ScaleParameter", "axis", 1),
    ("ScaleParameter", "num_axes", 1),
    ("ScaleParameter", "bias_term", False),
    ("SliceParameter", "axis", 1),
    ("SliceParameter", "slice_dim", 1),
    ("SoftmaxParameter", "axis", 1),
    ("SwishParameter", "beta", 1.0),
    ("TileParameter", "axis", 1),
    ("ThresholdParameter", "threshold", 0.0),
    ("WindowDataParameter", "fg_threshold", 0.5),
    ("WindowDataParameter", "bg_threshold", 0.5),
    ("WindowDataParameter", "fg_fraction", 0.25),
    ("WindowDataParameter", "crop_mode", "warp"),
    ("SPPParameter", "pool", 0),  # MAX
    ("V0LayerParameter", "biasterm", True),
    ("V0LayerParameter", "group", 1),
    ("V0LayerParameter", "stride", 1),
    ("V0LayerParameter", "local_size", 5),
    ("V0LayerParameter", "det_crop_mode", "warp"),
    ("V0LayerParameter", "concat_dim", 1),
    ("PReLUParameter", "channel_shared", False),
]

#: The only fields BVLC marks [packed = true].
PACKED_FIELDS = {
    ("BlobShape", "dim"),
    ("BlobProto", "data"),
    ("BlobProto", "diff"),
    ("BlobProto", "double_data"),
    ("BlobProto", "double_diff"),
}


# ---------------------------------------------------------------------------
# staleness


def test_recorded_source_hash_matches_proto():
    text = PB2_FILE.read_text(encoding="utf-8")
    m = re.search(r"^# source-sha256: ([0-9a-f]{64})$", text, re.MULTILINE)
    assert m, f"{PB2_FILE} has no '# source-sha256:' header; run scripts/gen_proto.py"
    actual = hashlib.sha256(PROTO_FILE.read_bytes()).hexdigest()
    assert m.group(1) == actual, (
        "protonet/proto/caffe_pb2.py is stale: proto/caffe.proto changed; "
        "run `python scripts/gen_proto.py`"
    )


def test_regeneration_is_byte_identical():
    gen = _load_gen_proto()
    try:
        exe = gen.find_protoc()
        version, numbers = gen.protoc_version(exe)
    except gen.GenProtoError as exc:
        pytest.skip(f"protoc unavailable: {exc}")
    if tuple(numbers[:2]) != gen.REQUIRED_PROTOC:
        pytest.skip(f"protoc {version} on PATH is not 3.21.x")
    fresh = gen.generate(exe)
    committed = PB2_FILE.read_text(encoding="utf-8")
    assert fresh == committed, "regenerating caffe_pb2.py changes it; run scripts/gen_proto.py"


def test_gen_proto_rejects_new_protoc():
    gen = _load_gen_proto()
    for version in ("3.22.0", "22.0", "25.1", "3.20.3"):
        numbers = tuple(int(p) for p in version.split("."))
        with pytest.raises(gen.GenProtoError):
            gen.check_protoc_version(numbers, version)
    gen.check_protoc_version((3, 21, 12), "3.21.12")


# ---------------------------------------------------------------------------
# wire compatibility with BVLC


def test_descriptor_file_name_and_package():
    assert caffe_pb2.DESCRIPTOR.name == "caffe.proto"
    assert caffe_pb2.DESCRIPTOR.package == "caffe"
    assert _file_proto().syntax in ("", "proto2")


def test_whole_schema_matches_bvlc_fingerprint():
    bvlc = bvlc_part(_file_proto())
    rows = schema_rows(bvlc)
    assert schema_fingerprint(bvlc) == BVLC_SCHEMA_FINGERPRINT, (
        "schema (fork additions left out) differs from BVLC caffe.proto; the "
        f"per-message tests below say where ({len(rows)} rows)"
    )


def test_fork_additions_are_all_listed():
    """Everything beyond BVLC's schema is in test_schema_forks' tables."""
    fdp = _file_proto()
    names = {full for full, _ in _messages(fdp)}
    fields = {(full, f.name) for full, msg in _messages(fdp) for f in msg.field
              if not _is_fork_message(full)}
    assert FORK_FIELDS <= fields
    assert set(FORK_MESSAGES) <= names
    # what is left after taking them out is BVLC's, row count included
    assert len(schema_rows(fdp)) > len(schema_rows(bvlc_part(fdp)))


def test_top_level_messages_match_bvlc():
    names = [m.name for m in _file_proto().message_type]
    assert [n for n in names if n not in FORK_MESSAGES] == BVLC_MESSAGES
    assert names == BVLC_MESSAGES + FORK_MESSAGES  # the forks' messages all come last
    assert [e.name for e in _file_proto().enum_type] == ["Phase"]


@pytest.mark.parametrize(
    "message, expected",
    [
        ("NetParameter", NET_PARAMETER_FIELDS),
        ("LayerParameter", LAYER_PARAMETER_FIELDS),
        ("SolverParameter", SOLVER_PARAMETER_FIELDS),
        ("V1LayerParameter", V1_LAYER_PARAMETER_FIELDS),
        ("V0LayerParameter", V0_LAYER_PARAMETER_FIELDS),
    ],
)
def test_fields_match_bvlc(message, expected):
    assert _fields(message) == [_canon(row) for row in expected]


def test_layer_parameter_has_every_param_message():
    """Each *_param field of LayerParameter points at the matching message."""
    for name, number, label, type_name, default in LAYER_PARAMETER_FIELDS:
        if name.endswith("_param"):
            assert label == "optional" and default is None
            assert type_name.startswith(".caffe.") and type_name.endswith("Parameter")
            assert getattr(caffe_pb2, type_name[len(".caffe."):])


def test_clip_parameter_fields_are_required():
    assert _fields("ClipParameter") == [
        ("min", 1, "required", "float", None),
        ("max", 2, "required", "float", None),
    ]


def test_blob_and_datum_fields():
    assert _fields("BlobShape") == [("dim", 1, "repeated", "int64", None)]
    assert _fields("BlobProto") == [
        ("shape", 7, "optional", ".caffe.BlobShape", None),
        ("data", 5, "repeated", "float", None),
        ("diff", 6, "repeated", "float", None),
        ("double_data", 8, "repeated", "double", None),
        ("double_diff", 9, "repeated", "double", None),
        ("num", 1, "optional", "int32", "0"),
        ("channels", 2, "optional", "int32", "0"),
        ("height", 3, "optional", "int32", "0"),
        ("width", 4, "optional", "int32", "0"),
    ]
    assert _fields("Datum") == [
        ("channels", 1, "optional", "int32", None),
        ("height", 2, "optional", "int32", None),
        ("width", 3, "optional", "int32", None),
        ("data", 4, "optional", "bytes", None),
        ("label", 5, "optional", "int32", None),
        ("float_data", 6, "repeated", "float", None),
        ("encoded", 7, "optional", "bool", "false"),
    ]


def test_v1_layer_type_enum():
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert len(V1_LAYER_TYPES) == 40
    assert [(v.name, v.number) for v in enum.DESCRIPTOR.values] == V1_LAYER_TYPES
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.V1LayerParameter.DECONVOLUTION == 39


@pytest.mark.parametrize("full_name, values", sorted(ENUMS.items()))
def test_enum_values(full_name, values):
    obj = caffe_pb2
    for part in full_name.split("."):
        obj = getattr(obj, part)
    desc = obj.DESCRIPTOR if hasattr(obj, "DESCRIPTOR") else obj
    assert [(v.name, v.number) for v in desc.values] == values


@pytest.mark.parametrize("message, field, value", DEFAULTS)
def test_default_values(message, field, value):
    msg = getattr(caffe_pb2, message)()
    got = getattr(msg, field)
    assert not msg.HasField(field)
    if isinstance(value, float):
        assert got == pytest.approx(value, rel=1e-6, abs=0.0)
    else:
        assert type(got) is type(value) and got == value


def test_packed_fields_are_exactly_bvlcs():
    packed = set()
    for full, msg in _messages(_file_proto()):  # forks' too: none of theirs is packed
        for f in msg.field:
            if f.options.HasField("packed"):
                assert f.options.packed, f"{full}.{f.name} has packed=false"
                packed.add((full, f.name))
    assert packed == PACKED_FIELDS


def test_packed_wire_encoding():
    # BlobShape.dim: field 1, packed varints -> tag 0x0a, length, values.
    assert caffe_pb2.BlobShape(dim=[2, 3, 300]).SerializeToString() == b"\x0a\x04\x02\x03\xac\x02"
    # BlobProto.data: field 5, packed float32.
    blob = caffe_pb2.BlobProto(data=[1.0, -2.5])
    assert blob.SerializeToString() == b"\x2a\x08" + struct.pack("<2f", 1.0, -2.5)
    # BlobProto.double_diff: field 9, packed float64.
    blob = caffe_pb2.BlobProto(double_diff=[0.25])
    assert blob.SerializeToString() == b"\x4a\x08" + struct.pack("<d", 0.25)
    # Unpacked repeated fields stay unpacked (proto2): one tag per element.
    datum = caffe_pb2.Datum(float_data=[1.0, 2.0])
    assert datum.SerializeToString() == (
        b"\x35" + struct.pack("<f", 1.0) + b"\x35" + struct.pack("<f", 2.0)
    )
    layer = caffe_pb2.LayerParameter(loss_weight=[1.0])
    assert layer.SerializeToString() == b"\x2d" + struct.pack("<f", 1.0)


def test_parses_hand_encoded_caffe_bytes():
    # LayerParameter{name:"ip" type:"InnerProduct" blobs{shape{dim:2} data:[.5,1.5]}
    #                inner_product_param{num_output:2}}, encoded by hand.
    shape = b"\x0a\x01\x02"
    # Caffe (C++) writes fields in number order: data (5) before shape (7).
    inner_blob = b"\x2a\x08" + struct.pack("<2f", 0.5, 1.5) + b"\x3a\x03" + shape
    ip_param = b"\x08\x02"  # num_output = 2
    data = (
        b"\x0a\x02ip"
        + b"\x12\x0cInnerProduct"
        + b"\x3a" + bytes([len(inner_blob)]) + inner_blob
        + b"\xaa\x07" + bytes([len(ip_param)]) + ip_param  # field 117, wire type 2
    )
    layer = caffe_pb2.LayerParameter.FromString(data)
    assert layer.name == "ip" and layer.type == "InnerProduct"
    assert list(layer.blobs[0].shape.dim) == [2]
    assert list(layer.blobs[0].data) == [0.5, 1.5]
    assert layer.inner_product_param.num_output == 2
    assert layer.SerializeToString() == data


# ---------------------------------------------------------------------------
# round trips

LEGACY_NET = """
name: "legacy"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
state { phase: TRAIN level: 2 stage: "a" }
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "w" blob_share_mode: PERMISSIVE
  include { phase: TRAIN not_stage: "deploy" }
  convolution_param {
    num_output: 2 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.1 }
  }
  blobs { num: 2 channels: 3 height: 1 width: 1
          data: 0.5 data: -1.25 data: 3 data: 0 data: 1e-3 data: -7 }
  blobs { shape { dim: 2 } data: 0 data: 1 double_data: 1e-300 double_diff: -2 }
}
layers {
  layer { name: "old" type: "conv" num_output: 4 kernelsize: 3 det_crop_mode: "square" }
}
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  phase: TEST propagate_down: false loss_weight: 0
  param { name: "p" lr_mult: 0 decay_mult: 2 share_mode: STRICT }
  pooling_param { pool: AVE kernel_size: 2 stride: 2 round_mode: FLOOR }
  exclude { min_level: 1 max_level: 3 }
}
layer {
  name: "loss" type: "Python"
  python_param { module: "m" layer: "L" param_str: "{'a': 1}" }
  loss_param { ignore_label: -1 normalization: BATCH_SIZE }
  clip_param { min: -1 max: 1 }
}
"""


def test_text_binary_round_trip():
    net = text_format.Parse(LEGACY_NET, caffe_pb2.NetParameter())
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert net.layers[0].blob_share_mode[0] == caffe_pb2.V1LayerParameter.PERMISSIVE
    assert net.layers[1].layer.det_crop_mode == "square"
    assert list(net.input_dim) == [1, 3, 4, 4]
    assert len(net.layers[0].blobs[0].data) == 6
    assert net.layers[0].blobs[1].double_data[0] == 1e-300
    assert net.layer[0].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert net.layer[1].loss_param.normalization == caffe_pb2.LossParameter.BATCH_SIZE

    wire = net.SerializeToString()
    back = caffe_pb2.NetParameter.FromString(wire)
    assert back == net
    assert back.SerializeToString() == wire

    again = text_format.Parse(text_format.MessageToString(back), caffe_pb2.NetParameter())
    assert again == net


def test_solver_round_trip():
    text = textwrap.dedent(
        """
        net: "train_val.prototxt"
        test_iter: 10 test_interval: 100
        base_lr: 0.01 lr_policy: "multistep" gamma: 0.1 stepvalue: 10 stepvalue: 20
        momentum: 0.9 weight_decay: 0.0005 type: "Adam" momentum2: 0.99
        solver_mode: CPU snapshot_format: HDF5 random_seed: 7 weights: "a.caffemodel"
        train_state { phase: TRAIN stage: "x" }
        """
    )
    solver = text_format.Parse(text, caffe_pb2.SolverParameter())
    assert solver.solver_mode == caffe_pb2.SolverParameter.CPU
    back = caffe_pb2.SolverParameter.FromString(solver.SerializeToString())
    assert back == solver
    state = caffe_pb2.SolverState(iter=5, learned_net="x", history=[caffe_pb2.BlobProto(data=[1])])
    assert caffe_pb2.SolverState.FromString(state.SerializeToString()) == state


# ---------------------------------------------------------------------------
# oldest supported runtime

_RUNTIME_SCRIPT = r"""
import importlib.util, sys
import google.protobuf
want, pb2_path, text = sys.argv[1], sys.argv[2], sys.argv[3]
assert google.protobuf.__version__ == want, (google.protobuf.__version__, want)
try:
    from protonet.proto import caffe_pb2
except Exception as exc:  # protonet package not importable yet: load the file
    caffe_pb2 = sys.modules.get("protonet.proto.caffe_pb2")
    if caffe_pb2 is None:
        spec = importlib.util.spec_from_file_location("caffe_pb2", pb2_path)
        caffe_pb2 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(caffe_pb2)
from google.protobuf import text_format
from google.protobuf.internal import api_implementation
net = text_format.Parse(text, caffe_pb2.NetParameter())
wire = net.SerializeToString()
back = caffe_pb2.NetParameter.FromString(wire)
assert back == net and back.SerializeToString() == wire
assert back.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
assert caffe_pb2.SolverParameter().momentum2 > 0.998
print("ok", google.protobuf.__version__, api_implementation.Type())
"""

#: Oldest protobuf runtime protonet supports (the installed one covers the newest).
OLD_RUNTIMES = ["4.21.12"]


@pytest.fixture(scope="module", params=OLD_RUNTIMES)
def old_runtime(request, tmp_path_factory):
    version = request.param
    target = tmp_path_factory.mktemp(f"protobuf-{version}")
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
        "--disable-pip-version-check", "--timeout", "30", "--retries", "1",
        "--target", str(target), f"protobuf=={version}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install protobuf=={version} timed out")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        pytest.skip(f"cannot pip install protobuf=={version}: {' | '.join(tail)}")
    return version, target


@pytest.mark.slow
@pytest.mark.parametrize("impl", [None, "python"])
def test_loads_under_old_runtime(old_runtime, impl):
    version, target = old_runtime
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO_ROOT)])
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    if impl:
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = impl
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _RUNTIME_SCRIPT, version, str(PB2_FILE), LEGACY_NET],
        capture_output=True, text=True, env=env, cwd=str(target), timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"ok {version}")
    if impl:
        assert proc.stdout.split()[-1] == impl
