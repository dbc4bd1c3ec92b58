"""Training: Caffe's six solvers, its learning-rate policies, snapshots and resume.

    import protonet as caffe
    solver = caffe.get_solver("models/lenet/lenet_solver.prototxt")
    solver.step(100)          # or solver.solve()
    solver.net.blobs["loss"].data
"""
from .sgd_solvers import (SOLVERS, AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                          RMSPropSolver, SGDSolver, get_solver)
from .solver import Solver

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "get_solver", "SOLVERS"]
