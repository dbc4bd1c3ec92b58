"""Reading training logs (protonet's or Caffe's) and plotting their curves.

The parser reads the lines ``tools/extra/parse_log.py`` reads, with its regexes'
meaning: ``Iteration N (...), loss = L`` / ``Iteration N, loss = L`` (training
loss, smoothed over ``average_loss``), ``Iteration N, lr = r``,
``Iteration N, Testing net (#k)`` and ``Test net output #i: name = v [(* w = x loss)]``.
glog prefixes are optional.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import ProtonetError

_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|-?inf))"
RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUMBER)
RE_LR = re.compile(r"Iteration (\d+), lr = " + _NUMBER)
RE_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
RE_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + _NUMBER + r"( \(\* .* loss\))?")
RE_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = " + _NUMBER)


@dataclass
class TestRecord:
    iteration: int
    net: int
    outputs: dict = field(default_factory=dict)   # name -> value
    losses: set = field(default_factory=set)       # names weighted as losses


@dataclass
class TrainingLog:
    train: list = field(default_factory=list)      # (iteration, loss)
    lr: list = field(default_factory=list)         # (iteration, rate)
    tests: list = field(default_factory=list)      # TestRecord


def parse_log(path: str) -> TrainingLog:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except OSError as e:
        raise ProtonetError(f"{path}: cannot read ({e.strerror})") from None
    result = TrainingLog()
    iteration = latest = 0
    current = None
    for line in lines:
        m = RE_ITERATION.search(line)
        if m and "Train net output" not in line:
            if int(m.group(1)) < latest:
                # iterations went back: a new or resumed run was appended to this log (solve
                # --log appends); it supersedes what was logged from that iteration on
                _drop_from(result, int(m.group(1)))
            latest = int(m.group(1))
        m = RE_TESTING.search(line)
        if m:
            iteration = int(m.group(1))
            current = TestRecord(iteration, int(m.group(2)))
            result.tests.append(current)
            continue
        m = RE_TEST_OUTPUT.search(line)
        if m:
            if current is None:  # a log without "Testing net" lines
                current = TestRecord(iteration, 0)
                result.tests.append(current)
            name = m.group(2)
            current.outputs[name] = float(m.group(3))
            if m.group(4):
                current.losses.add(name)
            continue
        m = RE_TRAIN_LOSS.search(line)
        if m:
            iteration = int(m.group(1))
            result.train.append((iteration, float(m.group(2))))
            current = None
            continue
        m = RE_LR.search(line)
        if m:
            iteration = int(m.group(1))
            result.lr.append((iteration, float(m.group(2))))
            continue
        m = RE_ITERATION.search(line)
        if m and "Train net output" not in line:
            iteration = int(m.group(1))
    return result


def _drop_from(log: TrainingLog, iteration: int) -> None:
    """Forget every point of ``log`` at ``iteration`` or later."""
    log.train[:] = [p for p in log.train if p[0] < iteration]
    log.lr[:] = [p for p in log.lr if p[0] < iteration]
    log.tests[:] = [t for t in log.tests if t.iteration < iteration]


def plot_log(path: str, output: str | None = None) -> str:
    """Plot training loss, test losses and other test outputs (accuracy) to a PNG."""
    data = parse_log(path)
    if not data.train and not data.tests:
        raise ProtonetError(f"{path}: no training or test lines found (is it a log of "
                            "`protonet solve` or `caffe train`?)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ProtonetError("`protonet plot` needs matplotlib: pip install matplotlib") from None
    output = output or os.path.splitext(path)[0] + ".png"
    fig, ax = plt.subplots(figsize=(8, 5))
    handles = []
    if data.train:
        xs, ys = zip(*data.train)
        handles += ax.plot(xs, ys, color="tab:blue", lw=1, label="train loss")
    nets = sorted({t.net for t in data.tests})
    colors = iter(["tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink"])
    other = {}
    for k in nets:
        records = [t for t in data.tests if t.net == k and t.outputs]
        suffix = f" (net #{k})" if len(nets) > 1 else ""
        names = []
        for t in records:
            names += [n for n in t.outputs if n not in names]
        for name in names:
            points = [(t.iteration, t.outputs[name]) for t in records if name in t.outputs]
            xs, ys = zip(*points)
            is_loss = any(name in t.losses for t in records) or "loss" in name.lower()
            if is_loss:
                label = "test loss" if name == "loss" else f"test {name}"
                handles += ax.plot(xs, ys, "o-", color=next(colors, None), ms=3,
                                   label=label + suffix)
            else:
                other[f"test {name}{suffix}"] = (xs, ys)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if other:
        ax2 = ax.twinx()
        palette = iter(["tab:green", "tab:olive", "tab:cyan", "tab:gray"])
        for label, (xs, ys) in other.items():
            handles += ax2.plot(xs, ys, "s-", color=next(palette, None), ms=3, label=label)
        ax2.set_ylabel("accuracy" if all("acc" in n for n in other) else "test output")
    ax.legend(handles=handles, loc="center right")
    ax.set_title(os.path.basename(path))
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=100)
    except OSError as e:
        raise ProtonetError(f"{output}: cannot write ({e.strerror})") from None
    finally:
        plt.close(fig)
    return output
