"""Times protonet on one benchmark net; prints one JSON line. Never imports torch.

glibc malloc tuning (protonet._malloc.tune_malloc) is applied first unless the environment
sets PROTONET_NO_MALLOC_TUNING=1 (``python -m bench --no-malloc-tuning``).
"""
import json
import resource
import sys
import time


def main(name: str, batch: int, iterations: int, input_kind: str = "random",
         folder: str | None = None, options: str = "") -> None:
    """``folder``: where ``bench.zoo.prepare`` wrote a zoo net's files (zoo nets only);
    ``options``: comma-separated Net keywords set to False (``fuse``)."""
    sys.path.insert(0, ".")
    from protonet._malloc import tune_malloc
    tuned = tune_malloc()
    import numpy as np

    import protonet
    from protonet.io import parse_net

    from bench.nets import NETS, input_batch
    from bench.zoo import ZOO, files
    kw = {k: False for k in options.split(",") if k}
    if name in ZOO:  # a zoo deploy net, as a user loads it: prototxt + caffemodel
        prototxt, weights = files(name, batch, folder)
        net = protonet.Net(prototxt, protonet.TEST, weights=weights, **kw)
        forward_only = True
        from bench.zoo import input_batch as zoo_input
        net.blobs["data"].data[...] = zoo_input(name, batch, input_kind)
    else:
        template, _, forward_only = NETS[name]
        net = protonet.Net(parse_net(template % {"batch": batch}),
                           protonet.TEST if forward_only else protonet.TRAIN, seed=0, **kw)
        net.forward_from_to(0, 0)  # DummyData fills its constant once; then the input goes in
        net.blobs["data"].data[...] = input_batch(name, batch, input_kind)
    # peak: one large float32 GEMM, to report achieved GFLOP/s against
    a = np.ones((1024, 1024), np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    gemm_gflops = 10 * 2 * 1024 ** 3 / (time.perf_counter() - t) / 1e9
    del a
    times = []
    faults = 0
    for i in range(iterations + 3):
        t = time.perf_counter()
        net.forward_from_to()
        if not forward_only:
            net.clear_param_diffs()
            net.backward_from_to()
            for blob in net.learnable_params:  # the update a solver makes: w -= lr * diff
                blob.data -= 0.01 * blob.diff
        if i == 2:  # page faults of the timed steps (fresh memory touched each step)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if i >= 3:
            times.append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(iterations, 1)
    print(json.dumps({"times": times, "gemm_gflops": gemm_gflops, "malloc_tuned": tuned,
                      "page_faults_per_step": faults}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7])
