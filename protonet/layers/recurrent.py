"""Recurrent layers: RNN, LSTM and LSTMUnit, after Caffe's ``recurrent_layer.cpp``,
``rnn_layer.cpp``, ``lstm_layer.cpp`` and ``lstm_unit_layer.cpp``.

Caffe builds RNN and LSTM as an unrolled net of InnerProduct/Eltwise/Scale/TanH/LSTMUnit
layers. Here the same computation runs directly: the input transforms of all T steps are
one matrix product, only the recurrence loops over time, and backward-through-time is the
same loop reversed, with the weight gradients again batched over all steps. The learnable
blobs are exactly the unrolled net's, in its order and shapes, so Caffe-trained weights load:

    RNN:  W_xh (H, D), b_h (H), [W_xh_static (H, S)], W_hh (H, H), W_ho (H, H), b_o (H)
    LSTM: W_xc (4H, D), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H)

with D = the values per step of x (T, N, ...), S = those of the static input (N, ...),
H = ``recurrent_param.num_output`` and the LSTM's 4H gate rows ordered i, f, o, g.

Bottoms: x (T, N, ...), cont (T, N) sequence-continuation indicators, optionally the
static input x_static (N, ...), and with ``expose_hidden`` the initial state h0 (then c0
for LSTM), each (1, N, H). Tops: the outputs (T, N, H) (RNN: o, LSTM: h) and with
``expose_hidden`` the final state hT (then cT), each (1, N, H).

``cont[t, n] == 0`` starts a new sequence: the state entering step t is multiplied by it.
Without ``expose_hidden`` the state carries over from one forward pass to the next (as in
Caffe, where h_0 is copied from the previous pass's h_T), so a sequence may be fed in
chunks; with ``expose_hidden`` it comes from the bottoms instead. As in Caffe, no gradient
flows through the exposed state: h0/c0 get none and a diff on hT/cT is ignored (see
:class:`RecurrentLayer`).
"""
from __future__ import annotations

import logging

import numpy as np

from .base import Layer, register, elementwise_macc
from .neuron import caffe_sigmoid

log = logging.getLogger("protonet")


def lstm_unit_forward(c_prev: np.ndarray, gates: np.ndarray, cont: np.ndarray):
    """One LSTM step from the gate inputs (N, 4H) ordered i, f, o, g.

    ``c = f * c_prev + i * g`` with the forget gate ``f = cont * sigmoid(f')`` (0 where
    cont is 0) and ``h = o * tanh(c)``. Returns c, h and the activations kept for backward.
    """
    hidden = c_prev.shape[-1]
    act = np.empty_like(gates)
    caffe_sigmoid(gates[:, :3 * hidden], out=act[:, :3 * hidden])
    np.tanh(gates[:, 3 * hidden:], out=act[:, 3 * hidden:])
    act[:, hidden:2 * hidden] *= cont[:, None]
    i, f, o, g = (act[:, k * hidden:(k + 1) * hidden] for k in range(4))
    c = f * c_prev
    c += i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    return c, h, (act, tanh_c)


