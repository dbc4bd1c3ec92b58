"""N-D (3+ spatial axes) Convolution, Deconvolution, Im2col: kernels, PyTorch, gradients, nets."""
import json

import numpy as np
import pytest

import protonet
from protonet.cli import main
from protonet.errors import ProtonetError
from protonet.im2col import im2col
from protonet.im2col_nd import (col2im_nd, col2im_nd_reference, conv_out_shape,
                                convolution_nd_reference, deconv_out_shape,
                                deconvolution_nd_reference, im2col_nd, im2col_nd_reference)
from protonet.io import parse_net
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

FILLED = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


@pytest.fixture
def torch():
    """PyTorch (CPU), the reference for the comparison tests; they skip without it."""
    return pytest.importorskip("torch")


def randn(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def layer_of(kind, params, dtype=np.float64, extra=""):
    return make_layer(f'name: "{kind.lower()}" type: "{kind}" {extra} '
                      f'convolution_param {{ {params} {FILLED} }}', dtype=dtype)


def per_axis(name, values):
    return " ".join(f"{name}: {v}" for v in values)


def assert_close(actual, expected, tol=1e-5):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


# -- (a) kernels: fast vs reference -----------------------------------------------------------
GEOMETRIES = [
    # (N, C, *S), kernel, pad, stride, dilation
    ((2, 2, 4, 5, 3), (2, 2, 2), (0, 0, 0), (1, 1, 1), (1, 1, 1)),
    ((1, 3, 5, 4, 6), (3, 2, 3), (1, 0, 2), (2, 1, 3), (1, 1, 1)),
    ((2, 1, 7, 5, 6), (2, 3, 2), (1, 1, 0), (1, 2, 1), (2, 1, 3)),      # dilation
    ((1, 2, 3, 4, 3), (3, 3, 3), (3, 2, 1), (1, 1, 1), (1, 1, 1)),      # pad >= kernel
    ((2, 2, 5, 5, 5), (1, 1, 1), (0, 0, 0), (3, 2, 1), (1, 1, 1)),      # stride > kernel
    ((1, 2, 3, 4, 2, 3), (2, 1, 2, 2), (1, 0, 1, 0), (1, 2, 1, 1), (1, 1, 1, 2)),  # 4 axes
    ((2, 2, 6, 5), (3, 2), (1, 1), (2, 1), (1, 2)),                     # 2-D through N-D
]


@pytest.mark.parametrize("shape, kernel, pad, stride, dilation", GEOMETRIES)
def test_im2col_nd_matches_reference(shape, kernel, pad, stride, dilation):
    x = randn(*shape)
    expected = im2col_nd_reference(x, kernel, pad, stride, dilation)
    np.testing.assert_array_equal(im2col_nd(x, kernel, pad, stride, dilation), expected)
    # into kept scratch full of garbage: a transposed (non-contiguous) out and a padding frame
    out = np.full(expected.shape[::-1], np.nan).T
    frame = np.full(shape[:2] + tuple(n + 2 * p for n, p in zip(shape[2:], pad)), np.nan)
    im2col_nd(x, kernel, pad, stride, dilation, out=out, frame=frame)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape, kernel, pad, stride, dilation", GEOMETRIES)
def test_col2im_nd_matches_reference_and_is_the_adjoint(shape, kernel, pad, stride, dilation):
    x = randn(*shape, seed=1)
    out_shape = conv_out_shape(shape[2:], kernel, pad, stride, dilation)
    col = randn(*((shape[1],) + kernel + (shape[0],) + out_shape), seed=2)
    folded = col2im_nd(col, shape, kernel, pad, stride, dilation,
                       out=np.full(shape, np.nan))  # overwritten, not accumulated into
    assert_close(folded, col2im_nd_reference(col, shape, kernel, pad, stride, dilation), 1e-12)
    # <im2col(x), col> == <x, col2im(col)>
    lhs = np.vdot(im2col_nd(x, kernel, pad, stride, dilation), col)
    assert np.isclose(lhs, np.vdot(x, folded), rtol=1e-12)


def test_im2col_nd_agrees_with_the_2d_kernel():
    x = randn(2, 3, 7, 6)
    args = ((3, 2), (1, 2), (2, 1), (1, 2))
    np.testing.assert_array_equal(im2col_nd(x, *args), im2col(x, *args))


def test_im2col_nd_keeps_float32():
    x = randn(1, 2, 4, 4, 4, dtype=np.float32)
    col = im2col_nd(x, (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1))
    back = col2im_nd(col, x.shape, (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1))
    assert col.dtype == back.dtype == np.float32


def test_output_shapes():
    assert conv_out_shape((5, 6, 7), (3, 2, 1), (0, 1, 2), (1, 2, 3), (1, 1, 2)) == (3, 4, 4)
    assert conv_out_shape((10, 3, 8), (3, 3, 3), (0, 0, 2), (1, 1, 3), (2, 1, 2)) == (6, 1, 3)
    # the deconvolution extent is the input conv_out_shape maps back from
    args = ((3, 2, 4), (1, 0, 2), (2, 3, 1), (1, 2, 2))
    assert deconv_out_shape((4, 5, 3), *args) == (7, 15, 5)
    assert conv_out_shape(deconv_out_shape((4, 5, 3), *args), *args) == (4, 5, 3)


def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="im2col_nd"):
        im2col_nd(np.zeros((1, 1, 3, 3, 3)), (2, 2), (0, 0), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        im2col_nd(np.zeros((1, 1, 3, 3, 3)), (4, 1, 1), (0,) * 3, (1,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match="col2im_nd"):
        col2im_nd(np.zeros((1, 2, 2, 2, 1, 2, 2, 2)), (1, 2, 3, 3, 3), (2, 2, 2), (0,) * 3,
                  (1,) * 3, (1,) * 3)


# -- (b) against PyTorch ----------------------------------------------------------------------
CONV3D_CASES = [
    # params, input shape, torch conv3d keyword arguments
    ("num_output: 4 kernel_size: 3", (2, 3, 5, 6, 4), {}),
    ("num_output: 5 kernel_size: 3 kernel_size: 2 kernel_size: 1 stride: 2 pad: 1",
     (2, 2, 7, 6, 5), dict(stride=2, padding=1)),
    ("num_output: 6 kernel_size: 2 group: 3 dilation: 2 dilation: 1 dilation: 2 "
     "stride: 1 stride: 2 stride: 1 pad: 2 pad: 0 pad: 1", (2, 6, 6, 7, 5),
     dict(groups=3, dilation=(2, 1, 2), stride=(1, 2, 1), padding=(2, 0, 1))),
    ("num_output: 4 kernel_size: 3 group: 4 pad: 1", (1, 4, 4, 5, 3),    # depthwise, N = 1
     dict(groups=4, padding=1)),
    ("num_output: 3 kernel_size: 2 bias_term: false", (3, 2, 4, 4, 4), {}),
    ("num_output: 4 kernel_size: 1", (2, 3, 3, 4, 5), {}),                # 1x1x1: no im2col
    ("num_output: 6 kernel_size: 1 group: 2", (1, 4, 3, 4, 2), dict(groups=2)),
]


def torch_grads(torch, fn, x, w, b, dy, **kw):
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
    tb = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    y = fn(tx, tw, tb, **kw)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return (y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(),
            None if tb is None else tb.grad.numpy())


def forward_backward(layer, xs, seed=1):
    """Forward and backward (random top diffs) of ``layer`` over the bottoms ``xs``."""
    bottom, top = setup_layer(layer, xs)
    layer.forward(bottom, top)
    dys = [randn(*t.shape, dtype=t.dtype, seed=seed + i) for i, t in enumerate(top)]
    for t, dy in zip(top, dys):
        t.diff[...] = dy
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True] * len(bottom), bottom)
    return bottom, top, dys


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("params, shape, kw", CONV3D_CASES)
def test_convolution_3d_matches_torch(torch, params, shape, kw, dtype, tol):
    layer = layer_of("Convolution", params, dtype)
    x = randn(*shape, dtype=dtype)
    bottom, top, (dy,) = forward_backward(layer, [x])
    w = layer.blobs[0].data.astype(np.float64)
    b = layer.blobs[1].data.astype(np.float64) if layer.bias_term else None
    y, dx, dw, db = torch_grads(torch, torch.nn.functional.conv3d, x, w, b, dy, **kw)
    assert top[0].data.dtype == dtype and top[0].shape == y.shape
    assert_close(top[0].data, y, tol)
    assert_close(bottom[0].diff, dx, tol)
    assert_close(layer.blobs[0].diff, dw, tol)
    if b is not None:
        assert_close(layer.blobs[1].diff, db, tol)


