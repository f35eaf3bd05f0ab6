"""Recurrent layers (RNN, LSTM, GRU and the cells) against PyTorch with copied weights: values,
gradients of inputs, initial states and parameters, parameter names/shapes, initialisation,
reprs and errors; the same layers under tracenet.compile against eager, the data-movement
lowerings they need (index, index_backward, cat, stack, split, unbind), and a small LSTM
classifier trained under compile."""
import math
import warnings

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-10, atol=1e-12)
CTOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "tracenet-cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def npy(t):
    return t.detach().numpy()


def close(ours, theirs, tol=TOL):
    a, b = npy(ours), npy(theirs)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, **tol)


def twins(name, *args, **kwargs):
    """The same layer in both libraries (float64), tracenet's holding torch's parameters."""
    th = getattr(torch.nn, name)(*args, dtype=torch.float64, **kwargs)
    ours = getattr(tnn, name)(*args, dtype=tn.float64, **kwargs)
    theirs = list(th.named_parameters())
    mine = list(ours.named_parameters())
    assert [n for n, _ in mine] == [n for n, _ in theirs]
    for (_, p), (_, q) in zip(mine, theirs):
        assert tuple(p.shape) == tuple(q.shape)
        p.data = tn.tensor(npy(q).copy())
    return th, ours


def _flat(result):
    out, hidden = result
    return [out] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def run_pair(th, ours, x, hx=None, seed=7):
    """Forward both with ``x`` (and initial state ``hx``: an array or a pair of arrays), then
    backward random cotangents of every output; compare outputs and all gradients."""
    xt, xo = torch.tensor(x, requires_grad=True), tn.tensor(x, requires_grad=True)
    if hx is None:
        ht = ho = None
        leaves_t, leaves_o = [xt], [xo]
    elif isinstance(hx, tuple):
        ht = tuple(torch.tensor(h, requires_grad=True) for h in hx)
        ho = tuple(tn.tensor(h, requires_grad=True) for h in hx)
        leaves_t, leaves_o = [xt, *ht], [xo, *ho]
    else:
        ht, ho = torch.tensor(hx, requires_grad=True), tn.tensor(hx, requires_grad=True)
        leaves_t, leaves_o = [xt, ht], [xo, ho]
    res_t = th(xt) if ht is None else th(xt, ht)
    res_o = ours(xo) if ho is None else ours(xo, ho)
    flat_t, flat_o = _flat(res_t), _flat(res_o)
    assert len(flat_t) == len(flat_o)
    for a, b in zip(flat_o, flat_t):
        close(a, b)
    gs = [rand(*f.shape, seed=seed + i) for i, f in enumerate(flat_t)]
    sum((f * torch.tensor(g)).sum() for f, g in zip(flat_t, gs)).backward()
    sum((f * tn.tensor(g)).sum() for f, g in zip(flat_o, gs)).backward()
    for a, b in zip(leaves_o, leaves_t):
        close(a.grad, b.grad)
    for (n, p), (_, q) in zip(ours.named_parameters(), th.named_parameters()):
        assert p.grad is not None, n
        close(p.grad, q.grad)
    return res_t, res_o


# --- parameters, init, reprs ----------------------------------------------------------------

CONFIGS = [
    ("RNN", (10, 20), {}),
    ("RNN", (10, 20, 2), dict(nonlinearity="relu", bias=False, batch_first=True)),
    ("LSTM", (10, 20), {}),
    ("LSTM", (10, 20), dict(num_layers=2, batch_first=True)),
    ("LSTM", (10, 20, 3), dict(bidirectional=True, dropout=0.25)),
    ("LSTM", (10, 20), dict(proj_size=5, num_layers=2, bidirectional=True, bias=False)),
    ("GRU", (10, 20), {}),
    ("GRU", (10, 20, 2, True, True, 0.1, True), {}),
]