def lstm_unit_backward(dc: np.ndarray, dh: np.ndarray, c_prev: np.ndarray, cache):
    """Gradients of one LSTM step: returns (d c_prev, d gates), as Caffe's LSTMUnit computes
    them (the forget gate's derivative is ``f (1 - f)`` with f including cont, exact for
    the usual 0/1 indicators)."""
    act, tanh_c = cache
    hidden = c_prev.shape[-1]
    i, f, o, g = (act[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dc_total = dh * o
    dc_total *= 1 - tanh_c * tanh_c
    dc_total += dc
    dgates = np.empty_like(act)
    np.multiply(dc_total * g, i * (1 - i), out=dgates[:, :hidden])
    np.multiply(dc_total * c_prev, f * (1 - f), out=dgates[:, hidden:2 * hidden])
    np.multiply(dh * tanh_c, o * (1 - o), out=dgates[:, 2 * hidden:3 * hidden])
    np.multiply(dc_total * i, 1 - g * g, out=dgates[:, 3 * hidden:])
    return dc_total * f, dgates


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step. bottom: c_prev (1, N, H), gate inputs (1, N, 4H) ordered i, f, o, g,
    cont (1, N); top: c (1, N, H), h (1, N, H). No gradient to cont."""
    macc = elementwise_macc

    exact_num_bottom = 3
    exact_num_top = 2

    def reshape(self, bottom, top):
        if any(t is b for t in top for b in bottom):
            raise self.error("does not allow in-place computation")
        num = bottom[1].shape[1] if bottom[1].num_axes > 1 else -1
        for i, b in enumerate(bottom):
            axes = 2 if i == 2 else 3
            if b.num_axes != axes or b.shape[0] != 1 or b.shape[1] != num:
                raise self.shape_error(
                    "needs c_prev (1, N, H), gate inputs (1, N, 4H) and cont (1, N)", bottom)
        self.hidden = bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * self.hidden:
            raise self.shape_error(f"gate inputs must have 4*H = {4 * self.hidden} values "
                                   f"per item, got {bottom[1].shape[2]}", bottom)
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        c, h, _ = lstm_unit_forward(bottom[0].data[0], bottom[1].data[0], bottom[2].data[0])
        top[0].data[0] = c
        top[1].data[0] = h

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to the sequence indicators (bottom 2)")
        if not (propagate_down[0] or propagate_down[1]):
            return
        c_prev = bottom[0].data[0]
        _, _, cache = lstm_unit_forward(c_prev, bottom[1].data[0], bottom[2].data[0])
        dc_prev, dgates = lstm_unit_backward(top[0].diff[0], top[1].diff[0], c_prev, cache)
        if propagate_down[0]:
            bottom[0].diff[0] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[0] = dgates

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2


class RecurrentLayer(Layer):
    """What RNN and LSTM share: bottoms, tops, input transforms, the carried state."""

    runs_gemms = True  # the input transforms and the recurrence, on BLAS's threads

    #: names of the recurrent state blobs, as Caffe's unrolled net calls them
    state_names: tuple[str, ...] = ()
    gates = 1  # rows of the input transforms per hidden unit (LSTM: 4)

    def __init__(self, param, **kwargs):
        super().__init__(param, **kwargs)
        p = param.recurrent_param
        self.expose_hidden = bool(p.expose_hidden)
        exposed = len(self.state_names) if self.expose_hidden else 0
        self.num_exposed = exposed
        self.min_num_bottom = 2 + exposed
        self.max_num_bottom = 3 + exposed
        self.exact_num_top = 1 + exposed

    # -- setup --------------------------------------------------------------------------
    def layer_setup(self, bottom, top):
        p = self.param.recurrent_param
        if p.num_output < 1:
            raise self.error("recurrent_param.num_output must be given and positive")
        self.hidden = int(p.num_output)
        self.debug_info = bool(p.debug_info)
        self.static_input = len(bottom) > 2 + self.num_exposed
        self._check_shapes(bottom)
        rows = self.gates * self.hidden
        self.input_dim = bottom[0].count_range(2)
        self.static_dim = bottom[2].count_range(1) if self.static_input else 0
        # blob order is the unrolled net's: input transform (W, b), static W, recurrent W
        self.add_param((rows, self.input_dim), p.weight_filler)
        self.add_param((rows,), p.bias_filler)
        if self.static_input:
            self.add_param((rows, self.static_dim), p.weight_filler)
        self.add_param((rows, self.hidden), p.weight_filler)
        self._add_output_params(p)
        self._carry = None   # the state a pass without expose_hidden starts from

    def _add_output_params(self, p):
        """Blobs after the recurrent weight (RNN's output transform)."""

    def _check_shapes(self, bottom):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            raise self.shape_error("bottom 0 must have at least 2 axes: "
                                   "(timesteps T, streams N, ...)", bottom)
        if cont.shape != x.shape[:2]:
            raise self.shape_error(f"bottom 1 (cont) must have exactly the shape (T, N) = "
                                   f"{list(x.shape[:2])}", bottom)
        if self.static_input and (bottom[2].num_axes < 1 or bottom[2].shape[0] != x.shape[1]):
            raise self.shape_error(f"the static input (bottom 2) must be (N, ...) with N = "
                                   f"{x.shape[1]}", bottom)

    def reshape(self, bottom, top):
        if any(t is b for t in top for b in bottom):
            raise self.error("does not allow in-place computation")
        self._check_shapes(bottom)
        self.T, self.N = bottom[0].shape[:2]
        if bottom[0].count_range(2) != self.input_dim:
            raise self.shape_error(f"x has {bottom[0].count_range(2)} values per step and "
                                   f"stream, the weights expect {self.input_dim}", bottom)
        if self.static_input and bottom[2].count_range(1) != self.static_dim:
            raise self.shape_error(f"x_static has {bottom[2].count_range(1)} values per "
                                   f"stream, the weights expect {self.static_dim}", bottom)
        state_shape = (1, self.N, self.hidden)
        first = 3 if self.static_input else 2
        for k, name in enumerate(self.state_names if self.expose_hidden else ()):
            if bottom[first + k].shape != state_shape:
                raise self.shape_error(f"bottom {first + k} ({name}_0) must have shape "
                                       f"{list(state_shape)}", bottom)
        top[0].reshape((self.T, self.N, self.hidden))
        for k in range(self.num_exposed):
            top[1 + k].reshape(state_shape)
        if self._carry is not None and self._carry[0].shape != (self.N, self.hidden):
            self._carry = None   # the number of streams changed: start from zeros

    def reset(self) -> None:
        """Forget the state carried between passes (Caffe's RecurrentLayer::Reset)."""
        self._carry = None

    # -- helpers ------------------------------------------------------------------------
    def _initial_state(self, bottom) -> list[np.ndarray]:
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            return [bottom[first + k].data[0] for k in range(len(self.state_names))]
        if self._carry is None:
            return [np.zeros((self.N, self.hidden), self.dtype) for _ in self.state_names]
        return self._carry

    def _input_transform(self, bottom) -> np.ndarray:
        """W x_t + b (+ W_static x_static) for every step at once: (T, N, rows)."""
        rows = self.gates * self.hidden
        x = bottom[0].data.reshape(self.T * self.N, self.input_dim)
        pre = x @ self.blobs[0].data.T
        pre += self.blobs[1].data
        pre = pre.reshape(self.T, self.N, rows)
        if self.static_input:
            pre += bottom[2].data.reshape(self.N, self.static_dim) @ self.blobs[2].data.T
        return pre

    @property
    def _recurrent_index(self) -> int:
        return 3 if self.static_input else 2

    def _input_backward(self, dpre: np.ndarray, propagate_down, bottom) -> None:
        """Gradients of the input transforms from d(pre-activations) (T, N, rows)."""
        rows = self.gates * self.hidden
        flat = dpre.reshape(self.T * self.N, rows)
        down = self.param_propagate_down
        x = bottom[0].data.reshape(self.T * self.N, self.input_dim)
        if down[0]:
            self.blobs[0].diff[...] += flat.T @ x
        if down[1]:
            self.blobs[1].diff[...] += flat.sum(axis=0)
        if propagate_down[0]:
            np.matmul(flat, self.blobs[0].data,
                      out=bottom[0].diff.reshape(self.T * self.N, self.input_dim))
        if self.static_input:
            dstatic = dpre.sum(axis=0)  # the static term enters every step
            if down[2]:
                self.blobs[2].diff[...] += dstatic.T @ bottom[2].data.reshape(
                    self.N, self.static_dim)
            if propagate_down[2]:
                np.matmul(dstatic, self.blobs[2].data,
                          out=bottom[2].diff.reshape(self.N, self.static_dim))

    # Gradients of the exposed state, as Caffe computes them: none. Caffe's RecurrentLayer
    # shares only the *data* of the h0/c0 bottoms with its unrolled net's h_0/c_0 inputs,
    # which are Input tops there and so get no gradient; and only the data of the hT/cT
    # tops with the unrolled net's last state. So the diffs of h0/c0 are left as they are
    # (never written) and a gradient arriving at hT/cT from above is dropped: backward
    # through time starts from zero at step T. Only x, x_static and the weights get
    # gradients -- through the outputs (RNN: o, LSTM: h).

    def _check_cont_down(self, propagate_down):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the sequence indicators (bottom 1)")

    def _debug(self, direction: str, what: str, array: np.ndarray) -> None:
        """Caffe's debug_info line: the mean absolute value of a blob."""
        value = float(np.mean(np.abs(array))) if array.size else 0.0
        log.info("    [%s] Layer %s, %s: %.6g", direction, self.name, what, value)

    def _debug_params(self, direction: str, field: str) -> None:
        for k, blob in enumerate(self.blobs):
            self._debug(direction, f"param blob {k} {field}", getattr(blob, field))

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def macc(self, bottom, top):
        rows = self.gates * self.hidden
        steps = self.T * self.N
        total = steps * rows * (self.input_dim + self.hidden) + self.N * rows * self.static_dim
        if len(self.blobs) > self._recurrent_index + 1:   # RNN's output transform
            total += steps * self.hidden * self.hidden
        return total


@register("RNN")
class RNNLayer(RecurrentLayer):
    """Elman RNN with tanh hidden and tanh output units (Caffe's RNN):

        h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
        o_t = tanh(W_ho h_t + b_o)

    top[0] is o (T, N, H); with ``expose_hidden`` top[1] is h_T.
    """

    state_names = ("h",)
    gates = 1

    def _add_output_params(self, p):
        self.add_param((self.hidden, self.hidden), p.weight_filler)   # W_ho
        self.add_param((self.hidden,), p.bias_filler)                 # b_o

    def forward(self, bottom, top):
        T, N, H = self.T, self.N, self.hidden
        w_hh = self.blobs[self._recurrent_index].data
        w_ho, b_o = self.blobs[-2].data, self.blobs[-1].data
        cont = bottom[1].data
        h = self._input_transform(bottom)            # pre-activations, tanh'ed in place
        h_conted = np.empty((T, N, H), self.dtype)
        (h_prev,) = self._initial_state(bottom)
        for t in range(T):
            np.multiply(h_prev, cont[t][:, None], out=h_conted[t])
            h[t] += h_conted[t] @ w_hh.T
            np.tanh(h[t], out=h[t])
            h_prev = h[t]
        out = top[0].data.reshape(T * N, H)
        np.matmul(h.reshape(T * N, H), w_ho.T, out=out)
        out += b_o
        np.tanh(out, out=out)
        self.h, self.h_conted = h, h_conted
        if self.expose_hidden:
            top[1].data[0] = h[T - 1]
        else:
            self._carry = [h[T - 1].copy()]
        if self.debug_info:
            self._debug("Forward", "top blob h data", h)
            self._debug("Forward", "top blob o data", top[0].data)
            self._debug_params("Forward", "data")

    def backward(self, top, propagate_down, bottom):
        self._check_cont_down(propagate_down)
        T, N, H = self.T, self.N, self.hidden
        r = self._recurrent_index
        w_hh = self.blobs[r].data
        w_ho = self.blobs[-2].data
        cont = bottom[1].data
        o = top[0].data
        down = self.param_propagate_down
        # output units: o = tanh(W_ho h + b_o)
        do = top[0].diff * (1 - o * o)
        do_flat = do.reshape(T * N, H)
        if down[-2]:
            self.blobs[-2].diff[...] += do_flat.T @ self.h.reshape(T * N, H)
        if down[-1]:
            self.blobs[-1].diff[...] += do_flat.sum(axis=0)
        dh = (do_flat @ w_ho).reshape(T, N, H)       # becomes d(pre-activation) in place
        carry = np.zeros((N, H), self.dtype)         # hT's diff is dropped: see RecurrentLayer
        for t in range(T - 1, -1, -1):
            dh[t] += carry
            dh[t] *= 1 - self.h[t] * self.h[t]
            carry = dh[t] @ w_hh
            carry *= cont[t][:, None]
        if down[r]:
            self.blobs[r].diff[...] += dh.reshape(T * N, H).T @ self.h_conted.reshape(T * N, H)
        self._input_backward(dh, propagate_down, bottom)
        if self.debug_info:
            self._debug("Backward", "bottom blob x diff", bottom[0].diff)
            self._debug_params("Backward", "diff")


@register("LSTM")
class LSTMLayer(RecurrentLayer):
    """Long short-term memory (Caffe's LSTM, without peepholes):

        [i', f', o', g'] = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
        i, f, o = sigmoid(i', f', o');  g = tanh(g');  f *= cont_t
        c_t = f c_{t-1} + i g;          h_t = o tanh(c_t)

    top[0] is h (T, N, H); with ``expose_hidden`` top[1] is h_T and top[2] c_T.
    """

    state_names = ("h", "c")
    gates = 4

    def forward(self, bottom, top):
        T, N, H = self.T, self.N, self.hidden
        w_hc = self.blobs[self._recurrent_index].data
        cont = bottom[1].data
        gates = self._input_transform(bottom)
        h_all = top[0].data
        h_conted = np.empty((T, N, H), self.dtype)
        c_all = np.empty((T, N, H), self.dtype)
        caches = []
        h_prev, c_prev = self._initial_state(bottom)
        self.c0 = np.array(c_prev, copy=True)
        for t in range(T):
            np.multiply(h_prev, cont[t][:, None], out=h_conted[t])
            gates[t] += h_conted[t] @ w_hc.T
            c_all[t], h_all[t], cache = lstm_unit_forward(c_prev, gates[t], cont[t])
            caches.append(cache)
            h_prev, c_prev = h_all[t], c_all[t]
        self.h_conted, self.c_all, self.caches = h_conted, c_all, caches
        if self.expose_hidden:
            top[1].data[0] = h_all[T - 1]
            top[2].data[0] = c_all[T - 1]
        else:
            self._carry = [h_all[T - 1].copy(), c_all[T - 1].copy()]
        if self.debug_info:
            self._debug("Forward", "top blob c data", c_all)
            self._debug("Forward", "top blob h data", h_all)
            self._debug_params("Forward", "data")

    def backward(self, top, propagate_down, bottom):
        self._check_cont_down(propagate_down)
        T, N, H = self.T, self.N, self.hidden
        r = self._recurrent_index
        w_hc = self.blobs[r].data
        cont = bottom[1].data
        dh_top = top[0].diff
        dgates = np.empty((T, N, 4 * H), self.dtype)
        # hT's and cT's diffs are dropped, as in Caffe: see RecurrentLayer
        dh_carry = np.zeros((N, H), self.dtype)
        dc_carry = np.zeros((N, H), self.dtype)
        for t in range(T - 1, -1, -1):
            c_prev = self.c_all[t - 1] if t else self.c0
            dh_carry += dh_top[t]
            dc_carry, dgates[t] = lstm_unit_backward(dc_carry, dh_carry, c_prev,
                                                     self.caches[t])
            dh_carry = dgates[t] @ w_hc
            dh_carry *= cont[t][:, None]
        if self.param_propagate_down[r]:
            self.blobs[r].diff[...] += (dgates.reshape(T * N, 4 * H).T
                                        @ self.h_conted.reshape(T * N, H))
        self._input_backward(dgates, propagate_down, bottom)
        if self.debug_info:
            self._debug("Backward", "bottom blob x diff", bottom[0].diff)
            self._debug_params("Backward", "diff")
