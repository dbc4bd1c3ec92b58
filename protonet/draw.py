"""pycaffe's ``caffe.draw``: ``import protonet.draw`` works as ``import caffe.draw`` does."""
from .tools.draw import draw_net, draw_net_to_file, get_layer_label  # noqa: F401
