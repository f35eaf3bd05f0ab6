"""Batch normalisation and the pooling extras (max pooling with indices, max unpooling, average
and adaptive average pooling) against torch 2.13 in eager mode (values, gradients, running
statistics, reprs, state dicts, errors), and under tracenet.compile against eager."""
import copy

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as TF
import tracenet.optim as toptim

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "tracenet-cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))


def _pair(shape, seed, dtype=np.float32, grad=True):
    a = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    t = torch.tensor(a, requires_grad=grad)
    m = tn.tensor(a, requires_grad=grad)
    return t, m


def _close(ours, theirs, **tol):
    ours = ours.detach().numpy() if hasattr(ours, "detach") else np.asarray(ours)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    np.testing.assert_allclose(ours, theirs, **(tol or TOL))


def _copy_state(src_torch, dst):
    """Copy a torch module's parameters and buffers into ours."""
    dst.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                         for k, v in src_torch.state_dict().items()})


def _errors_match(fn_t, fn_m):
    with pytest.raises(Exception) as et:
        fn_t()
    with pytest.raises(Exception) as em:
        fn_m()
    assert type(em.value) is type(et.value), (em.value, et.value)
    assert str(em.value) == str(et.value)


# --- batch norm: eager against torch ---------------------------------------------------------

BN_CONFIGS = [
    ("BatchNorm1d", (6, 3), {}),
    ("BatchNorm1d", (4, 3, 5), dict(momentum=None)),
    ("BatchNorm1d", (4, 3, 5), dict(affine=False, eps=1e-3)),
    ("BatchNorm2d", (4, 3, 5, 2), {}),
    ("BatchNorm2d", (3, 3, 4, 4), dict(momentum=0.3, bias=False)),
    ("BatchNorm2d", (2, 3, 4, 3), dict(track_running_stats=False)),
    ("BatchNorm2d", (2, 3, 4, 3), dict(momentum=None, affine=False)),
    ("BatchNorm3d", (2, 3, 2, 3, 2), dict(eps=0.1)),
]


@pytest.mark.parametrize("cls,shape,kw", BN_CONFIGS,
                         ids=[f"{c}-{len(s)}d-{'-'.join(k) or 'default'}"
                              for c, s, k in BN_CONFIGS])
def test_batch_norm_module_matches_torch(cls, shape, kw):
    ref = getattr(torch.nn, cls)(3, **kw)
    ours = getattr(tnn, cls)(3, **kw)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    if ref.weight is not None:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            if ref.bias is not None:
                ref.bias.uniform_(-1, 1)
    _copy_state(ref, ours)
    for step, mode in enumerate(["train", "train", "eval", "train", "eval"]):
        getattr(ref, mode)()
        getattr(ours, mode)()
        xt, xm = _pair(shape, step)
        with torch.no_grad():
            xt += step
        xm = (xm + step).detach().requires_grad_()
        yt, ym = ref(xt), ours(xm)
        _close(ym, yt)
        assert ym.grad_fn.name() == yt.grad_fn.name() == "NativeBatchNormBackward0"
        g = np.random.default_rng(10 + step).standard_normal(shape).astype(np.float32)
        yt.backward(torch.tensor(g))
        ym.backward(tn.tensor(g))
        _close(xm.grad, xt.grad)
        for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
            _close(p.grad, q.grad, rtol=1e-4, atol=1e-4)
            p.grad = None
            q.grad = None
        for (k, v), (_, w) in zip(ours.state_dict().items(), ref.state_dict().items()):
            _close(v, w, rtol=1e-5, atol=1e-6)
            assert v.dtype.name == str(w.dtype).replace("torch.", "")


