"""Losses against PyTorch: MSELoss / mse_loss, CrossEntropyLoss / cross_entropy, NLLLoss /
nll_loss. Values, gradients, grad_fn names, warnings (broadcasting, legacy arguments) and
errors."""
import types
import warnings

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as LF

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TH = types.SimpleNamespace(F=TF, nn=torch.nn, z=torch.zeros, t=torch.tensor, L=torch.int64,
                           D=torch.float64, B=torch.bool)
TN = types.SimpleNamespace(F=LF, nn=tnn, z=tn.zeros, t=tn.tensor, L=tn.int64, D=tn.float64,
                           B=tn.bool)


def _run(fn, ns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out, err = fn(ns), None
        except Exception as e:  # noqa: BLE001 - the exception itself is what is compared
            out, err = None, e
    return out, err, [(w.category.__name__, str(w.message)) for w in caught]


def npy(t):
    return t.detach().numpy()


def close(a, b, rtol=1e-10, atol=1e-12):
    a, b = npy(a), npy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def compare(fn, inputs, grad_of=(0,), rtol=1e-10, atol=1e-12, check_name=True):
    """Run ``fn(T, *tensors)`` in both libraries; compare value, grad_fn name (unless
    ``check_name`` is false), warnings and the gradients of the inputs listed in ``grad_of``."""
    results = []
    for ns, lib in ((TH, torch), (TN, tn)):
        ts = [lib.tensor(a, requires_grad=(i in grad_of)) for i, a in enumerate(inputs)]
        out, err, warned = _run(lambda T: fn(T, *ts), ns)
        assert err is None, err
        results.append((ts, out, warned))
    (tt, yt, wt), (tl, yl, wl) = results
    close(yl, yt, rtol, atol)
    assert wl == wt
    if check_name:
        assert yl.grad_fn.name() == yt.grad_fn.name()
    g = rand(*yt.shape, seed=11)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    for i in grad_of:
        close(tl[i].grad, tt[i].grad, rtol, atol)
    return yt, yl


# --- MSE ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (2, 3, 4)), ((), ())])
def test_mse_loss(reduction, shapes):
    a, b = rand(*shapes[0]), rand(*shapes[1], seed=1)
    compare(lambda T, x, y: T.F.mse_loss(x, y, reduction=reduction), [a, b], grad_of=(0, 1))
    compare(lambda T, x, y: T.nn.MSELoss(reduction=reduction)(x, y), [a, b], grad_of=(0, 1))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shapes", [((3, 4), (4,)), ((1, 4), (3, 4)), ((3, 1), (1, 4))])
def test_mse_loss_broadcasting_warns_and_expands(reduction, shapes):
    a, b = rand(*shapes[0]), rand(*shapes[1], seed=1)
    _, yl = compare(lambda T, x, y: T.F.mse_loss(x, y, reduction=reduction), [a, b],
                    grad_of=(0, 1))
    tshape = ", ".join(map(str, shapes[1]))
    ishape = ", ".join(map(str, shapes[0]))
    with pytest.warns(UserWarning) as rec:
        tnn.MSELoss(reduction=reduction)(tn.tensor(a), tn.tensor(b))
    assert str(rec[0].message) == (
        f"Using a target size (torch.Size([{tshape}])) that is different to the input size "
        f"(torch.Size([{ishape}])). This will likely lead to incorrect results due to "
        "broadcasting. Please ensure they have the same size.")


def test_mse_loss_float32_tutorial_shapes():
    out, target = rand(1, 10).astype(np.float32), rand(10, seed=1).astype(np.float32)
    yt, yl = compare(lambda T, x, y: T.nn.MSELoss()(x, y.view(1, -1)), [out, target],
                     rtol=1e-6, atol=1e-7)
    assert yl.dtype == tn.float32
    assert yl.grad_fn.name() == "MseLossBackward0"


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mse_loss_weight_argument(reduction):
    a, b, w = rand(3, 4), rand(3, 4, seed=1), np.abs(rand(3, 4, seed=2))
    compare(lambda T, x, y, wt: T.F.mse_loss(x, y, reduction=reduction, weight=wt), [a, b, w],
            grad_of=(0, 1))


def test_mse_loss_mixed_dtypes_promote():
    a, b = rand(3, 4).astype(np.float32), rand(3, 4, seed=1)
    yt = TF.mse_loss(torch.tensor(a), torch.tensor(b))
    yl = LF.mse_loss(tn.tensor(a), tn.tensor(b))
    assert str(yl.dtype) == str(yt.dtype)
    close(yl, yt, 1e-6)


# --- legacy size_average / reduce -----------------------------------------------------------------

LEGACY = [(True, None), (False, None), (None, True), (None, False), (True, True),
          (False, True), (True, False), (False, False)]


@pytest.mark.parametrize("size_average,reduce", LEGACY)
def test_legacy_reduction_arguments(size_average, reduce):
    x, p, t = rand(5, 4), rand(5, 4, seed=1), np.array([0, 3, 1, 2, 2])
    cases = [
        lambda T: T.nn.MSELoss(size_average=size_average, reduce=reduce)(T.t(x), T.t(p)),
        lambda T: T.nn.CrossEntropyLoss(size_average=size_average, reduce=reduce)(T.t(x),
                                                                                   T.t(t)),
        lambda T: T.nn.NLLLoss(size_average=size_average, reduce=reduce)(T.t(x), T.t(t)),
        lambda T: T.F.mse_loss(T.t(x), T.t(p), size_average=size_average, reduce=reduce),
        lambda T: T.F.cross_entropy(T.t(x), T.t(t), size_average=size_average, reduce=reduce),
        lambda T: T.F.nll_loss(T.t(x), T.t(t), size_average=size_average, reduce=reduce),
        lambda T: T.nn.MSELoss(size_average=size_average, reduce=reduce).reduction,
    ]
    for fn in cases:
        rt, et, wt = _run(fn, TH)
        rl, el, wl = _run(fn, TN)
        assert et is None and el is None
        assert wl == wt
        assert len(wl) == 1 and wl[0][0] == "UserWarning"
        assert wl[0][1].startswith("size_average and reduce args will be deprecated, please use "
                                   "reduction='")
        if isinstance(rt, str):
            assert rl == rt
        else:
            close(rl, rt)


# --- cross entropy and nll ------------------------------------------------------------------------

X = rand(5, 4)
T_IDX = np.array([0, 3, 1, -100, 2])
W = np.random.default_rng(3).random(4) + 0.2
P = np.random.default_rng(4).random((5, 4))
P /= P.sum(1, keepdims=True)


def _kw(T, kw):
    kw = dict(kw)
    if kw.get("weight") is True:
        kw["weight"] = T.t(W)
    return kw


def _targets(kw):
    """T_IDX with its ignored entry set to the ignore_index in use (other values would be
    out of bounds)."""
    t = T_IDX.copy()
    t[t == -100] = kw.get("ignore_index", -100)
    return t


CE_OPTIONS = [{}, dict(ignore_index=1), dict(weight=True), dict(weight=True, ignore_index=3),
              dict(label_smoothing=0.2), dict(label_smoothing=0.2, weight=True),
              dict(label_smoothing=0.3, weight=True, ignore_index=0),
              dict(label_smoothing=-0.1), dict(label_smoothing=1.0)]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kw", CE_OPTIONS, ids=[str(k) for k in CE_OPTIONS])
def test_cross_entropy_class_indices(reduction, kw):
    t = _targets(kw)
    compare(lambda T, x, t: T.F.cross_entropy(x, t, reduction=reduction, **_kw(T, kw)), [X, t])
    compare(lambda T, x, t: T.nn.CrossEntropyLoss(reduction=reduction, **_kw(T, kw))(x, t),
            [X, t])


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kw", [{}, dict(weight=True), dict(label_smoothing=0.25),
                                dict(weight=True, label_smoothing=0.1), dict(ignore_index=-7)],
                         ids=str)