def test_convolution_3d_bottoms_share_weights(torch):
    """Two bottoms: each top is its own convolution; the weight and bias gradients add up."""
    layer = layer_of("Convolution", "num_output: 4 kernel_size: 2 group: 2 pad: 1 stride: 2",
                     extra='bottom: "a" bottom: "b" top: "ya" top: "yb"')
    xs = [randn(2, 4, 5, 4, 3, seed=s) for s in (3, 4)]
    bottom, top, dys = forward_backward(layer, xs)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    dw, db = 0, 0
    for i in range(2):
        y, dx, dw_i, db_i = torch_grads(torch, torch.nn.functional.conv3d, xs[i], w, b, dys[i],
                                        stride=2, padding=1, groups=2)
        assert_close(top[i].data, y, 1e-10)
        assert_close(bottom[i].diff, dx, 1e-10)
        dw, db = dw + dw_i, db + db_i
    assert_close(layer.blobs[0].diff, dw, 1e-10)
    assert_close(layer.blobs[1].diff, db, 1e-10)


def test_convolution_3d_channel_axis(torch):
    """``axis: 2``: the axes before the channel axis are all batch."""
    layer = layer_of("Convolution", "num_output: 3 kernel_size: 2 axis: 2 pad: 1")
    x = randn(2, 3, 2, 4, 3, 5)
    bottom, top, (dy,) = forward_backward(layer, [x])
    assert top[0].shape == (2, 3, 3, 5, 4, 6)
    y, dx, dw, db = torch_grads(torch, torch.nn.functional.conv3d, x.reshape(6, 2, 4, 3, 5),
                                layer.blobs[0].data, layer.blobs[1].data,
                                dy.reshape(6, 3, 5, 4, 6), padding=1)
    assert_close(top[0].data.reshape(y.shape), y, 1e-10)
    assert_close(bottom[0].diff.reshape(dx.shape), dx, 1e-10)
    assert_close(layer.blobs[0].diff, dw, 1e-10)
    assert_close(layer.blobs[1].diff, db, 1e-10)


