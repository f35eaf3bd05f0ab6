"""LayerNorm, GroupNorm, InstanceNorm1d/2d/3d and their functional forms (plus F.normalize)
against torch 2.13 in eager mode (values, gradients of input, weight and bias, reprs, errors,
instance-norm running statistics), and under tracenet.compile / compile_step against eager."""
import copy
import warnings

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as TF
import tracenet.optim as toptim

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOLS = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "tracenet-cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))


def _arr(shape, seed, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _np(t):
    return t.detach().numpy()


def _check_module(ours, theirs, shape, dtype, seed=0):
    """Same parameters; forward and gradients of input and parameters against torch."""
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    for i, p in enumerate(theirs.parameters()):  # non-trivial affine parameters
        with torch.no_grad():
            p.copy_(torch.tensor(_arr(tuple(p.shape), seed + 7 + i, dtype)))
    if dtype == np.float64:
        ours = ours.double()
    ours.load_state_dict({k: tn.tensor(v.detach().numpy().copy())
                          for k, v in theirs.state_dict().items()})
    a = _arr(shape, seed, dtype) * 2 + 0.5
    xt, xm = torch.tensor(a, requires_grad=True), tn.tensor(a, requires_grad=True)
    yt, ym = theirs(xt), ours(xm)
    tol = TOLS[dtype]
    np.testing.assert_allclose(_np(ym), _np(yt), **tol)
    assert ym.dtype.name == str(yt.dtype).split(".")[-1]
    g = _arr(tuple(yt.shape), seed + 1, dtype)
    yt.backward(torch.tensor(g))
    ym.backward(tn.tensor(g))
    np.testing.assert_allclose(_np(xm.grad), _np(xt.grad), **tol)
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(_np(p.grad), _np(q.grad), err_msg=n, **tol)
    return ym, yt


DTYPES = [np.float32, np.float64]


# --- LayerNorm ------------------------------------------------------------------------------------

LAYER_CASES = [
    (5, {}, (3, 5)),
    (5, {}, (2, 3, 5)),
    ((4, 5), {"eps": 1e-3}, (2, 3, 4, 5)),
    ([3, 4, 5], {}, (2, 3, 4, 5)),
    (6, {"elementwise_affine": False}, (4, 6)),
    (6, {"bias": False}, (2, 2, 6)),
    ((2, 3), {"eps": 0.1, "bias": False}, (2, 3)),
    (7, {}, (7,)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_arg,kw,shape", LAYER_CASES)
def test_layer_norm_module_matches_torch(shape_arg, kw, shape, dtype):
    ym, yt = _check_module(tnn.LayerNorm(shape_arg, **kw), torch.nn.LayerNorm(shape_arg, **kw),
                           shape, dtype)
    assert type(ym.grad_fn).__name__ == type(yt.grad_fn).__name__ == "NativeLayerNormBackward0"


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_layer_norm_matches_torch(dtype):
    a, w, b = _arr((3, 4, 5), 1, dtype), _arr((4, 5), 2, dtype), _arr((4, 5), 3, dtype)
    ts = [torch.tensor(v, requires_grad=True) for v in (a, w, b)]
    ms = [tn.tensor(v, requires_grad=True) for v in (a, w, b)]
    for args_t, args_m in (((ts[1], ts[2]), (ms[1], ms[2])), ((ts[1], None), (ms[1], None)),
                           ((None, ts[2]), (None, ms[2])), ((None, None), (None, None))):
        yt = F.layer_norm(ts[0], (4, 5), *args_t, eps=1e-4)
        ym = TF.layer_norm(ms[0], [4, 5], *args_m, eps=1e-4)
        np.testing.assert_allclose(_np(ym), _np(yt), **TOLS[dtype])
        (yt * yt).sum().backward()
        (ym * ym).sum().backward()
    for p, q in zip(ms, ts):
        np.testing.assert_allclose(_np(p.grad), _np(q.grad), **TOLS[dtype])


@pytest.mark.parametrize("call", [
    lambda f, m, x: f.layer_norm(x, (4,)),
    lambda f, m, x: f.layer_norm(x, ()),
    lambda f, m, x: f.layer_norm(x, (2, 4, 5, 1)),
    lambda f, m, x: f.layer_norm(x, 5),
    lambda f, m, x: f.layer_norm(x, [5.0]),
    lambda f, m, x: f.layer_norm(x, (5,), weight=m.ones(4)),
    lambda f, m, x: f.layer_norm(x, (5,), weight=m.ones(1, 5)),
    lambda f, m, x: f.layer_norm(x, (5,), bias=m.ones(4)),
    lambda f, m, x: f.layer_norm(x.long(), (5,)),
    lambda f, m, x: f.layer_norm(x, (5,), weight=m.ones(5).double()),
    lambda f, m, x: m.nn.LayerNorm(4)(x),
])
def test_layer_norm_errors_match_torch(call):
    _same_error(call)


def _same_error(call, shape=(2, 4, 5)):
    a = _arr(shape, 0, np.float32)
    with pytest.raises(Exception) as theirs:
        call(F, torch, torch.tensor(a))
    with pytest.raises(type(theirs.value)) as ours:
        call(TF, tn, tn.tensor(a))
    assert str(ours.value) == str(theirs.value)


# --- GroupNorm ------------------------------------------------------------------------------------

GROUP_CASES = [
    ((2, 4), {}, (3, 4, 5)),
    ((1, 6), {}, (2, 6, 3, 3)),
    ((3, 6), {"eps": 1e-3}, (2, 6, 2, 3)),
    ((4, 4), {"affine": False}, (2, 4, 2, 2, 2)),
    ((2, 4), {"bias": False}, (5, 4)),
    ((2, 6), {}, (1, 6, 4)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args,kw,shape", GROUP_CASES)
def test_group_norm_module_matches_torch(args, kw, shape, dtype):
    ym, yt = _check_module(tnn.GroupNorm(*args, **kw), torch.nn.GroupNorm(*args, **kw), shape,
                           dtype)
    assert type(ym.grad_fn).__name__ == type(yt.grad_fn).__name__ == "NativeGroupNormBackward0"


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_group_norm_matches_torch(dtype):
    a, w, b = _arr((2, 6, 3, 2), 1, dtype), _arr((6,), 2, dtype), _arr((6,), 3, dtype)
    ts = [torch.tensor(v, requires_grad=True) for v in (a, w, b)]
    ms = [tn.tensor(v, requires_grad=True) for v in (a, w, b)]
    for args_t, args_m in (((ts[1], ts[2]), (ms[1], ms[2])), ((ts[1], None), (ms[1], None)),
                           ((None, None), (None, None))):
        # (bias without weight is left out: torch's backward fails on it)
        yt = F.group_norm(ts[0], 3, *args_t, eps=1e-4)
        ym = TF.group_norm(ms[0], 3, *args_m, eps=1e-4)
        np.testing.assert_allclose(_np(ym), _np(yt), **TOLS[dtype])
        (yt * yt.detach().exp()).sum().backward()
        (ym * ym.detach().exp()).sum().backward()
    for p, q in zip(ms, ts):
        np.testing.assert_allclose(_np(p.grad), _np(q.grad), **TOLS[dtype])


@pytest.mark.parametrize("call", [
    lambda f, m, x: f.group_norm(x, 3),
    lambda f, m, x: f.group_norm(x, 2.0),
    lambda f, m, x: f.group_norm(x, -2),
    lambda f, m, x: f.group_norm(x[0, 0], 2),
    lambda f, m, x: f.group_norm(x[:1, :2, :1], 2),
    lambda f, m, x: f.group_norm(x, 2, weight=m.ones(2, 2)),
    lambda f, m, x: f.group_norm(x, 2, weight=m.ones(4), bias=m.ones(3)),
    lambda f, m, x: f.group_norm(x, 2, bias=m.ones(3)),
    lambda f, m, x: f.group_norm(x.long(), 2),
    lambda f, m, x: m.nn.GroupNorm(2, 6)(x),
    lambda f, m, x: m.nn.GroupNorm(3, 4),
])
def test_group_norm_errors_match_torch(call):
    _same_error(call)


# --- InstanceNorm ---------------------------------------------------------------------------------

INSTANCE_CASES = [
    ("InstanceNorm1d", (3,), {}, (2, 3, 5)),
    ("InstanceNorm1d", (3,), {"affine": True}, (2, 3, 5)),
    ("InstanceNorm1d", (3,), {"affine": True, "eps": 1e-3}, (3, 6)),  # unbatched
    ("InstanceNorm2d", (4,), {}, (2, 4, 3, 3)),
    ("InstanceNorm2d", (4,), {"affine": True, "bias": False}, (2, 4, 2, 3)),
    ("InstanceNorm2d", (4,), {"affine": True}, (4, 3, 2)),  # unbatched
    ("InstanceNorm3d", (2,), {"affine": True}, (2, 2, 2, 3, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,args,kw,shape", INSTANCE_CASES)
def test_instance_norm_module_matches_torch(cls, args, kw, shape, dtype):
    _check_module(getattr(tnn, cls)(*args, **kw), getattr(torch.nn, cls)(*args, **kw), shape,
                  dtype)


def test_instance_norm_defaults_and_reprs():
    for cls, kw in (("InstanceNorm1d", {}), ("InstanceNorm2d", {"affine": True}),
                    ("InstanceNorm2d", {"track_running_stats": True, "momentum": 0.3}),
                    ("InstanceNorm3d", {"eps": 1e-3, "affine": True, "bias": False})):
        ours, theirs = getattr(tnn, cls)(5, **kw), getattr(torch.nn, cls)(5, **kw)
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert [n for n, _ in ours.named_parameters()] == \
            [n for n, _ in theirs.named_parameters()]
    assert tnn.InstanceNorm1d(3).affine is False
    assert tnn.InstanceNorm1d(3).track_running_stats is False


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,shape,momentum", [("InstanceNorm1d", (4, 3, 6), 0.1),
                                                ("InstanceNorm2d", (2, 3, 4, 4), 0.3),
                                                ("InstanceNorm2d", (3, 4, 4), None)])
def test_instance_norm_running_stats_train_then_eval(cls, shape, momentum, dtype):
    kw = dict(affine=True, track_running_stats=True, momentum=momentum)
    ours, theirs = getattr(tnn, cls)(3, **kw), getattr(torch.nn, cls)(3, **kw)
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    if dtype == np.float64:
        ours = ours.double()
    ours.load_state_dict({k: tn.tensor(v.numpy().copy()) for k, v in theirs.state_dict().items()})
    tol = TOLS[dtype]
    for step in range(3):
        a = _arr(shape, step, dtype) * 3 + 1
        np.testing.assert_allclose(_np(ours(tn.tensor(a))), _np(theirs(torch.tensor(a))), **tol)
        for k, v in theirs.state_dict().items():
            np.testing.assert_allclose(ours.state_dict()[k].numpy(), v.numpy(), err_msg=k, **tol)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 0
    ours.eval()
    theirs.eval()
    a = _arr(shape, 9, dtype)
    xt, xm = torch.tensor(a, requires_grad=True), tn.tensor(a, requires_grad=True)
    yt, ym = theirs(xt), ours(xm)
    np.testing.assert_allclose(_np(ym), _np(yt), **tol)
    yt.sum().backward()
    ym.sum().backward()
    np.testing.assert_allclose(_np(xm.grad), _np(xt.grad), **tol)
    before = {k: v.numpy().copy() for k, v in ours.state_dict().items()}
    ours(tn.tensor(a))
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_instance_norm_matches_torch(dtype):
    a, w, b = _arr((2, 3, 4), 1, dtype), _arr((3,), 2, dtype), _arr((3,), 3, dtype)
    rm, rv = _arr((3,), 4, dtype), np.abs(_arr((3,), 5, dtype)) + 0.5
    ts = [torch.tensor(v, requires_grad=True) for v in (a, w, b)]
    ms = [tn.tensor(v, requires_grad=True) for v in (a, w, b)]
    rt, rmm = [torch.tensor(v.copy()) for v in (rm, rv)], [tn.tensor(v.copy()) for v in (rm, rv)]
    tol = TOLS[dtype]
    for use_stats in (True, False):
        yt = F.instance_norm(ts[0], *rt, ts[1], ts[2], use_input_stats=use_stats, momentum=0.2,
                             eps=1e-3)
        ym = TF.instance_norm(ms[0], *rmm, ms[1], ms[2], use_input_stats=use_stats,
                              momentum=0.2, eps=1e-3)
        np.testing.assert_allclose(_np(ym), _np(yt), **tol)
        assert type(ym.grad_fn).__name__ == type(yt.grad_fn).__name__
        (yt * yt).sum().backward()
        (ym * ym).sum().backward()
        for p, q in zip(rmm, rt):
            np.testing.assert_allclose(p.numpy(), q.numpy(), **tol)
    np.testing.assert_allclose(_np(TF.instance_norm(ms[0])), _np(F.instance_norm(ts[0])), **tol)
    for p, q in zip(ms, ts):
        np.testing.assert_allclose(_np(p.grad), _np(q.grad), **tol)


@pytest.mark.parametrize("call", [
    lambda f, m, x: f.instance_norm(x[:, :, :1]),
    lambda f, m, x: f.instance_norm(x[0]),
    lambda f, m, x: f.instance_norm(x, m.zeros(3), m.ones(3)),
    lambda f, m, x: f.instance_norm(x, weight=m.ones(3)),
    lambda f, m, x: f.instance_norm(x, use_input_stats=False),
    lambda f, m, x: f.instance_norm(x, m.zeros(4), None),
    lambda f, m, x: m.nn.InstanceNorm1d(4)(x.unsqueeze(0)),
    lambda f, m, x: m.nn.InstanceNorm2d(4)(x[0]),
    lambda f, m, x: m.nn.InstanceNorm1d(3, affine=True)(x),
])
def test_instance_norm_errors_match_torch(call):
    _same_error(call)


def test_instance_norm_num_features_mismatch_warns_without_affine():
    a = _arr((2, 3, 5), 0, np.float32)
    with pytest.warns(UserWarning, match="does not match num_features"):
        y = tnn.InstanceNorm1d(4)(tn.tensor(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(_np(y), _np(torch.nn.InstanceNorm1d(4)(torch.tensor(a))),
                                   **TOLS[np.float32])


# --- reprs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda nn: nn.LayerNorm(5),
    lambda nn: nn.LayerNorm([4, 5], eps=1e-3, elementwise_affine=False),
    lambda nn: nn.LayerNorm((5,), bias=False),
    lambda nn: nn.GroupNorm(2, 4),
    lambda nn: nn.GroupNorm(2, 4, eps=1e-3, affine=False),
    lambda nn: nn.GroupNorm(1, 3, bias=False),
    lambda nn: nn.InstanceNorm2d(4, affine=True, track_running_stats=True, momentum=0.2),
])
def test_reprs_and_state_dicts_match_torch(make):
    ours, theirs = make(tnn), make(torch.nn)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[k].numpy(), v.numpy())
    if hasattr(theirs, "normalized_shape"):
        assert ours.normalized_shape == theirs.normalized_shape


# --- F.normalize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw,shape", [({}, (3, 4)), ({}, (2, 3, 4)), ({"p": 1, "dim": -1}, (2, 5)),
                                      ({"p": 3.0, "dim": (0, 2)}, (2, 3, 4)),
                                      ({"p": float("inf"), "dim": 0}, (3, 4)),
                                      ({"eps": 0.5}, (3, 2)), ({"dim": 0}, (5,))])
def test_normalize_matches_torch(kw, shape, dtype):
    a = _arr(shape, 3, dtype)
    if len(shape) > 1:
        a[0] = 0.0  # a zero row: clamped to eps, with the norm's gradient at zero
    xt, xm = torch.tensor(a, requires_grad=True), tn.tensor(a, requires_grad=True)
    yt, ym = F.normalize(xt, **kw), TF.normalize(xm, **kw)
    np.testing.assert_allclose(_np(ym), _np(yt), **TOLS[dtype])
    assert type(ym.grad_fn).__name__ == type(yt.grad_fn).__name__ == "DivBackward0"
    g = _arr(shape, 4, dtype)
    yt.backward(torch.tensor(g))
    ym.backward(tn.tensor(g))
    np.testing.assert_allclose(_np(xm.grad), _np(xt.grad), **TOLS[dtype])


def test_normalize_bad_dim_matches_torch():
    _same_error(lambda f, m, x: f.normalize(x, dim=3))


# --- under tracenet.compile -----------------------------------------------------------------------


class _Net(tnn.Module):
    def __init__(self, norm, c=4):
        super().__init__()
        self.conv = tnn.Conv1d(2, c, 3, padding=1)
        self.norm = norm

    def forward(self, x):
        return self.norm(self.conv(x)).tanh()


class _Normalize(tnn.Module):
    def __init__(self):
        super().__init__()
        self.fc = tnn.Linear(6, 5)

    def forward(self, x):
        return TF.normalize(self.fc(x.flatten(1)), dim=-1) + TF.normalize(x, p=1, dim=1).sum()


COMPILED = {
    "layer_norm": lambda: _Net(tnn.LayerNorm(3)),
    "layer_norm_2d_no_bias": lambda: _Net(tnn.LayerNorm((4, 3), bias=False)),
    "layer_norm_plain": lambda: _Net(tnn.LayerNorm(3, elementwise_affine=False)),
    "group_norm": lambda: _Net(tnn.GroupNorm(2, 4)),
    "group_norm_plain": lambda: _Net(tnn.GroupNorm(4, 4, affine=False)),
    "instance_norm": lambda: _Net(tnn.InstanceNorm1d(4)),
    "instance_norm_affine_tracked": lambda: _Net(tnn.InstanceNorm1d(4, affine=True,
                                                                    track_running_stats=True)),
    "normalize": _Normalize,
}


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_forward_backward_matches_eager(name, train):
    tn.manual_seed(3)
    model = COMPILED[name]()
    for p in model.parameters():  # non-trivial affine parameters
        with tn.no_grad():
            p.add_(tn.randn(*p.shape) * 0.3)
    eager = copy.deepcopy(model)
    model.train(train)
    eager.train(train)
    compiled = tn.compile(model)
    tol = dict(rtol=1e-5, atol=1e-5)
    for _ in range(2):
        x = tn.randn(3, 2, 3)
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ref, out = eager(xe), compiled(xc)
        np.testing.assert_allclose(_np(out), _np(ref), **tol)
        for (k, v), (_, w) in zip(model.state_dict().items(), eager.state_dict().items()):
            np.testing.assert_allclose(v.numpy(), w.numpy(), err_msg=k, **tol)
        gy = tn.randn(*ref.shape)
        model.zero_grad()
        eager.zero_grad()
        ref.backward(gy)
        out.backward(gy)
        np.testing.assert_allclose(_np(xc.grad), _np(xe.grad), **tol)
        for (n, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
            np.testing.assert_allclose(_np(p.grad), _np(q.grad), err_msg=n, **tol)
    # (an op without a C lowering would have raised LoweringError: there is no eager fallback)
    assert next(iter(compiled.specialisations.values())).backward_graph is not None


def test_compile_step_with_layer_norm_matches_the_eager_loop():
    def make():
        tn.manual_seed(11)
        return tnn.Sequential(tnn.Linear(6, 8), tnn.LayerNorm(8), tnn.ReLU(), tnn.Linear(8, 4),
                              tnn.LayerNorm(4, bias=False))
    net, ref = make(), make()
    x, y = tn.randn(5, 6), tn.randn(5, 4)
    loss_fn = tnn.MSELoss()
    opt = toptim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ref_opt = toptim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    step = tn.compile_step(lambda a, b: loss_fn(net(a), b), opt)
    for _ in range(5):
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = loss_fn(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for p, q in zip(net.parameters(), ref.parameters()):
        np.testing.assert_allclose(_np(p), _np(q), rtol=1e-4, atol=1e-6)
    # the LayerNorm weights moved
    assert not np.allclose(_np(net[1].weight), 1.0)
