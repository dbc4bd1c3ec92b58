"""BatchNorm and MVN: forward and backward against PyTorch, Caffe's running sums by hand,
in place, in a net, and by finite differences."""
import numpy as np
import pytest

import protonet
from protonet import ProtonetError
from protonet.blob import Blob
from protonet.io import parse_net
from protonet.layers.base import TEST, TRAIN
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")
F = torch.nn.functional


def randn(*shape, seed=0, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def batch_norm(params="", phase=TRAIN, dtype=np.float32, name="bn"):
    return make_layer(f'name: "{name}" type: "BatchNorm" batch_norm_param {{ {params} }}',
                      phase=phase, dtype=dtype)


def mvn(params="", dtype=np.float32):
    return make_layer(f'type: "MVN" mvn_param {{ {params} }}', dtype=dtype)


def forward_backward(layer, x, dy, in_place=False, blobs=None):
    bottom = Blob(x.shape, layer.dtype, name="x")
    bottom.data[...] = x
    top = bottom if in_place else Blob((), layer.dtype, name="y")
    layer.setup([bottom], [top])
    for blob, value in zip(layer.blobs, blobs or []):
        blob.data[...] = value
    layer.forward([bottom], [top])
    y = top.data.copy()
    top.diff[...] = dy.reshape(top.shape)  # MVN's top is 4-D
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy()


def torch_reference(fn, x, dy):
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = fn(tx)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy()


BN_SHAPES = [(8, 3), (2, 3, 4, 5), (3, 2, 5), (2, 4, 2, 3, 2), (1, 3, 2, 2)]


# -- BatchNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_batchnorm_train_matches_torch(shape, eps):
    x, dy = randn(*shape, scale=3, shift=1.5), randn(*shape, seed=1)
    y, dx = forward_backward(batch_norm(f"eps: {eps}"), x, dy)
    ty, tdx = torch_reference(lambda t: F.batch_norm(t, None, None, training=True, eps=eps),
                              x, dy)
    assert y.dtype == np.float32 and dx.dtype == np.float32 and y.shape == shape
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(dx, tdx, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("shape", [(8, 3), (2, 3, 4, 5), (2, 3, 2, 2, 2)])
@pytest.mark.parametrize("phase,params", [(TEST, ""), (TRAIN, "use_global_stats: true")])
def test_batchnorm_global_stats_match_torch_eval(shape, phase, params):
    """Caffe's unnormalised sums, divided by the scale factor, are torch's running stats."""
    c = shape[1]
    mean_sum, var_sum, factor = randn(c, seed=3), np.abs(randn(c, seed=4)) * 5, 2.5
    x, dy = randn(*shape, scale=2), randn(*shape, seed=1)
    layer = batch_norm(params, phase=phase)
    y, dx = forward_backward(layer, x, dy, blobs=[mean_sum, var_sum, [factor]])
    rm, rv = torch.from_numpy(mean_sum / np.float32(factor)), torch.from_numpy(
        var_sum / np.float32(factor))
    ty, tdx = torch_reference(lambda t: F.batch_norm(t, rm, rv, training=False, eps=1e-5),
                              x, dy)
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tdx, rtol=1e-5, atol=1e-6)
    # the statistics are only read
    np.testing.assert_array_equal(layer.blobs[0].data, mean_sum)
    np.testing.assert_array_equal(layer.blobs[2].data, [factor])


def test_batchnorm_running_sums_over_two_iterations():
    """blobs[2] = f*blobs[2] + 1, blobs[0] = mean + f*blobs[0],
    blobs[1] = m/(m-1) var + f*blobs[1], with m = N*H*W values per channel."""
    maf = 0.9
    layer = batch_norm(f"moving_average_fraction: {maf}")
    x1, x2 = randn(2, 3, 2, 2, scale=2, shift=1), randn(2, 3, 2, 2, seed=5, scale=0.5)
    bottom, top = setup_layer(layer, [x1])
    for blob in layer.blobs:
        np.testing.assert_array_equal(blob.data, 0)
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    m = 2 * 2 * 2
    stats = []
    for x in (x1, x2):
        bottom[0].data[...] = x
        layer.forward(bottom, top)
        x64 = x.astype(np.float64)
        stats.append((x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))))
        if len(stats) == 1:
            np.testing.assert_allclose(layer.blobs[2].data, [1.0])
            np.testing.assert_allclose(layer.blobs[0].data, stats[0][0], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(layer.blobs[1].data, stats[0][1] * m / (m - 1), rtol=1e-6)
    (mean1, var1), (mean2, var2) = stats
    np.testing.assert_allclose(layer.blobs[2].data, [maf * 1 + 1], rtol=1e-7)
    np.testing.assert_allclose(layer.blobs[0].data, mean2 + maf * mean1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.blobs[1].data, (var2 + maf * var1) * m / (m - 1),
                               rtol=1e-6)
    # switched to the global statistics, the layer uses the sums divided by the factor
    test = batch_norm(phase=TEST)
    (y,) = run_layer_with_blobs(test, x1, [b.data for b in layer.blobs])
    factor = maf + 1
    mean, var = (mean2 + maf * mean1) / factor, (var2 + maf * var1) * m / (m - 1) / factor
    expected = (x1 - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-6)


def run_layer_with_blobs(layer, x, blobs):
    bottom, top = setup_layer(layer, [x])
    for blob, value in zip(layer.blobs, blobs):
        blob.data[...] = value
    layer.forward(bottom, top)
    return [top[0].data.copy()]


def test_batchnorm_scale_factor_zero_means_zero_statistics():
    x = randn(2, 3, 2)
    layer = batch_norm("use_global_stats: true eps: 0.25")
    (y,) = run_layer_with_blobs(layer, x, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0]])
    np.testing.assert_allclose(y, x / np.float32(0.5), rtol=1e-7)  # (x - 0) / sqrt(0 + eps)


