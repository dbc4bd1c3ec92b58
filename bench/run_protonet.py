"""Times protonet on one benchmark net; prints one JSON line. Never imports torch."""
import json
import sys
import time

import numpy as np


def main(name: str, batch: int, iterations: int) -> None:
    sys.path.insert(0, ".")
    import protonet
    from protonet.io import parse_net

    from bench.nets import NETS
    template, _, forward_only = NETS[name]
    net = protonet.Net(parse_net(template % {"batch": batch}), protonet.TRAIN, seed=0)
    # peak: one large float32 GEMM, to report achieved GFLOP/s against
    a = np.ones((1024, 1024), np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    gemm_gflops = 10 * 2 * 1024 ** 3 / (time.perf_counter() - t) / 1e9
    times = []
    for i in range(iterations + 3):
        t = time.perf_counter()
        net.forward_from_to()
        if not forward_only:
            net.clear_param_diffs()
            net.backward_from_to()
            for blob in net.learnable_params:  # the update a solver makes: w -= lr * diff
                blob.data -= 0.01 * blob.diff
        if i >= 3:
            times.append(time.perf_counter() - t)
    print(json.dumps({"times": times, "gemm_gflops": gemm_gflops}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
