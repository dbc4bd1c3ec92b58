"""The seven Caffe fillers: statistics, invariants, reproducibility, errors."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from protonet.errors import ProtonetError
from protonet.fillers import FILLERS, fill
from protonet.proto import caffe_pb2


def filler(**fields):
    return caffe_pb2.FillerParameter(**fields)


def filled(shape, param, seed=0, dtype=np.float32):
    a = np.zeros(shape, dtype)
    fill(a, param, np.random.default_rng(seed))
    return a


def test_constant_default_is_zero_and_value_is_used():
    np.testing.assert_array_equal(filled((3, 4), filler()), 0)
    a = filled((3, 4), filler(type="constant", value=2.5))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, 2.5)


def test_uniform_range_and_mean():
    a = filled((200, 100), filler(type="uniform", min=-2, max=3))
    assert a.min() >= -2 and a.max() <= 3
    assert abs(a.mean() - 0.5) < 0.05
    assert abs(a.var() - 25 / 12) < 0.05


def test_gaussian_mean_and_std():
    a = filled((200, 100), filler(type="gaussian", mean=1.0, std=0.5))
    assert abs(a.mean() - 1.0) < 0.02
    assert abs(a.std() - 0.5) < 0.02


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    # Caffe keeps a weight with probability sparse / shape[0]
    a = filled((20, 5000), filler(type="gaussian", std=1.0, sparse=5))
    assert abs(np.mean(a != 0) - 5 / 20) < 0.01
    assert np.array_equal(filled((20, 10), filler(type="gaussian", sparse=0)), np.zeros((20, 10)))


def test_positive_unitball_rows_sum_to_one():
    a = filled((6, 3, 2, 2), filler(type="positive_unitball"))
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_allclose(a.reshape(6, -1).sum(axis=1), 1, rtol=1e-6)


# conv weight (O=40, C=30, 3, 3): fan_in = 30*9 = 270, fan_out = 40*9 = 360
FANS = {0: 270.0, 1: 360.0, 2: 315.0}


@pytest.mark.parametrize("norm", [0, 1, 2])
def test_xavier_is_uniform_sqrt3_over_n(norm):
    bound = math.sqrt(3 / FANS[norm])
    a = filled((40, 30, 3, 3), filler(type="xavier", variance_norm=norm))
    assert np.abs(a).max() <= bound
    assert np.abs(a).max() > 0.99 * bound
    assert abs(a.var() - bound ** 2 / 3) < 0.05 * bound ** 2 / 3


@pytest.mark.parametrize("norm", [0, 1, 2])
def test_msra_std_sqrt2_over_n(norm):
    a = filled((40, 30, 3, 3), filler(type="msra", variance_norm=norm))
    assert abs(a.std() - math.sqrt(2 / FANS[norm])) < 0.03 * math.sqrt(2 / FANS[norm])
    assert abs(a.mean()) < 0.01


def test_xavier_fans_of_an_inner_product_weight():
    # (num_output=50, K=400): fan_in = 400
    a = filled((50, 400), filler(type="xavier"))
    assert np.abs(a).max() <= math.sqrt(3 / 400) and np.abs(a).max() > 0.99 * math.sqrt(3 / 400)


@pytest.mark.parametrize("k, ramp", [
    (4, [0.25, 0.75, 0.75, 0.25]),      # factor 2: f = 2, c = 3/4
    (5, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),  # factor 3: f = 3, c = 2/3
    (3, [0.25, 0.75, 0.75]),            # f = 2, c = 3/4
])
def test_bilinear_matches_caffes_formula(k, ramp):
    a = filled((2, 3, k, k), filler(type="bilinear"))
    expected = np.outer(ramp, ramp).astype(np.float32)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(a[n, c], expected, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(FILLERS))
def test_reproducible_from_seed_and_dtype_kept(name):
    param = filler(type=name)
    for dtype in (np.float32, np.float64):
        a = filled((4, 3, 4, 4), param, seed=5, dtype=dtype)
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, filled((4, 3, 4, 4), param, seed=5, dtype=dtype))
    if name in ("uniform", "gaussian", "positive_unitball", "xavier", "msra"):
        assert not np.array_equal(filled((4, 3, 4, 4), param, seed=5),
                                  filled((4, 3, 4, 4), param, seed=6))


def test_plain_namespace_works_as_parameter():
    a = filled((10, 10), SimpleNamespace(type="uniform", min=1.0, max=2.0))
    assert a.min() >= 1 and a.max() <= 2


def test_unknown_filler_lists_known_ones():
    with pytest.raises(ProtonetError, match="unknown filler type 'glorot'.*xavier"):
        filled((2, 2), filler(type="glorot"))


@pytest.mark.parametrize("param, shape, message", [
    (dict(type="uniform", sparse=3), (4, 4), "sparse"),
    (dict(type="gaussian", sparse=10), (4, 4), "sparse"),
    (dict(type="uniform", min=2, max=1), (4, 4), "min"),
    (dict(type="bilinear"), (4, 4), "4-D"),
    (dict(type="bilinear"), (1, 1, 3, 4), "square"),
])
def test_filler_errors(param, shape, message):
    with pytest.raises(ProtonetError, match=message):
        filled(shape, filler(**param))