def test_batchnorm_single_value_per_channel_skips_bias_correction():
    # m = 1: Caffe's correction factor is 1, not 1/0
    layer = batch_norm()
    (y,) = run_layer(layer, [randn(1, 3)])
    np.testing.assert_array_equal(y, 0)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)
    np.testing.assert_array_equal(layer.blobs[2].data, [1])


def test_batchnorm_phase_defaults_and_override():
    x = randn(4, 3, 2, 2)
    train = batch_norm(phase=TRAIN)
    run_layer(train, [x])
    assert not train.use_global_stats and train.blobs[2].data[0] == 1
    test = batch_norm(phase=TEST)
    run_layer(test, [x])
    assert test.use_global_stats and test.blobs[2].data[0] == 0
    forced = batch_norm("use_global_stats: false", phase=TEST)
    run_layer(forced, [x])
    assert not forced.use_global_stats and forced.blobs[2].data[0] == 1


@pytest.mark.parametrize("params,phase", [("", TRAIN), ("", TEST)])
def test_batchnorm_in_place_matches_out_of_place(params, phase):
    """ResNet's `bottom: "x" top: "x"`; a later in-place layer (Scale, ReLU) overwrites the
    output before backward, which must not matter (Caffe keeps x_norm)."""
    x, dy = randn(4, 3, 2, 3, scale=2, shift=1), randn(4, 3, 2, 3, seed=1)
    blobs = [randn(3, seed=3), np.abs(randn(3, seed=4)) + 1, [1.5]]
    ref = batch_norm(params, phase=phase)
    y, dx = forward_backward(ref, x, dy, blobs=blobs)

    layer = batch_norm(params, phase=phase)
    b = Blob(x.shape, np.float32, name="x")
    b.data[...] = x
    layer.setup([b], [b])
    for blob, value in zip(layer.blobs, blobs):
        blob.data[...] = value
    layer.forward([b], [b])
    np.testing.assert_array_equal(b.data, y)
    b.data[...] = -123.0  # what an in-place Scale/ReLU after it would do
    b.diff[...] = dy
    layer.backward([b], [True], [b])
    np.testing.assert_array_equal(b.diff, dx)
    for blob, other in zip(layer.blobs, ref.blobs):
        np.testing.assert_array_equal(blob.data, other.data)


@pytest.mark.parametrize("params", ["", "use_global_stats: true"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 3)])
def test_batchnorm_gradients(params, shape):
    layer = batch_norm(params + " eps: 0.01", dtype=np.float64)
    x = randn(*shape, scale=2, shift=0.5).astype(np.float64)
    # the statistics are not parameters with a gradient: check the bottom only
    check_gradients(layer, [x], check_params=False, max_checks=None)


