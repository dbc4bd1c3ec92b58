"""Times a zoo deploy net in OpenCV dnn (its Caffe importer, OpenCV backend, CPU); prints one
JSON line. Loads the prototxt and caffemodel that ``bench.zoo.prepare`` wrote."""
import json
import sys
import time


def main(name: str, batch: int, iterations: int, threads: int, input_kind: str,
         folder: str) -> None:
    import cv2
    import numpy as np
    sys.path.insert(0, ".")
    from bench.zoo import files, input_batch
    cv2.setNumThreads(threads)
    prototxt, weights = files(name, batch, folder)
    net = cv2.dnn.readNetFromCaffe(prototxt, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    x = np.ascontiguousarray(input_batch(name, batch, input_kind))
    times = []
    for i in range(iterations + 3):
        t = time.perf_counter()
        net.setInput(x)
        net.forward()
        if i >= 3:
            times.append(time.perf_counter() - t)
    print(json.dumps({"times": times, "threads": cv2.getNumThreads()}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
         sys.argv[6])