def test_batch_norm_defaults_buffers_and_resets():
    ref, ours = torch.nn.BatchNorm2d(16), tnn.BatchNorm2d(16)
    assert repr(ours) == "BatchNorm2d(16, eps=1e-05, momentum=0.1, affine=True, bias=True, " \
                         "track_running_stats=True)" == repr(ref)
    assert list(ours.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                       "num_batches_tracked"]
    assert ours.num_batches_tracked.dtype is tn.int64 and ours.num_batches_tracked.dim() == 0
    assert not ours.running_mean.requires_grad
    _close(ours.weight, np.ones(16))
    _close(ours.bias, np.zeros(16))
    ours(tn.randn(4, 16, 3, 3))
    assert ours.num_batches_tracked.item() == 1
    assert not np.allclose(ours.running_var.numpy(), 1)
    ours.eval()
    ours(tn.randn(4, 16, 3, 3))
    assert ours.num_batches_tracked.item() == 1  # eval does not count
    with tn.no_grad():
        ours.weight.fill_(3.0)
    ours.reset_running_stats()
    _close(ours.running_mean, np.zeros(16))
    _close(ours.running_var, np.ones(16))
    assert ours.num_batches_tracked.item() == 0
    _close(ours.weight, np.full(16, 3.0))  # reset_running_stats keeps the parameters
    ours.reset_parameters()
    _close(ours.weight, np.ones(16))
    none = tnn.BatchNorm1d(4, affine=False, track_running_stats=False)
    assert none.weight is None and none.bias is None and none.running_mean is None
    assert none.num_batches_tracked is None and list(none.state_dict()) == []
    none.reset_parameters()
    double = tnn.BatchNorm1d(4, dtype=tn.float64)
    assert double.weight.dtype is tn.float64 and double.running_var.dtype is tn.float64
    assert double.num_batches_tracked.dtype is tn.int64


def test_batch_norm_load_state_dict_without_num_batches_tracked():
    ref, ours = torch.nn.BatchNorm1d(3), tnn.BatchNorm1d(3)
    sd_t, sd_m = ref.state_dict(), ours.state_dict()
    del sd_t["num_batches_tracked"], sd_m["num_batches_tracked"]
    _errors_match(lambda: ref.load_state_dict(sd_t), lambda: ours.load_state_dict(sd_m))
    # a checkpoint without version metadata (from before the count existed) loads
    with tn.no_grad():
        ours.num_batches_tracked.fill_(5)
    ours.load_state_dict(dict(sd_m))
    assert ours.num_batches_tracked.item() == 5


def test_batch_norm_cumulative_average_with_momentum_none():
    ours = tnn.BatchNorm1d(2, momentum=None)
    xs = [tn.randn(5, 2) + i for i in range(4)]
    for x in xs:
        ours(x)
    expect = np.mean([x.numpy().mean(0) for x in xs], axis=0)
    _close(ours.running_mean, expect)
    var = np.mean([x.numpy().var(0, ddof=1) for x in xs], axis=0)
    _close(ours.running_var, var)


def test_batch_norm_eval_without_running_stats_uses_batch_statistics():
    ref = torch.nn.BatchNorm2d(3, track_running_stats=False).eval()
    ours = tnn.BatchNorm2d(3, track_running_stats=False).eval()
    xt, xm = _pair((3, 3, 2, 2), 1)
    _close(ours(xm), ref(xt))


def test_functional_batch_norm_matches_torch():
    xt, xm = _pair((4, 3, 5), 0)
    wt, wm = _pair((3,), 1)
    bt, bm = _pair((3,), 2)
    rmt, rmm = _pair((3,), 3, grad=False)
    rv = np.abs(np.random.default_rng(4).standard_normal(3)).astype(np.float32) + 0.5
    rvt, rvm = torch.tensor(rv), tn.tensor(rv)
    for training in (True, False):
        for momentum, eps in ((0.1, 1e-5), (0.7, 1e-2)):
            yt = torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, training, momentum, eps)
            ym = TF.batch_norm(xm, rmm, rvm, wm, bm, training, momentum, eps)
            _close(ym, yt)
            _close(rmm, rmt)
            _close(rvm, rvt)
            g = torch.randn(4, 3, 5)
            yt.backward(g)
            ym.backward(tn.tensor(g.numpy()))
            for a, b in ((xm, xt), (wm, wt), (bm, bt)):
                _close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
                a.grad = None
                b.grad = None
    # no running statistics, no affine parameters, 2-d and 4-d input, weight viewed as (1, C)
    for shape in ((5, 3), (2, 3, 2, 2)):
        xt, xm = _pair(shape, 7)
        _close(TF.batch_norm(xm, None, None, training=True),
               torch.nn.functional.batch_norm(xt, None, None, training=True))
        _close(TF.batch_norm(xm, None, None, tn.ones(1, 3) * 2, training=True),
               torch.nn.functional.batch_norm(xt, None, None, torch.ones(1, 3) * 2,
                                              training=True))
    # an empty batch passes through (with the affine transform)
    e = TF.batch_norm(tn.zeros(0, 3, requires_grad=True), tn.zeros(3), tn.ones(3),
                      training=True)
    assert tuple(e.shape) == (0, 3)


