"""Tutorial layers against PyTorch with copied weights: Linear, Conv1d/2d/3d, ReLU, Softmax,
LogSoftmax, MaxPool, AvgPool, Flatten, Dropout. Values, gradients, reprs, default initialisation
statistics and grad_fn names."""
import math

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn

torch = pytest.importorskip("torch")


def npy(t):
    return t.detach().numpy()


def close(a, b, rtol=1e-10, atol=1e-12):
    a, b = npy(a), npy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def copy_params(src, dst):
    """Copy torch module ``src``'s parameters into tracenet module ``dst`` (same names)."""
    theirs = dict(src.named_parameters())
    ours = dict(dst.named_parameters())
    assert list(ours) == list(theirs)
    for name, p in ours.items():
        p.data = tn.tensor(theirs[name].detach().numpy().copy())


def twins(name, *args, dtype=None, **kwargs):
    """The same layer in both libraries, tracenet's holding torch's parameters."""
    th = getattr(torch.nn, name)(*args, **kwargs)
    ours = getattr(tnn, name)(*args, **kwargs)
    if dtype == "float64":
        th = th.double()
        ours = ours.double() if hasattr(ours, "double") else ours
    copy_params(th, ours)
    return th, ours


def run_pair(th, ours, x, rtol=1e-10, atol=1e-12, grad_out_seed=5):
    """Forward both modules on ``x``, backward a random cotangent, compare everything."""
    xt = torch.tensor(x, requires_grad=True)
    xl = tn.tensor(x, requires_grad=True)
    yt, yl = th(xt), ours(xl)
    close(yl, yt, rtol, atol)
    assert yl.grad_fn.name() == yt.grad_fn.name()
    g = rand(*yt.shape, seed=grad_out_seed, dtype=x.dtype)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad, rtol, atol)
    for (n, pt), (_, pl) in zip(th.named_parameters(), ours.named_parameters()):
        close(pl.grad, pt.grad, rtol, atol * 100)
    return yt, yl


# --- Linear -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 3, 7)])
def test_linear_module(bias, shape):
    th, ours = twins("Linear", 7, 4, bias=bias)
    yt, yl = run_pair(th, ours, rand(*shape, dtype=np.float32), 1e-5, 1e-6)
    if len(shape) == 2 and bias:
        assert yl.grad_fn.name() == "AddmmBackward0"


def test_linear_float64_module():
    th = torch.nn.Linear(6, 3, dtype=torch.float64)
    ours = tnn.Linear(6, 3, dtype=tn.float64)
    assert ours.weight.dtype == tn.float64
    copy_params(th, ours)
    run_pair(th, ours, rand(4, 6))


# --- Conv -----------------------------------------------------------------------------------------

CONV_MODULES = [
    ("Conv1d", (4, 6, 3), dict(stride=2, padding=1, groups=2), (2, 4, 11)),
    ("Conv1d", (4, 6, 4), dict(padding="same", padding_mode="circular"), (2, 4, 9)),
    ("Conv2d", (1, 6, 5), {}, (2, 1, 32, 32)),
    ("Conv2d", (6, 16, 5), {}, (2, 6, 14, 14)),
    ("Conv2d", (4, 6, (3, 5)), dict(stride=(2, 1), padding=(4, 2), dilation=(3, 1)),
     (2, 4, 20, 16)),
    ("Conv2d", (4, 6, 3), dict(padding="same", bias=False), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 4), dict(padding="same", dilation=(1, 2)), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding="valid", stride=2), (2, 4, 9, 8)),
    ("Conv2d", (4, 6, 3), dict(padding=2, padding_mode="reflect"), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding=(1, 2), padding_mode="replicate"), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding=2, padding_mode="circular", groups=2), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 4), dict(padding="same", padding_mode="reflect"), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding=1), (4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding=1, padding_mode="reflect"), (4, 7, 8)),
    ("Conv3d", (2, 4, 3), dict(stride=(1, 2, 1), padding=1), (2, 2, 5, 6, 5)),
    ("Conv3d", (2, 4, 2), dict(padding="same", padding_mode="replicate"), (1, 2, 4, 5, 3)),
]


@pytest.mark.parametrize("name,args,kwargs,shape", CONV_MODULES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CONV_MODULES])
def test_conv_modules_float64(name, args, kwargs, shape):
    th = getattr(torch.nn, name)(*args, **kwargs, dtype=torch.float64)
    ours = getattr(tnn, name)(*args, **kwargs, dtype=tn.float64)
    copy_params(th, ours)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_pair(th, ours, rand(*shape))