@pytest.mark.parametrize("name,args,kwargs", CONFIGS)
def test_parameters_and_repr_match_torch(name, args, kwargs):
    th = getattr(torch.nn, name)(*args, **kwargs)
    ours = getattr(tnn, name)(*args, **kwargs)
    assert repr(ours) == repr(th)
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in th.named_parameters()]
    assert ours._flat_weights_names == th._flat_weights_names
    assert [[tuple(p.shape) for p in ws] for ws in ours.all_weights] == \
        [[tuple(p.shape) for p in ws] for ws in th.all_weights]
    assert list(ours.state_dict()) == list(th.state_dict())
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(th, attr), attr
    # torch's state dict loads as is
    ours.load_state_dict({k: tn.tensor(v.numpy()) for k, v in th.state_dict().items()})
    for (_, p), (_, q) in zip(ours.named_parameters(), th.named_parameters()):
        np.testing.assert_array_equal(npy(p), npy(q))


def test_reprs_of_every_variant():
    cases = [("RNN", (3, 4), dict(nonlinearity="relu")),
             ("RNN", (3, 4, 2, "relu"), {}),
             ("LSTM", (3, 4), dict(batch_first=True, bidirectional=True)),
             ("LSTM", (3, 4, 2), dict(proj_size=2, bias=False, dropout=1)),
             ("GRU", (3, 4), dict(dropout=0.0, num_layers=4)),
             ("RNNCell", (10, 20), {}), ("RNNCell", (10, 20), dict(nonlinearity="relu")),
             ("RNNCell", (10, 20), dict(bias=False, nonlinearity="relu")),
             ("LSTMCell", (10, 20), {}), ("LSTMCell", (10, 20), dict(bias=False)),
             ("GRUCell", (10, 20), {}), ("GRUCell", (10, 20), dict(bias=False))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, args, kwargs in cases:
            th = getattr(torch.nn, name)(*args, **kwargs)
            ours = getattr(tnn, name)(*args, **kwargs)
            assert repr(ours) == repr(th)
            assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
                [(n, tuple(p.shape)) for n, p in th.named_parameters()]
    assert tnn.RNN(3, 4, nonlinearity="relu").mode == "RNN_RELU"
    assert tnn.RNN(3, 4).nonlinearity == "tanh"
    assert tnn.RNNCell(3, 4).bias_ih is not None and tnn.GRUCell(3, 4, bias=False).bias_hh is None


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_default_init_is_uniform_in_one_over_sqrt_hidden(name):
    tn.manual_seed(0)
    m = getattr(tnn, name)(30, 64)
    bound = 1 / math.sqrt(64)
    values = np.concatenate([npy(p).ravel() for p in m.parameters()])
    assert values.min() >= -bound and values.max() <= bound
    assert abs(values.mean()) < 0.05 * bound
    np.testing.assert_allclose(values.var(), bound ** 2 / 3, rtol=0.05)
    assert all(p.dtype == tn.float32 for p in m.parameters())
    assert all(p.dtype == tn.float64 for p in
               getattr(tnn, name)(3, 4, dtype=tn.float64).parameters())


# --- forward and backward against torch ----------------------------------------------------

SEQ_CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(num_layers=3, bias=False, dropout=0.5),  # dropout is inactive in eval mode
]