def test_batch_norm_double_backward_matches_torch():
    for training in (True, False):
        xt, xm = _pair((3, 2, 4), 0, dtype=np.float64)
        wt, wm = _pair((2,), 1, dtype=np.float64)
        bt, bm = _pair((2,), 2, dtype=np.float64)
        rm, rv = np.array([0.1, -0.2]), np.array([0.5, 1.5])
        yt = torch.nn.functional.batch_norm(xt, torch.tensor(rm), torch.tensor(rv), wt, bt,
                                            training)
        ym = TF.batch_norm(xm, tn.tensor(rm), tn.tensor(rv), wm, bm, training)
        cot = np.random.default_rng(5).standard_normal((3, 2, 4))
        gt = torch.autograd.grad((yt * torch.tensor(cot)).sum(), (xt, wt), create_graph=True)
        gm = tn.autograd.grad((ym * tn.tensor(cot)).sum(), (xm, wm), create_graph=True)
        (gt[0].pow(2).sum() + gt[1].sum() * 3).backward()
        (gm[0].pow(2).sum() + gm[1].sum() * 3).backward()
        for a, b in ((xm, xt), (wm, wt), (bm, bt)):
            if b.grad is None:
                assert a.grad is None or np.allclose(a.grad.numpy(), 0)
            else:
                _close(a.grad, b.grad, rtol=1e-7, atol=1e-9)


def test_batch_norm_module_errors_match_torch():
    cases = [
        ("BatchNorm1d", (2, 3, 4, 5), {}), ("BatchNorm1d", (3,), {}),
        ("BatchNorm2d", (2, 3, 4), {}), ("BatchNorm3d", (2, 3, 4, 4), {}),
        ("BatchNorm1d", (1, 3), {}), ("BatchNorm1d", (1, 3, 1), {}),
        ("BatchNorm2d", (1, 3, 1, 1), {}), ("BatchNorm1d", (2, 4), {}),
    ]
    for cls, shape, kw in cases:
        _errors_match(lambda: getattr(torch.nn, cls)(3, **kw)(torch.zeros(shape)),
                      lambda: getattr(tnn, cls)(3, **kw)(tn.zeros(shape)))
    # batch size 1 is fine in eval mode and with more than one value per channel
    tnn.BatchNorm1d(3).eval()(tn.zeros(1, 3))
    tnn.BatchNorm1d(3)(tn.zeros(1, 3, 2))
    _errors_match(lambda: torch.nn.BatchNorm1d(3)(torch.zeros(2, 3, dtype=torch.float64)),
                  lambda: tnn.BatchNorm1d(3)(tn.zeros(2, 3, dtype=tn.float64)))


def test_functional_batch_norm_errors_match_torch():
    def both(x_shape, x_dtype="float32", rm=None, rv=None, w=None, b=None, **kw):
        def make(lib):
            def t(spec):
                if spec is None:
                    return None
                n, dt, *grad = spec
                return lib.ones(n, dtype=getattr(lib, dt), requires_grad=bool(grad))
            x = lib.ones(x_shape, dtype=getattr(lib, x_dtype))
            return lambda: lib.nn.functional.batch_norm(x, t(rm), t(rv), t(w), t(b), **kw)
        _errors_match(make(torch), make(tn))

    f, d = "float32", "float64"
    both((1, 3), training=True)
    both((2, 3), rm=(3, f), training=True)
    both((2, 3), training=False)
    both((2, 3), rm=(4, f), rv=(3, f), training=True)
    both((2, 3), rm=(3, f), rv=(4, f), w=(4, f), training=False)
    both((2, 3), rm=(3, f), rv=(3, f), w=(3, f), b=(2, f), training=False)
    both((2, 3), "int64", rm=(3, "int64"), rv=(3, "int64"), training=False)
    both((2, 3), b=(3, d), training=True)
    both((2, 3), w=(3, f), rm=(3, d), rv=(3, d), training=True)
    both((2, 3), d, w=(3, f), training=True)
    both((2, 3), d, w=(3, d), b=(3, d), rm=(3, f), rv=(3, f), training=True)
    both((2, 3), rm=(3, f, True), rv=(3, f), training=False)
    both((2, 3), training=True, eps=-1.0)
    both((2, 3), rm=(3, f), rv=(3, f), training=False, eps=-1.0)
    both((2, 3), training=True, momentum=None)
    both((3,), rm=(3, f), rv=(3, f), training=False)
    both((3,), training=True)
    both((3,), w=(3, f), training=True)
    both((), training=True)