def test_conv2d_docs_example_float32():
    """``nn.Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1))`` on a
    20x16x50x100 input."""
    th = torch.nn.Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1))
    ours = tnn.Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1))
    copy_params(th, ours)
    x = rand(20, 16, 50, 100, dtype=np.float32)
    xt, xl = torch.tensor(x, requires_grad=True), tn.tensor(x, requires_grad=True)
    yt, yl = th(xt), ours(xl)
    assert tuple(yl.shape) == (20, 33, 26, 100) == tuple(yt.shape)
    close(yl, yt, 1e-4, 1e-5)
    assert yl.grad_fn.name() == "ConvolutionBackward0"
    g = rand(*yt.shape, seed=3, dtype=np.float32)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad, 1e-4, 1e-4)
    close(ours.weight.grad, th.weight.grad, 1e-4, 1e-2)
    close(ours.bias.grad, th.bias.grad, 1e-4, 1e-2)


# --- activations, pooling, flatten, dropout -------------------------------------------------------


@pytest.mark.parametrize("name,args,kwargs,shape", [
    ("ReLU", (), {}, (3, 4)),
    ("Softmax", (1,), {}, (3, 4, 2)),
    ("LogSoftmax", (-1,), {}, (3, 4, 2)),
    ("Softmin", (0,), {}, (3, 4)),
    ("MaxPool1d", (3,), dict(stride=2, padding=1), (2, 3, 9)),
    ("MaxPool2d", (2,), {}, (2, 3, 8, 8)),
    ("MaxPool2d", ((3, 2),), dict(stride=(2, 1), padding=1, dilation=(1, 2), ceil_mode=True),
     (2, 3, 9, 8)),
    ("MaxPool3d", (2,), dict(stride=1), (1, 2, 4, 5, 3)),
    ("AvgPool1d", (3,), dict(stride=2, padding=1, count_include_pad=False), (2, 3, 9)),
    ("AvgPool2d", (2,), {}, (2, 3, 8, 8)),
    ("AvgPool2d", ((3, 2),), dict(stride=(2, 1), padding=1, ceil_mode=True,
                                  count_include_pad=False), (2, 3, 9, 8)),
    ("AvgPool2d", (3,), dict(padding=1, divisor_override=2), (2, 3, 7, 7)),
    ("AvgPool3d", ((2, 3, 2),), dict(stride=1, padding=(1, 0, 1), count_include_pad=False),
     (1, 2, 4, 5, 3)),
    ("Flatten", (), {}, (2, 3, 4)),
    ("Flatten", (0, 1), {}, (2, 3, 4)),
])
def test_parameterless_layers(name, args, kwargs, shape):
    th = getattr(torch.nn, name)(*args, **kwargs)
    ours = getattr(tnn, name)(*args, **kwargs)
    assert repr(ours) == repr(th)
    run_pair(th, ours, rand(*shape))


def test_relu_inplace_module():
    th, ours = torch.nn.ReLU(inplace=True), tnn.ReLU(inplace=True)
    assert repr(ours) == repr(th) == "ReLU(inplace=True)"
    x = rand(3, 4)
    xt, xl = torch.tensor(x, requires_grad=True), tn.tensor(x, requires_grad=True)
    at, al = xt * 1.5, xl * 1.5
    yt, yl = th(at), ours(al)
    assert yl is al
    close(yl, yt)
    assert yl.grad_fn.name() == yt.grad_fn.name() == "ReluBackward0"
    yt.sum().backward()
    yl.sum().backward()
    close(xl.grad, xt.grad)


def test_maxpool2d_return_indices_module():
    th = torch.nn.MaxPool2d(3, stride=2, padding=1, return_indices=True)
    ours = tnn.MaxPool2d(3, stride=2, padding=1, return_indices=True)
    x = rand(2, 3, 9, 8)
    vt, it = th(torch.tensor(x))
    vl, il = ours(tn.tensor(x))
    close(vl, vt)
    np.testing.assert_array_equal(il.numpy(), it.numpy())
    assert il.dtype == tn.int64


def test_dropout_eval_is_identity_and_train_scales():
    ours = tnn.Dropout(0.25)
    assert repr(ours) == repr(torch.nn.Dropout(0.25))
    x = tn.ones(2000)
    ours.eval()
    assert ours(x) is x
    ours.train()
    y = ours(x).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert 0.65 < kept.mean() < 0.85


# --- reprs --------------------------------------------------------------------------------------

