"""The loss catalogue against PyTorch: L1Loss, MSELoss, CrossEntropyLoss, NLLLoss, KLDivLoss,
BCELoss, BCEWithLogitsLoss, SmoothL1Loss and HuberLoss with their functional forms: values,
gradients of input and target, grad_fn names, warnings, legacy arguments, reprs and errors in
eager mode; then each loss compiled (a loss module under tracenet.compile, and a whole training
step under tracenet.compile_step) against the eager computation."""
import warnings

import numpy as np
import pytest

import sweep
import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as LF
import tracenet.optim as toptim

from test_ir import MLP
from test_losses import TH, TN, _run, close, compare, npy, rand

torch = pytest.importorskip("torch")
TF = torch.nn.functional

REDUCTIONS = ["none", "mean", "sum"]


def prob(*shape, seed=0, low=0.05):
    """Probabilities in [low, 1 - low]."""
    return np.asarray(np.random.default_rng(seed).random(shape) * (1 - 2 * low) + low)


def log_prob(*shape, seed=0):
    x = rand(*shape, seed=seed)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _wkw(T, kw):
    """Keyword arguments with numpy arrays turned into tensors of library T."""
    return {k: T.t(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


# --- L1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (2, 3, 4)), ((), ()),
                                    ((3, 4), (4,)), ((3, 1), (1, 4))], ids=str)
def test_l1_loss(reduction, shapes):
    a, b = rand(*shapes[0]), rand(*shapes[1], seed=1)
    compare(lambda T, x, y: T.F.l1_loss(x, y, reduction=reduction), [a, b], grad_of=(0, 1))
    compare(lambda T, x, y: T.nn.L1Loss(reduction=reduction)(x, y), [a, b], grad_of=(0, 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_loss_weight_and_zero_difference(reduction):
    a, b, w = rand(3, 4), rand(3, 4, seed=1), prob(3, 4, seed=2)
    compare(lambda T, x, y, wt: T.F.l1_loss(x, y, reduction=reduction, weight=wt), [a, b, w],
            grad_of=(0, 1))
    # |x - t| at x == t: gradient 0, as sign(0)
    compare(lambda T, x, y: T.F.l1_loss(x, y, reduction=reduction), [a, a.copy()],
            grad_of=(0, 1))


def test_l1_loss_float32_and_long():
    a, b = rand(3, 4).astype(np.float32), rand(3, 4, seed=1).astype(np.float32)
    yt, yl = compare(lambda T, x, y: T.F.l1_loss(x, y), [a, b], rtol=1e-6, atol=1e-7)
    assert yl.dtype == tn.float32
    ai, bi = np.arange(12).reshape(3, 4), np.arange(12)[::-1].reshape(3, 4).copy()
    for reduction in ("none", "sum"):
        yt = TF.l1_loss(torch.tensor(ai), torch.tensor(bi), reduction=reduction)
        yl = LF.l1_loss(tn.tensor(ai), tn.tensor(bi), reduction=reduction)
        assert str(yl.dtype) == str(yt.dtype) == "torch.int64"
        np.testing.assert_array_equal(npy(yl), yt.numpy())


# --- MSE (the core tests are in test_losses.py) -----------------------------------------------


def test_mse_loss_elementwise_mean_is_mean_with_warning():
    a, b = rand(3, 4), rand(3, 4, seed=1)
    compare(lambda T, x, y: T.F.mse_loss(x, y, reduction="elementwise_mean"), [a, b],
            grad_of=(0, 1))
    compare(lambda T, x, y: T.nn.MSELoss(reduction="elementwise_mean")(x, y), [a, b])


# --- KL divergence ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS + ["batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)], ids=str)
def test_kl_div(reduction, log_target, shape):
    x = log_prob(*shape)
    t = log_prob(*shape, seed=1) if log_target else np.exp(log_prob(*shape, seed=1))
    compare(lambda T, a, b: T.F.kl_div(a, b, reduction=reduction, log_target=log_target),
            [x, t], grad_of=(0, 1))
    compare(lambda T, a, b: T.nn.KLDivLoss(reduction=reduction, log_target=log_target)(a, b),
            [x, t], grad_of=(0, 1))


@pytest.mark.parametrize("reduction", REDUCTIONS + ["batchmean"])
def test_kl_div_zero_and_negative_targets(reduction):
    # xlogy(0, 0) = 0 in the value; the target gradient at 0 (and below) is nan, as torch's
    x = log_prob(3, 4)
    t = np.exp(log_prob(3, 4, seed=1))
    t[0, 1] = 0.0
    t[2, 3] = -0.25
    compare(lambda T, a, b: T.F.kl_div(a, b, reduction=reduction), [x, t], grad_of=(0, 1))


def test_kl_div_broadcasts_scalar_batchmean_and_mixed_dtypes():
    x, t = log_prob(3, 4), np.exp(log_prob(4, seed=1))
    compare(lambda T, a, b: T.F.kl_div(a, b, reduction="sum"), [x, t], grad_of=(0, 1))
    compare(lambda T, a, b: T.F.kl_div(a, b, reduction="none"), [t, x], grad_of=(0, 1))
    compare(lambda T, a, b: T.F.kl_div(a, b, reduction="batchmean"),
            [np.array(-0.5), np.array(0.3)], grad_of=(0, 1))
    yt = TF.kl_div(torch.tensor(x.astype(np.float32)), torch.tensor(t), reduction="sum")
    yl = LF.kl_div(tn.tensor(x.astype(np.float32)), tn.tensor(t), reduction="sum")
    assert str(yl.dtype) == str(yt.dtype)
    close(yl, yt, 1e-6, 1e-7)


def test_kl_div_legacy_arguments_with_batchmean():
    x, t = log_prob(3, 4), np.exp(log_prob(3, 4, seed=1))
    for kw in (dict(size_average=False, reduction="batchmean"), dict(reduce=False),
               dict(size_average=True, reduction="sum")):
        compare(lambda T, a, b: T.F.kl_div(a, b, **kw), [x, t], grad_of=(0, 1))


# --- binary cross entropy -------------------------------------------------------------------

BCE_WEIGHTS = [None, (3, 4), (4,), (3, 1), ()]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wshape", BCE_WEIGHTS, ids=str)
def test_binary_cross_entropy(reduction, wshape):
    x, t = prob(3, 4), prob(3, 4, seed=1, low=0.0)
    kw = {} if wshape is None else dict(weight=prob(*wshape, seed=2))
    compare(lambda T, a, b: T.F.binary_cross_entropy(a, b, reduction=reduction, **_wkw(T, kw)),
            [x, t], grad_of=(0, 1))
    compare(lambda T, a, b: T.nn.BCELoss(reduction=reduction, **_wkw(T, kw))(a, b), [x, t],
            grad_of=(0, 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_clamps_at_the_boundaries(reduction):
    # log(0) is clamped at -100 in the value; the input gradient's denominator x (1 - x) at
    # float 1e-12, the target gradient is -logit(x) (infinite at 0 and 1)
    x = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 1e-30, 1 - 1e-16])
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0])
    compare(lambda T, a, b: T.F.binary_cross_entropy(a, b, reduction=reduction), [x, t],
            grad_of=(0, 1))