@pytest.mark.parametrize("name", ["RNN", "RNN_relu", "LSTM", "GRU"])
@pytest.mark.parametrize("cfg", range(len(SEQ_CONFIGS)))
@pytest.mark.parametrize("with_h0", [False, True])
def test_sequence_layers_match_torch(name, cfg, with_h0):
    kwargs = dict(SEQ_CONFIGS[cfg])
    if name == "RNN_relu":
        name, kwargs["nonlinearity"] = "RNN", "relu"
    th, ours = twins(name, 3, 5, **kwargs)
    th.eval(), ours.eval()
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    x = rand(2, 4, 3, seed=cfg) if kwargs.get("batch_first") else rand(4, 2, 3, seed=cfg)
    hx = None
    if with_h0:
        hx = rand(layers, 2, 5, seed=10)
        if name == "LSTM":
            hx = (hx, rand(layers, 2, 5, seed=11))
    res_t, res_o = run_pair(th, ours, x, hx)
    out_t, out_o = res_t[0], res_o[0]
    if name == "LSTM":
        assert isinstance(res_o[1], tuple) and len(res_o[1]) == 2
    # torch's node names (its fused oneDNN LSTM kernel names its own output node)
    if not (name == "LSTM" and not kwargs.get("bidirectional")) or kwargs.get("batch_first"):
        assert out_o.grad_fn.name() == out_t.grad_fn.name()
    h_t = res_t[1][0] if name == "LSTM" else res_t[1]
    h_o = res_o[1][0] if name == "LSTM" else res_o[1]
    assert h_o.grad_fn.name() == h_t.grad_fn.name() == "StackBackward0"


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(name, batch_first):
    th, ours = twins(name, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    res_t, res_o = run_pair(th, ours, rand(5, 3))
    assert tuple(res_o[0].shape) == (5, 8)
    assert res_o[0].grad_fn.name() == res_t[0].grad_fn.name() == "SqueezeBackward1"
    hx = rand(4, 4, seed=3)
    run_pair(th, ours, rand(5, 3, seed=1), (hx, rand(4, 4, seed=4)) if name == "LSTM" else hx)


def test_lstm_projections_match_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: projections are not supported with oneDNN
        th, ours = twins("LSTM", 3, 6, num_layers=2, proj_size=2, bidirectional=True)
        res_t, res_o = run_pair(th, ours, rand(4, 2, 3))
        assert tuple(res_o[0].shape) == (4, 2, 4)
        assert tuple(res_o[1][0].shape) == (4, 2, 2) and tuple(res_o[1][1].shape) == (4, 2, 6)
        run_pair(th, ours, rand(4, 2, 3, seed=2), (rand(4, 2, 2, seed=3), rand(4, 2, 6, seed=4)))
        th, ours = twins("LSTM", 3, 6, proj_size=4, batch_first=True)
        res_t, res_o = run_pair(th, ours, rand(2, 4, 3))
        assert res_o[0].grad_fn.name() == res_t[0].grad_fn.name()


def test_float32_layers_match_torch():
    th = torch.nn.GRU(3, 4, 2, bidirectional=True)
    ours = tnn.GRU(3, 4, 2, bidirectional=True)
    ours.load_state_dict({k: tn.tensor(v.numpy()) for k, v in th.state_dict().items()})
    x = rand(6, 2, 3).astype(np.float32)
    out_t, h_t = th(torch.tensor(x))
    out_o, h_o = ours(tn.tensor(x))
    assert out_o.dtype == tn.float32
    close(out_o, out_t, dict(rtol=1e-5, atol=1e-6))
    close(h_o, h_t, dict(rtol=1e-5, atol=1e-6))


def test_empty_batch():
    for name in ("RNN", "LSTM", "GRU"):
        th, ours = twins(name, 3, 4)
        out_t, _ = th(torch.zeros(5, 0, 3, dtype=torch.float64))
        out_o, _ = ours(tn.zeros(5, 0, 3, dtype=tn.float64))
        assert tuple(out_o.shape) == tuple(out_t.shape) == (5, 0, 4)


# --- dropout between layers ----------------------------------------------------------------


def test_dropout_warning_and_validation():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1, "
                                         "but got dropout=0.5 and num_layers=1"):
        tnn.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tnn.LSTM(3, 4, num_layers=2, dropout=0.5)
        tnn.GRU(3, 4, dropout=0)
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError, match=r"dropout should be a number in range \[0, 1\]"):
            tnn.RNN(3, 4, 2, dropout=bad)
    assert tnn.GRU(3, 4, 2, dropout=1).dropout == 1.0


