"""protonet: Caffe, re-made in Python and numpy.

    import protonet as caffe
    net = caffe.Net("models/lenet/lenet.prototxt", caffe.TEST)
    net.forward()
"""
from .errors import ProtonetError
from .layers import TEST, TRAIN, layer_type_list
from .layers.python_layer import PythonLayerBase as Layer  # pycaffe's caffe.Layer

from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                      SGDSolver, Solver, get_solver)

__version__ = "0.1.0"

__all__ = ["Net", "ProtonetError", "TEST", "TRAIN", "Layer", "layer_type_list", "Solver",
           "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "get_solver", "__version__"]


def __getattr__(name):
    if name == "Net":
        from .net import Net
        return Net
    raise AttributeError(f"module 'protonet' has no attribute {name!r}")