def test_binary_cross_entropy_float32_scalar_and_empty():
    x, t = prob(4, 3).astype(np.float32), prob(4, 3, seed=1).astype(np.float32)
    _, yl = compare(lambda T, a, b: T.F.binary_cross_entropy(a, b), [x, t], grad_of=(0, 1),
                    rtol=1e-5, atol=1e-6)
    assert yl.dtype == tn.float32
    # a double weight is used in the input's dtype
    compare(lambda T, a, b, w: T.F.binary_cross_entropy(a, b, weight=w),
            [x, t, prob(3, seed=4)], rtol=1e-5, atol=1e-6)
    compare(lambda T, a, b: T.F.binary_cross_entropy(a, b), [np.array(0.3), np.array(1.0)],
            grad_of=(0, 1))
    for reduction in REDUCTIONS:
        yt = TF.binary_cross_entropy(torch.zeros(0, 2), torch.zeros(0, 2), reduction=reduction)
        yl = LF.binary_cross_entropy(tn.zeros(0, 2), tn.zeros(0, 2), reduction=reduction)
        close(yl, yt)


# --- binary cross entropy with logits -------------------------------------------------------

BCE_LOGITS_OPTIONS = [{}, dict(weight=(4,)), dict(pos_weight=(4,)),
                      dict(weight=(3, 1), pos_weight=(4,)), dict(weight=(3, 4), pos_weight=())]


def _bcel_kw(T, kw):
    return {k: T.t(prob(*v, seed=5 + i) * 2) for i, (k, v) in enumerate(sorted(kw.items()))}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kw", BCE_LOGITS_OPTIONS, ids=str)
def test_binary_cross_entropy_with_logits(reduction, kw):
    x, t = rand(3, 4) * 3, prob(3, 4, seed=1, low=0.0)
    compare(lambda T, a, b: T.F.binary_cross_entropy_with_logits(a, b, reduction=reduction,
                                                                 **_bcel_kw(T, kw)),
            [x, t], grad_of=(0, 1))
    compare(lambda T, a, b: T.nn.BCEWithLogitsLoss(reduction=reduction, **_bcel_kw(T, kw))(a, b),
            [x, t], grad_of=(0, 1))


@pytest.mark.parametrize("kw", [{}, dict(pos_weight=(4,))], ids=str)
def test_binary_cross_entropy_with_logits_is_stable_for_large_logits(kw):
    x = np.array([[-1000.0, -80.0, 80.0, 1000.0], [-30.0, 0.0, 30.0, 5.0]])
    t = np.array([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 1.0]])
    _, yl = compare(lambda T, a, b: T.F.binary_cross_entropy_with_logits(
        a, b, reduction="none", **_bcel_kw(T, kw)), [x, t], grad_of=(0, 1))
    assert np.all(np.isfinite(npy(yl)))