def test_dropout_in_training_between_layers_only():
    # p=1 zeroes the first layer's output: the second layer then sees only zeros
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        th, ours = twins("LSTM", 3, 4, num_layers=2, dropout=1.0)
    x = rand(5, 2, 3)
    out_t, (h_t, c_t) = th(torch.tensor(x))
    out_o, (h_o, c_o) = ours(tn.tensor(x))
    close(out_o, out_t)
    close(h_o, h_t)
    # the last layer's output is never dropped; training differs from eval only by dropout
    th, ours = twins("GRU", 3, 4, num_layers=2, dropout=0.5)
    tn.manual_seed(0)
    a, _ = ours(tn.tensor(x))
    b, _ = ours(tn.tensor(x))
    assert not np.allclose(npy(a), npy(b))
    ours.eval()
    close(ours(tn.tensor(x))[0], th.eval()(torch.tensor(x))[0])
    # p=0 in training is the same computation as torch's
    th, ours = twins("LSTM", 3, 4, num_layers=2, dropout=0.0, bidirectional=True)
    run_pair(th, ours, x)
    # one layer with dropout: nothing is dropped even in training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        th, ours = twins("RNN", 3, 4, dropout=0.9)
    close(ours(tn.tensor(x))[0], th(torch.tensor(x))[0])


# --- errors ----------------------------------------------------------------------------------


def _same_error(fn_t, fn_o):
    with pytest.raises(Exception) as et:
        fn_t()
    with pytest.raises(Exception) as eo:
        fn_o()
    assert type(eo.value) is type(et.value), (eo.value, et.value)
    assert str(eo.value) == str(et.value)
    return str(eo.value)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_forward_errors_match_torch(name):
    th = getattr(torch.nn, name)(10, 20, 2)
    ours = getattr(tnn, name)(10, 20, 2)
    T = lambda *s, **k: torch.zeros(*s, **k)  # noqa: E731
    O = lambda *s, **k: tn.zeros(*s, **k)  # noqa: E731
    lstm = name == "LSTM"

    def both(make_args):
        return _same_error(lambda: th(*make_args(T, torch)), lambda: ours(*make_args(O, tn)))

    msg = both(lambda z, lib: (z(5, 3, 7),))
    assert msg == "input.size(-1) must be equal to input_size. Expected 10, got 7"
    both(lambda z, lib: (z(5, 7),))
    both(lambda z, lib: (z(5, 3, 2, 10),))
    both(lambda z, lib: (z(10),))
    both(lambda z, lib: (z(0, 3, 10),))
    both(lambda z, lib: (z(5, 3, 10, dtype=lib.float64),))
    if lstm:
        both(lambda z, lib: (z(5, 3, 10), (z(2, 4, 20), z(2, 3, 20))))
        both(lambda z, lib: (z(5, 3, 10), (z(2, 3, 20), z(2, 3, 21))))
        both(lambda z, lib: (z(5, 3, 10), (z(1, 3, 20), z(2, 3, 20))))
        both(lambda z, lib: (z(5, 3, 10), (z(2, 20), z(2, 20))))
        both(lambda z, lib: (z(5, 10), (z(2, 3, 20), z(2, 3, 20))))
        both(lambda z, lib: (z(5, 10), (z(2, 20), z(2, 21))))
        both(lambda z, lib: (z(5, 10), (z(2, 20), z(2, 3, 20))))
        both(lambda z, lib: (z(5, 3, 10), (z(2, 3, 20), z(2, 3, 20), z(2, 3, 20))))
    else:
        msg = both(lambda z, lib: (z(5, 3, 10), z(2, 4, 20)))
        assert msg == "Expected hidden size (2, 3, 20), got [2, 4, 20]"
        both(lambda z, lib: (z(5, 3, 10), z(2, 3, 21)))
        both(lambda z, lib: (z(5, 3, 10), z(3, 3, 20)))
        both(lambda z, lib: (z(5, 3, 10), z(2, 20)))
        both(lambda z, lib: (z(5, 10), z(2, 3, 20)))
        both(lambda z, lib: (z(5, 10), z(2, 21)))
        both(lambda z, lib: (z(5, 10), z(3, 20)))


