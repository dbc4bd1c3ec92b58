"""Times the same net in PyTorch CPU (NCHW, float32); prints one JSON line."""
import json
import sys
import time


def lenet(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                         nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(),
                         nn.Linear(500, 10))


def main(name: str, batch: int, iterations: int, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    model = {"lenet": lenet}[name](torch)
    x = torch.full((batch, 1, 28, 28), 0.5)
    y = torch.full((batch,), 3, dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(iterations + 3):
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    print(json.dumps({"times": times}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
