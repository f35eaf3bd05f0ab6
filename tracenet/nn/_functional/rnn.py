"""The rnn part of tracenet.nn.functional: the recurrent cells and the multi-layer,
optionally bidirectional sequence loop behind ``nn.RNN``/``nn.LSTM``/``nn.GRU``.

Everything is a composition of registry ops (``addmm`` through ``linear``, ``split`` through
``chunk``, ``unbind``, ``stack``, ``cat`` and pointwise ops), and the time loop is ordinary
Python (under tracing, ``nn.modules.rnn`` records each layer's loop as one ``scan`` node
instead, with ``layer_step`` as its body). The input-to-hidden product of a whole layer is one
matrix product over all time steps; only the hidden-to-hidden product runs per step.

torch.nn.functional has no recurrent functions, so nothing here is re-exported there; the cell
functions mirror ``torch.rnn_tanh_cell``/``rnn_relu_cell``/``lstm_cell``/``gru_cell``.
"""
from ...ops import creation, shape as sh
from .activation import dropout as _dropout, linear

__all__ = []

_TYPE_WORDS = {"float16": "Half", "bfloat16": "BFloat16", "float32": "Float",
               "float64": "Double", "int64": "Long", "int32": "Int", "int16": "Short",
               "int8": "Char", "uint8": "Byte", "bool": "Bool"}


def _type_word(dt):
    return _TYPE_WORDS.get(dt.name, dt.name)


def check_same_dtype(a, w):
    """The error torch's matrix product gives when a cell's operand and weight dtypes differ."""
    if a.dtype is not w.dtype:
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                           f"{_type_word(a.dtype)} and {_type_word(w.dtype)}")


# --- one time step, given the input-to-hidden part ``gi`` of the gates ----------------------


def rnn_step(gi, h, w_hh, b_hh, nonlinearity="tanh"):
    pre = gi + linear(h, w_hh, b_hh)
    return pre.tanh() if nonlinearity == "tanh" else pre.relu()


def lstm_step(gi, h, c, w_hh, b_hh, w_hr=None):
    gates = gi + linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, 1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    h = o.sigmoid() * c.tanh()
    if w_hr is not None:
        h = linear(h, w_hr)
    return h, c


def gru_step(gi, h, w_hh, b_hh):
    gh = linear(h, w_hh, b_hh)
    i_r, i_z, i_n = gi.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    r = (i_r + h_r).sigmoid()
    z = (i_z + h_z).sigmoid()
    n = (i_n + r * h_n).tanh()
    return n + z * (h - n)


# --- cells (2-D input and hidden state) -------------------------------------------------------


def check_cell_sizes(input, hiddens, input_size, hidden_size):
    """torch's size checks of a cell's input and hidden state(s)."""
    if input.shape[1] != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.shape[1]} expected "
                           f"{input_size}")
    for k, h in enumerate(hiddens):
        if h.shape[0] != input.shape[0]:
            raise RuntimeError(f"Input batch size {input.shape[0]} doesn't match hidden{k} "
                               f"batch size {h.shape[0]}")
        if h.dim() < 2 or h.shape[1] != hidden_size:
            got = h.shape[1] if h.dim() > 1 else h.shape[0]
            raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {got}, expected "
                               f"{hidden_size}")


def _cell_checks(input, hiddens, w_ih, w_hh):
    check_cell_sizes(input, hiddens, w_ih.shape[1], w_hh.shape[1])
    check_same_dtype(input, w_ih)
    for h in hiddens:
        check_same_dtype(h, w_hh)


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    _cell_checks(input, (hx,), w_ih, w_hh)
    return rnn_step(linear(input, w_ih, b_ih), hx, w_hh, b_hh, "tanh")


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    _cell_checks(input, (hx,), w_ih, w_hh)
    return rnn_step(linear(input, w_ih, b_ih), hx, w_hh, b_hh, "relu")


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    if len(hx) != 2:
        raise RuntimeError("lstm_cell expects two hidden states")
    _cell_checks(input, tuple(hx), w_ih, w_hh)
    return lstm_step(linear(input, w_ih, b_ih), hx[0], hx[1], w_hh, b_hh)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    _cell_checks(input, (hx,), w_ih, w_hh)
    return gru_step(linear(input, w_ih, b_ih), hx, w_hh, b_hh)


