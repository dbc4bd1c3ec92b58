"""LRN against PyTorch: local_response_norm (ACROSS_CHANNELS) and Caffe's WITHIN_CHANNEL
composition rebuilt from torch ops."""
import numpy as np
import pytest

from protonet import ProtonetError
from protonet.layers.normalization import negative_power
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")
F = torch.nn.functional


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def lrn(params, dtype=np.float32):
    return make_layer(f'type: "LRN" lrn_param {{ {params} }}', dtype=dtype)


def forward_backward(layer, x, dy):
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy()


def torch_within_channel(x, n, alpha, beta):
    """Caffe's WITHIN_CHANNEL: AVE pool of x^2 (padded cells count: divisor n*n), k fixed at 1."""
    avg = F.avg_pool2d(x * x, n, stride=1, padding=(n - 1) // 2, count_include_pad=True)
    return x * (1 + alpha * avg) ** -beta


@pytest.mark.parametrize("shape", [(2, 7, 3, 4), (1, 2, 5, 5), (3, 16, 2, 3)])
@pytest.mark.parametrize("n,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.75, 2.0),
                                            (1, 2.0, 0.5, 1.0), (7, 3.0, 1.5, 0.5)])
def test_lrn_across_channels_matches_torch(shape, n, alpha, beta, k):
    x, dy = randn(*shape) * 2, randn(*shape, seed=1)
    layer = lrn(f"local_size: {n} alpha: {alpha} beta: {beta} k: {k}")
    y, dx = forward_backward(layer, x, dy)
    # torch: x / (k + alpha/n * sum over a zero-padded window of n channels)^beta, as Caffe
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = F.local_response_norm(tx, n, alpha=alpha, beta=beta, k=k)
    ty.backward(torch.from_numpy(dy))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 6, 5), (1, 2, 2, 7), (1, 1, 1, 1)])
@pytest.mark.parametrize("n,alpha,beta", [(3, 1.0, 0.75), (5, 3.0, 0.5), (1, 0.5, 1.0)])
def test_lrn_within_channel_matches_caffe_composition(shape, n, alpha, beta):
    x, dy = randn(*shape) * 2, randn(*shape, seed=1)
    # k is ignored by Caffe's WITHIN_CHANNEL, so 7.0 must change nothing
    layer = lrn(f"local_size: {n} alpha: {alpha} beta: {beta} k: 7 norm_region: WITHIN_CHANNEL")
    y, dx = forward_backward(layer, x, dy)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = torch_within_channel(tx, n, alpha, beta)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_lrn_within_channel_by_hand():
    # 1x1x2x2 ones, n = 3: every 3x3 window holds all four cells -> avg = 4/9 everywhere
    layer = lrn("local_size: 3 alpha: 9 beta: 1 norm_region: WITHIN_CHANNEL")
    (y,) = run_layer(layer, [np.ones((1, 1, 2, 2), np.float32)])
    np.testing.assert_allclose(y, np.full((1, 1, 2, 2), 1 / 5), rtol=1e-6)


def test_lrn_across_channels_by_hand():
    # channels 1, 2, 3 at one pixel, n = 3, alpha = 3, beta = 1, k = 1: s = 1 + window sum of x^2
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1)
    (y,) = run_layer(lrn("local_size: 3 alpha: 3 beta: 1 k: 1"), [x])
    np.testing.assert_allclose(y.ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_lrn_gradients(region, n):
    layer = lrn(f"local_size: {n} alpha: 0.8 beta: 0.75 k: 1.5 norm_region: {region}",
                dtype=np.float64)
    check_gradients(layer, [randn(2, 4, 3, 3).astype(np.float64)], max_checks=60)


def test_lrn_errors():
    with pytest.raises(ProtonetError, match=r"'norm1'.*local_size must be odd, got 4"):
        run_layer(make_layer('name: "norm1" type: "LRN" lrn_param { local_size: 4 }'),
                  [randn(1, 3, 2, 2)])
    with pytest.raises(ProtonetError, match=r"4 axes.*\[2, 3\]"):
        run_layer(lrn("local_size: 3"), [randn(2, 3)])


def test_lrn_macc_is_small_and_positive():
    layer = lrn("local_size: 5")
    bottom, top = setup_layer(layer, [randn(1, 3, 2, 2)])
    assert 0 < layer.macc(bottom, top) < 100 * bottom[0].count


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.3])
def test_negative_power_fast_path_is_accurate(beta):
    s = (np.abs(randn(10000)) * np.float32(100) + 1).astype(np.float32)
    out = np.empty_like(s)
    negative_power(s, beta, out)
    np.testing.assert_allclose(out, s.astype(np.float64) ** -beta, rtol=5e-7)  # ~4 ulp


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("tile_bytes", [1, 3 * (3 * 12 * 4), 1 << 30])
def test_lrn_channel_blocks_give_the_whole_image_numbers(region, tile_bytes, monkeypatch):
    # blocks of 1 channel, of 3 (edges inside and at the image's border), whole images
    from protonet import parallel
    from protonet.layers import normalization
    x, dy = randn(3, 8, 3, 4) * 2, randn(3, 8, 3, 4, seed=1)
    params = f"local_size: 5 alpha: 0.7 beta: 0.75 k: 1.5 norm_region: {region}"
    monkeypatch.setattr(parallel, "TILE_BYTES", 1)
    monkeypatch.setattr(normalization, "LRN_BLOCK_BYTES", tile_bytes)
    y, dx = forward_backward(lrn(params), x, dy)
    monkeypatch.setattr(parallel, "TILE_BYTES", 1 << 30)
    y_whole, dx_whole = forward_backward(lrn(params), x, dy)
    np.testing.assert_array_equal(y, y_whole)
    np.testing.assert_array_equal(dx, dx_whole)