def test_binary_cross_entropy_with_logits_dtypes():
    # the result has the target's dtype, as torch
    x, t = rand(3, 4), prob(3, 4, seed=1)
    for xd, td in ((np.float32, np.float64), (np.float64, np.float32), (np.float32, np.float32)):
        compare(lambda T, a, b: T.F.binary_cross_entropy_with_logits(a, b),
                [x.astype(xd), t.astype(td)], grad_of=(0, 1), rtol=1e-5, atol=1e-6)
        yt = TF.binary_cross_entropy_with_logits(torch.tensor(x.astype(xd)),
                                                 torch.tensor(t.astype(td)))
        yl = LF.binary_cross_entropy_with_logits(tn.tensor(x.astype(xd)), tn.tensor(t.astype(td)))
        assert str(yl.dtype) == str(yt.dtype)


# --- smooth L1 and Huber ------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 0.5, 2, 0.0])
def test_smooth_l1_loss(reduction, beta):
    a, b = rand(4, 5) * 2, rand(4, 5, seed=1)
    compare(lambda T, x, y: T.F.smooth_l1_loss(x, y, reduction=reduction, beta=beta), [a, b],
            grad_of=(0, 1))
    compare(lambda T, x, y: T.nn.SmoothL1Loss(reduction=reduction, beta=beta)(x, y), [a, b],
            grad_of=(0, 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_loss(reduction, delta):
    a, b = rand(4, 5) * 2, rand(4, 5, seed=1)
    compare(lambda T, x, y: T.F.huber_loss(x, y, reduction=reduction, delta=delta), [a, b],
            grad_of=(0, 1))
    compare(lambda T, x, y: T.nn.HuberLoss(reduction=reduction, delta=delta)(x, y), [a, b],
            grad_of=(0, 1))
    compare(lambda T, x, y, w: T.F.huber_loss(x, y, reduction=reduction, delta=delta, weight=w),
            [a, b, prob(4, 5, seed=3)], grad_of=(0, 1))


@pytest.mark.parametrize("name", ["smooth_l1_loss", "huber_loss"])
def test_smooth_l1_and_huber_at_the_kinks_broadcast_and_dtypes(name):
    # differences exactly at 0, +-1 (the default beta/delta) and beyond
    a = np.array([0.0, 1.0, -1.0, 0.5, 2.0, -3.0])
    compare(lambda T, x, y: getattr(T.F, name)(x, y, reduction="sum"), [a, np.zeros(6)],
            grad_of=(0, 1))
    compare(lambda T, x, y: getattr(T.F, name)(x, y), [rand(3, 4), rand(4, seed=1)],
            grad_of=(0, 1))
    x, t = rand(3, 4), rand(3, 4, seed=1)
    for xd, td in ((np.float32, np.float64), (np.float64, np.float32), (np.float32, np.int64)):
        tt = t.astype(td) if td is not np.int64 else (t * 3).astype(np.int64)
        yt = getattr(TF, name)(torch.tensor(x.astype(xd)), torch.tensor(tt))
        yl = getattr(LF, name)(tn.tensor(x.astype(xd)), tn.tensor(tt))
        assert str(yl.dtype) == str(yt.dtype), (xd, td)
        close(yl, yt, 1e-6, 1e-6)


def test_class_weights_get_no_graph_edge():
    x0, t0, w0 = prob(3, 4), prob(3, 4, seed=1), prob(4, seed=2)
    for fn in (lambda F, x, t, w: F.binary_cross_entropy(x, t, weight=w),
               lambda F, x, t, w: F.binary_cross_entropy_with_logits(x, t, weight=w,
                                                                      pos_weight=w * 2),
               lambda F, x, t, w: F.binary_cross_entropy_with_logits(x, t, pos_weight=w),
               lambda F, x, t, w: F.smooth_l1_loss(x, t), lambda F, x, t, w: F.huber_loss(x, t)):
        kinds = []
        for F, lib in ((TF, torch), (LF, tn)):
            x = lib.tensor(x0, requires_grad=True)
            y = fn(F, x, lib.tensor(t0), lib.tensor(w0))
            kinds.append([None if f is None else "node" for f, _ in y.grad_fn.next_functions])
        assert kinds[1] == kinds[0]


def test_second_order_gradients_of_the_dedicated_ops():
    x0, t0 = prob(3, 4), prob(3, 4, seed=1)
    cases = [lambda F, x, t: F.binary_cross_entropy(x, t),
             lambda F, x, t: F.binary_cross_entropy_with_logits(x * 4 - 2, t, reduction="sum"),
             lambda F, x, t: F.smooth_l1_loss(x * 3, t, beta=0.5),
             lambda F, x, t: F.huber_loss(x * 3, t, delta=0.4, reduction="sum")]
    for fn in cases:
        out = []
        for F, lib in ((TF, torch), (LF, tn)):
            x = lib.tensor(x0, requires_grad=True)
            t = lib.tensor(t0, requires_grad=True)
            gx, gt = lib.autograd.grad(fn(F, x, t), (x, t), create_graph=True)
            hx, ht = lib.autograd.grad((gx * gx).sum() + (gt * x).sum(), (x, t))
            out.append([gx, gt, hx, ht])
        for a, b in zip(out[1], out[0]):
            close(a, b, 1e-9, 1e-10)


# --- cross entropy: the forms the core tests leave out ------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(2, 4, 3), (2, 4, 3, 2)], ids=str)
@pytest.mark.parametrize("kw", [{}, dict(weight=True), dict(label_smoothing=0.2),
                                dict(weight=True, label_smoothing=0.1)], ids=str)
def test_cross_entropy_probability_targets_k_dimensional(reduction, shape, kw):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    p = rng.random(shape)
    p /= p.sum(1, keepdims=True)
    w = rng.random(shape[1]) + 0.2

    def fn(T, a, b):
        extra = dict(kw)
        if extra.get("weight"):
            extra["weight"] = T.t(w)
        return T.F.cross_entropy(a, b, reduction=reduction, **extra)
    # torch's 'mean' divides by a C++ scalar (DivBackward1); the other names are compared
    compare(fn, [x, p], grad_of=(0, 1), check_name=reduction != "mean")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_label_smoothing_k_dimensional_with_ignored_class_zero(reduction):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 2, 3))
    t = rng.integers(0, 4, (3, 2, 3))
    t[0, 0, :] = 0
    w = rng.random(4) + 0.2
    compare(lambda T, a, b: T.F.cross_entropy(a, b, weight=T.t(w), ignore_index=0,
                                              label_smoothing=0.15, reduction=reduction),
            [x, t])
    compare(lambda T, a, b: T.nn.CrossEntropyLoss(weight=T.t(w), ignore_index=0,
                                                  label_smoothing=0.15, reduction=reduction)(a, b),
            [x, t])