def test_lstm_batch_first_hidden_error():
    th = torch.nn.LSTM(3, 4, 2, batch_first=True)
    ours = tnn.LSTM(3, 4, 2, batch_first=True)
    msg = _same_error(lambda: th(torch.zeros(2, 5, 3), (torch.zeros(2, 5, 4),
                                                         torch.zeros(2, 2, 4))),
                      lambda: ours(tn.zeros(2, 5, 3), (tn.zeros(2, 5, 4), tn.zeros(2, 2, 4))))
    assert msg == "Expected hidden[0] size (2, 2, 4), got [2, 5, 4]"


CTOR_ERRORS = [
    ("RNN", (3, 4), dict(nonlinearity="sigmoid")),
    ("RNN", (3, 4), dict(proj_size=2)),
    ("GRU", (3, 4), dict(proj_size=0)),
    ("LSTM", (3, 4), dict(proj_size=4)),
    ("LSTM", (3, 4), dict(proj_size=-1)),
    ("LSTM", (3, 0), {}),
    ("LSTM", (0, 3), {}),
    ("GRU", (3, 4, 0), {}),
    ("GRU", (3, 4, 1.5), {}),
    ("GRU", (3, 4), dict(bias=1)),
    ("GRU", (3, 4), dict(batch_first=0)),
    ("RNN", (3.0, 4), {}),
    ("RNN", (3, 4.5), {}),
    ("RNN", (3, 4), dict(bogus=1)),
    ("LSTM", (3, 4), dict(nonlinearity="relu")),
    ("LSTM", (3,), {}),
    ("RNN", (3, 4, 2, True), {}),
    ("LSTM", (3, 4), dict(dropout="a")),
]


@pytest.mark.parametrize("name,args,kwargs", CTOR_ERRORS)
def test_constructor_errors_match_torch(name, args, kwargs):
    _same_error(lambda: getattr(torch.nn, name)(*args, **kwargs),
                lambda: getattr(tnn, name)(*args, **kwargs))


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cell_errors_match_torch(name):
    th = getattr(torch.nn, name)(10, 20)
    ours = getattr(tnn, name)(10, 20)
    lstm = name == "LSTMCell"

    def both(x_shape, h_shapes=None, **kw):
        def make(lib):
            x = lib.zeros(*x_shape, **kw)
            if h_shapes is None:
                return (x,)
            hs = tuple(lib.zeros(*s) for s in h_shapes)
            return (x, hs if lstm else hs[0])
        return _same_error(lambda: th(*make(torch)), lambda: ours(*make(tn)))

    assert both((3, 7)) == "input has inconsistent input_size: got 7 expected 10"
    both((7,))
    both((2, 3, 10))
    both(())
    if lstm:
        both((3, 10), [(4, 20), (3, 20)])
        both((3, 10), [(3, 21), (3, 20)])
        both((3, 10), [(3, 20), (3, 21)])
        both((3, 10), [(3, 20), (4, 20)])
        both((10,), [(1, 20), (1, 20)])
        both((3, 10), [(20,), (20,)])
        both((3, 10), [(3, 20, 1), (3, 20)])
        _same_error(lambda: th(torch.zeros(3, 10), torch.zeros(3, 20)),
                    lambda: ours(tn.zeros(3, 10), tn.zeros(3, 20)))
    else:
        assert both((3, 10), [(4, 20)]) == "Input batch size 3 doesn't match hidden0 batch " \
                                           "size 4"
        assert both((3, 10), [(3, 21)]) == "hidden0 has inconsistent hidden_size: got 21, " \
                                           "expected 20"
        both((10,), [(1, 20)])
        both((3, 10), [(20,)])
        both((3, 10), [(3, 20, 1)])
    _same_error(lambda: th(torch.zeros(3, 10, dtype=torch.float64)),
                lambda: ours(tn.zeros(3, 10, dtype=tn.float64)))
    th_bad, ours_bad = torch.nn.RNNCell(3, 4, nonlinearity="gelu"), tnn.RNNCell(
        3, 4, nonlinearity="gelu")
    _same_error(lambda: th_bad(torch.zeros(2, 3)), lambda: ours_bad(tn.zeros(2, 3)))


# --- cells -----------------------------------------------------------------------------------