REPR_CASES = [
    ("Linear", (3, 4), {}), ("Linear", (3, 4), dict(bias=False)),
    ("Conv1d", (2, 4, 3), {}), ("Conv1d", (2, 4, 3), dict(stride=2, padding=1, dilation=2)),
    ("Conv2d", (1, 6, 5), {}), ("Conv2d", (6, 16, 5), {}),
    ("Conv2d", (2, 4, 3), dict(stride=2, padding=1, dilation=2, groups=2, bias=False,
                               padding_mode="reflect")),
    ("Conv2d", (16, 33, (3, 5)), dict(stride=(2, 1), padding=(4, 2), dilation=(3, 1))),
    ("Conv2d", (2, 4, 3), dict(padding="valid")), ("Conv2d", (2, 4, 3), dict(padding="same")),
    ("Conv2d", (2, 4, (3, 1)), dict(padding=(0, 0))), ("Conv2d", (2, 4, 3), dict(padding=(1, 0))),
    ("Conv2d", (2, 4, 3), dict(padding_mode="circular", padding=1)),
    ("Conv3d", (2, 4, 3), {}), ("Conv3d", (2, 4, 3), dict(padding="same", stride=1)),
    ("Conv3d", (2, 4, (1, 2, 3)), dict(stride=(1, 2, 1), padding_mode="replicate")),
    ("ReLU", (), {}), ("ReLU", (True,), {}),
    ("Softmax", (), {}), ("Softmax", (1,), {}), ("LogSoftmax", (), {}),
    ("LogSoftmax", (), dict(dim=-1)), ("Softmin", (0,), {}),
    ("MaxPool1d", (2,), {}), ("MaxPool2d", (2,), {}), ("MaxPool2d", ((2, 2),), {}),
    ("MaxPool2d", ((3, 2),), dict(stride=(2, 1), padding=1, dilation=2, return_indices=True,
                                  ceil_mode=True)),
    ("MaxPool3d", (2,), dict(stride=1)),
    ("AvgPool1d", (2,), {}), ("AvgPool1d", (3,), dict(stride=2, padding=1, ceil_mode=True,
                                                      count_include_pad=False)),
    ("AvgPool2d", (2,), {}), ("AvgPool2d", ((3, 2),), dict(stride=(2, 1), padding=1,
                                                           ceil_mode=True,
                                                           count_include_pad=False,
                                                           divisor_override=3)),
    ("AvgPool3d", (2,), {}), ("AvgPool3d", ((1, 2, 3),), dict(stride=1, padding=(0, 1, 1))),
    ("Flatten", (), {}), ("Flatten", (0, 2), {}), ("Dropout", (), {}), ("Dropout", (0.2, True), {}),
    ("MSELoss", (), {}), ("MSELoss", (), dict(reduction="sum")), ("CrossEntropyLoss", (), {}),
    ("CrossEntropyLoss", (), dict(label_smoothing=0.1, ignore_index=3)), ("NLLLoss", (), {}),
]


@pytest.mark.parametrize("name,args,kwargs", REPR_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in REPR_CASES])
def test_repr_matches_torch(name, args, kwargs):
    assert repr(getattr(tnn, name)(*args, **kwargs)) == repr(
        getattr(torch.nn, name)(*args, **kwargs))


def test_container_repr_matches_torch():
    def build(L):
        return L.Sequential(L.Conv2d(1, 6, 5), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                            L.Linear(6 * 14 * 14, 10), L.LogSoftmax(dim=1))
    assert repr(build(tnn)) == repr(build(torch.nn))


# --- default initialisation ---------------------------------------------------------------------


@pytest.mark.parametrize("make,fan_in", [
    (lambda: tnn.Linear(400, 120), 400),
    (lambda: tnn.Linear(84, 10), 84),
    (lambda: tnn.Conv2d(1, 6, 5), 25),
    (lambda: tnn.Conv2d(6, 16, 5), 150),
    (lambda: tnn.Conv1d(4, 8, 3, groups=2), 6),
    (lambda: tnn.Conv3d(2, 4, (1, 2, 3)), 12),
])
def test_default_init_bounds_and_spread(make, fan_in):
    tn.manual_seed(0)
    layer = make()
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy()
    # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in)
    w_bound = math.sqrt(2.0 / 6.0) * math.sqrt(3.0 / fan_in)
    b_bound = 1.0 / math.sqrt(fan_in)
    assert np.all(np.abs(w) <= w_bound + 1e-7)
    assert np.all(np.abs(b) <= b_bound + 1e-7)
    assert w.dtype == np.float32 and b.dtype == np.float32
    if w.size >= 1000:  # uniform: std = bound / sqrt(3), and it fills the range
        assert abs(w.std() - w_bound / math.sqrt(3)) < 0.05 * w_bound
        assert w.max() > 0.95 * w_bound and w.min() < -0.95 * w_bound
    # the same statistics as torch's layer of that shape
    th = {400: torch.nn.Linear(400, 120)}.get(fan_in)
    if th is not None:
        assert abs(th.weight.detach().numpy().std() - w.std()) < 0.05 * w_bound


