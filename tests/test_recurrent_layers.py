"""RNN, LSTM and LSTMUnit against a step-by-step PyTorch recurrence with Caffe's gate order,
cont resets, static input and exposed hidden state; plus Caffe's blob layout and the
state carried between forward passes."""
import numpy as np
import pytest

import protonet.layers.recurrent  # noqa: F401  (until protonet.layers imports it)
from protonet import ProtonetError
from protonet.testing import check_gradients, make_layer, run_layer, setup_layer

torch = pytest.importorskip("torch")

FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
           'bias_filler { type: "gaussian" std: 0.3 }')


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def recurrent(type_name, hidden, expose=False, dtype=np.float32, extra=""):
    return make_layer(f'type: "{type_name}" recurrent_param {{ num_output: {hidden} {FILLERS} '
                      f'expose_hidden: {str(expose).lower()} {extra} }}', dtype=dtype)


def cont_with_resets(T, N):
    """Sequences start at t = 0 and again mid-batch for some streams."""
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    cont[T // 2, ::2] = 0
    return cont


def torch_lstm(x, cont, blobs, static=None, h0=None, c0=None):
    """Caffe's LSTM written out step by step: gates ordered i, f, o, g."""
    T, N = x.shape[:2]
    w_xc, b_c = blobs[0], blobs[1]
    w_hc = blobs[-1]
    H = w_hc.shape[1]
    pre = x.reshape(T, N, -1) @ w_xc.T + b_c
    if static is not None:
        pre = pre + (static.reshape(N, -1) @ blobs[2].T)[None]
    h = h0[0] if h0 is not None else torch.zeros(N, H, dtype=x.dtype)
    c = c0[0] if c0 is not None else torch.zeros(N, H, dtype=x.dtype)
    hs = []
    for t in range(T):
        gate = pre[t] + (cont[t][:, None] * h) @ w_hc.T
        i, f, o = (torch.sigmoid(gate[:, k * H:(k + 1) * H]) for k in range(3))
        g = torch.tanh(gate[:, 3 * H:])
        c = cont[t][:, None] * f * c + i * g
        h = o * torch.tanh(c)
        hs.append(h)
    return torch.stack(hs), h[None], c[None]


def torch_rnn(x, cont, blobs, static=None, h0=None):
    """Caffe's RNN written out: tanh hidden, tanh output."""
    T, N = x.shape[:2]
    w_xh, b_h = blobs[0], blobs[1]
    w_hh, w_ho, b_o = blobs[-3], blobs[-2], blobs[-1]
    pre = x.reshape(T, N, -1) @ w_xh.T + b_h
    if static is not None:
        pre = pre + (static.reshape(N, -1) @ blobs[2].T)[None]
    h = h0[0] if h0 is not None else torch.zeros(N, w_hh.shape[0], dtype=x.dtype)
    os = []
    for t in range(T):
        h = torch.tanh(pre[t] + (cont[t][:, None] * h) @ w_hh.T)
        os.append(torch.tanh(h @ w_ho.T + b_o))
    return torch.stack(os), h[None]


def run_against_torch(type_name, static, expose, dtype=np.float64):
    """Forward and backward of our layer vs the torch recurrence; returns max errors."""
    T, N, H = 5, 3, 4
    num_states = 1 if type_name == "RNN" else 2
    x, cont = randn(T, N, 2, 3), cont_with_resets(T, N)
    if expose:
        cont[0] = 1   # use the given initial state
    bottoms = [x, cont] + ([randn(N, 2, seed=1)] if static else [])
    bottoms += [randn(1, N, H, seed=2 + k) * 0.5 for k in range(num_states if expose else 0)]
    bottoms = [b.astype(dtype) for b in bottoms]
    layer = recurrent(type_name, H, expose, dtype=dtype)
    num_top = 1 + (num_states if expose else 0)
    bottom, top = setup_layer(layer, bottoms, num_top=num_top)
    layer.forward(bottom, top)
    rng = np.random.default_rng(9)
    top_diffs = [rng.standard_normal(tb.shape).astype(dtype) for tb in top]
    for tb, d in zip(top, top_diffs):
        tb.diff[...] = d
    for p in layer.blobs:
        p.diff[...] = 0
    down = [True, False] + [True] * (len(bottoms) - 2)
    layer.backward(top, down, bottom)

    tb = [torch.tensor(b, requires_grad=True) for b in bottoms]
    tp = [torch.tensor(p.data, requires_grad=True) for p in layer.blobs]
    states = tb[len(tb) - (num_states if expose else 0):] if expose else [None, None]
    st = tb[2] if static else None
    if type_name == "LSTM":
        outs = torch_lstm(tb[0], tb[1], tp, st, states[0], states[1])
    else:
        outs = torch_rnn(tb[0], tb[1], tp, st, states[0])
    outs = outs[:num_top]
    # Caffe back-propagates through the outputs only: diffs on hT/cT are dropped and h0/c0
    # get no gradient (test_expose_hidden_state_gets_and_gives_no_gradient_as_in_caffe)
    torch.sum(outs[0] * torch.tensor(top_diffs[0])).backward()
    for ours, ref in zip(top, outs):
        np.testing.assert_allclose(ours.data, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    first_state = len(bottoms) - (num_states if expose else 0)
    for k, b in enumerate(bottom):
        if down[k] and k < first_state:
            np.testing.assert_allclose(b.diff, tb[k].grad.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"bottom {k}")
    for k, p in enumerate(layer.blobs):
        np.testing.assert_allclose(p.diff, tp[k].grad.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"param {k}")
    return layer, top


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_recurrent_matches_torch_step_by_step(type_name, static, expose):
    run_against_torch(type_name, static, expose)


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_recurrent_float32_forward(type_name):
    layer, top = run_against_torch(type_name, static=True, expose=False, dtype=np.float32)
    assert top[0].data.dtype == np.float32
    assert all(p.data.dtype == np.float32 and p.diff.dtype == np.float32 for p in layer.blobs)


def test_lstm_matches_torch_nn_lstm_with_reordered_gates():
    T, N, D, H = 6, 2, 3, 5
    layer = recurrent("LSTM", H)
    x = randn(T, N, D)
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    (h,) = run_layer(layer, [x, cont])
    w_xc, b_c, w_hc = (p.data for p in layer.blobs)
    order = np.r_[0:H, H:2 * H, 3 * H:4 * H, 2 * H:3 * H]   # Caffe i,f,o,g -> torch i,f,g,o
    lstm = torch.nn.LSTM(D, H)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(w_xc[order]))
        lstm.weight_hh_l0.copy_(torch.from_numpy(w_hc[order]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b_c[order]))
        lstm.bias_hh_l0.zero_()
        expected, _ = lstm(torch.from_numpy(x))
    np.testing.assert_allclose(h, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_blob_layout_matches_caffe_unrolled_net(type_name):
    T, N, D, S, H = 2, 3, 6, 4, 5
    x, cont = randn(T, N, 2, 3), np.ones((T, N), np.float32)
    layer = recurrent(type_name, H)
    run_layer(layer, [x, cont])
    with_static = recurrent(type_name, H)
    run_layer(with_static, [x, cont, randn(N, 2, 2)])
    rows = H if type_name == "RNN" else 4 * H
    plain = [(rows, D), (rows,), (rows, H)]
    static = [(rows, D), (rows,), (rows, S), (rows, H)]
    if type_name == "RNN":   # then W_ho, b_o
        plain += [(H, H), (H,)]
        static += [(H, H), (H,)]
    assert [p.shape for p in layer.blobs] == plain
    assert [p.shape for p in with_static.blobs] == static


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_state_carries_between_passes_without_expose_hidden(type_name):
    T, N, H = 6, 2, 3
    x, cont = randn(T, N, 4), np.ones((T, N), np.float32)
    cont[0] = 0
    whole = recurrent(type_name, H)
    (full,) = run_layer(whole, [x, cont])
    chunked = recurrent(type_name, H)
    bottom, top = setup_layer(chunked, [x[:3], cont[:3]])
    for p, q in zip(chunked.blobs, whole.blobs):
        p.data[...] = q.data
    chunked.forward(bottom, top)
    first = top[0].data.copy()
    bottom[0].data[...] = x[3:]
    bottom[1].data[...] = cont[3:]              # cont = 1: continue the sequences
    chunked.forward(bottom, top)
    np.testing.assert_allclose(np.concatenate([first, top[0].data]), full, rtol=1e-6)
    bottom[1].data[0] = 0                       # cont = 0 restarts: like the first chunk
    bottom[0].data[...] = x[:3]
    bottom[1].data[...] = cont[:3]
    chunked.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, first, rtol=1e-6)
    chunked.reset()
    bottom[1].data[...] = 1                     # after reset(), the state is zero again
    chunked.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, first, rtol=1e-6)


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_expose_hidden_chains_passes(type_name):
    T, N, H = 4, 2, 3
    num_states = 1 if type_name == "RNN" else 2
    x, cont = randn(T, N, 3), np.ones((T, N), np.float32)
    cont[0] = 0
    plain = recurrent(type_name, H)
    (full,) = run_layer(plain, [x, cont])
    exposed = recurrent(type_name, H, expose=True)
    zeros = [np.zeros((1, N, H), np.float32)] * num_states
    bottom, top = setup_layer(exposed, [x[:2], cont[:2]] + zeros, num_top=1 + num_states)
    for p, q in zip(exposed.blobs, plain.blobs):
        p.data[...] = q.data
    exposed.forward(bottom, top)
    first = top[0].data.copy()
    for k in range(num_states):                 # final state -> next pass's initial state
        bottom[2 + k].data[...] = top[1 + k].data
    bottom[0].data[...], bottom[1].data[...] = x[2:], cont[2:]
    exposed.forward(bottom, top)
    np.testing.assert_allclose(np.concatenate([first, top[0].data]), full, rtol=1e-6)
    # the exposed final state is the one the plain layer carries to its next pass
    for k in range(num_states):
        np.testing.assert_allclose(top[1 + k].data[0], plain._carry[k], rtol=1e-6)


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
@pytest.mark.parametrize("static", [False, True])
def test_recurrent_gradients(type_name, static):
    T, N, H = 4, 3, 3
    bottoms = [randn(T, N, 2).astype(float), cont_with_resets(T, N).astype(float)]
    if static:
        bottoms.append(randn(N, 2, seed=1).astype(float))
    check_gradients(recurrent(type_name, H, dtype=np.float64), bottoms,
                    check_bottoms=[0, 2] if static else [0])


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_recurrent_gradients_expose_hidden(type_name):
    T, N, H = 3, 2, 3
    num_states = 1 if type_name == "RNN" else 2
    cont = np.ones((T, N))
    cont[1, 0] = 0
    bottoms = [randn(T, N, 2).astype(float), cont, randn(N, 3, seed=1).astype(float)]
    bottoms += [randn(1, N, H, seed=2 + k).astype(float) for k in range(num_states)]
    # through the outputs only: Caffe drops the exposed state's gradients (next test)
    check_gradients(recurrent(type_name, H, expose=True, dtype=np.float64), bottoms,
                    num_top=1 + num_states, check_bottoms=[0, 2], check_tops=[0])