def test_convolution_3d_forward_twice_then_backward(torch):
    """Backward after a second forward of another batch uses that batch's columns."""
    layer = layer_of("Convolution", "num_output: 2 kernel_size: 2 pad: 1")
    bottom, top = setup_layer(layer, [randn(2, 2, 3, 3, 3, seed=5)])
    layer.forward(bottom, top)
    x = randn(2, 2, 3, 3, 3, seed=6)
    bottom[0].data[...] = x
    layer.forward(bottom, top)
    dy = randn(*top[0].shape, seed=7)
    top[0].diff[...] = dy
    layer.blobs[0].diff[...] = 0
    layer.backward(top, [False], bottom)
    _, _, dw, _ = torch_grads(torch, torch.nn.functional.conv3d, x, layer.blobs[0].data,
                              layer.blobs[1].data, dy, padding=1)
    assert_close(layer.blobs[0].diff, dw, 1e-10)


DECONV3D_CASES = [
    ("num_output: 3 kernel_size: 3", (2, 2, 3, 4, 2), {}),
    ("num_output: 4 kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 2 pad: 1",
     (2, 3, 3, 3, 4), dict(stride=2, padding=1)),
    ("num_output: 6 kernel_size: 3 group: 2 stride: 2 stride: 1 stride: 3 "
     "dilation: 1 dilation: 2 dilation: 1 pad: 1 pad: 2 pad: 0", (1, 4, 3, 4, 2),
     dict(groups=2, stride=(2, 1, 3), dilation=(1, 2, 1), padding=(1, 2, 0))),
    ("num_output: 2 kernel_size: 2 bias_term: false", (3, 2, 2, 3, 2), {}),
]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("params, shape, kw", DECONV3D_CASES)
def test_deconvolution_3d_matches_torch(torch, params, shape, kw, dtype, tol):
    layer = layer_of("Deconvolution", params, dtype)
    x = randn(*shape, dtype=dtype)
    bottom, top, (dy,) = forward_backward(layer, [x])
    w = layer.blobs[0].data.astype(np.float64)
    b = layer.blobs[1].data.astype(np.float64) if layer.bias_term else None
    y, dx, dw, db = torch_grads(torch, torch.nn.functional.conv_transpose3d, x, w, b, dy, **kw)
    assert top[0].data.dtype == dtype and top[0].shape == y.shape
    assert_close(top[0].data, y, tol)
    assert_close(bottom[0].diff, dx, tol)
    assert_close(layer.blobs[0].diff, dw, tol)
    if b is not None:
        assert_close(layer.blobs[1].diff, db, tol)