def test_cross_entropy_probability_targets(reduction, kw):
    fn = (lambda T, x, p: T.F.cross_entropy(x, p, reduction=reduction, **_kw(T, kw)))
    rt, et, _ = _run(lambda T: fn(T, T.t(X, requires_grad=True), T.t(P)), TH)
    rl, el, _ = _run(lambda T: fn(T, T.t(X, requires_grad=True), T.t(P)), TN)
    close(rl, rt)
    # gradients with respect to the logits and the probabilities
    xt, pt = torch.tensor(X, requires_grad=True), torch.tensor(P, requires_grad=True)
    xl, pl = tn.tensor(X, requires_grad=True), tn.tensor(P, requires_grad=True)
    yt, yl = fn(TH, xt, pt), fn(TN, xl, pl)
    g = rand(*yt.shape, seed=2)
    yt.backward(torch.tensor(g))
    yl.backward(tn.tensor(g))
    close(xl.grad, xt.grad)
    close(pl.grad, pt.grad)
    if reduction != "mean":  # mean divides by a count: DivBackward1 in torch's C++
        assert yl.grad_fn.name() == yt.grad_fn.name()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (2, 4, 3), (2, 4, 3, 2, 2)])
@pytest.mark.parametrize("kw", [{}, dict(weight=True, ignore_index=2),
                                dict(label_smoothing=0.1, weight=True)], ids=str)