@pytest.mark.parametrize("type_name", ["RNN", "LSTM"])
def test_expose_hidden_state_gets_and_gives_no_gradient_as_in_caffe(type_name):
    """Caffe's RecurrentLayer shares only the data of h0/c0 and hT/cT with its unrolled
    net: the bottoms' diffs are never written and a diff on hT/cT changes nothing."""
    T, N, H = 3, 2, 3
    num_states = 1 if type_name == "RNN" else 2
    layer = recurrent(type_name, H, expose=True, dtype=np.float64)
    arrays = [randn(T, N, 2).astype(float), np.ones((T, N))]
    arrays += [randn(1, N, H, seed=2 + k).astype(float) for k in range(num_states)]
    bottom, top = setup_layer(layer, arrays, num_top=1 + num_states)
    layer.forward(bottom, top)
    grads = []
    for state_diff in (0.0, 5.0):
        for b in bottom[2:]:
            b.diff[...] = 7.0                    # a sentinel the layer must leave alone
        for p in layer.blobs:
            p.diff[...] = 0
        top[0].diff[...] = randn(T, N, H, seed=9)
        for t in top[1:]:
            t.diff[...] = state_diff
        layer.backward(top, [True, False] + [True] * num_states, bottom)
        assert all((b.diff == 7.0).all() for b in bottom[2:])
        grads.append([bottom[0].diff.copy()] + [p.diff.copy() for p in layer.blobs])
    for with_zero, with_five in zip(*grads):
        np.testing.assert_array_equal(with_zero, with_five)
    assert np.any(grads[0][0] != 0)