def test_cross_entropy_and_nll_elementwise_mean():
    x, t = rand(5, 4), np.array([0, 3, 1, 2, 2])
    compare(lambda T, a, b: T.F.cross_entropy(a, b, reduction="elementwise_mean"), [x, t])
    compare(lambda T, a, b: T.F.nll_loss(a, b, reduction="elementwise_mean"), [x, t])


# --- legacy arguments, modules ----------------------------------------------------------------

LEGACY = [(True, None), (False, None), (None, False), (True, False), (False, True)]
X, Y, P, Q = rand(5, 4), rand(5, 4, seed=1), prob(5, 4), prob(5, 4, seed=1)


def _legacy_cases(sa, rd):
    kw = dict(size_average=sa, reduce=rd)
    return [
        lambda T: T.nn.L1Loss(**kw)(T.t(X), T.t(Y)),
        lambda T: T.F.l1_loss(T.t(X), T.t(Y), **kw),
        lambda T: T.nn.KLDivLoss(**kw)(T.t(X), T.t(P)),
        lambda T: T.F.kl_div(T.t(X), T.t(P), **kw),
        lambda T: T.nn.BCELoss(**kw)(T.t(P), T.t(Q)),
        lambda T: T.F.binary_cross_entropy(T.t(P), T.t(Q), **kw),
        lambda T: T.nn.BCEWithLogitsLoss(**kw)(T.t(X), T.t(Q)),
        lambda T: T.F.binary_cross_entropy_with_logits(T.t(X), T.t(Q), **kw),
        lambda T: T.nn.SmoothL1Loss(**kw)(T.t(X), T.t(Y)),
        lambda T: T.F.smooth_l1_loss(T.t(X), T.t(Y), **kw),
        lambda T: T.nn.BCELoss(**kw).reduction,
    ]


@pytest.mark.parametrize("size_average,reduce", LEGACY)
def test_legacy_reduction_arguments(size_average, reduce):
    for fn in _legacy_cases(size_average, reduce):
        rt, et, wt = _run(fn, TH)
        rl, el, wl = _run(fn, TN)
        assert et is None and el is None, (et, el)
        assert wl == wt
        assert wl[0][1].startswith("size_average and reduce args will be deprecated")
        if isinstance(rt, str):
            assert rl == rt
        else:
            close(rl, rt)


def test_deprecated_elementwise_mean_reduction():
    cases = [lambda T: T.F.l1_loss(T.t(X), T.t(Y), reduction="elementwise_mean"),
             lambda T: T.nn.L1Loss(reduction="elementwise_mean")(T.t(X), T.t(Y)),
             lambda T: T.F.kl_div(T.t(X), T.t(P), reduction="elementwise_mean"),
             lambda T: T.F.binary_cross_entropy(T.t(P), T.t(Q), reduction="elementwise_mean"),
             lambda T: T.F.binary_cross_entropy_with_logits(T.t(X), T.t(Q),
                                                            reduction="elementwise_mean"),
             lambda T: T.F.smooth_l1_loss(T.t(X), T.t(Y), reduction="elementwise_mean"),
             lambda T: T.F.smooth_l1_loss(T.t(X), T.t(Y), beta=0.0,
                                          reduction="elementwise_mean"),
             lambda T: T.F.huber_loss(T.t(X), T.t(Y), reduction="elementwise_mean"),
             lambda T: T.F.cross_entropy(T.t(X), T.t(P), reduction="elementwise_mean")]
    for fn in cases:
        rt, et, wt = _run(fn, TH)
        rl, el, wl = _run(fn, TN)
        assert et is None and el is None, (et, el)
        assert wl == wt == [("UserWarning", "reduction='elementwise_mean' is deprecated. Please "
                             "use reduction='mean' instead.")]
        close(rl, rt)