def test_init_is_seeded():
    tn.manual_seed(3)
    a = tnn.Conv2d(2, 3, 3).weight.detach().numpy().copy()
    tn.manual_seed(3)
    b = tnn.Conv2d(2, 3, 3).weight.detach().numpy()
    np.testing.assert_array_equal(a, b)


# --- grad_fn names ------------------------------------------------------------------------------


def test_grad_fn_names_match_torch():
    def graph(L, lib):
        x = lib.ones(2, 1, 8, 8, requires_grad=True)
        F = L.functional
        conv = L.Conv2d(1, 2, 3)
        names = {}
        c = conv(x)
        names["conv"] = c.grad_fn.name()
        r = F.relu(c)
        names["relu"] = r.grad_fn.name()
        m = F.max_pool2d(r, 2)
        names["max_pool2d"] = m.grad_fn.name()
        names["max_pool1d"] = F.max_pool1d(r[0], 2).grad_fn.name()
        names["max_pool3d"] = F.max_pool3d(r.unsqueeze(0), 1).grad_fn.name()
        names["avg_pool2d"] = F.avg_pool2d(r, 2).grad_fn.name()
        names["avg_pool3d"] = F.avg_pool3d(r.unsqueeze(0), 1).grad_fn.name()
        names["avg_pool1d"] = F.avg_pool1d(r[0], 2).grad_fn.name()
        f = lib.flatten(m, 1)
        names["flatten"] = f.grad_fn.name()
        lin = L.Linear(f.shape[1], 3)
        y = lin(f)
        names["linear"] = y.grad_fn.name()
        names["linear_nobias"] = F.linear(f, lin.weight).grad_fn.name()
        names["softmax"] = F.softmax(y, 1).grad_fn.name()
        names["log_softmax"] = F.log_softmax(y, 1).grad_fn.name()
        names["mse"] = F.mse_loss(y, lib.zeros(2, 3)).grad_fn.name()
        names["nll"] = F.nll_loss(F.log_softmax(y, 1), lib.tensor([0, 2])).grad_fn.name()
        names["cross_entropy"] = F.cross_entropy(y, lib.tensor([0, 2])).grad_fn.name()
        names["pad_constant"] = F.pad(c, (1, 1)).grad_fn.name()
        names["pad_reflect"] = F.pad(c, (1, 1, 1, 1), mode="reflect").grad_fn.name()
        names["pad_replicate"] = F.pad(c[0], (1, 1), mode="replicate").grad_fn.name()
        names["dropout_eval"] = F.dropout(y, training=False).grad_fn.name()
        return names

    assert graph(tnn, tn) == graph(torch.nn, torch)


def test_grad_fn_names_expected_values():
    x = tn.ones(1, 1, 6, 6, requires_grad=True)
    c = tnn.Conv2d(1, 1, 3)(x)
    assert c.grad_fn.name() == "ConvolutionBackward0"
    assert tnn.functional.max_pool2d(c, 2).grad_fn.name() == "MaxPool2DWithIndicesBackward0"
    assert tnn.functional.avg_pool2d(c, 2).grad_fn.name() == "AvgPool2DBackward0"
    assert tnn.functional.relu(c).grad_fn.name() == "ReluBackward0"
    f = tn.flatten(c, 1)
    y = tnn.Linear(16, 4)(f)
    assert y.grad_fn.name() == "AddmmBackward0"
    assert tnn.MSELoss()(y, tn.zeros(1, 4)).grad_fn.name() == "MseLossBackward0"
    assert tnn.functional.softmax(y, 1).grad_fn.name() == "SoftmaxBackward0"
    lp = tnn.functional.log_softmax(y, 1)
    assert lp.grad_fn.name() == "LogSoftmaxBackward0"
    assert tnn.NLLLoss()(lp, tn.tensor([1])).grad_fn.name() == "NllLossBackward0"
    assert tnn.CrossEntropyLoss()(y, tn.tensor([1])).grad_fn.name() == "NllLossBackward0"
    assert tnn.CrossEntropyLoss()(c, tn.zeros(1, 4, 4, dtype=tn.int64)).grad_fn.name() == \
        "NllLoss2DBackward0"


def test_modules_exported():
    for name in ("Linear", "Conv1d", "Conv2d", "Conv3d", "ReLU", "Softmax", "LogSoftmax",
                 "Softmin", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
                 "AvgPool3d", "Flatten", "Unflatten", "Dropout", "MSELoss", "CrossEntropyLoss",
                 "NLLLoss", "Identity", "Sigmoid", "Tanh"):
        assert hasattr(tnn, name), name