def cell_pair(th, ours, x, hx=None, seed=3):
    xt, xo = torch.tensor(x, requires_grad=True), tn.tensor(x, requires_grad=True)
    leaves_t, leaves_o = [xt], [xo]
    args_t, args_o = [xt], [xo]
    if hx is not None:
        ht = [torch.tensor(h, requires_grad=True) for h in hx]
        ho = [tn.tensor(h, requires_grad=True) for h in hx]
        leaves_t += ht
        leaves_o += ho
        args_t.append(tuple(ht) if len(hx) == 2 else ht[0])
        args_o.append(tuple(ho) if len(hx) == 2 else ho[0])
    rt, ro = th(*args_t), ours(*args_o)
    rt = list(rt) if isinstance(rt, tuple) else [rt]
    ro = list(ro) if isinstance(ro, tuple) else [ro]
    for a, b in zip(ro, rt):
        close(a, b)
        assert a.grad_fn.name() == b.grad_fn.name()
    gs = [rand(*r.shape, seed=seed + i) for i, r in enumerate(rt)]
    sum((r * torch.tensor(g)).sum() for r, g in zip(rt, gs)).backward()
    sum((r * tn.tensor(g)).sum() for r, g in zip(ro, gs)).backward()
    for a, b in zip(leaves_o, leaves_t):
        close(a.grad, b.grad)
    for (n, p), (_, q) in zip(ours.named_parameters(), th.named_parameters()):
        close(p.grad, q.grad)


@pytest.mark.parametrize("name,kwargs", [("RNNCell", {}), ("RNNCell", dict(nonlinearity="relu")),
                                         ("RNNCell", dict(bias=False)), ("LSTMCell", {}),
                                         ("LSTMCell", dict(bias=False)), ("GRUCell", {}),
                                         ("GRUCell", dict(bias=False))])
def test_cells_match_torch(name, kwargs):
    th, ours = twins(name, 4, 6, **kwargs)
    n_states = 2 if name == "LSTMCell" else 1
    cell_pair(th, ours, rand(3, 4))
    cell_pair(th, ours, rand(3, 4, seed=1), [rand(3, 6, seed=2 + k) for k in range(n_states)])
    cell_pair(th, ours, rand(4, seed=5))
    cell_pair(th, ours, rand(4, seed=6), [rand(6, seed=7 + k) for k in range(n_states)])
    out = ours(tn.zeros(0, 4, dtype=tn.float64))
    out = out[0] if isinstance(out, tuple) else out
    assert tuple(out.shape) == (0, 6)


def test_cell_unrolled_equals_layer():
    """Stepping LSTMCell/GRUCell/RNNCell with a layer's weights gives the layer's output."""
    x = tn.tensor(rand(5, 2, 3))
    for layer_cls, cell_cls in ((tnn.LSTM, tnn.LSTMCell), (tnn.GRU, tnn.GRUCell),
                                (tnn.RNN, tnn.RNNCell)):
        layer, cell = layer_cls(3, 4, dtype=tn.float64), cell_cls(3, 4, dtype=tn.float64)
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, n).data = getattr(layer, n + "_l0").detach().clone()
        out, _ = layer(x)
        state = None
        for t in range(5):
            state = cell(x[t], state)
            h = state[0] if isinstance(state, tuple) else state
            np.testing.assert_allclose(npy(h), npy(out[t]), rtol=1e-12, atol=1e-14)


# --- compiled ----------------------------------------------------------------------------------