def test_cross_entropy_and_nll_k_dimensional(reduction, shape, kw):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    t = rng.integers(0, 4, (shape[0],) + shape[2:])
    t.reshape(-1)[0] = kw.get("ignore_index", -100)
    compare(lambda T, a, b: T.F.cross_entropy(a, b, reduction=reduction, **_kw(T, kw)), [x, t])
    nkw = {k: v for k, v in kw.items() if k != "label_smoothing"}
    compare(lambda T, a, b: T.F.nll_loss(T.F.log_softmax(a, 1), b, reduction=reduction,
                                         **_kw(T, nkw)), [x, t])
    # the chain below the loss: reshapes for 3-d and 5-d input, as torch
    yt = TF.nll_loss(torch.tensor(x, requires_grad=True), torch.tensor(t), reduction=reduction)
    yl = LF.nll_loss(tn.tensor(x, requires_grad=True), tn.tensor(t), reduction=reduction)
    chain_t = [yt.grad_fn.name(), yt.grad_fn.next_functions[0][0].name()]
    chain_l = [yl.grad_fn.name(), yl.grad_fn.next_functions[0][0].name()]
    assert chain_l[0] == chain_t[0]
    if "AccumulateGrad" not in chain_t[1]:
        assert chain_l[1] == chain_t[1]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_unbatched(reduction):
    compare(lambda T, x, t: T.F.cross_entropy(x, t, reduction=reduction), [X[0], np.array(2)])
    compare(lambda T, x, t: T.F.nll_loss(x, t, reduction=reduction), [X[0], np.array(1)])
    yt = TF.cross_entropy(torch.tensor(X[0]), torch.tensor(P[0]), reduction=reduction)
    yl = LF.cross_entropy(tn.tensor(X[0]), tn.tensor(P[0]), reduction=reduction)
    close(yl, yt)
    # a 1-element 1-d target is accepted for 1-d input too
    yt = TF.nll_loss(torch.tensor(X[0]), torch.tensor([1]), reduction=reduction)
    yl = LF.nll_loss(tn.tensor(X[0]), tn.tensor([1]), reduction=reduction)
    close(yl, yt)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kw", [{}, dict(ignore_index=1), dict(weight=True),
                                dict(weight=True, ignore_index=3)], ids=str)
def test_nll_loss(reduction, kw):
    lp = np.log(np.exp(X) / np.exp(X).sum(1, keepdims=True))
    t = _targets(kw)
    yt, yl = compare(lambda T, x, t: T.F.nll_loss(x, t, reduction=reduction, **_kw(T, kw)),
                     [lp, t])
    assert yl.grad_fn.name() == "NllLossBackward0"
    compare(lambda T, x, t: T.nn.NLLLoss(reduction=reduction, **_kw(T, kw))(x, t), [lp, t])


def test_cross_entropy_float32_and_graph():
    x = X.astype(np.float32)
    yt, yl = compare(lambda T, a, t: T.nn.CrossEntropyLoss()(a, t), [x, T_IDX], rtol=1e-6,
                     atol=1e-7)
    assert yl.dtype == tn.float32
    ce_t = TF.cross_entropy(torch.tensor(x, requires_grad=True), torch.tensor(T_IDX))
    ce_l = LF.cross_entropy(tn.tensor(x, requires_grad=True), tn.tensor(T_IDX))
    assert [ce_l.grad_fn.name(), ce_l.grad_fn.next_functions[0][0].name()] == \
        [ce_t.grad_fn.name(), ce_t.grad_fn.next_functions[0][0].name()] == \
        ["NllLossBackward0", "LogSoftmaxBackward0"]


def test_loss_all_targets_ignored_is_nan_without_numpy_warnings():
    for fn in (lambda T: T.F.nll_loss(T.z(3, 2) + 1, T.t([-100, -100, -100])),
               lambda T: T.F.cross_entropy(T.z(3, 2), T.t([-100, -100, -100])),
               lambda T: T.F.cross_entropy(T.z(0, 4), T.z(0, dtype=T.L)),
               lambda T: T.F.mse_loss(T.z(0), T.z(0))):
        rt, et, wt = _run(fn, TH)
        rl, el, wl = _run(fn, TN)
        assert et is None and el is None
        assert wl == wt == []
        assert np.isnan(npy(rl)) and np.isnan(npy(rt))


