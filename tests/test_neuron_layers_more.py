"""PReLU, ELU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL, Threshold, Clip and Swish:
forward and backward against PyTorch in float32, Caffe's special cases by hand, in place,
and by finite differences."""
import math

import numpy as np
import pytest

from protonet import ProtonetError
from protonet.blob import Blob
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")
F = torch.nn.functional


def make(text, dtype=np.float32, seed=0):
    return make_layer(text, dtype=dtype, seed=seed)


def randn(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def away_from(x, points, gap=0.02):
    """``x`` with values within ``gap`` of any of ``points`` (kinks) pushed past them."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, 2 * gap, -2 * gap).astype(x.dtype)
    return x


def forward_backward(layer, x, dy, in_place=False, params=None):
    """Set up (in place or not), forward, backward; returns (y, dx, param diffs)."""
    bottom = Blob(x.shape, layer.dtype, name="x")
    bottom.data[...] = x
    top = bottom if in_place else Blob((), layer.dtype, name="y")
    layer.setup([bottom], [top])
    layer.fill_params()
    for blob, value in zip(layer.blobs, params or []):
        blob.data[...] = value
    layer.forward([bottom], [top])
    y = top.data.copy()
    top.diff[...] = dy
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs]


def torch_reference(fn, x, dy):
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = fn(tx)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy()


SHAPES = [(7, 3), (2, 3, 4, 5), (2, 4, 3)]

# (prototxt, torch function of x, input transform, kinks to keep away from)
CASES = {
    "ELU-1": ('type: "ELU"', lambda t: F.elu(t, 1.0), None, [0.0]),
    "ELU-0.3": ('type: "ELU" elu_param { alpha: 0.3 }', lambda t: F.elu(t, 0.3), None, [0.0]),
    "ELU-2.5": ('type: "ELU" elu_param { alpha: 2.5 }', lambda t: F.elu(t, 2.5), None, [0.0]),
    "Sigmoid": ('type: "Sigmoid"', torch.sigmoid, lambda x: x * 4, []),
    "TanH": ('type: "TanH"', torch.tanh, lambda x: x * 2, []),
    "AbsVal": ('type: "AbsVal"', torch.abs, None, [0.0]),
    "Power-2-shift": ('type: "Power" power_param { power: 2 scale: 1.5 shift: 0.5 }',
                      lambda t: (0.5 + 1.5 * t) ** 2, None, []),
    "Power-3-noshift": ('type: "Power" power_param { power: 3 scale: -2 }',
                        lambda t: (-2 * t) ** 3, None, [0.0]),
    "Power-0.5": ('type: "Power" power_param { power: 0.5 scale: 0.7 shift: 4 }',
                  lambda t: (4 + 0.7 * t) ** 0.5, None, []),
    "Power-neg": ('type: "Power" power_param { power: -1.5 scale: 1 shift: 5 }',
                  lambda t: (5 + t) ** -1.5, None, []),
    "Power-1": ('type: "Power" power_param { power: 1 scale: 3 shift: -1 }',
                lambda t: -1 + 3 * t, None, []),
    "Power-default": ('type: "Power"', lambda t: t * 1, None, []),
    "Exp-e": ('type: "Exp"', torch.exp, None, []),
    "Exp-2": ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
              lambda t: 2 ** (1 + 0.5 * t), None, []),
    "Exp-10": ('type: "Exp" exp_param { base: 10 scale: -0.3 shift: 0.2 }',
               lambda t: 10 ** (0.2 - 0.3 * t), None, []),
    "Exp-e-shift": ('type: "Exp" exp_param { scale: 2 shift: -1 }',
                    lambda t: torch.exp(-1 + 2 * t), None, []),
    "Log-e": ('type: "Log"', torch.log, lambda x: np.abs(x) + 0.1, []),
    "Log-2": ('type: "Log" log_param { base: 2 scale: 0.5 shift: 3 }',
              lambda t: torch.log(3 + 0.5 * t) / math.log(2), None, []),
    "Log-10": ('type: "Log" log_param { base: 10 scale: 2 shift: 5 }',
               lambda t: torch.log10(5 + 2 * t), None, []),
    "BNLL": ('type: "BNLL"', F.softplus, lambda x: x * 5, []),
    "Clip": ('type: "Clip" clip_param { min: -0.5 max: 0.8 }',
             lambda t: torch.clamp(t, -0.5, 0.8), None, [-0.5, 0.8]),
    "Swish-1": ('type: "Swish"', lambda t: t * torch.sigmoid(t), lambda x: x * 3, []),
    "Swish-1.7": ('type: "Swish" swish_param { beta: 1.7 }',
                  lambda t: t * torch.sigmoid(1.7 * t), lambda x: x * 3, []),
    "Swish-neg": ('type: "Swish" swish_param { beta: -0.4 }',
                  lambda t: t * torch.sigmoid(-0.4 * t), lambda x: x * 3, []),
}


def case_input(name, shape, seed=0):
    _, _, transform, kinks = CASES[name]
    x = randn(*shape, seed=seed)
    if transform is not None:
        x = transform(x).astype(np.float32)
    return away_from(x, kinks)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_neuron_matches_torch(name, shape):
    text, fn, _, _ = CASES[name]
    x, dy = case_input(name, shape), randn(*shape, seed=1)
    y, dx, _ = forward_backward(make(text, dtype=np.float32), x, dy)
    ty, tdx = torch_reference(fn, x, dy)
    assert y.dtype == np.float32 and dx.dtype == np.float32 and y.shape == shape
    # atol: Caffe's exp(x) - 1 (ELU) and 0.5 tanh(x/2) + 0.5 (sigmoid) lose a few ulp of 1
    # near 0 where torch uses expm1 and 1/(1 + exp(-x))
    np.testing.assert_allclose(y, ty, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(dx, tdx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_neuron_gradients(name):
    text = CASES[name][0]
    x = case_input(name, (2, 3, 4), seed=2).astype(np.float64)
    check_gradients(make(text, dtype=np.float64), [x], max_checks=None)


# -- PReLU ----------------------------------------------------------------------------------------
def prelu(extra="", dtype=np.float32):
    return make(f'type: "PReLU" prelu_param {{ {extra} }}', dtype=dtype)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 5), (2, 3, 7), (1, 3, 2, 2, 2)])
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_matches_torch(shape, shared):
    x, dy = randn(*shape), randn(*shape, seed=1)
    slopes = np.array([0.3] if shared else [0.25, -0.5, 1.5], np.float32)
    layer = prelu(f"channel_shared: {str(shared).lower()}")
    y, dx, (da,) = forward_backward(layer, x, dy,
                                    params=[slopes.reshape(()) if shared else slopes])
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ta = torch.from_numpy(slopes.copy()).requires_grad_()
    ty = F.prelu(tx, ta)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(da.reshape(-1), ta.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert da.dtype == np.float32


def test_prelu_blob_shapes_and_default_filler():
    layer = prelu()
    setup_layer(layer, [randn(2, 3, 4)])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    shared = prelu("channel_shared: true")
    setup_layer(shared, [randn(2, 3, 4)])
    assert shared.blobs[0].shape == ()  # Caffe's 0-axis blob (one value)
    assert float(shared.blobs[0].data) == 0.25
    filled = prelu('filler { type: "constant" value: -0.1 }')
    setup_layer(filled, [randn(2, 3, 4)])
    np.testing.assert_array_equal(filled.blobs[0].data, np.float32(-0.1))


def test_prelu_slope_gradient_accumulates_and_respects_param_propagate_down():
    x, dy = randn(2, 3, 4), randn(2, 3, 4, seed=1)
    layer = prelu()
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.blobs[0].diff[...] = 0
    layer.backward(top, [True], bottom)
    once = layer.blobs[0].diff.copy()
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-6)
    layer.param_propagate_down = [False]
    layer.blobs[0].diff[...] = 7
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, 7)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradients(shared):
    layer = prelu(f'channel_shared: {str(shared).lower()} '
                  'filler { type: "uniform" min: -0.5 max: 0.9 }', dtype=np.float64)
    check_gradients(layer, [randn(2, 3, 2, 3).astype(np.float64)], kink=0.0,
                    kink_range=0.01, max_checks=None)


# -- in place -------------------------------------------------------------------------------------
IN_PLACE = [
    'type: "PReLU" prelu_param { filler { type: "uniform" min: -0.5 max: 0.9 } }',
    'type: "PReLU" prelu_param { channel_shared: true }',
    'type: "ELU"', 'type: "ELU" elu_param { alpha: -0.5 }', 'type: "Sigmoid"', 'type: "TanH"',
    'type: "Power" power_param { power: 2 scale: 1.5 shift: 0.5 }',
    'type: "Power" power_param { power: 3 scale: -2 }',
    'type: "Power" power_param { power: 0.5 scale: 0.7 shift: 4 }',
    'type: "Power" power_param { power: 1 scale: 0.017 }',
    'type: "Power" power_param { power: 0 }',
    'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
    'type: "Log" log_param { scale: 0.5 shift: 3 }',
    'type: "BNLL"', 'type: "Clip" clip_param { min: -0.5 max: 0.8 }',
    'type: "Swish" swish_param { beta: 1.7 }',
    'type: "ReLU" relu_param { negative_slope: 0.1 }',
]


@pytest.mark.parametrize("text", IN_PLACE)
def test_in_place_matches_out_of_place(text):
    """In place, Caffe's PReLU keeps a copy of the input; here every layer whose backward
    reads the input (Power, Log, BNLL, Clip, ELU with alpha < 0) does the same."""
    x = away_from(randn(3, 3, 2, 4, scale=2), [-0.5, 0.0, 0.8])
    dy = randn(3, 3, 2, 4, seed=1)
    y, dx, dparams = forward_backward(make(text, seed=5), x, dy)
    y_in, dx_in, dparams_in = forward_backward(make(text, seed=5), x, dy, in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx)
    for a, b in zip(dparams_in, dparams):
        np.testing.assert_array_equal(a, b)


def test_absval_refuses_in_place_as_caffe():
    layer = make('name: "abs" type: "AbsVal"')
    b = Blob((2, 3))
    with pytest.raises(ProtonetError, match=r"'abs' \(AbsVal\).*in-place"):
        layer.setup([b], [b])


# -- Caffe's special cases, by hand ---------------------------------------------------------------
def test_power_constant_cases():
    x, dy = randn(2, 3), randn(2, 3, seed=1)
    dy[0, 0] = np.nan
    # power 0: y = 1 and dx = 0 (set, not multiplied by dy: the NaN does not pass)
    y, dx, _ = forward_backward(make('type: "Power" power_param { power: 0 shift: 2 }'),
                                x, dy)
    np.testing.assert_array_equal(y, 1)
    np.testing.assert_array_equal(dx, 0)
    # scale 0: y = shift^power everywhere
    y, dx, _ = forward_backward(
        make('type: "Power" power_param { power: 3 scale: 0 shift: 2 }'), x, dy)
    np.testing.assert_array_equal(y, 8)
    np.testing.assert_array_equal(dx, 0)
    # power 1: dx = scale * dy exactly
    y, dx, _ = forward_backward(
        make('type: "Power" power_param { power: 1 scale: 0.5 shift: 2 }'), x, dy)
    np.testing.assert_array_equal(y, x * np.float32(0.5) + np.float32(2))
    np.testing.assert_array_equal(dx[1], dy[1] * np.float32(0.5))


def test_power_without_shift_is_nan_at_zero_as_caffe():
    # Caffe computes dy/dx = power * y / x there: 0/0
    x = np.array([[0.0, 2.0]], np.float32)
    with np.errstate(invalid="ignore"):
        y, dx, _ = forward_backward(
            make('type: "Power" power_param { power: 3 scale: 2 }'), x,
            np.ones_like(x))
    np.testing.assert_array_equal(y, [[0.0, 64.0]])
    assert np.isnan(dx[0, 0]) and dx[0, 1] == pytest.approx(3 * 2 * 4 ** 2)


def test_bnll_is_stable_for_large_inputs():
    x = np.array([[-100.0, -60.0, -20.0, 0.0, 20.0, 49.0, 60.0, 100.0]], np.float32)
    y, dx, _ = forward_backward(make('type: "BNLL"'), x, np.ones_like(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, np.logaddexp(0, x64), rtol=1e-6, atol=1e-43)  # denormals
    # backward saturates at exp(50) as Caffe's kBNLL_THRESHOLD
    np.testing.assert_allclose(dx, 1 / (1 + np.exp(-np.minimum(x64, 50))), rtol=1e-6,
                               atol=1e-43)
    assert np.all(np.isfinite(dx))


def test_threshold_forward_and_no_backward():
    layer = make('name: "th" type: "Threshold" threshold_param { threshold: 0.5 }')
    x = np.array([[-1.0, 0.5, 0.50001, 2.0]], np.float32)
    (y,) = run_layer(layer, [x])
    np.testing.assert_array_equal(y, [[0, 0, 1, 1]])  # strictly greater
    assert y.dtype == np.float32
    (y0,) = run_layer(make('type: "Threshold"'), [np.array([0.0, 1e-30], np.float32)])
    np.testing.assert_array_equal(y0, [0, 1])
    assert not layer.has_backward and not layer.allow_force_backward(0)
    bottom, top = setup_layer(layer, [x])
    layer.backward(top, [False], bottom)  # nothing asked: fine
    with pytest.raises(ProtonetError, match=r"'th' \(Threshold\).*cannot propagate"):
        layer.backward(top, [True], bottom)


def test_threshold_in_place():
    layer = make('type: "Threshold" threshold_param { threshold: 0.1 }')
    b = Blob((3,))
    b.data[...] = [0.0, 0.2, -3.0]
    layer.setup([b], [b])
    layer.forward([b], [b])
    np.testing.assert_array_equal(b.data, [0, 1, 0])


def test_clip_gradient_passes_at_both_ends_inclusive():
    # clip_layer.cpp: dx = dy where min <= x <= max, both inclusive
    x = np.array([-2.0, -0.5, -0.49, 0.8, 0.81, 3.0], np.float32)
    layer = make('type: "Clip" clip_param { min: -0.5 max: 0.8 }')
    y, dx, _ = forward_backward(layer, x, np.ones_like(x))
    np.testing.assert_array_equal(y, np.array([-0.5, -0.5, -0.49, 0.8, 0.8, 0.8], np.float32))
    np.testing.assert_array_equal(dx, [0, 1, 1, 1, 0, 0])
    _, dx_in, _ = forward_backward(make('type: "Clip" clip_param { min: -0.5 max: 0.8 }'),
                                   x, np.ones_like(x), in_place=True)
    np.testing.assert_array_equal(dx_in, dx)


def test_clip_min_above_max_gives_min_as_caffe():
    (y,) = run_layer(make('type: "Clip" clip_param { min: 1 max: -1 }'),
                     [np.array([-5.0, 0.0, 5.0], np.float32)])
    np.testing.assert_array_equal(y, [1, 1, 1])  # max(min, min(x, max))


def test_sigmoid_is_caffes_tanh_form():
    x = randn(1000, scale=6)
    (y,) = run_layer(make('type: "Sigmoid"'), [x])
    half = np.float32(0.5)
    np.testing.assert_array_equal(y, half * np.tanh(half * x) + half)


def test_elu_uses_exp_minus_one_as_caffe():
    x = np.array([-1e-4, -1.0, 2.0], np.float32)
    (y,) = run_layer(make('type: "ELU" elu_param { alpha: 2 }'), [x])
    expected = np.maximum(x, 0) + np.float32(2) * (np.exp(np.minimum(x, 0)) - np.float32(1))
    np.testing.assert_array_equal(y, expected)


def test_exp_and_log_by_hand():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    (y,) = run_layer(make('type: "Exp" exp_param { base: 2 scale: 3 shift: 1 }'), [x])
    np.testing.assert_allclose(y, [2.0, 16.0, 128.0], rtol=1e-6)
    (y,) = run_layer(make('type: "Log" log_param { base: 10 scale: 10 shift: 1 }'),
                     [np.array([0.0, 0.9, 9.9], np.float32)])
    np.testing.assert_allclose(y, [0.0, 1.0, 2.0], rtol=1e-6, atol=1e-7)


# -- errors, shapes, macc -------------------------------------------------------------------------
def test_clip_requires_min_and_max():
    with pytest.raises(ProtonetError, match=r"'clip' \(Clip\).*clip_param.max must be given"):
        run_layer(make('name: "clip" type: "Clip" clip_param { min: 0 }'), [randn(2)])
    with pytest.raises(ProtonetError, match=r"clip_param.min and clip_param.max"):
        run_layer(make('type: "Clip"'), [randn(2)])


def test_prelu_errors():
    with pytest.raises(ProtonetError, match=r"'p' \(PReLU\).*at least 2 axes.*\[5\]"):
        run_layer(make('name: "p" type: "PReLU"'), [randn(5)])
    layer = prelu()
    bottom, top = setup_layer(layer, [randn(2, 3, 4)])
    bottom[0].reshape((2, 4, 4))
    with pytest.raises(ProtonetError, match=r"4 channels.*made for 3.*\[2, 4, 4\]"):
        layer.reshape(bottom, top)
    # a loaded blob of the wrong size
    layer = prelu("channel_shared: true")
    layer.add_param((3,))
    with pytest.raises(ProtonetError, match=r"3 values, channel_shared true needs 1"):
        setup_layer(layer, [randn(2, 3, 4)])


@pytest.mark.parametrize("text,match", [
    ('type: "Exp" exp_param { base: -2 }', r"base must be strictly positive.*-2"),
    ('type: "Exp" exp_param { base: 0 }', r"base must be strictly positive"),
    ('type: "Log" log_param { base: -0.5 }', r"base must be strictly positive"),
    ('type: "Log" log_param { base: 1 }', r"1/log\(base\) = inf"),
])
def test_base_errors(text, match):
    with pytest.raises(ProtonetError, match=match):
        run_layer(make(text), [randn(2, 3)])


@pytest.mark.parametrize("text", sorted({c[0] for c in CASES.values()}) + [
    'type: "PReLU"', 'type: "Threshold"', 'type: "ReLU"'])
def test_shape_and_macc(text):
    layer = make(text, dtype=np.float32)
    bottom, top = setup_layer(layer, [np.abs(randn(2, 3, 4, 5)) + 0.5])
    assert top[0].shape == (2, 3, 4, 5)
    assert layer.macc(bottom, top) == 2 * 3 * 4 * 5
    layer.forward(bottom, top)
    assert top[0].data.dtype == np.float32
    bottom[0].reshape((4, 3, 2))
    layer.reshape(bottom, top)
    assert top[0].shape == (4, 3, 2)
