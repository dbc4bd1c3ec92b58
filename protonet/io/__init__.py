"""Reading and writing Caffe's files: prototxt (strict or Netscope-lenient), binary protos, upgrades."""
from .prototxt import (ProtonetWarning, parse_net, parse_solver, parse_text, read_net,
                       read_net_binary, read_solver, write_text, write_text_file)

__all__ = ["ProtonetWarning", "parse_net", "parse_solver", "parse_text", "read_net",
           "read_net_binary", "read_solver", "write_text", "write_text_file"]
