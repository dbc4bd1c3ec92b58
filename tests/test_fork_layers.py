"""The forks' small layers: ReLU6 and Axpy."""
import numpy as np
import pytest

from protonet import ProtonetError
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")


def away_from_kinks(shape, seed=0):
    """Values in (-3, 9) at least 0.05 away from the kinks at 0 and 6."""
    x = np.random.default_rng(seed).uniform(-3, 9, shape)
    for kink in (0.0, 6.0):
        near = np.abs(x - kink) < 0.05
        x[near] += 0.1
    return x


# -- ReLU6 ---------------------------------------------------------------------------------------
def test_relu6_matches_torch():
    x = away_from_kinks((2, 3, 4, 5)).astype(np.float32)
    (y,) = run_layer(make_layer('type: "ReLU6"', dtype=np.float32), [x])
    np.testing.assert_array_equal(y, torch.nn.functional.relu6(torch.from_numpy(x)).numpy())


def test_relu6_negative_slope():
    x = np.array([-2.0, 0.5, 7.0])
    (y,) = run_layer(make_layer('type: "ReLU6" relu_param { negative_slope: 0.1 }'), [x])
    np.testing.assert_allclose(y, [-0.2, 0.5, 6.0])


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_relu6_gradients(slope):
    check_gradients(make_layer(f'type: "ReLU6" relu_param {{ negative_slope: {slope} }}'),
                    [away_from_kinks((2, 3, 4))])


def test_relu6_in_place_keeps_the_input_mask():
    layer = make_layer('type: "ReLU6"')
    x = np.array([-1.0, 3.0, 8.0])
    bottom, top = setup_layer(layer, [x], num_top=1)
    top = bottom                                   # in place
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(bottom[0].data, [0.0, 3.0, 6.0])
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [0.0, 1.0, 0.0])


def test_relu6_agrees_with_opencv(tmp_path):
    from opencv_oracle import protonet_and_opencv
    net = """input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 6 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 4 kernel_size: 3
        weight_filler { type: "gaussian" std: 2 } bias_filler { type: "constant" value: 1 } } }
    layer { name: "act" type: "ReLU6" bottom: "conv" top: "act" }"""
    x = np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(np.float32)
    ours, theirs = protonet_and_opencv(tmp_path, net, {"data": x}, ["act"])
    assert ours["act"].max() == 6.0 and ours["act"].min() == 0.0
    np.testing.assert_allclose(ours["act"], theirs["act"], rtol=1e-5, atol=1e-5)


# -- Axpy -----------------------------------------------------------------------------------------
def axpy_inputs(scale_shape=(2, 3, 1, 1), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=scale_shape), rng.normal(size=(2, 3, 4, 5)),
            rng.normal(size=(2, 3, 4, 5))]


@pytest.mark.parametrize("scale_shape", [(2, 3, 1, 1), (2, 3)])
def test_axpy_forward(scale_shape):
    a, x, y = axpy_inputs(scale_shape)
    (f,) = run_layer(make_layer('type: "Axpy"'), [a, x, y])
    np.testing.assert_allclose(f, a.reshape(2, 3, 1, 1) * x + y, rtol=1e-12)


@pytest.mark.parametrize("scale_shape", [(2, 3, 1, 1), (2, 3)])
def test_axpy_gradients(scale_shape):
    check_gradients(make_layer('type: "Axpy"'), axpy_inputs(scale_shape))


def test_axpy_in_place_on_y():
    layer = make_layer('type: "Axpy"')
    a, x, y = axpy_inputs()
    bottom, top = setup_layer(layer, [a, x, y], num_top=1)
    top = [bottom[2]]
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_allclose(bottom[2].data, a * x + y, rtol=1e-12)
    g = np.random.default_rng(5).normal(size=x.shape)
    top[0].diff[...] = g
    layer.backward(top, [True, True, True], bottom)
    np.testing.assert_allclose(bottom[1].diff, a * g, rtol=1e-12)
    np.testing.assert_allclose(bottom[2].diff, g, rtol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, (g * x).sum(axis=(2, 3), keepdims=True))


@pytest.mark.parametrize("shapes, message", [
    ([(2, 4, 1, 1), (2, 3, 4, 5), (2, 3, 4, 5)], "N x C"),
    ([(2, 3, 2, 1), (2, 3, 4, 5), (2, 3, 4, 5)], "N x C"),
    ([(2, 3), (2, 3, 4, 5), (2, 3, 4, 4)], "same shape"),
])
def test_axpy_shape_errors_name_the_layer(shapes, message):
    with pytest.raises(ProtonetError, match=f"layer 'axpy'.*{message}.*bottoms"):
        run_layer(make_layer('type: "Axpy"'), [np.zeros(s) for s in shapes])


# -- Pooling's ceil_mode (DenseNet-Caffe, OpenCV) ------------------------------------------------
@pytest.mark.parametrize("fork, bvlc", [("ceil_mode: false", "round_mode: FLOOR"),
                                        ("ceil_mode: true", "round_mode: CEIL")])