def test_recurrent_param_propagate_down_skips_frozen_blobs():
    layer = recurrent("LSTM", 3)
    bottom, top = setup_layer(layer, [randn(2, 2, 3), np.ones((2, 2), np.float32)])
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.param_propagate_down = [True, False, True]
    for p in layer.blobs:
        p.diff[...] = 7
    layer.backward(top, [True, False], bottom)
    assert (layer.blobs[1].diff == 7).all()
    assert not (layer.blobs[0].diff == 7).all() and not (layer.blobs[2].diff == 7).all()


def test_recurrent_errors():
    x, cont = randn(3, 2, 4), np.ones((3, 2), np.float32)
    with pytest.raises(ProtonetError, match="num_output"):
        run_layer(make_layer('type: "LSTM"'), [x, cont])
    with pytest.raises(ProtonetError, match=r"cont\) must have exactly the shape"):
        run_layer(recurrent("LSTM", 3), [x, np.ones((3, 3), np.float32)])
    with pytest.raises(ProtonetError, match="at least 2 axes"):
        run_layer(recurrent("RNN", 3), [randn(3), np.ones((3, 1), np.float32)])
    with pytest.raises(ProtonetError, match="static input"):
        run_layer(recurrent("RNN", 3), [x, cont, randn(3, 2)])
    with pytest.raises(ProtonetError, match=r"takes at least 4 bottom"):
        run_layer(recurrent("LSTM", 3, expose=True), [x, cont, randn(1, 2, 3)], num_top=3)
    with pytest.raises(ProtonetError, match=r"must have shape \[1, 2, 3\]"):
        run_layer(recurrent("RNN", 3, expose=True), [x, cont, randn(1, 2, 4)], num_top=2)
    layer = recurrent("RNN", 3)
    bottom, top = setup_layer(layer, [x, cont])
    bottom[0].reshape((3, 2, 5))
    with pytest.raises(ProtonetError, match="weights expect 4"):
        layer.reshape(bottom, top)
    bottom[0].reshape((3, 2, 4))
    layer.forward(bottom, top)
    with pytest.raises(ProtonetError, match="sequence indicators"):
        layer.backward(top, [True, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    bottom = [bottom[0], bottom[1]]
    with pytest.raises(ProtonetError, match="in-place"):
        layer.reshape(bottom, [bottom[0]])


def test_recurrent_debug_info_logs(caplog):
    layer = recurrent("LSTM", 2, extra="debug_info: true")
    bottom, top = setup_layer(layer, [randn(2, 1, 3), np.ones((2, 1), np.float32)])
    with caplog.at_level("INFO", logger="protonet"):
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        layer.backward(top, [True, False], bottom)
    assert "[Forward] Layer lstm, top blob h data" in caplog.text
    assert "[Backward] Layer lstm, param blob 2 diff" in caplog.text


# -- LSTMUnit ---------------------------------------------------------------------------------

def test_lstm_unit_matches_torch_and_cont_zeroes_the_forget_gate():
    N, H = 4, 3
    c_prev, gates = randn(1, N, H), randn(1, N, 4 * H, seed=1)
    cont = np.array([[1, 0, 1, 0]], np.float32)
    c, h = run_layer(make_layer('type: "LSTMUnit"'), [c_prev, gates, cont], num_top=2)
    g = torch.from_numpy(gates[0])
    i, f, o = (torch.sigmoid(g[:, k * H:(k + 1) * H]) for k in range(3))
    cc = torch.from_numpy(cont[0])[:, None] * f * torch.from_numpy(c_prev[0]) \
        + i * torch.tanh(g[:, 3 * H:])
    np.testing.assert_allclose(c[0], cc.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(h[0], (o * torch.tanh(cc)).numpy(), rtol=1e-5, atol=1e-7)
    assert c.shape == h.shape == (1, N, H)


def test_lstm_unit_gradients_and_errors():
    N, H = 3, 2
    layer = make_layer('type: "LSTMUnit"', dtype=np.float64)
    check_gradients(layer, [randn(1, N, H).astype(float), randn(1, N, 4 * H).astype(float),
                            np.array([[1.0, 0.0, 1.0]])], num_top=2, check_bottoms=[0, 1])
    with pytest.raises(ProtonetError, match="4\\*H = 8"):
        run_layer(make_layer('type: "LSTMUnit"'),
                  [randn(1, N, H), randn(1, N, 6), np.ones((1, N), np.float32)], num_top=2)
    with pytest.raises(ProtonetError, match=r"c_prev \(1, N, H\)"):
        run_layer(make_layer('type: "LSTMUnit"'),
                  [randn(2, N, H), randn(2, N, 8), np.ones((2, N), np.float32)], num_top=2)
    bottom, top = setup_layer(layer, [randn(1, N, H), randn(1, N, 4 * H),
                                      np.ones((1, N))], num_top=2)
    layer.forward(bottom, top)
    with pytest.raises(ProtonetError, match="sequence indicators"):
        layer.backward(top, [True, True, True], bottom)
    assert not layer.allow_force_backward(2)


def test_lstm_in_a_net_exposes_caffe_param_names_and_trains(tmp_path):
    from protonet import Net
    path = tmp_path / "lstm.prototxt"
    path.write_text(f'''
        name: "lstm"
        force_backward: true
        layer {{ name: "data" type: "Input" top: "x" top: "cont" top: "target"
                input_param {{ shape {{ dim: 3 dim: 2 dim: 4 }} shape {{ dim: 3 dim: 2 }}
                               shape {{ dim: 3 dim: 2 dim: 5 }} }} }}
        layer {{ name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
                recurrent_param {{ num_output: 5 {FILLERS} }} }}
        layer {{ name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "target" top: "loss" }}
    ''')
    net = Net(str(path), "TRAIN", seed=0)
    assert [p.shape for p in net.params["lstm1"]] == [(20, 4), (20,), (20, 5)]
    net.blobs["x"].data[...] = randn(3, 2, 4)
    net.blobs["cont"].data[...] = [[0, 0], [1, 1], [1, 1]]
    net.blobs["target"].data[...] = randn(3, 2, 5, seed=1)
    loss = net.forward_backward()
    assert loss > 0 and np.isfinite(loss)
    assert np.abs(net.params["lstm1"][2].diff).sum() > 0
    assert np.abs(net.blobs["x"].diff).sum() > 0
    assert np.all(net.blobs["cont"].diff == 0)