# --- the sequence loop --------------------------------------------------------------------------


def layer_step(mode, gi, h, c, weights):
    """One time step of one layer of ``mode`` given the input part ``gi`` of its gates;
    returns the new ``(h, c)`` (``c`` is None but for LSTM)."""
    _, w_hh, _, b_hh, w_hr = weights
    if mode == "LSTM":
        return lstm_step(gi, h, c, w_hh, b_hh, w_hr)
    if mode == "GRU":
        return gru_step(gi, h, w_hh, b_hh), None
    return rnn_step(gi, h, w_hh, b_hh, "tanh" if mode == "RNN_TANH" else "relu"), None


def zero_state(mode, gi, weights, zeros=creation.zeros):
    """The zero initial ``(h, c)`` of one layer and direction (``c`` None but for LSTM), made
    with ``zeros(shape, dtype=)``."""
    batch, w_hh = gi.shape[1], weights[1]
    h = zeros((batch, w_hh.shape[1]), dtype=gi.dtype)
    return h, (zeros((batch, w_hh.shape[0] // 4), dtype=gi.dtype) if mode == "LSTM" else None)


def _direction(mode, gi, h, c, weights, reverse):
    """Run one direction of one layer over the input part ``gi`` (T, B, G) of its gates, step
    by step, from the state ``(h, c)`` (None: zeros); returns the outputs stacked in time order
    (T, B, H) and the final state."""
    if h is None:
        h, c = zero_state(mode, gi, weights)
    gi = gi.unbind(0)
    steps = range(len(gi) - 1, -1, -1) if reverse else range(len(gi))
    ys = [None] * len(gi)
    for t in steps:
        h, c = layer_step(mode, gi[t], h, c, weights)
        ys[t] = h
    return sh.stack(ys, 0), h, c


def rnn_sequence(mode, input, hx, weights, num_layers, dropout, training, bidirectional,
                 direction=None):
    """The recurrent layers of ``mode`` ("RNN_TANH", "RNN_RELU", "LSTM", "GRU") over a
    time-major ``input`` (T, B, I).

    ``hx`` is None (zero initial state) or the initial state(s) shaped (L*D, B, H) — a pair
    (h0, c0) for LSTM. ``weights[l * D + d]`` is ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` of layer
    ``l``, direction ``d`` (biases and the projection may be None). Dropout applies to the
    output of every layer but the last, in training only. Returns ``(output, h_n)`` or, for
    LSTM, ``(output, h_n, c_n)``; output is (T, B, D*H). ``direction`` runs one direction of
    one layer (``_direction``'s arguments and results); by default step by step in Python."""
    direction = direction or _direction
    if input.shape[0] == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    lstm = mode == "LSTM"
    num_dirs = 2 if bidirectional else 1
    if hx is None:
        h0 = [None] * (num_layers * num_dirs)
        c0 = [None] * (num_layers * num_dirs)
    else:
        h0 = list(hx[0].unbind(0)) if lstm else list(hx.unbind(0))
        c0 = list(hx[1].unbind(0)) if lstm else [None] * len(h0)
    h_n, c_n = [], []
    layer_input = input
    for layer in range(num_layers):
        outs = []
        for d in range(num_dirs):
            k = layer * num_dirs + d
            w = weights[k]
            h, c = h0[k], c0[k]
            # the input part of every step's gates: one product for the whole sequence
            gi = linear(layer_input, w[0], w[2])
            ys, h, c = direction(mode, gi, h, c, w, reverse=d == 1)
            outs.append(ys)
            h_n.append(h)
            c_n.append(c)
        layer_output = outs[0] if num_dirs == 1 else sh.cat(outs, 2)
        if dropout and training and layer < num_layers - 1:
            layer_output = _dropout(layer_output, dropout, True)
        layer_input = layer_output
    if lstm:
        return layer_input, sh.stack(h_n, 0), sh.stack(c_n, 0)
    return layer_input, sh.stack(h_n, 0)