def test_weighted_loss_modules_keep_weight_buffer():
    th = torch.nn.CrossEntropyLoss(weight=torch.tensor(W))
    ours = tnn.CrossEntropyLoss(weight=tn.tensor(W))
    assert list(dict(ours.named_buffers())) == list(dict(th.named_buffers())) == ["weight"]
    assert tnn.NLLLoss().weight is None


# --- errors ---------------------------------------------------------------------------------------

LOSS_ERRORS = {
    "nll float target": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5)),
    "nll float target module": lambda T: T.nn.NLLLoss()(T.z(5, 4), T.z(5)),
    "nll bool target": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, dtype=T.B)),
    "ce float target of index shape": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5)),
    "nll 0-d input": lambda T: T.F.nll_loss(T.t(1.0), T.t(0)),
    "nll 0-d target": lambda T: T.F.nll_loss(T.z(5, 4), T.z((), dtype=T.L)),
    "nll batch mismatch": lambda T: T.F.nll_loss(T.z(5, 4), T.z(4, dtype=T.L)),
    "nll 2-d target": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, 2, dtype=T.L)),
    "nll 2-d float target": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, 2)),
    "nll 1-d input long target": lambda T: T.F.nll_loss(T.z(4), T.z(2, dtype=T.L)),
    "nll 1-d input float target": lambda T: T.F.nll_loss(T.z(4), T.z(2)),
    "nll 1-d input 2-d target": lambda T: T.F.nll_loss(T.z(4), T.z(1, 1, dtype=T.L)),
    "nll 1-d input weight": lambda T: T.F.nll_loss(T.z(4), T.z(1, dtype=T.L), weight=T.z(3)),
    "nll 3-d target size": lambda T: T.F.nll_loss(T.z(5, 4, 3), T.z(5, 2, dtype=T.L)),
    "nll 3-d target dims": lambda T: T.F.nll_loss(T.z(5, 4, 3), T.z(5, dtype=T.L)),
    "nll 4-d 2-d target": lambda T: T.F.nll_loss(T.z(5, 4, 3, 2), T.z(5, 3, dtype=T.L)),
    "nll 4-d size mismatch": lambda T: T.F.nll_loss(T.z(4, 2, 3, 2), T.z(4, 3, 3, dtype=T.L)),
    "nll 4-d float target first": lambda T: T.F.nll_loss(T.z(4, 2, 3, 2), T.z(4, 3, 3),
                                                         weight=T.z(3)),
    "nll 4-d weight before size": lambda T: T.F.nll_loss(T.z(4, 2, 3, 2),
                                                         T.z(4, 3, 3, dtype=T.L), weight=T.z(3)),
    "nll 5-d target size": lambda T: T.F.nll_loss(T.z(5, 4, 3, 2, 2), T.z(5, 3, 2, 1, dtype=T.L)),
    "nll long input": lambda T: T.F.nll_loss(T.z(5, 4, dtype=T.L), T.z(5, dtype=T.L)),
    "nll 4-d long input": lambda T: T.F.nll_loss(T.z(5, 4, 3, 2, dtype=T.L),
                                                 T.z(5, 3, 2, dtype=T.L)),
    "nll weight size": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, dtype=T.L), weight=T.z(3)),
    "nll weight dims": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, dtype=T.L), weight=T.z(4, 1)),
    "nll float target before weight": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5), weight=T.z(3)),
    "nll weight dtype": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, dtype=T.L),
                                               weight=T.z(4, dtype=T.D)),
    "nll long weight": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, dtype=T.L),
                                              weight=T.z(4, dtype=T.L)),
    "nll 3-d weight size": lambda T: T.F.nll_loss(T.z(5, 4, 3), T.z(5, 3, dtype=T.L),
                                                  weight=T.z(3)),
    "nll target out of bounds": lambda T: T.F.nll_loss(T.z(5, 4), T.t([0, 1, 2, 3, 4])),
    "nll negative target": lambda T: T.F.nll_loss(T.z(5, 4), T.t([0, 1, 2, 3, -1])),
    "nll 4-d target out of bounds": lambda T: T.F.nll_loss(T.z(5, 4, 3, 2),
                                                           T.z(5, 3, 2, dtype=T.L) + 7),
    "nll bad reduction": lambda T: T.F.nll_loss(T.z(5, 4), T.z(5, dtype=T.L), reduction="foo"),
    "ce long probabilities": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5, 4, dtype=T.L)),
    "ce probabilities ignore_index": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5, 4),
                                                                 ignore_index=3),
    "ce probabilities weight": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5, 4), weight=T.z(3)),
    "ce probabilities weight before smoothing": lambda T: T.F.cross_entropy(
        T.z(5, 4), T.z(5, 4), weight=T.z(3), label_smoothing=2),
    "ce probabilities smoothing": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5, 4),
                                                              label_smoothing=1.5),
    "ce smoothing": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5, dtype=T.L), label_smoothing=2),
    "ce weight dtype": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5, dtype=T.L),
                                                   weight=T.z(4, dtype=T.D)),
    "ce long logits": lambda T: T.F.cross_entropy(T.z(5, 4, dtype=T.L), T.z(5, dtype=T.L)),
    "ce bad reduction": lambda T: T.F.cross_entropy(T.z(5, 4), T.z(5, 4), reduction="foo"),
    "ce module bad reduction": lambda T: T.nn.CrossEntropyLoss(reduction="foo")(
        T.z(5, 4), T.z(5, dtype=T.L)),
    "mse long": lambda T: T.F.mse_loss(T.z(3, 4, dtype=T.L), T.z(3, 4, dtype=T.L)),
    "mse bool": lambda T: T.F.mse_loss(T.z(3, 4, dtype=T.B), T.z(3, 4, dtype=T.B)),
    "mse long bool": lambda T: T.F.mse_loss(T.z(3, 4, dtype=T.L), T.z(3, 4, dtype=T.B)),
    "mse target not a tensor": lambda T: T.F.mse_loss(T.z(3), 1.0),
    "mse not broadcastable": lambda T: T.F.mse_loss(T.z(3, 4), T.z(3, 5)),
    "mse bad reduction": lambda T: T.F.mse_loss(T.z(3, 4), T.z(3, 4), reduction="foo"),
    "mse weighted bad reduction": lambda T: T.F.mse_loss(T.z(3, 4), T.z(3, 4), reduction="foo",
                                                         weight=T.z(3, 4)),
    "mse weight shape": lambda T: T.F.mse_loss(T.z(3, 4), T.z(3, 4), weight=T.z(4)),
    "MSELoss bad reduction": lambda T: T.nn.MSELoss(reduction="foo")(T.z(3, 4), T.z(3, 4)),
    "nll weight requires grad": lambda T: T.F.nll_loss(T.z(3, 4), T.z(3, dtype=T.L),
                                                       weight=T.z(4, requires_grad=True)),
    "nll 4-d weight requires grad": lambda T: T.F.nll_loss(
        T.z(3, 4, 2, 2), T.z(3, 2, 2, dtype=T.L), weight=T.z(4, requires_grad=True)),
    "ce weight requires grad": lambda T: T.F.cross_entropy(
        T.z(3, 4, requires_grad=True), T.z(3, dtype=T.L), weight=T.z(4, requires_grad=True)),
}