def test_pooling_ceil_mode_is_round_mode(fork, bvlc):
    x = np.random.default_rng(3).normal(size=(1, 2, 7, 7))
    pool = 'type: "Pooling" pooling_param {{ pool: AVE kernel_size: 2 stride: 2 {} }}'
    (ours,) = run_layer(make_layer(pool.format(fork)), [x])
    (theirs,) = run_layer(make_layer(pool.format(bvlc)), [x])
    assert ours.shape == (1, 2, 3, 3) if "false" in fork else ours.shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(ours, theirs)


def test_pooling_contradicting_ceil_and_round_mode_is_an_error():
    layer = make_layer('name: "pool" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 '
                       'ceil_mode: false round_mode: CEIL }')
    with pytest.raises(ProtonetError, match="layer 'pool'.*ceil_mode and round_mode"):
        run_layer(layer, [np.zeros((1, 1, 4, 4))])


def test_pooling_ceil_mode_agrees_with_opencv(tmp_path):
    from opencv_oracle import protonet_and_opencv
    net = """input: "data" input_shape { dim: 1 dim: 2 dim: 7 dim: 7 }
    layer { name: "floor" type: "Pooling" bottom: "data" top: "floor"
            pooling_param { pool: AVE kernel_size: 2 stride: 2 ceil_mode: false } }
    layer { name: "ceil" type: "Pooling" bottom: "data" top: "ceil"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: true } }"""
    x = np.random.default_rng(4).normal(size=(1, 2, 7, 7)).astype(np.float32)
    ours, theirs = protonet_and_opencv(tmp_path, net, {"data": x}, ["floor", "ceil"])
    assert ours["floor"].shape == (1, 2, 3, 3) and ours["ceil"].shape == (1, 2, 4, 4)
    for name in ("floor", "ceil"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-6)


def test_densenet121_agrees_with_opencv(tmp_path, corpus):
    """DenseNet-Caffe's deploy net (ceil_mode: false pooling, BatchNorm + Scale) with random
    weights saved by protonet: the class probabilities OpenCV dnn computes."""
    import os
    from opencv_oracle import protonet_and_opencv
    path = os.path.join(corpus, "shicai", "DenseNet-Caffe", "DenseNet_121.prototxt")
    if not os.path.exists(path):
        pytest.skip("DenseNet-121 not in the corpus")
    with open(path) as f:
        text = f.read()
    x = np.random.default_rng(5).uniform(-1, 1, size=(1, 3, 224, 224)).astype(np.float32)
    ours, theirs = protonet_and_opencv(tmp_path, text, {"data": x}, ["fc6"], randomize=True)
    scale = np.abs(ours["fc6"]).max()
    assert scale > 0
    np.testing.assert_allclose(ours["fc6"], theirs["fc6"].reshape(ours["fc6"].shape),
                               rtol=0, atol=1e-4 * scale)


# -- ShuffleChannel ------------------------------------------------------------------------------
def test_shuffle_channel_matches_torch():
    x = np.random.default_rng(6).normal(size=(2, 12, 3, 4)).astype(np.float32)
    (y,) = run_layer(make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 3 }',
                                dtype=np.float32), [x])
    np.testing.assert_array_equal(
        y, torch.nn.functional.channel_shuffle(torch.from_numpy(x), 3).numpy())


def test_shuffle_channel_gradients():
    check_gradients(make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 2 }'),
                    [np.random.default_rng(7).normal(size=(2, 6, 2, 3))])


def test_shuffle_channel_errors():
    with pytest.raises(ProtonetError, match="divide into.*group = 4"):
        run_layer(make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 4 }'),
                  [np.zeros((1, 6, 2, 2))])
    with pytest.raises(ProtonetError, match="group must be positive"):
        run_layer(make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 0 }'),
                  [np.zeros((1, 6, 2, 2))])


# -- Interp --------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, in_hw, out_hw", [
    ("zoom_factor: 8", (5, 7), (33, 49)),                   # (n-1)*8 + 1
    ("shrink_factor: 4", (33, 50), (9, 13)),                # (n-1)//4 + 1
    ("shrink_factor: 2 zoom_factor: 3", (9, 10), (13, 13)),  # shrink, then zoom
    ("height: 6 width: 3", (4, 4), (6, 3)),
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (6, 7), (7, 9)),
])
def test_interp_output_sizes_and_values(params, in_hw, out_hw):
    from protonet.interp import resize_bilinear_reference
    x = np.random.default_rng(8).normal(size=(2, 3) + in_hw)
    (y,) = run_layer(make_layer(f'type: "Interp" interp_param {{ {params} }}'), [x])
    assert y.shape == (2, 3) + out_hw
    crop = 1 if "pad_beg" in params else 0
    x = x[:, :, crop:in_hw[0] - crop, crop:in_hw[1] - crop]
    np.testing.assert_allclose(y, resize_bilinear_reference(x, out_hw), rtol=1e-12)


def test_interp_takes_the_size_of_a_second_bottom():
    x, ref = np.zeros((1, 2, 4, 5)), np.zeros((1, 7, 9, 11))
    (y,) = run_layer(make_layer('type: "Interp"'), [x, ref])
    assert y.shape == (1, 2, 9, 11)