def test_reprs_defaults_and_buffers():
    w, pw = np.ones(4), np.full(4, 2.0)
    for make in (lambda T: T.nn.L1Loss(), lambda T: T.nn.MSELoss(reduction="sum"),
                 lambda T: T.nn.CrossEntropyLoss(label_smoothing=0.1),
                 lambda T: T.nn.NLLLoss(ignore_index=2), lambda T: T.nn.KLDivLoss(
                     reduction="batchmean", log_target=True),
                 lambda T: T.nn.BCELoss(weight=T.t(w)),
                 lambda T: T.nn.BCEWithLogitsLoss(weight=T.t(w), pos_weight=T.t(pw)),
                 lambda T: T.nn.SmoothL1Loss(beta=0.5), lambda T: T.nn.HuberLoss(delta=2)):
        mt, ml = make(TH), make(TN)
        assert repr(ml) == repr(mt)
        for attr in ("reduction", "beta", "delta", "log_target", "ignore_index",
                     "label_smoothing"):
            assert getattr(ml, attr, None) == getattr(mt, attr, None), attr
        assert list(dict(ml.named_buffers())) == list(dict(mt.named_buffers()))
        assert list(ml.state_dict()) == list(mt.state_dict())
    assert tnn.BCELoss().weight is None
    m = tnn.BCEWithLogitsLoss()
    assert m.weight is None and m.pos_weight is None and m.reduction == "mean"


# --- errors ---------------------------------------------------------------------------------------

def _p(T, values):
    return T.t(values, dtype=T.D)


