"""Reading and writing Caffe's files: prototxt (strict or Netscope-lenient), binary protos, upgrades."""
from .prototxt import (ProtonetWarning, parse_net, parse_solver, parse_text, read_net,
                       read_net_binary, read_solver, write_text, write_text_file)
from .pycaffe_io import (Transformer, array_to_blobproto, array_to_datum,
                         arraylist_to_blobprotovector_str, blobproto_to_array,
                         blobprotovector_str_to_arraylist, datum_to_array, load_image,
                         oversample, resize_image)

__all__ = ["ProtonetWarning", "parse_net", "parse_solver", "parse_text", "read_net",
           "read_net_binary", "read_solver", "write_text", "write_text_file",
           "Transformer", "array_to_blobproto", "array_to_datum",
           "arraylist_to_blobprotovector_str", "blobproto_to_array",
           "blobprotovector_str_to_arraylist", "datum_to_array", "load_image", "oversample",
           "resize_image"]