def test_batchnorm_statistics_are_frozen_like_caffe():
    layer = batch_norm()
    setup_layer(layer, [randn(2, 3)])
    assert layer.param_propagate_down == [False, False, False]
    assert [p.lr_mult for p in layer.param.param] == [0, 0, 0]  # added, as Caffe's LayerSetUp
    explicit = make_layer('type: "BatchNorm" param { lr_mult: 0 decay_mult: 0 } '
                          'param { lr_mult: 0 }')
    setup_layer(explicit, [randn(2, 3)])
    assert [p.lr_mult for p in explicit.param.param] == [0, 0, 0]
    with pytest.raises(ProtonetError, match=r"'bn1' \(BatchNorm\).*param 1 has lr_mult 1"):
        setup_layer(make_layer('name: "bn1" type: "BatchNorm" param { lr_mult: 0 } '
                               'param { lr_mult: 1 }'), [randn(2, 3)])


def test_batchnorm_backward_leaves_statistics_diffs_alone():
    layer = batch_norm()
    bottom, top = setup_layer(layer, [randn(4, 3)])
    layer.forward(bottom, top)
    for blob in layer.blobs:
        blob.diff[...] = 0
    top[0].diff[...] = randn(4, 3, seed=1)
    layer.backward(top, [True], bottom)
    for blob in layer.blobs:
        np.testing.assert_array_equal(blob.diff, 0)


NET = """name: "bn"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" %s }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool" bottom: "label" top: "loss" }
"""


def test_batchnorm_in_a_net_in_place_and_frozen():
    net = protonet.Net(parse_net(NET % ""), protonet.TRAIN, seed=1)
    bn = net.layers[net.layer_names.index("bn")]
    assert bn.param_propagate_down == [False, False, False]
    frozen = [spec.lr_mult for blob, spec in zip(net.learnable_params, net.param_specs)
              if any(blob is b for b in bn.blobs)]
    assert frozen == [0, 0, 0]
    net.blobs["data"].data[...] = randn(4, 3, 2, 2)
    net.blobs["label"].data[...] = [0, 1, 2, 1]
    net.forward_backward()
    assert bn.blobs[2].data[0] == 1  # one update of the running sums
    conv = net.layers[net.layer_names.index("conv")]
    assert np.any(conv.blobs[0].diff != 0)  # the gradient went through the in-place BN
    for blob in bn.blobs:
        np.testing.assert_array_equal(blob.diff, 0)
    test = protonet.Net(parse_net(NET % ""), protonet.TEST, seed=1)
    assert test.layers[test.layer_names.index("bn")].use_global_stats


def test_batchnorm_old_three_param_nets_are_upgraded_to_frozen():
    text = NET % ("param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 }")
    net = protonet.Net(parse_net(text), protonet.TRAIN, seed=1)
    bn = net.layers[net.layer_names.index("bn")]
    assert [p.lr_mult for p in bn.param.param] == [0, 0, 0]


def test_batchnorm_errors():
    layer = batch_norm(name="bn2")
    bottom, top = setup_layer(layer, [randn(2, 3, 4)])
    bottom[0].reshape((2, 5, 4))
    with pytest.raises(ProtonetError, match=r"'bn2' \(BatchNorm\).*5 channels.*made for 3"
                                            r".*\[2, 5, 4\]"):
        layer.reshape(bottom, top)
    with pytest.raises(ProtonetError, match=r"at least 1 axis"):
        run_layer(batch_norm(), [np.float32(1.0)])


def test_batchnorm_one_axis_bottom_is_one_channel():
    x = randn(6, scale=2, shift=3)
    (y,) = run_layer(batch_norm(), [x])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5), rtol=1e-5)


def test_batchnorm_macc():
    layer = batch_norm()
    bottom, top = setup_layer(layer, [randn(2, 3, 4)])
    assert layer.macc(bottom, top) == 24


