"""Fuzzing: mutated prototxt and random bytes give success or ProtonetError, nothing else."""
import glob
import os
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import protonet  # noqa: E402
from protonet import ProtonetError  # noqa: E402
from protonet.io import parse_net, parse_solver  # noqa: E402
from protonet.io.caffemodel import read_caffemodel  # noqa: E402
from protonet.io.lenient import tokenize  # noqa: E402

from conftest import FUZZ_CASES, REPO, corpus_dir  # noqa: E402

CASES = int(os.environ.get("PROTONET_FUZZ_CASES", "150"))
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seed_files():
    files = sorted(glob.glob(str(REPO / "models" / "**" / "*.prototxt"), recursive=True))
    root = corpus_dir()
    if root is not None:
        picks = ["BVLC/caffe/examples/mnist/lenet_train_test.prototxt",
                 "BVLC/caffe/examples/cifar10/cifar10_quick.prototxt",
                 "BVLC/caffe@3213bd8/data/lenet.prototxt",
                 "BVLC/caffe@c7f63da/models/bvlc_alexnet/deploy.prototxt",
                 "dgschwend/netscope/presets/vgg-16.prototxt",
                 "BVLC/caffe/examples/mnist/lenet_solver.prototxt"]
        files += [str(root / p) for p in picks if (root / p).exists()]
    return [open(f).read() for f in files]


SEEDS = seed_files()
HUGE = ["2147483648", "-1", "0", "99999999999999999999", "1e39", "nan", "-inf", "4294967296"]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SEEDS))
    tokens = [t.text for t in tokenize(text, "seed")]
    for _ in range(draw(st.integers(1, 6))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "swap", "value", "duplicate", "nest", "brace"]))
        if op == "delete":
            del tokens[i]
        elif op == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == "value":
            tokens[i] = draw(st.sampled_from(HUGE + ['"x"', "TRAIN", "MAX", "{", "}", ":"]))
        elif op == "duplicate":
            tokens.insert(i, tokens[i])
        elif op == "nest":
            depth = draw(st.integers(1, 300))
            tokens[i:i] = ["layer", "{"] * depth + ["}"] * depth
        else:
            tokens.insert(i, draw(st.sampled_from(["{", "}", "[", "]", "<", ">"])))
    return " ".join(tokens)


def _only_protonet_errors(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kw)
        except ProtonetError as e:
            assert str(e).strip(), "empty error message"
            return None


@pytest.mark.skipif(not SEEDS, reason="no seed prototxt files")
@FUZZ
@given(mutated(), st.booleans())
def test_mutated_prototxt_parses_or_fails_cleanly(text, lenient):
    FUZZ_CASES["count"] += 1
    net = _only_protonet_errors(parse_net, text, "fuzz.prototxt", lenient=lenient)
    _only_protonet_errors(parse_solver, text, "fuzz.prototxt", lenient=lenient)
    if net is not None and len(net.layer) < 40:
        # building shapes-only must also fail cleanly (sources are missing, etc.)
        _only_protonet_errors(protonet.Net, net, protonet.TEST, init_weights=False)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_into_the_caffemodel_reader(tmp_path_factory, data):
    FUZZ_CASES["count"] += 1
    path = tmp_path_factory.mktemp("fuzz") / "x.caffemodel"
    path.write_bytes(data)
    _only_protonet_errors(read_caffemodel, str(path))


@FUZZ
@given(st.data())
def test_damaged_real_caffemodel(tmp_path_factory, data):
    FUZZ_CASES["count"] += 1
    from protonet.io.caffemodel import write_caffemodel
    net = protonet.Net(parse_net("""input: "d" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
        layer { name: "c" type: "Convolution" bottom: "d" top: "c"
                convolution_param { num_output: 2 kernel_size: 3 } }"""), protonet.TEST)
    path = tmp_path_factory.mktemp("fuzz") / "w.caffemodel"
    write_caffemodel(net, str(path))
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path.write_bytes(bytes(raw[:cut]))
    result = _only_protonet_errors(read_caffemodel, str(path))
    if result is not None:
        _only_protonet_errors(net.copy_from, str(path))


def test_deep_nesting_is_a_clear_error():
    text = "layer { " * 5000 + "}" * 5000
    for lenient in (False, True):
        try:
            parse_net(text, "deep.prototxt", lenient=lenient)
        except ProtonetError as e:
            assert "deep.prototxt" in str(e)