# --- pooling: eager against torch ------------------------------------------------------------


POOL_CONFIGS = [
    ("MaxPool2d", (3,), dict(stride=2, padding=1, return_indices=True), (2, 3, 9, 8)),
    ("MaxPool2d", ((3, 2),), dict(stride=(2, 1), padding=(1, 1), dilation=(2, 1),
                                  ceil_mode=True, return_indices=True), (2, 2, 10, 7)),
    ("MaxPool2d", (2,), dict(ceil_mode=True), (3, 9, 9)),
    ("MaxPool1d", (3,), dict(stride=2, padding=1, ceil_mode=True, return_indices=True),
     (2, 3, 10)),
    ("AvgPool2d", (3,), dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     (2, 3, 10, 9)),
    ("AvgPool2d", ((3, 2),), dict(stride=(1, 2), padding=(1, 0), divisor_override=5),
     (2, 3, 7, 7)),
    ("AvgPool2d", (2,), dict(ceil_mode=True), (3, 7, 7)),
    ("AvgPool1d", (4,), dict(stride=3, padding=2, ceil_mode=True, count_include_pad=False),
     (2, 3, 11)),
    ("AvgPool1d", (2,), {}, (3, 8)),
    ("AdaptiveAvgPool2d", ((3, None),), {}, (2, 3, 7, 5)),
    ("AdaptiveAvgPool2d", (4,), {}, (2, 3, 7, 5)),
    ("AdaptiveAvgPool2d", (1,), {}, (2, 3, 7, 5)),
    ("AdaptiveAvgPool2d", ((5, 2),), {}, (3, 4, 6)),
    ("AdaptiveAvgPool1d", (3,), {}, (2, 3, 7)),
    ("AdaptiveAvgPool3d", ((2, None, 3),), {}, (2, 2, 5, 3, 4)),
]


@pytest.mark.parametrize("cls,args,kw,shape", POOL_CONFIGS,
                         ids=[f"{c}-{i}" for i, (c, *_) in enumerate(POOL_CONFIGS)])
def test_pooling_modules_match_torch(cls, args, kw, shape):
    ref, ours = getattr(torch.nn, cls)(*args, **kw), getattr(tnn, cls)(*args, **kw)
    assert repr(ours) == repr(ref)
    xt, xm = _pair(shape, 3)
    yt, ym = ref(xt), ours(xm)
    if kw.get("return_indices"):
        (yt, it), (ym, im) = yt, ym
        np.testing.assert_array_equal(im.numpy(), it.numpy())
        assert im.dtype is tn.int64
    _close(ym, yt)
    assert ym.grad_fn.name() == yt.grad_fn.name()
    g = np.random.default_rng(4).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(g))
    ym.backward(tn.tensor(g))
    _close(xm.grad, xt.grad)


@pytest.mark.parametrize("n,shape,kw", [
    (2, (2, 3, 8, 6), dict(kernel_size=2)),
    (2, (2, 3, 9, 7), dict(kernel_size=3, stride=2, padding=1)),
    (2, (3, 8, 6), dict(kernel_size=(2, 3), stride=(2, 1), output_size=(9, 6))),
    (1, (2, 3, 9), dict(kernel_size=3, stride=2, padding=1, output_size=[10])),
    (1, (3, 8), dict(kernel_size=2)),
    (3, (1, 2, 4, 6, 4), dict(kernel_size=2, output_size=(1, 2, 5, 7, 4))),
])
def test_max_unpool_matches_torch(n, shape, kw):
    pool_kw = {k: v for k, v in kw.items() if k != "output_size"}
    xt, xm = _pair(shape, 2, grad=False)
    pt, it = getattr(torch.nn.functional, f"max_pool{n}d")(xt, return_indices=True, **pool_kw)
    pm, im = getattr(TF, f"max_pool{n}d")(xm, return_indices=True, **pool_kw)
    pt.requires_grad_()
    pm.requires_grad_()
    ref = getattr(torch.nn, f"MaxUnpool{n}d")(**pool_kw)
    ours = getattr(tnn, f"MaxUnpool{n}d")(**pool_kw)
    assert repr(ours) == repr(ref)
    yt = ref(pt, it, output_size=kw.get("output_size"))
    ym = ours(pm, im, output_size=kw.get("output_size"))
    _close(ym, yt)
    assert ym.grad_fn.name() == yt.grad_fn.name()
    g = np.random.default_rng(4).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(g))
    ym.backward(tn.tensor(g))
    _close(pm.grad, pt.grad)
    # the functional form
    fn_t = getattr(torch.nn.functional, f"max_unpool{n}d")
    fn_m = getattr(TF, f"max_unpool{n}d")
    _close(fn_m(pm, im, **pool_kw), fn_t(pt, it, **pool_kw))