class Seq(tnn.Module):
    """A recurrent layer with positional tensor inputs and a flat tuple of outputs."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, *state):
        if not state:
            out, hidden = self.layer(x)
        elif len(state) == 2:
            out, hidden = self.layer(x, tuple(state))
        else:
            out, hidden = self.layer(x, state[0])
        return (out,) + (hidden if isinstance(hidden, tuple) else (hidden,))


def check_compiled(model, *inputs, seed=0):
    """Compiled vs eager: every output, and the gradients of parameters and inputs."""
    compiled = tn.compile(model)
    ref = model(*inputs)
    out = compiled(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    out = out if isinstance(out, tuple) else (out,)
    assert len(ref) == len(out)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(npy(a), npy(b), **CTOL)
    gs = [tn.tensor(rand(*r.shape, seed=seed + i).astype(np.float32)) for i, r in enumerate(ref)]
    grads = []
    for res in (ref, out):
        model.zero_grad()
        for x in inputs:
            x.grad = None
        sum((r * g).sum() for r, g in zip(res, gs)).backward()
        grads.append([npy(p.grad).copy() for p in model.parameters()] +
                     [npy(x.grad).copy() for x in inputs if x.requires_grad])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(grads[1], grads[0]):
        np.testing.assert_allclose(a, b, **CTOL)
    return compiled


def _inputs(*shapes, seed=0):
    return [tn.tensor(rand(*s, seed=seed + i).astype(np.float32), requires_grad=True)
            for i, s in enumerate(shapes)]


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_compiled_default_layers_match_eager(name):
    tn.manual_seed(1)
    check_compiled(Seq(getattr(tnn, name)(3, 5)), *_inputs((4, 2, 3)))


@pytest.mark.parametrize("name,kwargs", [
    ("RNN", dict(num_layers=2, nonlinearity="relu", batch_first=True)),
    ("LSTM", dict(num_layers=2, bidirectional=True, dropout=0.3)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True, bias=False)),
    ("LSTM", dict(proj_size=2, batch_first=True)),
])
def test_compiled_layers_with_initial_state_match_eager(name, kwargs):
    tn.manual_seed(2)
    layer = getattr(tnn, name)(3, 4, **kwargs)
    layer.eval()
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    x_shape = (2, 4, 3) if kwargs.get("batch_first") else (4, 2, 3)
    h_size = kwargs.get("proj_size", 4)
    shapes = [x_shape, (layers, 2, h_size)] + ([(layers, 2, 4)] if name == "LSTM" else [])
    check_compiled(Seq(layer), *_inputs(*shapes))


def test_compiled_unbatched_lstm_and_plain_gru_module():
    tn.manual_seed(3)
    check_compiled(Seq(tnn.LSTM(3, 4, bidirectional=True)), *_inputs((5, 3), (2, 4), (2, 4)))
    gru = tnn.GRU(3, 4)
    compiled = check_compiled(gru, *_inputs((3, 2, 3)))
    out, h = compiled(tn.randn(3, 2, 3))
    assert tuple(out.shape) == (3, 2, 4) and tuple(h.shape) == (1, 2, 4)


class CellSteps(tnn.Module):
    def __init__(self, cell, steps):
        super().__init__()
        self.cell, self.steps = cell, steps

    def forward(self, x, *state):
        state = (state if len(state) == 2 else state[0]) if state else None
        outs = []
        for t in range(self.steps):
            state = self.cell(x[t], state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return tn.stack(outs, 0)


class OneStep(tnn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h, c):
        return self.cell(x, (h, c))


@pytest.mark.parametrize("name,kwargs", [("RNNCell", dict(nonlinearity="relu")),
                                         ("LSTMCell", {}), ("GRUCell", dict(bias=False))])
def test_compiled_cells_match_eager(name, kwargs):
    tn.manual_seed(4)
    cell = getattr(tnn, name)(3, 4, **kwargs)
    check_compiled(CellSteps(cell, 3), *_inputs((3, 2, 3)))
    states = [(2, 4)] * (2 if name == "LSTMCell" else 1)
    check_compiled(CellSteps(cell, 3), *_inputs((3, 2, 3), *states))
    if name != "LSTMCell":
        check_compiled(cell, *_inputs((2, 3), *states))  # one step called directly
    else:
        check_compiled(OneStep(cell), *_inputs((2, 3), *states))
    check_compiled(CellSteps(cell, 2), *_inputs((2, 3), *[s[1:] for s in states]))  # unbatched


class Movement(tnn.Module):
    def forward(self, x, y):
        return (x[1, :, 2:5:2], x[..., None, -1], x[:, None, 1:3, ::3], x[-1][0],
                tn.cat([x, y], 1), tn.cat([y.double(), x.double()], 1)[:, 1:], tn.stack(
                    [x, x * 2], 2), tn.stack([x[0, 1:3], y[1]], -1), *x.split([1, 2, 3], 2),
                x.chunk(2, 1)[1], *y.unbind(1))


def test_data_movement_lowerings_match_eager():
    x, y = _inputs((3, 4, 6), (3, 2, 6))
    compiled = check_compiled(Movement(), x, y)
    src = compiled.source()
    for op in ("index", "cat", "stack", "split", "unbind"):
        assert f"= {op}(" in src
    assert "index_backward(" in str(compiled.backward_graph) and "memcpy(" in src


def test_mixed_dtype_cat_and_empty_parts_compile():
    class M(tnn.Module):
        def forward(self, a, b):
            return tn.cat([a, b], 0) * 1.0, tn.cat([a, a[:0]], 0), tn.stack([a[0], a[1]])

    a = tn.tensor(rand(2, 3).astype(np.float32), requires_grad=True)
    b = tn.tensor(rand(1, 3), requires_grad=True)
    out = check_compiled(M(), a, b)(a, b)
    assert out[0].dtype == tn.float64


class Advanced(tnn.Module):
    def __init__(self):
        super().__init__()
        self.i = tn.tensor([[0, 2, -1], [1, 1, 3]])  # repeats: the gradient accumulates
        self.j = tn.tensor([1, -2, 0])

    def forward(self, x):
        i, j = self.i, self.j
        return (x[i], x[:, j], x[1, i, :, j], x[:, i, j], x[i, :, j], x[None, ..., j],
                x[j, 1:3, None, i], x[..., j, -1], x.index_select(2, j))


def test_advanced_indexing_lowering_matches_eager():
    (x,) = _inputs((4, 5, 6, 7))
    compiled = check_compiled(Advanced(), x)
    assert "index_backward(" in str(compiled.backward_graph)


def test_rnn_hidden_dtype_error_matches_torch():
    for name in ("RNN", "GRU"):
        th, ours = getattr(torch.nn, name)(3, 4), getattr(tnn, name)(3, 4)
        msg = _same_error(lambda: th(torch.zeros(5, 2, 3), torch.zeros(1, 2, 4,
                                                                       dtype=torch.float64)),
                          lambda: ours(tn.zeros(5, 2, 3), tn.zeros(1, 2, 4, dtype=tn.float64)))
        assert msg == "mat1 and mat2 must have the same dtype, but got Double and Float"


class LSTMClassifier(tnn.Module):
    def __init__(self, features=6, hidden=8, classes=3):
        super().__init__()
        self.proj = tnn.Linear(features, 5)
        self.lstm = tnn.LSTM(5, hidden, batch_first=True)
        self.head = tnn.Linear(hidden, classes)

    def forward(self, x):
        out, (h, c) = self.lstm(self.proj(x).tanh())
        return self.head(h[-1])


def test_lstm_classifier_trains_under_compile_like_eager():
    tn.manual_seed(5)
    eager = LSTMClassifier()
    twin = LSTMClassifier()
    twin.load_state_dict(eager.state_dict())
    compiled = tn.compile(twin)
    rng = np.random.default_rng(0)
    x = tn.tensor(rng.standard_normal((8, 7, 6)).astype(np.float32))
    y = tn.tensor(rng.integers(0, 3, 8))
    crit = tnn.CrossEntropyLoss()
    opt_e = tn.optim.SGD(eager.parameters(), lr=0.5, momentum=0.5)
    opt_c = tn.optim.SGD(compiled.parameters(), lr=0.5, momentum=0.5)
    losses = {"eager": [], "compiled": []}
    for _ in range(50):
        for key, net, opt in (("eager", eager, opt_e), ("compiled", compiled, opt_c)):
            opt.zero_grad()
            loss = crit(net(x), y)
            loss.backward()
            opt.step()
            losses[key].append(loss.item())
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-3)
    assert losses["eager"][-1] < 0.5 * losses["eager"][0]  # it actually learns
    assert len(compiled.specialisations) == 1
