"""ReLU against PyTorch, in place, and by finite differences."""
import numpy as np
import pytest

from protonet.testing import check_gradients, make_layer, setup_layer

torch = pytest.importorskip("torch")


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def relu(slope, dtype=np.float32):
    return make_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}', dtype=dtype)


def run(layer, x, dy, in_place=False):
    """Forward and backward; returns (y, dx)."""
    bottom, top = setup_layer(layer, [x])
    if in_place:
        top = [bottom[0]]
        layer.setup(bottom, top)
    layer.forward(bottom, top)
    y = top[0].data.copy()
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    return y, bottom[0].diff.copy()


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("slope", [0.0, 0.1, 2.0])
def test_relu_matches_torch(shape, slope):
    x, dy = randn(*shape), randn(*shape, seed=1)
    x.flat[0] = 0.0  # the kink: Caffe (and torch) give slope * dy there
    y, dx = run(relu(slope), x, dy)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = torch.nn.functional.leaky_relu(tx, slope)
    ty.backward(torch.from_numpy(dy))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_relu_in_place_matches_out_of_place(slope):
    x, dy = randn(4, 6), randn(4, 6, seed=1)
    y, dx = run(relu(slope), x, dy)
    y_in, dx_in = run(relu(slope), x, dy, in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx)


@pytest.mark.parametrize("slope", [0.0, 0.3])
def test_relu_gradients(slope):
    check_gradients(relu(slope, np.float64), [randn(3, 4, 5).astype(np.float64)],
                    kink=0.0, kink_range=0.01)