def test_im2col_layer_3d_is_caffes_column_matrix():
    """Top ``(N, C*kd*kh*kw, *out)``: row ``((c*kd + i)*kh + j)*kw + l``, as im2col_nd_cpu."""
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 kernel_size: 3 '
                       'kernel_size: 1 pad: 1 stride: 2 dilation: 1 dilation: 1 dilation: 2 }')
    x = randn(2, 3, 4, 5, 3)
    (y,) = run_layer(layer, [x])
    assert y.shape == (2, 3 * 2 * 3 * 1, 3, 3, 3)
    col = im2col_nd_reference(x, (2, 3, 1), (1, 1, 1), (2, 2, 2), (1, 1, 2))
    np.testing.assert_array_equal(y, col.reshape(18, 2, 27).transpose(1, 0, 2).reshape(y.shape))
    row = ((2 * 2 + 1) * 3 + 2) * 1 + 0  # c = 2, taps (1, 2, 0)
    assert y[1, row, 1, 0, 1] == x[1, 2, 2, 1, 1]  # input index o*stride - pad + tap*dilation
    assert y[1, row, 1, 0, 2] == 0  # (2, 1, 3): in the padding


# -- (c) gradient checks ------------------------------------------------------------------------
@pytest.mark.parametrize("kind, params, shape", [
    ("Convolution", "num_output: 4 kernel_size: 2 group: 2 pad: 1 stride: 2 dilation: 1",
     (2, 4, 4, 3, 5)),
    ("Convolution", "num_output: 3 kernel_size: 3 kernel_size: 1 kernel_size: 2 "
     "dilation: 1 dilation: 1 dilation: 2 pad: 0 pad: 1 pad: 1", (1, 2, 4, 3, 5)),
    ("Deconvolution", "num_output: 4 kernel_size: 2 group: 2 stride: 2 pad: 1", (2, 2, 3, 2, 3)),
    ("Deconvolution", "num_output: 2 kernel_size: 3 dilation: 2 stride: 1 stride: 2 stride: 1",
     (1, 3, 2, 3, 2)),
])
def test_gradients_3d(kind, params, shape):
    check_gradients(layer_of(kind, params), [randn(*shape)], max_checks=60)


def test_im2col_layer_gradients_3d():
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 kernel_size: 3 '
                       'kernel_size: 2 pad: 1 stride: 2 stride: 1 stride: 2 dilation: 2 }')
    check_gradients(layer, [randn(2, 2, 4, 3, 5)], max_checks=80)


def test_convolution_4_spatial_axes_against_reference():
    params = ("num_output: 4 group: 2 " + per_axis("kernel_size", (2, 1, 2, 3))
              + " " + per_axis("pad", (1, 0, 0, 1)) + " " + per_axis("stride", (1, 2, 1, 2))
              + " " + per_axis("dilation", (2, 1, 1, 1)))
    layer = layer_of("Convolution", params)
    x = randn(2, 4, 3, 4, 3, 5)
    (y,) = run_layer(layer, [x])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    assert w.shape == (4, 2, 2, 1, 2, 3)
    expected = convolution_nd_reference(x, w, b, ((1, 0, 0, 1), (1, 2, 1, 2), (2, 1, 1, 1)), 2)
    assert y.shape == expected.shape == (2, 4, 3, 2, 2, 3)
    assert_close(y, expected, 1e-12)
    check_gradients(layer, [x], max_checks=40)


def test_deconvolution_4_spatial_axes_against_reference():
    layer = layer_of("Deconvolution", "num_output: 2 kernel_size: 2 stride: 2 pad: 1 "
                     + per_axis("dilation", (1, 2, 1, 1)))
    x = randn(1, 3, 2, 3, 2, 2)
    (y,) = run_layer(layer, [x])
    w, b = layer.blobs[0].data, layer.blobs[1].data
    expected = deconvolution_nd_reference(x, w, b, ((1,) * 4, (2,) * 4, (1, 2, 1, 1)))
    assert y.shape == expected.shape == (1, 2, 2, 5, 2, 2)
    assert_close(y, expected, 1e-12)
    check_gradients(layer, [x], max_checks=40)


