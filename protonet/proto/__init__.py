"""Caffe protobuf messages (package ``caffe``) for protonet.

``caffe_pb2`` is generated from ``proto/caffe.proto`` (wire-compatible with
BVLC Caffe's schema) by protoc 3.21.  Do not edit it by hand; after changing
the schema regenerate it with ``python scripts/gen_proto.py`` (and verify with
``python scripts/gen_proto.py --check``).
"""

from protonet.proto import caffe_pb2

__all__ = ["caffe_pb2"]