def test_interp_matches_torch_align_corners():
    x = np.random.default_rng(9).normal(size=(2, 3, 5, 6)).astype(np.float32)
    (y,) = run_layer(make_layer('type: "Interp" interp_param { height: 13 width: 8 }',
                                dtype=np.float32), [x])
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=(13, 8),
                                               mode="bilinear", align_corners=True)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params", ["zoom_factor: 3", "shrink_factor: 2",
                                    "height: 4 width: 9 pad_beg: -1 pad_end: -2"])
def test_interp_gradients(params):
    check_gradients(make_layer(f'type: "Interp" interp_param {{ {params} }}'),
                    [np.random.default_rng(10).normal(size=(2, 2, 6, 7))])


@pytest.mark.parametrize("params, message", [
    ("pad_beg: 1", "pad_beg must be <= 0"),
    ("zoom_factor: 0", "zoom_factor must be at least 1"),
    ("", "needs zoom_factor"),
    ("height: 3 width: 3 pad_beg: -3 pad_end: -2", "crop the whole input"),
])
def test_interp_errors_name_the_layer_and_field(params, message):
    with pytest.raises(ProtonetError, match=f"layer 'interp'.*{message}"):
        run_layer(make_layer(f'type: "Interp" interp_param {{ {params} }}'),
                  [np.zeros((1, 1, 4, 4))])


def test_interp_and_shuffle_channel_agree_with_opencv(tmp_path):
    from opencv_oracle import protonet_and_opencv
    net = """input: "data" input_shape { dim: 1 dim: 4 dim: 5 dim: 7 }
    layer { name: "zoom" type: "Interp" bottom: "data" top: "zoom"
            interp_param { zoom_factor: 4 } }
    layer { name: "sized" type: "Interp" bottom: "data" top: "sized"
            interp_param { height: 9 width: 4 } }
    layer { name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "shuffle"
            shuffle_channel_param { group: 2 } }"""
    x = np.random.default_rng(11).normal(size=(1, 4, 5, 7)).astype(np.float32)
    names = ["zoom", "sized", "shuffle"]
    ours, theirs = protonet_and_opencv(tmp_path, net, {"data": x}, names)
    assert ours["zoom"].shape == (1, 4, 17, 25)
    for name in names:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5)


# -- Upsample ------------------------------------------------------------------------------------
UNPOOL = """name: "segnet_unpool" force_backward: true
input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 10 }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up"
        upsample_param { %s } }
"""


@pytest.mark.parametrize("params", ["scale: 2", "upsample_h: 8 upsample_w: 10"])
def test_upsample_after_pooling_is_torch_max_unpool(params):
    import protonet
    from protonet.io import parse_net
    net = protonet.Net(parse_net(UNPOOL % params), protonet.TEST, dtype=np.float64)
    x = np.random.default_rng(12).normal(size=(2, 3, 8, 10))
    up = net.forward(data=x)["up"]
    pooled, index = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    expected = torch.nn.functional.max_unpool2d(pooled, index, 2, output_size=(8, 10))
    np.testing.assert_array_equal(up, expected.numpy())
    g = np.random.default_rng(13).normal(size=up.shape)
    net.backward(up=g)
    np.testing.assert_array_equal(net.blobs["pool"].diff,
                                  np.take_along_axis(g.reshape(2, 3, -1),
                                                     index.numpy().reshape(2, 3, -1),
                                                     axis=2).reshape(2, 3, 4, 5))


def test_upsample_pad_out_and_clashes():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = np.array([[[[0.0, 0.0], [8.0, 4.0]]]])   # two values to position 0: the later wins
    layer = make_layer('type: "Upsample" upsample_param { scale: 2 pad_out_h: true }')
    (y,) = run_layer(layer, [x, mask])
    assert y.shape == (1, 1, 3, 4)
    expected = np.zeros(12)
    expected[[0, 8, 4]] = [2.0, 3.0, 4.0]
    np.testing.assert_array_equal(y.ravel(), expected)


def test_upsample_gradients():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(2, 2, 3, 3))
    mask = np.stack([rng.permutation(36)[:9] for _ in range(4)]).reshape(2, 2, 3, 3)
    check_gradients(make_layer('type: "Upsample" upsample_param { scale: 2 }'),
                    [x, mask.astype(float)], check_bottoms=[0])


@pytest.mark.parametrize("params, bottoms, message", [
    ("upsample_h: 4", None, "both upsample_h and upsample_w"),
    ("scale: 1", None, "must be >= 2"),
    ("scale: 3 pad_out_h: true", None, "need a scale of 2"),
    ("scale: 2", [np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), 16.0)], "out of range"),
    ("scale: 2", [np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 3))], "mask must both"),
])
def test_upsample_errors_name_the_layer(params, bottoms, message):
    bottoms = bottoms or [np.zeros((1, 1, 2, 2))] * 2
    with pytest.raises(ProtonetError, match=f"layer 'upsample'.*{message}"):
        run_layer(make_layer(f'type: "Upsample" upsample_param {{ {params} }}'), bottoms)