# -- (d) nets, summary and errors ---------------------------------------------------------------
NET = """name: "c3d"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 2 dim: 3 dim: 5 dim: 6 dim: 7 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 8 {conv} weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "up" type: "Deconvolution" bottom: "conv1" top: "up"
        convolution_param {{ num_output: 4 kernel_size: 2 stride: 2 group: 2 }} }}
layer {{ name: "cols" type: "Im2col" bottom: "conv1" top: "cols"
        convolution_param {{ kernel_size: 2 }} }}
"""
KERNEL_321 = "kernel_size: 3 kernel_size: 2 kernel_size: 1"


def test_net_from_prototxt_3d():
    net = protonet.Net(parse_net(NET.format(conv=KERNEL_321)), protonet.TEST)
    assert net.blobs["conv1"].shape == (2, 8, 3, 5, 7)
    assert net.params["conv1"][0].shape == (8, 3, 3, 2, 1)
    assert net.blobs["up"].shape == (2, 4, 6, 10, 14)
    assert net.params["up"][0].shape == (8, 2, 2, 2, 2)
    assert net.blobs["cols"].shape == (2, 8 * 8, 2, 4, 6)
    x = randn(2, 3, 5, 6, 7, dtype=np.float32)
    out = net.forward(data=x)
    assert np.all(np.isfinite(out["up"])) and out["cols"].dtype == np.float32
    expected = convolution_nd_reference(x.astype(np.float64), net.params["conv1"][0].data,
                                        net.params["conv1"][1].data, ((0,) * 3, (1,) * 3,
                                                                      (1,) * 3))
    assert_close(net.blobs["conv1"].data, expected, 1e-5)


def test_summary_of_a_3d_net(write, capsys):
    path = write(NET.format(conv=KERNEL_321))
    assert main(["summary", str(path), "--json"]) == 0
    layers = {l["name"]: l for l in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["conv1"]["top_shapes"] == [[2, 8, 3, 5, 7]]
    assert layers["conv1"]["macc"] == 3 * 2 * 1 * 3 * 8 * (3 * 5 * 7) * 2
    assert layers["conv1"]["params"] == 8 * 3 * 6 + 8
    assert layers["up"]["top_shapes"] == [[2, 4, 6, 10, 14]]
    assert layers["up"]["macc"] == 2 * 2 * 2 * (8 // 2) * 4 * (3 * 5 * 7) * 2
    assert layers["cols"]["top_shapes"] == [[2, 64, 2, 4, 6]]


@pytest.mark.parametrize("conv, message", [
    ("kernel_size: 3 kernel_size: 2", r"kernel_size must be given once or once per spatial "
                                      r"axis \(3\), got 2"),
    (KERNEL_321 + " stride: 1 stride: 2", r"stride .* got 2"),
    (KERNEL_321 + " pad: 1 pad: 1 pad: 1 pad: 1", r"pad .* got 4"),
    (KERNEL_321 + " dilation: 1 dilation: 2", r"dilation .* got 2"),
    ("kernel_h: 3 kernel_w: 3", r"kernel_h/kernel_w can only be used for 2-D"),
    ("kernel_size: 3 stride_h: 2 stride_w: 2", r"stride_h/stride_w can only be used for 2-D"),
    ("kernel_size: 3 pad_h: 1 pad_w: 1", r"pad_h/pad_w can only be used for 2-D"),
    ("kernel_size: 6", r"the \(dilated\) kernel \[6, 6, 6\] .* does not fit"),
])
def test_3d_errors_name_the_layer(conv, message):
    with pytest.raises(ProtonetError, match=f"layer 'conv1' \\(Convolution\\): {message}"):
        protonet.Net(parse_net(NET.format(conv=conv)), protonet.TEST)


def test_layer_errors_3d():
    with pytest.raises(ProtonetError, match=r"layer 'im2col'.*kernel_size must be given once"):
        run_layer(make_layer('type: "Im2col" convolution_param { kernel_size: 2 kernel_size: 2 }'),
                  [np.zeros((1, 1, 3, 3, 3))])
    with pytest.raises(ProtonetError, match=r"layer 'deconvolution'.*leaves no output"):
        run_layer(layer_of("Deconvolution", "num_output: 1 kernel_size: 1 pad: 1"),
                  [np.zeros((1, 1, 1, 3, 3))])
    layer = layer_of("Convolution", "num_output: 2 kernel_size: 2")
    bottom, top = setup_layer(layer, [np.zeros((1, 1, 3, 3, 3))])
    bottom[0].reshape((1, 1, 3, 3))
    with pytest.raises(ProtonetError, match=r"layer 'convolution'.*number of input axes"):
        layer.reshape(bottom, top)