# -- MVN ------------------------------------------------------------------------------------------
def torch_mvn(t, normalize_variance, across_channels, eps):
    dims = tuple(range(1, t.dim())) if across_channels else tuple(range(2, t.dim()))
    centred = t - t.mean(dim=dims, keepdim=True)
    if not normalize_variance:
        return centred
    std = (centred * centred).mean(dim=dims, keepdim=True).sqrt()
    return centred / (std + eps)  # Caffe adds eps to the standard deviation


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 1, 7), (1, 1, 3, 3)])
@pytest.mark.parametrize("normalize_variance", [True, False])
@pytest.mark.parametrize("across_channels", [False, True])
def test_mvn_matches_torch(shape, normalize_variance, across_channels):
    x, dy = randn(*shape, scale=2, shift=1), randn(*shape, seed=1)
    params = (f"normalize_variance: {str(normalize_variance).lower()} "
              f"across_channels: {str(across_channels).lower()}")
    y, dx = forward_backward(mvn(params), x, dy)
    ty, tdx = torch_reference(
        lambda t: torch_mvn(t, normalize_variance, across_channels, 1e-9), x, dy)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(dx, tdx, rtol=1e-4, atol=2e-5)


def test_mvn_adds_eps_to_the_standard_deviation_and_uses_caffes_backward():
    x, dy = randn(2, 3, 2, 2, scale=0.3), randn(2, 3, 2, 2, seed=1)
    eps = 0.5
    y, dx = forward_backward(mvn(f"eps: {eps}"), x, dy)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    centred = x64 - x64.mean(axis=(2, 3), keepdims=True)
    std = np.sqrt((centred ** 2).mean(axis=(2, 3), keepdims=True))
    y64 = centred / (std + eps)
    np.testing.assert_allclose(y, y64, rtol=1e-5)
    # mvn_layer.cpp's gradient, (dy - mean(dy) - mean(dy * y) * y) / (std + eps): exact only
    # for eps = 0; with eps = 0.5 it differs from the true gradient of the forward
    caffe_dx = (dy64 - dy64.mean(axis=(2, 3), keepdims=True)
                - (dy64 * y64).mean(axis=(2, 3), keepdims=True) * y64) / (std + eps)
    np.testing.assert_allclose(dx, caffe_dx, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape,top", [((4, 3), (4, 3, 1, 1)), ((2, 3, 5), (2, 3, 5, 1)),
                                       ((2, 3, 2, 2), (2, 3, 2, 2))])
def test_mvn_top_is_caffes_legacy_4d_shape(shape, top):
    layer = mvn()
    bottom, tops = setup_layer(layer, [randn(*shape)])
    assert tops[0].shape == top
    assert layer.macc(bottom, tops) == int(np.prod(shape))


def test_mvn_on_a_2d_bottom_normalises_each_value_alone():
    # (N, C) -> (N, C, 1, 1): each plane has one value, so y = 0 (as Caffe)
    (y,) = run_layer(mvn(), [randn(4, 3)])
    assert y.shape == (4, 3, 1, 1)
    np.testing.assert_array_equal(y, 0)
    (y,) = run_layer(mvn("across_channels: true"), [randn(4, 3, shift=2)])
    x64 = randn(4, 3, shift=2).astype(np.float64)
    expected = (x64 - x64.mean(1, keepdims=True)) / (x64.std(1, keepdims=True) + 1e-9)
    np.testing.assert_allclose(y.reshape(4, 3), expected, rtol=1e-5)


@pytest.mark.parametrize("params", ["", "normalize_variance: false", "across_channels: true"])
@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (4, 3)])
def test_mvn_in_place_matches_out_of_place(params, shape):
    x, dy = randn(*shape, scale=2), randn(*shape, seed=1)
    y, dx = forward_backward(mvn(params), x, dy)
    y_in, dx_in = forward_backward(mvn(params), x, dy, in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx.reshape(dx_in.shape))


@pytest.mark.parametrize("params", ["", "normalize_variance: false", "across_channels: true",
                                    "across_channels: true normalize_variance: false"])
def test_mvn_gradients(params):
    x = randn(2, 3, 2, 3, scale=2, shift=1).astype(np.float64)
    check_gradients(mvn(params, dtype=np.float64), [x], max_checks=None)


def test_mvn_refuses_more_than_four_axes():
    with pytest.raises(ProtonetError, match=r"\(MVN\).*at most 4 axes.*\[1, 2, 3, 4, 5\]"):
        run_layer(mvn(), [randn(1, 2, 3, 4, 5)])