LOSS_ERRORS = {
    "l1 bool": lambda T: T.F.l1_loss(T.z(3, dtype=T.B), T.z(3, dtype=T.B)),
    "l1 long mean": lambda T: T.F.l1_loss(T.z(3, dtype=T.L), T.z(3, dtype=T.L)),
    "l1 not broadcastable": lambda T: T.F.l1_loss(T.z(3, 4), T.z(3, 2)),
    "l1 bad reduction": lambda T: T.F.l1_loss(T.z(3), T.z(3), reduction="foo"),
    "L1Loss bad reduction": lambda T: T.nn.L1Loss(reduction="avg")(T.z(3), T.z(3)),
    "l1 weight size": lambda T: T.F.l1_loss(T.z(3, 4), T.z(3, 4), weight=T.z(4)),
    "l1 weight against unbroadcast input": lambda T: T.F.l1_loss(T.z(4), T.z(3, 4),
                                                                 weight=T.z(3, 4)),
    "l1 weighted bad reduction": lambda T: T.F.l1_loss(T.z(3), T.z(3), weight=T.z(3),
                                                       reduction="foo"),
    "mse weighted elementwise_mean": lambda T: T.F.mse_loss(T.z(3), T.z(3), weight=T.z(3),
                                                            reduction="elementwise_mean"),
    "kl long input": lambda T: T.F.kl_div(T.z(3, dtype=T.L), T.z(3), reduction="sum"),
    "kl long target": lambda T: T.F.kl_div(T.z(3), T.z(3, dtype=T.L), reduction="sum"),
    "kl bool": lambda T: T.F.kl_div(T.z(3, dtype=T.B), T.z(3), reduction="sum"),
    "kl bad reduction": lambda T: T.F.kl_div(T.z(3), T.z(3), reduction="foo"),
    "KLDivLoss bad reduction": lambda T: T.nn.KLDivLoss(reduction="foo")(T.z(3), T.z(3)),
    "kl not broadcastable": lambda T: T.F.kl_div(T.z(3, 4), T.z(3, 2), reduction="sum"),
    "bce input above 1": lambda T: T.F.binary_cross_entropy(_p(T, [0.5, 1.5]), _p(T, [0, 1])),
    "bce input below 0": lambda T: T.F.binary_cross_entropy(_p(T, [-0.1, 0.5]), _p(T, [0, 1])),
    "bce input nan": lambda T: T.F.binary_cross_entropy(_p(T, [float("nan")]), _p(T, [0])),
    "bce target above 1": lambda T: T.F.binary_cross_entropy(_p(T, [0.5, 0.5]), _p(T, [0, 2])),
    "bce target nan": lambda T: T.F.binary_cross_entropy(_p(T, [0.5]), _p(T, [float("nan")])),
    "bce target first": lambda T: T.F.binary_cross_entropy(_p(T, [0.5, 2]), _p(T, [2, 0.5])),
    "bce input first": lambda T: T.F.binary_cross_entropy(_p(T, [2, 0.5]), _p(T, [0.5, 2])),
    "bce size": lambda T: T.F.binary_cross_entropy(T.z(3, 4), T.z(4)),
    "bce size module": lambda T: T.nn.BCELoss()(T.z(3, 4), T.z(3, 1)),
    "bce long": lambda T: T.F.binary_cross_entropy(T.z(3, dtype=T.L), T.z(3, dtype=T.L)),
    "bce bool": lambda T: T.F.binary_cross_entropy(T.z(3, dtype=T.B), T.z(3, dtype=T.B)),
    "bce long target": lambda T: T.F.binary_cross_entropy(T.z(3), T.z(3, dtype=T.L)),
    "bce long input": lambda T: T.F.binary_cross_entropy(T.z(3, dtype=T.L), T.z(3)),
    "bce float double": lambda T: T.F.binary_cross_entropy(T.z(3), T.z(3, dtype=T.D)),
    "bce weight not broadcastable": lambda T: T.F.binary_cross_entropy(T.z(3, 4), T.z(3, 4),
                                                                       weight=T.z(3)),
    "bce weight not broadcastable 3-d": lambda T: T.F.binary_cross_entropy(
        T.z(5, 3, 4), T.z(5, 3, 4), weight=T.z(2, 1, 4)),
    "bce weight larger": lambda T: T.F.binary_cross_entropy(T.z(3, 4), T.z(3, 4),
                                                            weight=T.z(2, 3, 4)),
    "bce weight requires grad": lambda T: T.F.binary_cross_entropy(
        T.z(3, 4), T.z(3, 4), weight=T.z(4, requires_grad=True)),
    "bce bad reduction": lambda T: T.F.binary_cross_entropy(T.z(3), T.z(3), reduction="foo"),
    "BCELoss bad reduction": lambda T: T.nn.BCELoss(reduction="foo")(T.z(3), T.z(3)),
    "bcel size": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3, 4), T.z(4)),
    "bcel weight": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3, 4), T.z(3, 4),
                                                                  weight=T.z(3)),
    "bcel pos_weight": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3, 4), T.z(3, 4),
                                                                      pos_weight=T.z(3)),
    "bcel both": lambda T: T.F.binary_cross_entropy_with_logits(
        T.z(3, 4), T.z(3, 4), weight=T.z(2), pos_weight=T.z(3)),
    "bcel weight larger": lambda T: T.F.binary_cross_entropy_with_logits(
        T.z(3, 4), T.z(3, 4), weight=T.z(2, 3, 4), reduction="none"),
    "bcel pos_weight larger": lambda T: T.F.binary_cross_entropy_with_logits(
        T.z(3, 4), T.z(3, 4), pos_weight=T.z(2, 1, 4)),
    "bcel long": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3, dtype=T.L),
                                                                T.z(3, dtype=T.L)),
    "bcel long input": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3, dtype=T.L),
                                                                      T.z(3)),
    "bcel bool input": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3, dtype=T.B),
                                                                      T.z(3)),
    "bcel long target": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3),
                                                                       T.z(3, dtype=T.L)),
    "bcel bool target": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3),
                                                                       T.z(3, dtype=T.B)),
    "bcel weight requires grad": lambda T: T.F.binary_cross_entropy_with_logits(
        T.z(3), T.z(3), weight=T.z(3, requires_grad=True)),
    "bcel pos_weight requires grad": lambda T: T.F.binary_cross_entropy_with_logits(
        T.z(3), T.z(3), pos_weight=T.z(3, requires_grad=True)),
    "bcel both require grad": lambda T: T.F.binary_cross_entropy_with_logits(
        T.z(3), T.z(3), weight=T.z(3, requires_grad=True), pos_weight=T.z(3, requires_grad=True)),
    "bcel bad reduction": lambda T: T.F.binary_cross_entropy_with_logits(T.z(3), T.z(3),
                                                                         reduction="foo"),
    "BCEWithLogitsLoss bad reduction": lambda T: T.nn.BCEWithLogitsLoss(reduction="x")(
        T.z(3), T.z(3)),
    "smooth_l1 negative beta": lambda T: T.F.smooth_l1_loss(T.z(3), T.z(3), beta=-0.5),
    "SmoothL1Loss negative beta": lambda T: T.nn.SmoothL1Loss(beta=-1.0)(T.z(3), T.z(3)),
    "smooth_l1 long": lambda T: T.F.smooth_l1_loss(T.z(3, dtype=T.L), T.z(3, dtype=T.L)),
    "smooth_l1 not broadcastable": lambda T: T.F.smooth_l1_loss(T.z(3, 4), T.z(2, 4)),
    "smooth_l1 bad reduction": lambda T: T.F.smooth_l1_loss(T.z(3), T.z(3), reduction="foo"),
    "smooth_l1 beta 0 bad reduction": lambda T: T.F.smooth_l1_loss(T.z(3), T.z(3), beta=0.0,
                                                                   reduction="foo"),
    "huber negative delta": lambda T: T.F.huber_loss(T.z(3), T.z(3), delta=-1.0),
    "huber zero delta": lambda T: T.F.huber_loss(T.z(3), T.z(3), delta=0),
    "HuberLoss zero delta": lambda T: T.nn.HuberLoss(delta=0.0)(T.z(3), T.z(3)),
    "huber long": lambda T: T.F.huber_loss(T.z(3, dtype=T.L), T.z(3, dtype=T.L)),
    "huber long input": lambda T: T.F.huber_loss(T.z(3, dtype=T.L), T.z(3)),
    "huber not broadcastable": lambda T: T.F.huber_loss(T.z(3, 4), T.z(2, 4)),
    "huber bad reduction": lambda T: T.F.huber_loss(T.z(3), T.z(3), reduction="foo"),
    "huber weight size": lambda T: T.F.huber_loss(T.z(3, 4), T.z(3, 4), weight=T.z(4)),
    "huber weighted bad reduction": lambda T: T.F.huber_loss(T.z(3), T.z(3), weight=T.z(3),
                                                             reduction="foo"),
    "HuberLoss delta type": lambda T: T.nn.HuberLoss(delta="1"),
    "HuberLoss delta None": lambda T: T.nn.HuberLoss(delta=None),
}