def test_max_unpool_errors_match_torch():
    def both(fn, x_shape, i_shape=None, i_dtype="int64", x_dtype="float32", shift=0, **kw):
        def make(lib):
            x = lib.ones(x_shape, dtype=getattr(lib, x_dtype))
            i = (lib.zeros(i_shape or x_shape, dtype=getattr(lib, i_dtype)) + shift)
            return lambda: getattr(lib.nn.functional, fn)(x, i, **kw)
        _errors_match(make(torch), make(tn))

    both("max_unpool2d", (1, 2, 2, 2), kernel_size=2, output_size=(6, 6))
    both("max_unpool2d", (1, 2, 2, 2), kernel_size=2, output_size=(5,))
    both("max_unpool2d", (1, 2, 2, 2), kernel_size=2, shift=16)
    both("max_unpool2d", (1, 2, 2, 2), kernel_size=2, shift=-3)
    both("max_unpool2d", (2, 2), kernel_size=2)
    both("max_unpool2d", (1, 2, 2, 2), (1, 1, 2, 2), kernel_size=2)
    both("max_unpool2d", (1, 2, 2, 2), i_dtype="float32", kernel_size=2)
    both("max_unpool2d", (1, 2, 2, 2), x_dtype="int64", kernel_size=2)
    both("max_unpool2d", (2, 0, 2, 2), kernel_size=2)
    both("max_unpool1d", (1, 2, 3), kernel_size=2, shift=20)
    both("max_unpool1d", (1, 2, 3), kernel_size=2, output_size=(9,))
    both("max_unpool3d", (1, 2, 2, 2, 2), kernel_size=2, shift=290)
    both("max_unpool3d", (2, 2, 2), kernel_size=2)
    both("max_unpool3d", (1, 2, 2, 2, 2), i_dtype="float32", kernel_size=2)
    both("max_unpool3d", (1, 2, 2, 2, 2), kernel_size=2, stride=0)


def test_adaptive_avg_pool_errors_match_torch():
    def both(fn, shape, size, dtype="float32"):
        _errors_match(
            lambda: getattr(torch.nn.functional, fn)(torch.ones(shape,
                                                                dtype=getattr(torch, dtype)),
                                                     size),
            lambda: getattr(TF, fn)(tn.ones(shape, dtype=getattr(tn, dtype)), size))

    for size in (None, 2.5, (2,), (2, 3, 4), -1, (2, -1), (None, -1), (2.5, 2), "ab", []):
        both("adaptive_avg_pool2d", (2, 3, 7, 5), size)
    both("adaptive_avg_pool2d", (7, 5), 3)
    both("adaptive_avg_pool2d", (2, 3, 0, 5), 3)
    both("adaptive_avg_pool2d", (2, 3, 7, 5), 3, "int64")
    both("adaptive_avg_pool2d", (4,), (1, 1))
    both("adaptive_avg_pool1d", (2, 3, 7), (3, 2))
    both("adaptive_avg_pool1d", (2, 3, 7), None)
    both("adaptive_avg_pool1d", (2, 3, 7), -1)
    both("adaptive_avg_pool1d", (7,), 2)
    both("adaptive_avg_pool1d", (2, 3, 0), 2)
    both("adaptive_avg_pool3d", (2, 3, 4, 5, 6), (2, 1))
    both("adaptive_avg_pool3d", (4, 5, 6), 2)
    both("adaptive_avg_pool3d", (2, 3, 4, 5, 6), -1)
    both("adaptive_avg_pool3d", (2, 3, 4, 5, 6), 2, "int64")
    both("adaptive_avg_pool3d", (2, 3, 0, 5, 6), 2)


