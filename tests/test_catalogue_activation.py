"""The activation / dropout / small-layer part of the layer catalogue against PyTorch: LeakyReLU,
Sigmoid, Tanh, Softplus, Softmax, LogSoftmax, ELU, GELU, ReLU (modules and functional forms),
Identity, Flatten, Unflatten, Linear, Bilinear, Dropout (1d/2d/3d), Embedding, CosineSimilarity
and PairwiseDistance. Forward values, gradients (inputs and copied parameters), reprs, defaults,
errors and warnings in eager mode; every layer with a computation also under tracenet.compile."""
import math
import warnings

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as TF

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "tracenet-cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))


def npy(t):
    return t.detach().numpy()


def close(ours, theirs, rtol=1e-10, atol=1e-12):
    a, b = npy(ours), npy(theirs)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def rand(*shape, seed=0, scale=1.0, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def copy_params(src, dst):
    theirs = dict(src.named_parameters())
    ours = dict(dst.named_parameters())
    assert list(ours) == list(theirs)
    for name, p in ours.items():
        p.data = tn.tensor(theirs[name].detach().numpy().copy())


def outcome(fn):
    """(error type, message) of fn(), or ("ok", None), with the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
            result = ("ok", None)
        except Exception as e:  # noqa: BLE001  (comparing torch's and our errors)
            result = (type(e).__name__, str(e))
    return result, [str(w.message) for w in caught]


def same_outcome(make):
    """``make(lib)`` behaves the same (error type and message, warnings) in both libraries."""
    ours, theirs = outcome(lambda: make(tn)), outcome(lambda: make(torch))
    assert ours == theirs


def run_pair(th, ours, arrays, rtol=1e-10, atol=1e-12, dtype=None):
    """Forward both modules on the same inputs, backward one cotangent, compare outputs,
    grad_fn names, input and parameter gradients."""
    xt = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    xl = [tn.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    yt, yl = th(*xt), ours(*xl)
    close(yl, yt, rtol, atol)
    if yt.grad_fn is not None:
        assert yl.grad_fn.name() == yt.grad_fn.name()
    g = rand(*yt.shape, seed=9, dtype=npy(yt).dtype)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    for a, b in zip(xl, xt):
        if b.grad is not None:
            close(a.grad, b.grad, rtol, atol)
    for (_, pt), (_, pl) in zip(th.named_parameters(), ours.named_parameters()):
        close(pl.grad, pt.grad, rtol, atol)


# --- activation modules ------------------------------------------------------------------------

ACTIVATIONS = [
    ("ReLU", (), {}), ("LeakyReLU", (), {}), ("LeakyReLU", (0.2,), {}),
    ("LeakyReLU", (), dict(negative_slope=-0.3)), ("Sigmoid", (), {}), ("Tanh", (), {}),
    ("Softplus", (), {}), ("Softplus", (2.0, 1.0), {}), ("Softplus", (), dict(beta=0.5)),
    ("Softmax", (1,), {}), ("Softmax", (), dict(dim=-1)), ("LogSoftmax", (0,), {}),
    ("LogSoftmax", (2,), {}), ("ELU", (), {}), ("ELU", (0.5,), {}), ("ELU", (), dict(alpha=2)),
    ("GELU", (), {}), ("GELU", ("tanh",), {}), ("Identity", (), {}), ("Identity", (3,), dict(a=1)),
    ("Flatten", (), {}), ("Flatten", (0, 1), {}), ("Unflatten", (1, (2, 2)), {}),
    ("Unflatten", (-1, [1, 3]), {}),
]


@pytest.mark.parametrize("name,args,kwargs", ACTIVATIONS,
                         ids=[f"{n}-{a}-{k}" for n, a, k in ACTIVATIONS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parameterless_module_matches_torch(name, args, kwargs, dtype):
    th, ours = getattr(torch.nn, name)(*args, **kwargs), getattr(tnn, name)(*args, **kwargs)
    assert repr(ours) == repr(th)
    x = rand(3, 4, 3, scale=3.0, dtype=dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-6, atol=1e-6)
    run_pair(th, ours, [x], **tol)


@pytest.mark.parametrize("make", [
    lambda L: L.nn.LeakyReLU(0.1, True), lambda L: L.nn.LeakyReLU(inplace=1),
    lambda L: L.nn.ELU(1, inplace=True), lambda L: L.nn.Softplus(beta=1, threshold=20),
    lambda L: L.nn.ReLU(inplace=True), lambda L: L.nn.GELU(approximate="tanh"),
    lambda L: L.nn.Softmax(), lambda L: L.nn.LogSoftmax(dim=None),
    lambda L: L.nn.Unflatten(0, L.Size([2, 2])), lambda L: L.nn.Unflatten("a", [2, 2]),
    lambda L: L.nn.Unflatten(1, ()), lambda L: L.nn.Flatten(2, 3), lambda L: L.nn.LeakyReLU(1),
    lambda L: L.nn.ELU(1), lambda L: L.nn.Softplus(2), lambda L: L.nn.ReLU(0),
])
def test_reprs(make):
    assert repr(make(tn)) == repr(make(torch))


def test_defaults_match_torch():
    pairs = [(tnn.LeakyReLU(), torch.nn.LeakyReLU(), ("negative_slope", "inplace")),
             (tnn.ELU(), torch.nn.ELU(), ("alpha", "inplace")),
             (tnn.GELU(), torch.nn.GELU(), ("approximate",)),
             (tnn.Softplus(), torch.nn.Softplus(), ("beta", "threshold")),
             (tnn.Dropout(), torch.nn.Dropout(), ("p", "inplace")),
             (tnn.Dropout2d(), torch.nn.Dropout2d(), ("p", "inplace")),
             (tnn.CosineSimilarity(), torch.nn.CosineSimilarity(), ("dim", "eps")),
             (tnn.PairwiseDistance(), torch.nn.PairwiseDistance(), ("norm", "eps", "keepdim")),
             (tnn.Flatten(), torch.nn.Flatten(), ("start_dim", "end_dim")),
             (tnn.Softmax(), torch.nn.Softmax(), ("dim",))]
    for ours, theirs, attrs in pairs:
        for a in attrs:
            assert getattr(ours, a) == getattr(theirs, a), (type(ours).__name__, a)
    e, et = tnn.Embedding(4, 2), torch.nn.Embedding(4, 2)
    for a in ("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"):
        assert getattr(e, a) == getattr(et, a), a


# --- functional forms ------------------------------------------------------------------------

FUNCTIONAL = [
    ("leaky_relu", (), {}), ("leaky_relu", (0.3,), {}), ("elu", (), {}), ("elu", (1.7,), {}),
    ("gelu", (), {}), ("gelu", (), dict(approximate="tanh")), ("softplus", (), {}),
    ("softplus", (3, 0.5), {}), ("softplus", (), dict(beta=-1.0)), ("sigmoid", (), {}),
    ("tanh", (), {}), ("relu", (), {}), ("softmax", (1,), {}), ("log_softmax", (0,), {}),
    ("softplus", (tn.tensor(2.0),), {}),
]


@pytest.mark.parametrize("name,args,kwargs", FUNCTIONAL,
                         ids=[f"{n}-{a}-{k}" for n, a, k in FUNCTIONAL])
def test_functional_matches_torch(name, args, kwargs):
    th_args = tuple(torch.tensor(a.item()) if isinstance(a, tn.Tensor) else a for a in args)
    x = rand(4, 5, scale=3.0)
    xt, xl = torch.tensor(x, requires_grad=True), tn.tensor(x, requires_grad=True)
    yt, yl = getattr(F, name)(xt, *th_args, **kwargs), getattr(TF, name)(xl, *args, **kwargs)
    close(yl, yt)
    assert yl.grad_fn.name() == yt.grad_fn.name()
    g = rand(4, 5, seed=3)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad)


@pytest.mark.parametrize("name,args", [("leaky_relu", (0.2,)), ("elu", (0.7,)), ("gelu", ()),
                                       ("gelu_tanh", ()), ("softplus", (2.0, 1.0))])
def test_double_backward_matches_torch(name, args):
    x = np.array([0.3, -1.2, 0.5, 2.0, -0.1, 0.45, 0.55])

    def run(lib, fn):
        xx = lib.tensor(x, requires_grad=True)
        kw = {}
        if name == "gelu_tanh":
            kw = dict(approximate="tanh")
        y = getattr(fn, name.replace("_tanh", ""))(xx, *args, **kw)
        g, = lib.autograd.grad((y * y).sum(), xx, create_graph=True)
        gg, = lib.autograd.grad((g * g).sum(), xx)
        return g, gg

    (g1, gg1), (g2, gg2) = run(tn, TF), run(torch, F)
    assert g1.grad_fn.name() == g2.grad_fn.name()
    close(g1, g2)
    close(gg1, gg2, rtol=1e-9, atol=1e-10)


def test_gelu_of_extreme_values_matches_torch():
    x = np.array([-40.0, -8.0, -5.5, -3.9, -0.46875, 0.0, 1e-12, 0.46875, 4.0, 6.0, 50.0])
    for mode in ("none", "tanh"):
        close(TF.gelu(tn.tensor(x), approximate=mode), F.gelu(torch.tensor(x), approximate=mode))


@pytest.mark.parametrize("which", ["leaky_relu", "elu", "relu"])
def test_inplace_activations(which):
    x = rand(3, 4, scale=2.0)
    results = []
    for lib, fn in ((tn, TF), (torch, F)):
        leaf = lib.tensor(x, requires_grad=True)
        a = leaf * 1.5
        out = getattr(fn, which)(a, inplace=True)
        assert out is a
        assert a._version == 1 if lib is torch else True
        out.backward(lib.tensor(rand(3, 4, seed=4)))
        results.append((out, out.grad_fn.name(), leaf.grad))
    (o1, n1, g1), (o2, n2, g2) = results
    close(o1, o2)
    assert n1 == n2
    close(g1, g2)
    # the underscore functions
    if which != "relu":
        a, b = tn.tensor(x), torch.tensor(x)
        close(getattr(TF, which + "_")(a, 0.3), getattr(F, which + "_")(b, 0.3))
        close(a, b)


def test_inplace_with_negative_slope_fails_at_backward_like_torch():
    for which in ("leaky_relu", "elu"):
        def make(lib, which=which):
            leaf = lib.ones(3, requires_grad=True)
            fn = TF if lib is tn else F
            getattr(fn, which)(leaf * 1.0, -0.1, inplace=True).sum().backward()
        same_outcome(make)
        # slope 0 is fine
        same_outcome(lambda lib, w=which: getattr(TF if lib is tn else F, w)(
            lib.ones(3, requires_grad=True) * 1.0, 0.0, inplace=True).sum().backward())


@pytest.mark.parametrize("make", [
    lambda L, f: f.leaky_relu(L.ones(3, dtype=L.long)),
    lambda L, f: f.leaky_relu(L.ones(3, dtype=L.bool)),
    lambda L, f: f.elu(L.ones(3, dtype=L.long)),
    lambda L, f: f.gelu(L.ones(3, dtype=L.long)),
    lambda L, f: f.softplus(L.ones(3, dtype=L.long)),
    lambda L, f: f.gelu(L.ones(3), approximate="exact"),
    lambda L, f: L.nn.GELU("foo")(L.ones(2)),
    lambda L, f: f.gelu(L.ones(2), "tanh"),
    lambda L, f: f.leaky_relu(L.ones(3), "a"),
    lambda L, f: f.elu(L.ones(3), "a"),
    lambda L, f: L.nn.Softplus("a")(L.ones(3)),
    lambda L, f: f.leaky_relu(L.ones(3, requires_grad=True), inplace=True),
    lambda L, f: f.softmax(L.ones(3, dtype=L.long), 0),
    lambda L, f: f.sigmoid(L.ones(3, dtype=L.long)).sum(),
    lambda L, f: f.relu(L.ones(3, dtype=L.long)).sum(),
    lambda L, f: L.nn.Softmax()(L.ones(3, 4)),
    lambda L, f: L.nn.LogSoftmax()(L.ones(2, 3, 4)),
    lambda L, f: f.softmax(L.ones(3)),
    lambda L, f: f.log_softmax(L.ones(2, 3), dim=3),
])
def test_activation_errors_and_warnings_match_torch(make):
    same_outcome(lambda L: make(L, TF if L is tn else F))


def test_implicit_softmax_dim_values():
    x = rand(2, 3, 4)
    for cls in ("Softmax", "LogSoftmax", "Softmin"):
        with pytest.warns(UserWarning, match="Implicit dimension choice"):
            ours = getattr(tnn, cls)()(tn.tensor(x))
        with pytest.warns(UserWarning):
            theirs = getattr(torch.nn, cls)()(torch.tensor(x))
        close(ours, theirs)


# --- Linear and Bilinear -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3), (3,), (2, 5, 3), (2, 2, 1, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(shape, bias):
    th = torch.nn.Linear(3, 4, bias=bias).double()
    ours = tnn.Linear(3, 4, bias=bias).double()
    copy_params(th, ours)
    assert repr(ours) == repr(th)
    run_pair(th, ours, [rand(*shape)])


def test_linear_functional_bias_shapes_and_layouts():
    w, x3 = rand(4, 3, seed=1), rand(5, 2, 3, seed=2)
    for bias in (rand(2, 4, seed=3), rand(seed=4), rand(1, seed=5)):
        for x in (x3, np.ascontiguousarray(x3.transpose(1, 0, 2)).transpose(1, 0, 2)):
            xt, xl = torch.tensor(x, requires_grad=True), tn.tensor(x, requires_grad=True)
            if x is not x3:
                xt, xl = xt.transpose(0, 1).contiguous().transpose(0, 1), xl
            args = [(lib.tensor(w, requires_grad=True), lib.tensor(bias, requires_grad=True))
                    for lib in (torch, tn)]
            yt = F.linear(xt, *args[0])
            yl = TF.linear(xl, *args[1])
            close(yl, yt)
            assert yl.grad_fn.name() == yt.grad_fn.name()
            yt.sum().backward()
            yl.sum().backward()
            for a, b in zip(args[1], args[0]):
                close(a.grad, b.grad)


@pytest.mark.parametrize("make", [
    lambda L: L.nn.functional.linear(L.ones(2, 3), L.ones(4, 5)),
    lambda L: L.nn.functional.linear(L.ones(()), L.ones(3, 3)),
    lambda L: L.nn.functional.linear(L.ones(2, 3), L.ones(4, 3, 2)),
    lambda L: L.nn.functional.linear(L.ones(2, 3), L.ones(4, 3), L.ones(5)),
    lambda L: L.nn.functional.linear(L.ones(2, 3), L.ones(4, 3, dtype=L.float64)),
    lambda L: L.nn.functional.linear(L.ones(5, 2, 3), L.ones(4, 3), L.ones(2, 4)).sum(),
    lambda L: L.nn.functional.linear(L.ones(3), L.ones(3)).sum(),
    lambda L: L.nn.Linear(3, 4)(L.ones(2, 5)),
    lambda L: L.nn.Linear(-1, 4),
    lambda L: L.nn.Linear(0, 4)(L.ones(2, 0)).sum(),
])
def test_linear_errors_match_torch(make):
    same_outcome(make)


@pytest.mark.parametrize("lead", [(4,), (), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_bilinear_matches_torch(lead, bias):
    th = torch.nn.Bilinear(3, 5, 4, bias=bias).double()
    ours = tnn.Bilinear(3, 5, 4, bias=bias).double()
    copy_params(th, ours)
    assert repr(ours) == repr(th)
    run_pair(th, ours, [rand(*lead, 3, seed=1), rand(*lead, 5, seed=2)])


def test_bilinear_default_init_bounds():
    tn.manual_seed(0)
    m = tnn.Bilinear(16, 3, 50)
    bound = 1 / math.sqrt(16)
    for p in (m.weight, m.bias):
        v = npy(p)
        assert v.min() >= -bound and v.max() <= bound and v.std() > bound / 3


@pytest.mark.parametrize("make", [
    lambda L: L.nn.Bilinear(3, 4, 5)(L.ones(2, 3), L.ones(3, 4)),
    lambda L: L.nn.Bilinear(3, 4, 5)(L.ones(2, 2), L.ones(2, 4)),
    lambda L: L.nn.Bilinear(3, 4, 5)(L.ones(2, 3), L.ones(2, 5)),
    lambda L: L.nn.Bilinear(3, 4, 5)(L.ones(3), L.ones(2, 4)),
    lambda L: L.nn.Bilinear(3, 4, 5)(L.ones(()), L.ones(())),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3, 3), L.ones(2, 4, 4), L.ones(5, 3, 4)),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3), L.ones(2, 4), L.ones(5, 3, 4), L.ones(4)),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3), L.ones(2, 4), L.ones(5, 3, 4),
                                       L.ones(2, 5)),
    lambda L: L.nn.functional.bilinear(L.ones(3), L.ones(4), L.ones(5, 3, 4), L.ones(())),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3), L.ones(2, 4), L.ones(5, 3)),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3), L.ones(2, 4), L.ones(5, 3, 4, 1)),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3), L.ones(2, 4, dtype=L.float64),
                                       L.ones(5, 3, 4)),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3), L.ones(2, 4), L.ones(5, 3, 4),
                                       L.ones(5, dtype=L.float64)),
    lambda L: L.nn.functional.bilinear(L.ones(0, 3), L.ones(0, 4), L.ones(5, 3, 4)).sum(),
    lambda L: L.nn.functional.bilinear(L.ones(2, 3, dtype=L.long), L.ones(2, 4, dtype=L.long),
                                       L.ones(5, 3, 4, dtype=L.long)).sum(),
    lambda L: L.nn.Bilinear(0, 4, 5),
    lambda L: L.nn.Bilinear(3, 0, 5),
    lambda L: L.nn.Bilinear(-3, 4, 5),
])
def test_bilinear_errors_match_torch(make):
    same_outcome(make)


# --- Identity, Flatten, Unflatten --------------------------------------------------------------


def test_identity_returns_its_input():
    x = tn.ones(2, 3)
    assert tnn.Identity(7, unused="x")(x) is x


@pytest.mark.parametrize("make", [
    lambda L: L.nn.Unflatten(1, 4),
    lambda L: L.nn.Unflatten(1, (2.0, 2)),
    lambda L: L.nn.Unflatten(1, ((2,),)),
    lambda L: L.nn.Unflatten(0, (True, 4)),
    lambda L: L.nn.Unflatten(None, (2, 2)),
    lambda L: L.nn.Unflatten(1, (2, -1))(L.ones(2, 4, 3)).sum(),
    lambda L: L.nn.Flatten(2, 1)(L.ones(2, 3, 4)),
    lambda L: L.nn.Flatten(3)(L.ones(2, 3, 4)),
])
def test_flatten_unflatten_errors_match_torch(make):
    same_outcome(make)


# --- dropout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda L: L.nn.functional.dropout(L.ones(3), 1.5),
    lambda L: L.nn.functional.dropout(L.ones(3), -0.1),
    lambda L: L.nn.Dropout(1.5),
    lambda L: L.nn.Dropout2d(-1),
    lambda L: L.nn.Dropout1d(2.0),
    lambda L: L.nn.Dropout3d(1.01),
    lambda L: L.nn.Dropout("a"),
    lambda L: L.nn.functional.dropout2d(L.ones(3, 3), 2.0),
    lambda L: L.nn.functional.dropout2d(L.ones(4)),
    lambda L: L.nn.functional.dropout2d(L.ones(4), training=False),
    lambda L: L.nn.functional.dropout2d(L.ones(4, 3)),
    lambda L: L.nn.functional.dropout2d(L.ones(2, 4, 3, 2, 2)),
    lambda L: L.nn.functional.dropout2d(L.ones(2, 4, 3)),
    lambda L: L.nn.Dropout2d().eval()(L.ones(2, 4, 3)),
    lambda L: L.nn.functional.dropout2d(L.ones(2, 4, 3, 2)),
    lambda L: L.nn.functional.dropout1d(L.ones(4)),
    lambda L: L.nn.functional.dropout1d(L.ones(2, 3, 4, 4), training=False),
    lambda L: L.nn.functional.dropout3d(L.ones(3, 4)),
    lambda L: L.nn.functional.dropout3d(L.ones(2, 3, 4, 4, 1, 1)),
    lambda L: L.nn.functional.dropout(L.ones(3, dtype=L.long)),
    lambda L: L.nn.functional.dropout(L.ones(3, dtype=L.bool), 0.5),
    lambda L: L.nn.functional.dropout2d(L.ones(3, 3, 3, dtype=L.long)),
])
def test_dropout_errors_and_warnings_match_torch(make):
    same_outcome(make)


@pytest.mark.parametrize("args", [(), (0.2,), (0.2, True), (1,), (0,), (0.5, 1)])
@pytest.mark.parametrize("name", ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"])
def test_dropout_reprs(name, args):
    assert repr(getattr(tnn, name)(*args)) == repr(getattr(torch.nn, name)(*args))


@pytest.mark.parametrize("fn,shape", [("dropout", (4, 5)), ("dropout1d", (2, 3, 4)),
                                      ("dropout1d", (3, 4)), ("dropout2d", (2, 3, 4, 4)),
                                      ("dropout3d", (2, 3, 2, 2, 2)), ("dropout3d", (3, 2, 2, 2))])
def test_dropout_identity_cases_and_p_one(fn, shape):
    x = tn.tensor(rand(*shape), requires_grad=True)
    f = getattr(TF, fn)
    th = getattr(F, fn)
    xt = torch.tensor(npy(x), requires_grad=True)
    for kwargs in (dict(training=False), dict(p=0.0)):
        y, yt = f(x * 1, **kwargs), th(xt * 1, **kwargs)
        close(y, yt)
        assert y.grad_fn.name() == yt.grad_fn.name()
    if fn == "dropout":
        assert f(x, training=False) is x and f(x, 0.0) is x
    y, yt = f(x * 1, 1.0), th(xt * 1, 1.0)
    close(y, yt)
    assert y.grad_fn.name() == yt.grad_fn.name()
    y.sum().backward()
    yt.sum().backward()
    close(x.grad, xt.grad)


def test_dropout_p_one_keeps_integer_dtypes_and_nan():
    same_outcome(lambda L: L.nn.functional.dropout(L.ones(3, dtype=L.long), 1.0).sum())
    for dt in ("long", "bool"):
        ours = TF.dropout(tn.ones(3, dtype=getattr(tn, dt)), 1.0)
        theirs = F.dropout(torch.ones(3, dtype=getattr(torch, dt)), 1.0)
        assert str(ours.dtype) == str(theirs.dtype)
        np.testing.assert_array_equal(npy(ours), npy(theirs))
    close(TF.dropout(tn.tensor([float("nan"), 1.0]), 1.0),
          F.dropout(torch.tensor([float("nan"), 1.0]), 1.0))


def _mask_statistics(y, x, p):
    """Fraction dropped, and whether every survivor is x / (1 - p)."""
    y, x = npy(y), npy(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    return 1 - kept.mean()


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_train_mask_statistics_and_gradient(p):
    tn.manual_seed(0)
    x = tn.tensor(rand(200, 100) + 5.0, requires_grad=True)
    m = tnn.Dropout(p)
    y = m(x)
    assert y.grad_fn.name() == "MulBackward0"
    assert abs(_mask_statistics(y, x, p) - p) < 0.02
    y.sum().backward()
    # the gradient is the mask: 0 where dropped, 1 / (1 - p) where kept
    np.testing.assert_allclose(npy(x.grad), (npy(y) != 0) / (1 - p), rtol=1e-12)
    y2 = m(x)
    assert (npy(y2) != npy(y)).any()  # a new mask per call
    m.eval()
    assert m(x) is x


def test_dropout_is_reproducible_under_manual_seed():
    x = tn.ones(50, 40)
    tn.manual_seed(3)
    a = npy(TF.dropout(x, 0.5))
    tn.manual_seed(3)
    np.testing.assert_array_equal(npy(TF.dropout(x, 0.5)), a)


@pytest.mark.parametrize("fn,shape,planes", [
    ("dropout2d", (40, 30, 3, 4), 2), ("dropout2d", (40, 30, 5), 2),
    ("dropout1d", (40, 30, 6), 2), ("dropout1d", (300, 6), 1), ("dropout3d", (20, 30, 2, 2, 2), 2),
    ("dropout3d", (300, 2, 3, 2), 1)])
def test_channel_dropout_zeroes_whole_channels(fn, shape, planes):
    tn.manual_seed(1)
    x = tn.tensor(rand(*shape) + 3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = getattr(TF, fn)(x, 0.4)
    frac = _mask_statistics(y, x, 0.4)
    assert abs(frac - 0.4) < 0.05
    v = npy(y).reshape(shape[:planes] + (-1,))
    zero = (v == 0)
    assert np.all(zero.all(-1) | ~zero.any(-1))  # each channel all dropped or all kept


def test_dropout_inplace():
    tn.manual_seed(2)
    leaf = tn.tensor(rand(30, 20) + 2.0, requires_grad=True)
    a = leaf * 1.0
    before = npy(a).copy()
    out = tnn.Dropout(0.5, inplace=True)(a)
    assert out is a and a._version == 1
    frac = _mask_statistics(out, tn.tensor(before), 0.5)
    assert 0.4 < frac < 0.6
    out.sum().backward()
    np.testing.assert_allclose(npy(leaf.grad), (npy(out) != 0) * 2.0)
    b = leaf * 1.0
    out = TF.dropout2d(b.view(6, 5, 4, 5), 0.5, inplace=True)
    assert b._version == 1 and (npy(b) == 0).any()


# --- Embedding ----------------------------------------------------------------------------------

IDX = np.array([[1, 2, 1, 0], [4, 3, 1, 9]], np.int64)


@pytest.mark.parametrize("kwargs", [{}, dict(padding_idx=1), dict(padding_idx=-1),
                                    dict(scale_grad_by_freq=True),
                                    dict(padding_idx=0, scale_grad_by_freq=True)])
@pytest.mark.parametrize("idx", [IDX, IDX[0], np.array(3)], ids=["2d", "1d", "0d"])
def test_embedding_matches_torch(kwargs, idx):
    th = torch.nn.Embedding(10, 3, **kwargs).double()
    ours = tnn.Embedding(10, 3, **kwargs).double()
    assert repr(ours) == repr(th)
    assert ours.padding_idx == th.padding_idx
    copy_params(th, ours)
    run_pair(th, ours, [idx])
    if ours.padding_idx is not None:
        assert not npy(ours.weight.grad)[ours.padding_idx].any()


def test_embedding_init_and_padding_row():
    tn.manual_seed(0)
    e = tnn.Embedding(2000, 8, padding_idx=3)
    w = npy(e.weight)
    assert not w[3].any()
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02
    assert e.weight.requires_grad and e.weight.dtype is tn.float32
    assert list(dict(e.state_dict())) == ["weight"]
    given = tnn.Embedding(3, 2, padding_idx=1, _weight=tn.ones(3, 2))
    assert npy(given.weight).tolist() == [[1, 1]] * 3  # a given weight keeps its padding row
    assert not tnn.Embedding(3, 2, _freeze=True).weight.requires_grad
    assert tnn.Embedding(3, 2, dtype=tn.float64).weight.dtype is tn.float64


def test_embedding_from_pretrained():
    w = rand(5, 3)
    for kwargs in ({}, dict(freeze=False, padding_idx=2), dict(max_norm=1.0, norm_type=1.0)):
        ours = tnn.Embedding.from_pretrained(tn.tensor(w), **kwargs)
        theirs = torch.nn.Embedding.from_pretrained(torch.tensor(w), **kwargs)
        assert repr(ours) == repr(theirs)
        assert ours.weight.requires_grad == theirs.weight.requires_grad
        close(ours(tn.tensor(IDX[0])), theirs(torch.tensor(IDX[0])))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_embedding_max_norm_renormalises_used_rows(norm_type):
    w = rand(10, 4, scale=3.0)
    ours = tnn.Embedding.from_pretrained(tn.tensor(w), freeze=False, max_norm=1.5,
                                         norm_type=norm_type)
    theirs = torch.nn.Embedding.from_pretrained(torch.tensor(w), freeze=False, max_norm=1.5,
                                                norm_type=norm_type)
    yl, yt = ours(tn.tensor(IDX)), theirs(torch.tensor(IDX))
    close(yl, yt)
    close(ours.weight, theirs.weight)  # the used rows were rescaled in place, the others not
    yl.sum().backward()
    yt.sum().backward()
    close(ours.weight.grad, theirs.weight.grad)


@pytest.mark.parametrize("make", [
    lambda L: L.nn.functional.embedding(L.tensor([1.0]), L.ones(10, 3)),
    lambda L: L.nn.functional.embedding(L.tensor([True]), L.ones(10, 3)),
    lambda L: L.nn.functional.embedding(L.tensor([1.0]), L.ones(10)),
    lambda L: L.nn.functional.embedding(L.tensor([10]), L.ones(10, 3)),
    lambda L: L.nn.functional.embedding(L.tensor([-1]), L.ones(10, 3)),
    lambda L: L.nn.functional.embedding(L.tensor([1]), L.ones(10, 2, 2)),
    lambda L: L.nn.functional.embedding(L.tensor([1]), L.ones(10, 3), padding_idx=10),
    lambda L: L.nn.functional.embedding(L.tensor([1]), L.ones(10, 3), padding_idx=-11),
    lambda L: L.nn.functional.embedding([1], L.ones(10, 3)),
    lambda L: L.nn.functional.embedding(L.zeros(0, dtype=L.long), L.ones(10, 3)).sum(),
    lambda L: L.nn.functional.embedding(L.tensor([1]), L.ones(3, 2, dtype=L.long)).sum(),
    lambda L: L.nn.Embedding(10, 3, padding_idx=10),
    lambda L: L.nn.Embedding(10, 3, padding_idx=-11),
    lambda L: L.nn.Embedding(-1, 3),
    lambda L: L.nn.Embedding(0, 3),
    lambda L: L.nn.Embedding(10, 3, _weight=L.ones(3, 3)),
    lambda L: L.nn.Embedding.from_pretrained(L.ones(3)),
    lambda L: L.nn.Embedding(3, 2)([1]),
])
def test_embedding_errors_match_torch(make):
    same_outcome(make)


def test_embedding_sparse_is_rejected_clearly():
    with pytest.raises(NotImplementedError, match="sparse"):
        tnn.Embedding(5, 2, sparse=True)
    with pytest.raises(NotImplementedError, match="sparse"):
        TF.embedding(tn.tensor([1]), tn.ones(5, 2), sparse=True)


# --- CosineSimilarity and PairwiseDistance ------------------------------------------------------

DISTANCES = [
    ("CosineSimilarity", (), {}, (4, 6), (4, 6)),
    ("CosineSimilarity", (0, 1e-3), {}, (5, 3), (5, 1)),
    ("CosineSimilarity", (), dict(dim=-1), (2, 3, 4), (4,)),
    ("PairwiseDistance", (), {}, (4, 6), (4, 6)),
    ("PairwiseDistance", (1.0, 1e-3, True), {}, (4, 6), (6,)),
    ("PairwiseDistance", (float("inf"),), {}, (2, 3, 4), (2, 3, 4)),
    ("PairwiseDistance", (3,), dict(keepdim=True), (3, 5), (3, 5)),
    ("PairwiseDistance", (0.5,), {}, (3, 5), (3, 5)),
    ("PairwiseDistance", (), {}, (5,), (5,)),
]


@pytest.mark.parametrize("name,args,kwargs,s1,s2", DISTANCES,
                         ids=[f"{d[0]}-{d[1]}-{d[2]}-{d[3]}-{d[4]}" for d in DISTANCES])
def test_distance_modules_match_torch(name, args, kwargs, s1, s2):
    th, ours = getattr(torch.nn, name)(*args, **kwargs), getattr(tnn, name)(*args, **kwargs)
    assert repr(ours) == repr(th)
    run_pair_values = [rand(*s1, seed=1), rand(*s2, seed=2)]
    xt = [torch.tensor(a, requires_grad=True) for a in run_pair_values]
    xl = [tn.tensor(a, requires_grad=True) for a in run_pair_values]
    yt, yl = th(*xt), ours(*xl)
    close(yl, yt)
    if name == "CosineSimilarity":
        assert yl.grad_fn.name() == yt.grad_fn.name()
    g = rand(*yt.shape, seed=9)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    for a, b in zip(xl, xt):
        close(a.grad, b.grad, rtol=1e-9, atol=1e-11)


def test_distance_edge_cases_match_torch():
    z, v = np.zeros((2, 4)), rand(2, 4)
    tiny = np.array([[1e-9, 2e-9, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0]])
    for a, b, fn, kw in [(z, v, "cosine_similarity", {}), (tiny, v, "cosine_similarity", {}),
                         (v, v, "pairwise_distance", dict(eps=0.0)),
                         (v, v, "pairwise_distance", dict(p=0)),
                         (v, v, "pairwise_distance", {})]:
        ins = [(lib.tensor(a, requires_grad=True), lib.tensor(b, requires_grad=True))
               for lib in (tn, torch)]
        yl, yt = getattr(TF, fn)(*ins[0], **kw), getattr(F, fn)(*ins[1], **kw)
        close(yl, yt)
        if yt.requires_grad:
            yl.sum().backward()
            yt.sum().backward()
            for x, y in zip(ins[0], ins[1]):
                if y.grad is None:  # torch's p=0 norm: no gradient; ours: a zero one
                    assert not npy(x.grad).any()
                else:
                    close(x.grad, y.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make", [
    lambda L: L.nn.functional.cosine_similarity(L.ones(3, 4), L.ones(2, 4)),
    lambda L: L.nn.functional.cosine_similarity(L.ones(3, 4), L.ones(3, 4), dim=2),
    lambda L: L.nn.functional.cosine_similarity(L.ones(4), L.ones(4)),
    lambda L: L.nn.functional.cosine_similarity(L.ones(4, dtype=L.long),
                                                L.ones(4, dtype=L.long), dim=0),
    lambda L: L.nn.functional.cosine_similarity(L.ones(4), L.ones(4, dtype=L.float64),
                                                dim=0).sum(),
    lambda L: L.nn.functional.pairwise_distance(L.ones(3, 4), L.ones(2, 4)),
    lambda L: L.nn.functional.pairwise_distance(L.ones(()), L.ones(())).sum(),
    lambda L: L.nn.functional.pairwise_distance(L.ones(3, 4, dtype=L.long),
                                                L.ones(3, 4, dtype=L.long)).sum(),
])
def test_distance_errors_match_torch(make):
    same_outcome(make)


def test_distance_dtypes_match_torch():
    for fn, args in (("cosine_similarity", (tn.ones(2, 3), tn.ones(2, 3, dtype=tn.float64))),
                     ("pairwise_distance", (tn.ones(2, 3, dtype=tn.long),
                                            tn.ones(2, 3, dtype=tn.long))),
                     ("pairwise_distance", (tn.ones(2, 3), tn.ones(2, 3)))):
        th_args = [torch.tensor(npy(a)) for a in args]
        ours, theirs = getattr(TF, fn)(*args), getattr(F, fn)(*th_args)
        assert str(ours.dtype) == str(theirs.dtype)
        assert tuple(ours.shape) == tuple(theirs.shape)


# --- under tracenet.compile ---------------------------------------------------------------------


def _check_compiled(model, inputs, tol=TOL):
    """Compiled forward and gradients (parameters and float inputs) match eager mode."""
    compiled = tn.compile(model)
    for x in inputs:
        x.grad = None
    ref = model(*inputs)
    gy = tn.randn(*ref.shape).to(ref.dtype)
    model.zero_grad()
    ref.backward(gy)
    expect = [p.grad.numpy().copy() for p in model.parameters()]
    expect_in = [x.grad.numpy().copy() for x in inputs if x.requires_grad]
    for x in inputs:
        x.grad = None
    model.zero_grad()
    out = compiled(*inputs)
    np.testing.assert_allclose(npy(out), npy(ref), **tol)
    out.backward(gy)
    for p, e in zip(model.parameters(), expect):
        np.testing.assert_allclose(p.grad.numpy(), e, **tol)
    for x, e in zip([x for x in inputs if x.requires_grad], expect_in):
        np.testing.assert_allclose(x.grad.numpy(), e, **tol)
    return compiled


class TwoInputs(tnn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, a, b):
        return self.layer(a, b)


def test_compiled_activations_match_eager():
    tn.manual_seed(0)
    model = tnn.Sequential(
        tnn.Linear(6, 8), tnn.LeakyReLU(0.1), tnn.Linear(8, 8), tnn.ELU(0.5), tnn.GELU(),
        tnn.Linear(8, 8), tnn.GELU("tanh"), tnn.Softplus(2.0, 1.0), tnn.Linear(8, 8),
        tnn.Softplus(), tnn.Sigmoid(), tnn.Linear(8, 8), tnn.Tanh(), tnn.LeakyReLU(-0.2),
        tnn.ReLU(), tnn.Softmax(1), tnn.Linear(8, 4), tnn.LogSoftmax(-1))
    x = tn.randn(5, 6, requires_grad=True) * 3
    x = x.detach().requires_grad_()
    compiled = _check_compiled(model, [x])
    ops = set(compiled.graph.op_counts()) | {m.op for n in compiled.graph.nodes
                                             for m in (n.members or ())}
    assert {"leaky_relu", "elu", "gelu", "softplus"} <= ops
    bwd = compiled.backward_graph
    bops = {m.op for n in bwd.nodes for m in (n.members or [n])}
    assert {"leaky_relu_backward", "elu_backward", "gelu_backward", "softplus_backward"} <= bops


def _inplace_model():
    tn.manual_seed(1)
    return tnn.Sequential(tnn.Linear(4, 6), tnn.LeakyReLU(0.3, inplace=True), tnn.Linear(6, 6),
                          tnn.ELU(inplace=True), tnn.Linear(6, 3), tnn.ReLU(inplace=True)
                          ).double()


def test_compiled_activations_float64():
    model = tnn.Sequential(tnn.Linear(4, 6), tnn.LeakyReLU(0.3), tnn.Linear(6, 6), tnn.ELU(),
                           tnn.GELU(), tnn.Softplus(0.5, 3.0), tnn.Linear(6, 3)).double()
    _check_compiled(model, [(tn.randn(3, 4, dtype=tn.float64) * 2).requires_grad_()],
                    tol=dict(rtol=1e-10, atol=1e-12))


def test_compiled_inplace_activations_inference():
    model = _inplace_model()
    x = tn.randn(3, 4, dtype=tn.float64)
    with tn.no_grad():
        out = tn.compile(model)(x)
        np.testing.assert_allclose(npy(out), npy(model(x)), rtol=1e-10, atol=1e-12)


def test_compiled_inplace_activations_training():
    _check_compiled(_inplace_model(), [tn.randn(3, 4, dtype=tn.float64, requires_grad=True)],
                    tol=dict(rtol=1e-10, atol=1e-12))


def test_compiled_linear_identity_flatten_unflatten():
    tn.manual_seed(2)
    model = tnn.Sequential(tnn.Identity(), tnn.Flatten(), tnn.Linear(12, 10),
                           tnn.Unflatten(1, (2, 5)), tnn.Linear(5, 3, bias=False),
                           tnn.Flatten(0, -1))
    _check_compiled(model, [tn.randn(4, 3, 4, requires_grad=True)])
    _check_compiled(tnn.Linear(5, 2), [tn.randn(5, requires_grad=True)])
    _check_compiled(tnn.Linear(5, 2), [tn.randn(2, 3, 5, requires_grad=True)])


@pytest.mark.parametrize("lead,bias", [((4,), True), ((2, 3), False)])
def test_compiled_bilinear(lead, bias):
    tn.manual_seed(3)
    _check_compiled(TwoInputs(tnn.Bilinear(3, 5, 4, bias=bias)),
                    [tn.randn(*lead, 3, requires_grad=True),
                     tn.randn(*lead, 5, requires_grad=True)])


@pytest.mark.parametrize("kwargs", [{}, dict(padding_idx=2, scale_grad_by_freq=True)])
def test_compiled_embedding(kwargs):
    tn.manual_seed(4)
    model = tnn.Sequential(tnn.Embedding(9, 4, **kwargs), tnn.Flatten(), tnn.Linear(12, 3))
    idx = tn.tensor([[1, 2, 3], [2, 2, 8]])
    compiled = _check_compiled(model, [idx])
    assert "embedding" in compiled.graph.op_counts()
    bops = {m.op for n in compiled.backward_graph.nodes for m in (n.members or [n])}
    assert "embedding_backward" in bops


@pytest.mark.parametrize("layer,s1,s2", [
    (lambda: tnn.CosineSimilarity(), (4, 6), (4, 6)),
    (lambda: tnn.CosineSimilarity(0, 1e-3), (5, 3), (5, 1)),
    (lambda: tnn.PairwiseDistance(), (4, 6), (4, 6)),
    (lambda: tnn.PairwiseDistance(1.0, keepdim=True), (4, 6), (6,)),
    (lambda: tnn.PairwiseDistance(float("inf")), (2, 3, 4), (2, 3, 4)),
    (lambda: tnn.PairwiseDistance(3), (3, 5), (3, 5)),
])
def test_compiled_distances(layer, s1, s2):
    tn.manual_seed(5)
    _check_compiled(TwoInputs(layer()), [tn.randn(*s1, requires_grad=True),
                                         tn.randn(*s2, requires_grad=True)])


def _dropout_model(p):
    return tnn.Sequential(tnn.Linear(8, 16), tnn.Dropout(p), tnn.ReLU(), tnn.Linear(16, 16),
                          tnn.Unflatten(1, (4, 2, 2)), tnn.Dropout2d(p), tnn.Flatten(),
                          tnn.Linear(16, 3))



class _Drop(tnn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x * 1.0)


def test_compiled_dropout_eval_and_p_zero_match_exactly():
    tn.manual_seed(6)
    x = tn.randn(5, 8, requires_grad=True)
    for p, train in ((0.4, False), (0.0, True)):
        model = _dropout_model(p)
        model.train(train)
        compiled = _check_compiled(model, [x], tol=dict(rtol=1e-6, atol=1e-7))
        assert "dropout_mask" not in compiled.graph.op_counts()
        # dropout alone: the compiled output and gradient are exactly eager's
        only = _Drop(tnn.Sequential(tnn.Dropout(p), tnn.Dropout3d(p)))
        only.train(train)
        compiled = tn.compile(only)
        y = tn.randn(4, 2, 5, 3, 2)
        xc, xe = y.clone().requires_grad_(), y.clone().requires_grad_()
        out, ref = compiled(xc), only(xe)
        np.testing.assert_array_equal(npy(out), npy(ref))
        g = tn.randn(*ref.shape)
        out.backward(g)
        ref.backward(g)
        np.testing.assert_array_equal(npy(xc.grad), npy(xe.grad))


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_compiled_dropout_train_mask_statistics(p):
    tn.manual_seed(7)
    compiled = tn.compile(_Drop(tnn.Dropout(p)))
    x = tn.tensor(rand(400, 250) + 4.0, requires_grad=True)
    y1 = compiled(x)
    assert "dropout_mask" in compiled.graph.op_counts()
    assert abs(_mask_statistics(y1, x, p) - p) < 0.01
    y1.sum().backward()
    # the gradient uses the same mask as the forward
    np.testing.assert_allclose(npy(x.grad), (npy(y1) != 0) / (1 - p), rtol=1e-6)
    y2 = compiled(x)
    assert abs(_mask_statistics(y2, x, p) - p) < 0.01
    assert ((npy(y1) == 0) != (npy(y2) == 0)).mean() > 0.2  # a fresh mask on every call
    # reproducible from tracenet's generator
    tn.manual_seed(11)
    a = npy(compiled(x))
    tn.manual_seed(11)
    np.testing.assert_array_equal(npy(compiled(x)), a)


def test_compiled_channel_dropout_and_two_layers():
    tn.manual_seed(8)
    model = _Drop(tnn.Sequential(tnn.Dropout2d(0.5), tnn.Dropout(0.5)))
    compiled = tn.compile(model)
    x = tn.tensor(rand(60, 20, 3, 3) + 4.0)
    y = npy(compiled(x))
    assert compiled.graph.op_counts()["dropout_mask"] == 2
    planes = (y.reshape(60, 20, 9) == 0)
    frac_planes = planes.all(-1).mean()
    assert abs(frac_planes - 0.5) < 0.05
    assert abs((y == 0).mean() - 0.75) < 0.03
    kept = y != 0
    np.testing.assert_allclose(y[kept], npy(x)[kept] * 4.0, rtol=1e-6)


def test_compiled_dropout_in_a_training_step():
    tn.manual_seed(9)
    model = tnn.Sequential(tnn.Linear(10, 20), tnn.Dropout(0.5), tnn.Linear(20, 1))
    opt = tn.optim.SGD(model.parameters(), lr=0.05)
    step = tn.compile_step(lambda a, b: TF.mse_loss(model(a), b), opt)
    a, b = tn.randn(16, 10), tn.randn(16, 1)
    losses = [float(step(a, b)) for _ in range(4)]
    assert len(set(losses)) == 4 and all(np.isfinite(losses))


def test_dropout_mask_is_the_same_in_numpy_and_c():
    """The generator behind compiled dropout: a seed gives the same mask in the numpy
    implementation and in the generated kernel."""
    from tracenet.codegen.emit import generate
    from tracenet.ir.graph import Graph
    from tracenet.ops.activation import dropout_mask
    from tracenet.runtime import build, target
    from tracenet.trace import Tracer, tracing, traced_tensor

    for dtype, p in ((tn.float32, 0.3), (tn.float64, 0.7)):
        g = Graph("mask")
        seed = g.add_input("seed", (), tn.int64)
        with tracing(Tracer(g)):
            out = dropout_mask(traced_tensor(seed), (37, 11), p, dtype)
        g.outputs = [out._ir]
        src, cdef, entries, openmp = generate([("forward", g)], f"mask_{dtype.short}",
                                              target.current())
        lib = build.build(src, cdef, name=f"mask_{dtype.short}", openmp=openmp)
        for s in (0, 12345, 2 ** 62 + 17):
            seed_arr = np.array(s, np.int64)
            res = np.empty((37, 11), dtype.np)
            args = lib.ffi.new("void *[]", [lib.ffi.from_buffer(seed_arr),
                                            lib.ffi.from_buffer(res)])
            arena = lib.ffi.new("char[]", entries[0].arena_bytes + 1)  # the call's work memory
            getattr(lib.lib, entries[0].name)(args, arena, lib.ffi.NULL, 0, 0, 1)  # no status, sizes
            expect = npy(dropout_mask(tn.tensor(s), (37, 11), p, dtype))
            np.testing.assert_array_equal(res, expect)