@pytest.mark.parametrize("name", list(LOSS_ERRORS))
def test_loss_errors_match_torch(name):
    _, et, wt = _run(LOSS_ERRORS[name], TH)
    _, el, wl = _run(LOSS_ERRORS[name], TN)
    assert et is not None, "torch did not raise"
    assert el is not None, f"tracenet did not raise; torch raised {et!r}"
    assert (type(el).__name__, str(el)) == (type(et).__name__, str(et))
    assert wl == wt


def test_weights_that_do_not_require_grad_under_no_grad_are_accepted():
    w = np.ones(3)
    for ns, lib in ((TH, torch), (TN, tn)):
        with lib.no_grad():
            ns.F.binary_cross_entropy(ns.z(3), ns.z(3), weight=ns.t(w).requires_grad_())
            ns.F.binary_cross_entropy_with_logits(ns.z(3), ns.z(3),
                                                  pos_weight=ns.t(w).requires_grad_())


# --- compiled -----------------------------------------------------------------------------------

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


class LossOf(tnn.Module):
    """A loss module applied to (input, target) after the transforms that put the input in the
    loss's domain."""

    def __init__(self, loss, prep=None, prep_target=None):
        super().__init__()
        self.loss = loss
        self.prep, self.prep_target = prep, prep_target

    def forward(self, x, t):
        if self.prep is not None:
            x = self.prep(x)
        if self.prep_target is not None:
            t = self.prep_target(t)
        return self.loss(x, t)


def _sig(v):
    return v.sigmoid()


def _log_sm(v):
    return LF.log_softmax(v, 1)


def _sm(v):
    return LF.softmax(v, 1)


def _abs(v):
    return v.abs() + 0.1


W4 = np.array([0.5, 1.0, 2.0, 0.25])

# name -> (loss module, input prep, target prep, target kind)
#   target kinds: "real" (differentiable, same shape), "row" (differentiable, one row),
#   "prob" (probabilities), "index" (class indices), "index_ignored" (with -100 entries)
COMPILED = {
    "l1": (lambda: tnn.L1Loss(), None, None, "real"),
    "l1_none_broadcast": (lambda: tnn.L1Loss(reduction="none"), None, None, "row"),
    "mse_sum": (lambda: tnn.MSELoss(reduction="sum"), None, None, "real"),
    "kl_batchmean": (lambda: tnn.KLDivLoss(reduction="batchmean"), _log_sm, _sm, "real"),
    "kl_log_target_none": (lambda: tnn.KLDivLoss(reduction="none", log_target=True), _log_sm,
                           _log_sm, "real"),
    "kl_mean_xlogy": (lambda: tnn.KLDivLoss(reduction="sum"), _log_sm, _abs, "real"),
    "bce": (lambda: tnn.BCELoss(), _sig, _sig, "real"),
    "bce_weight_none": (lambda: tnn.BCELoss(weight=tn.tensor(W4, dtype=tn.float32),
                                            reduction="none"), _sig, _sig, "real"),
    "bce_logits": (lambda: tnn.BCEWithLogitsLoss(), None, _sig, "real"),
    "bce_logits_weights_sum": (lambda: tnn.BCEWithLogitsLoss(
        weight=tn.tensor(W4[:, None][:3], dtype=tn.float32),
        pos_weight=tn.tensor(W4 * 2, dtype=tn.float32), reduction="sum"), None, _sig, "real"),
    "smooth_l1": (lambda: tnn.SmoothL1Loss(beta=0.5), None, None, "real"),
    "smooth_l1_beta0_sum": (lambda: tnn.SmoothL1Loss(beta=0.0, reduction="sum"), None, None,
                            "real"),
    "huber_none": (lambda: tnn.HuberLoss(delta=0.7, reduction="none"), None, None, "real"),
    "huber": (lambda: tnn.HuberLoss(), None, None, "real"),
    "cross_entropy": (lambda: tnn.CrossEntropyLoss(), None, None, "index"),
    "cross_entropy_weight_ignore_smoothing": (lambda: tnn.CrossEntropyLoss(
        weight=tn.tensor(W4, dtype=tn.float32), label_smoothing=0.2), None, None,
        "index_ignored"),
    "cross_entropy_probabilities": (lambda: tnn.CrossEntropyLoss(label_smoothing=0.1), None,
                                    _sm, "real"),
    "nll_weight_sum": (lambda: tnn.NLLLoss(weight=tn.tensor(W4, dtype=tn.float32),
                                           reduction="sum"), _log_sm, None, "index_ignored"),
}