def test_adaptive_avg_pool_functional_and_global_average():
    xt, xm = _pair((2, 3, 7, 5), 0)
    for size in (1, (1, 1), (None, 1), [2, 3], (7, 5), (10, 11)):
        yt = torch.nn.functional.adaptive_avg_pool2d(xt, size)
        ym = TF.adaptive_avg_pool2d(xm, size)
        _close(ym, yt)
        assert ym.grad_fn.name() == yt.grad_fn.name()
    _close(TF.adaptive_avg_pool2d(xm, 0), torch.nn.functional.adaptive_avg_pool2d(xt, 0))


def test_unbatched_pooling_grad_fn_names_match_torch():
    xt, xm = _pair((3, 6, 6), 0)
    for fn, kw in (("max_pool2d", dict(kernel_size=2)), ("avg_pool2d", dict(kernel_size=2)),
                   ("adaptive_avg_pool2d", dict(output_size=4))):
        yt = getattr(torch.nn.functional, fn)(xt, **kw)
        ym = getattr(TF, fn)(xm, **kw)
        assert ym.grad_fn.name() == yt.grad_fn.name()
        _close(ym, yt)


# --- under tracenet.compile -------------------------------------------------------------------


def _check_compiled(model, shape, train=True, steps=2, input_grad=True):
    """Compiled forward, gradients (parameters and input) and buffer updates against eager."""
    eager = copy.deepcopy(model)
    model.train(train)
    eager.train(train)
    compiled = tn.compile(model)
    for _ in range(steps):
        x = tn.randn(*shape)
        xe, xc = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)
        ref, out = eager(xe), compiled(xc)
        _close(out, ref)
        for (k, v), (_, w) in zip(model.state_dict().items(), eager.state_dict().items()):
            np.testing.assert_allclose(v.numpy(), w.numpy(), err_msg=k, **TOL)
        gy = tn.randn(*ref.shape)
        eager.zero_grad()
        model.zero_grad()
        ref.backward(gy)
        out.backward(gy)
        if input_grad:
            _close(xc.grad, xe.grad)
        for (n, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), err_msg=n, **TOL)
    return compiled


class _Scale(tnn.Module):
    """A learnable per-channel scale, so pooling gets a parameter gradient to check."""

    def __init__(self, c, nd):
        super().__init__()
        self.w = tnn.Parameter(tn.rand((1, c) + (1,) * nd) + 0.5)

    def forward(self, x):
        return x * self.w


