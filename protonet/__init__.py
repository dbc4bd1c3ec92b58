"""protonet: Caffe, re-made in Python and numpy.

    import protonet as caffe
    net = caffe.Net("models/lenet/lenet.prototxt", caffe.TEST)
    net.forward()
"""
from .errors import ProtonetError
from .layers import TEST, TRAIN, layer_type_list
from .layers.python_layer import PythonLayerBase as Layer  # pycaffe's caffe.Layer

from . import io  # noqa: F401  (caffe.io: Transformer, load_image, ... live in protonet.io)
from .net_spec import NetSpec, params, to_proto
from .pycaffe import (has_nccl, init_log, log, set_device, set_mode_cpu, set_mode_gpu,
                      set_multiprocess, set_random_seed, set_solver_count, set_solver_rank,
                      solver_count, solver_rank)
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                      SGDSolver, Solver, get_solver)

__version__ = "0.1.0"

__all__ = ["Net", "ProtonetError", "TEST", "TRAIN", "Layer", "layer_type_list", "Solver",
           "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "get_solver", "Classifier", "Detector", "NetSpec", "layers", "params", "to_proto",
           "io", "draw", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
           "solver_count", "set_solver_count", "solver_rank", "set_solver_rank",
           "set_multiprocess", "has_nccl", "NCCL", "init_log", "log", "__version__"]


def __getattr__(name):
    # imported lazily: Net pulls in every layer module, draw pulls in the renderer
    if name == "Net":
        from .net import Net
        return Net
    if name == "Classifier":
        from .classifier import Classifier
        return Classifier
    if name == "Detector":
        from .detector import Detector
        return Detector
    if name == "draw":
        from . import draw
        return draw
    if name == "NCCL":
        from .solvers.distributed import NCCL
        return NCCL
    raise AttributeError(f"module 'protonet' has no attribute {name!r}")