def _batch(kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4)).astype(np.float32) * 2
    if kind in ("real", "row"):
        t = rng.standard_normal((3, 4) if kind == "real" else (4,)).astype(np.float32)
    else:
        t = rng.integers(0, 4, 3)
        if kind == "index_ignored":
            t[1] = -100
    return x, t


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_loss_matches_eager(name, _cache):
    make, prep, prep_t, kind = COMPILED[name]
    model = LossOf(make(), prep, prep_t)
    compiled = tn.compile(model)
    for seed in (0, 1):
        x0, t0 = _batch(kind, seed)
        results = []
        for fn in (model, compiled):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = tn.tensor(x0, requires_grad=True)
                t = tn.tensor(t0, requires_grad=t0.dtype.kind == "f")
                y = fn(x, t)
                y.backward(tn.ones_like(y) * 0.5 if y.dim() == 0 else
                           tn.from_numpy(np.linspace(-1, 1, y.numel(), dtype=np.float32)
                                         .reshape(tuple(y.shape))))
            results.append((y.detach().numpy(), x.grad.numpy(),
                            t.grad.numpy() if t.requires_grad else None))
        (ye, gxe, gte), (yc, gxc, gtc) = results
        np.testing.assert_allclose(yc, ye, **TOL)
        np.testing.assert_allclose(gxc, gxe, **TOL)
        if gte is not None:
            np.testing.assert_allclose(gtc, gte, **TOL)


# losses trained under compile_step: name -> (loss fn of (model output, target), target kind)
STEP_LOSSES = {
    "l1": (lambda: (lambda y, t: tnn.L1Loss()(y, t)), "real"),
    "mse": (lambda: (lambda y, t: tnn.MSELoss()(y, t)), "real"),
    "kl_batchmean": (lambda: (lambda y, t: tnn.KLDivLoss(reduction="batchmean")(
        LF.log_softmax(y, 1), LF.softmax(t, 1))), "real"),
    "kl_log_target": (lambda: (lambda y, t: tnn.KLDivLoss(reduction="sum", log_target=True)(
        LF.log_softmax(y, 1), LF.log_softmax(t, 1))), "real"),
    "bce_weight": (lambda: (lambda y, t: tnn.BCELoss(weight=tn.tensor(W4[:1].repeat(5),
                                                                       dtype=tn.float32))(
        y.sigmoid(), t.sigmoid())), "real"),
    "bce_logits_pos_weight": (lambda: (lambda y, t: tnn.BCEWithLogitsLoss(
        pos_weight=tn.tensor(np.arange(1, 6), dtype=tn.float32))(y, t.sigmoid())), "real"),
    "smooth_l1_sum": (lambda: (lambda y, t: tnn.SmoothL1Loss(beta=0.3, reduction="sum")(y, t)),
                      "real"),
    "huber": (lambda: (lambda y, t: tnn.HuberLoss(delta=0.5)(y, t)), "real"),
    "cross_entropy_smoothing_weight": (lambda: (lambda y, t: tnn.CrossEntropyLoss(
        weight=tn.tensor(np.linspace(0.5, 1.5, 5), dtype=tn.float32), label_smoothing=0.1,
        ignore_index=2)(y, t)), "index"),
    "cross_entropy_probabilities": (lambda: (lambda y, t: tnn.CrossEntropyLoss()(
        y, LF.softmax(t, 1))), "real"),
    "nll": (lambda: (lambda y, t: tnn.NLLLoss()(LF.log_softmax(y, 1), t)), "index"),
}


# the default run: a loss of each kind in the step (elementwise mean and sum, batchmean, BCE and
# BCE with logits with their weights, class indices with weights, smoothing and an ignored
# class, probability targets); l1, huber, the log-target KL and nll (the same kinds, each
# checked compiled above) with -m sweep
DEFAULT_STEP_LOSSES = set(STEP_LOSSES) - {"l1", "huber", "kl_log_target", "nll"}


@sweep.keep(lambda p: p["name"] in DEFAULT_STEP_LOSSES)
@pytest.mark.parametrize("name", sorted(STEP_LOSSES))
def test_compile_step_with_loss_matches_eager_loop(name, _cache):
    make_loss, kind = STEP_LOSSES[name]
    tn.manual_seed(0)
    eager, compiled = MLP(), MLP()
    compiled.load_state_dict(eager.state_dict())
    opt_e = toptim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_c = toptim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    crit = make_loss()
    step = tn.compile_step(lambda x, t: crit(compiled(x), t), opt_c)
    rng = np.random.default_rng(1)
    x = tn.from_numpy(rng.standard_normal((6, 20)).astype(np.float32))
    t = tn.from_numpy(rng.standard_normal((6, 5)).astype(np.float32)) if kind == "real" else \
        tn.from_numpy(rng.integers(0, 5, 6))
    for _ in range(5):
        opt_e.zero_grad()
        loss_e = crit(eager(x), t)
        loss_e.backward()
        opt_e.step()
        loss_c = step(x, t)
        np.testing.assert_allclose(loss_c.item(), loss_e.item(), **TOL)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), **TOL)
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), **TOL)