BN_COMPILED = [
    (lambda: tnn.BatchNorm1d(3), (5, 3)),
    (lambda: tnn.BatchNorm1d(3, momentum=None, bias=False), (4, 3, 5)),
    (lambda: tnn.BatchNorm2d(3, affine=False, eps=1e-3), (3, 3, 4, 2)),
    (lambda: tnn.BatchNorm2d(3, track_running_stats=False), (3, 3, 4, 2)),
    (lambda: tnn.BatchNorm3d(2, momentum=0.5), (2, 2, 3, 2, 2)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,shape", BN_COMPILED, ids=[f"bn{i}" for i in range(5)])
def test_batch_norm_compiled_matches_eager(make, shape, train):
    tn.manual_seed(1)
    model = make()
    if model.weight is not None:
        with tn.no_grad():
            model.weight.uniform_(0.5, 1.5)
            if model.bias is not None:
                model.bias.uniform_(-1, 1)
    if model.running_mean is not None:
        with tn.no_grad():
            model.running_mean.uniform_(-1, 1)
            model.running_var.uniform_(0.5, 2)
    compiled = _check_compiled(model, shape, train)
    if train and model.track_running_stats:
        assert model.num_batches_tracked.item() == 2
        assert model.running_mean.grad_fn is None and not model.running_mean.requires_grad


POOL_COMPILED = [
    (lambda: tnn.AvgPool2d(2), (2, 3, 8, 8)),
    (lambda: tnn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
     (2, 3, 10, 9)),
    (lambda: tnn.AvgPool2d((3, 2), (2, 1), padding=(1, 1), ceil_mode=True,
                           divisor_override=4), (2, 3, 9, 7)),
    (lambda: tnn.AvgPool1d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
     (2, 3, 10)),
    (lambda: tnn.MaxPool1d(3, 2, padding=1, dilation=2, ceil_mode=True), (2, 3, 11)),
    (lambda: tnn.MaxPool2d((3, 2), (2, 1), padding=1, dilation=(1, 2), ceil_mode=True),
     (2, 3, 9, 8)),
    # windows entirely in the padding: -inf, and no gradient
    (lambda: tnn.MaxPool2d(2, stride=1, padding=1, dilation=3), (2, 3, 2, 5)),
    (lambda: tnn.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5)),
    (lambda: tnn.AdaptiveAvgPool2d(4), (2, 3, 7, 5)),
    (lambda: tnn.AdaptiveAvgPool2d(1), (2, 3, 7, 5)),
    (lambda: tnn.AdaptiveAvgPool1d(3), (2, 3, 7)),
    (lambda: tnn.AvgPool3d(2, padding=1, count_include_pad=False), (2, 3, 4, 5, 3)),
    (lambda: tnn.MaxPool3d(2, stride=1, padding=1), (2, 3, 4, 5, 3)),
    (lambda: tnn.AdaptiveAvgPool3d((2, 3, None)), (2, 3, 4, 5, 3)),
]


@pytest.mark.parametrize("make,shape", POOL_COMPILED, ids=[f"pool{i}"
                                                          for i in range(len(POOL_COMPILED))])
def test_pooling_compiled_matches_eager(make, shape):
    tn.manual_seed(2)
    model = tnn.Sequential(_Scale(shape[1], len(shape) - 2), make())
    _check_compiled(model, shape)


class _Unpool(tnn.Module):
    def __init__(self, output_size=None):
        super().__init__()
        self.scale = _Scale(3, 2)
        self.pool = tnn.MaxPool2d(2, return_indices=True)
        self.unpool = tnn.MaxUnpool2d(2)
        self.output_size = output_size

    def forward(self, x):
        y, i = self.pool(self.scale(x))
        return self.unpool(y.tanh(), i, output_size=self.output_size)


@pytest.mark.parametrize("output_size,shape", [(None, (2, 3, 8, 6)), ((9, 7), (2, 3, 9, 7))])
def test_max_unpool_compiled_matches_eager(output_size, shape):
    tn.manual_seed(3)
    _check_compiled(_Unpool(output_size), shape)


def test_compiled_kernels_are_the_catalogue_lowerings():
    model = tnn.Sequential(_Scale(3, 2), tnn.BatchNorm2d(3), tnn.AvgPool2d(2),
                           tnn.AdaptiveAvgPool2d(3))
    compiled = tn.compile(model)
    compiled(tn.randn(2, 3, 8, 8)).sum().backward()
    spec = next(iter(compiled.specialisations.values()))
    src = spec.source_code
    for op in ("batch_norm_stats", "batch_norm", "batch_norm_backward", "avg_pool",
               "avg_pool_backward", "adaptive_avg_pool", "adaptive_avg_pool_backward"):
        assert f"_{op}(" in src, op


class _Net(tnn.Module):
    """Conv -> BatchNorm -> ReLU -> Dropout -> AvgPool -> Linear."""

    def __init__(self, p):
        super().__init__()
        self.conv = tnn.Conv2d(2, 4, 3, padding=1)
        self.bn = tnn.BatchNorm2d(4)
        self.drop = tnn.Dropout(p)
        self.pool = tnn.AvgPool2d(2)
        self.fc = tnn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.pool(self.drop(TF.relu(self.bn(self.conv(x)))))
        return self.fc(x.flatten(1))


def test_conv_batchnorm_net_trains_like_eager_for_50_steps():
    tn.manual_seed(7)
    eager = _Net(0.0)
    model = copy.deepcopy(eager)
    compiled = tn.compile(model)
    opt_e = toptim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_c = toptim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    crit = tnn.CrossEntropyLoss()
    x, y = tn.randn(8, 2, 8, 8), tn.randint(0, 3, (8,))
    losses = []
    for _ in range(50):
        step = []
        for net, opt in ((eager, opt_e), (compiled, opt_c)):
            opt.zero_grad()
            loss = crit(net(x), y)
            loss.backward()
            opt.step()
            step.append(loss.item())
        losses.append(step)
    losses = np.array(losses)
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=1e-3)
    assert losses[-1, 0] < losses[0, 0] * 0.5  # it does learn
    for (k, v), (_, w) in zip(model.state_dict().items(), eager.state_dict().items()):
        np.testing.assert_allclose(v.numpy(), w.numpy(), rtol=1e-3, atol=1e-4, err_msg=k)
    # evaluation uses the running statistics, compiled as its own specialisation
    eager.eval()
    compiled.eval()
    with tn.no_grad():
        _close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)