@pytest.mark.parametrize("name", list(LOSS_ERRORS))
def test_loss_errors_match_torch(name):
    _, et, wt = _run(LOSS_ERRORS[name], TH)
    _, el, wl = _run(LOSS_ERRORS[name], TN)
    assert et is not None, "torch did not raise"
    assert el is not None, f"tracenet did not raise; torch raised {et!r}"
    assert (type(el).__name__, str(el)) == (type(et).__name__, str(et))
    assert wl == wt


def test_nll_float_target_message():
    with pytest.raises(RuntimeError, match=r"^expected target dtype to be Long or Byte, but got "
                                           r"Float$"):
        LF.nll_loss(tn.zeros(3, 4), tn.zeros(3))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weight", [False, True])
def test_ignored_target_beside_an_infinite_logit_adds_nothing(reduction, weight):
    """An ignored target contributes 0, as torch skips it, even where the class its index
    stands in for has log-probability -inf (the value times its weight 0 would be NaN)."""
    logits = np.array([[-np.inf, 1.0, 2.0], [0.5, -1.0, 3.0], [-np.inf, 0.0, 0.0]], np.float32)
    target = np.array([-100, 2, 1])
    w = np.array([0.5, 2.0, 1.5], np.float32) if weight else None
    kw = dict(reduction=reduction)
    x = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(
        x, torch.tensor(target), weight=None if w is None else torch.tensor(w), **kw)
    y = tn.tensor(logits, requires_grad=True)
    got = LF.cross_entropy(y, tn.tensor(target), weight=None if w is None else tn.tensor(w),
                           **kw)
    assert np.isfinite(want.detach().numpy()).all()
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-6)
    want.sum().backward()
    got.sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), x.grad.numpy(), rtol=1e-6, atol=1e-7)
