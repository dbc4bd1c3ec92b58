"""Times the same net in PyTorch CPU (NCHW, float32); prints one JSON line."""
import json
import sys
import time


def lenet(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                         nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(),
                         nn.Linear(500, 10))


def cifar10_quick(torch):
    # Caffe pools with ceil rounding: 32 -> 16 -> 8 -> 4
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(),
        nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=True),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10))


def caffenet(torch):
    nn = torch.nn

    def lrn():  # Caffe's ACROSS_CHANNELS LRN
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 1000), nn.Softmax(dim=1))


#: name -> model builder (input shapes and forward-only flags: bench.nets)
MODELS = {"lenet": lenet, "cifar10_quick": cifar10_quick, "caffenet": caffenet}


def main(name: str, batch: int, iterations: int, threads: int,
         input_kind: str = "random") -> None:
    import torch
    sys.path.insert(0, ".")
    from bench.nets import NETS, input_batch
    torch.set_num_threads(threads)
    model = MODELS[name](torch)
    forward_only = NETS[name][2]
    x = torch.from_numpy(input_batch(name, batch, input_kind))
    y = torch.full((batch,), 3, dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    if forward_only:
        model.eval()
    times = []
    for i in range(iterations + 3):
        t = time.perf_counter()
        if forward_only:
            with torch.no_grad():
                model(x)
        else:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    print(json.dumps({"times": times}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:6])
