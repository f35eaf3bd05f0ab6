"""SELU, CELU, Softsign, Tanhshrink, Softmin, LogSigmoid, GLU, PReLU, Hardtanh and ReLU6 against
PyTorch: values and gradients (including the kinks), grad_fn names, in-place forms, reprs,
errors and double backward; compiled forward, backward and training step against eager, with
the elementwise ones fused into the GEMM before them."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as TF

torch = pytest.importorskip("torch")
TTF = torch.nn.functional


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tn-cache"))


def _points(dtype):
    # the kinks of every function here (0, +-1, 6, -2, 3, celu's 0), large magnitudes
    x = np.concatenate([np.linspace(-8, 8, 161),
                        [0.0, -1.0, 1.0, 6.0, -2.0, 3.0, -30.0, 25.0, 90.0, -90.0, 1e-30, -1e-30]])
    return x.astype(dtype)


# name -> (tracenet function, torch function); every one takes the input tensor only
UNARY = {
    "selu": (TF.selu, TTF.selu),
    "celu": (TF.celu, TTF.celu),
    "celu_half": (lambda x: TF.celu(x, 0.5), lambda x: TTF.celu(x, 0.5)),
    "softsign": (TF.softsign, TTF.softsign),
    "tanhshrink": (TF.tanhshrink, TTF.tanhshrink),
    "logsigmoid": (TF.logsigmoid, TTF.logsigmoid),
    "hardtanh": (TF.hardtanh, TTF.hardtanh),
    "hardtanh_bounds": (lambda x: TF.hardtanh(x, -2, 3), lambda x: TTF.hardtanh(x, -2, 3)),
    "relu6": (TF.relu6, TTF.relu6),
    "softmin": (lambda x: TF.softmin(x.reshape(-1, 1)[:172].reshape(43, 4), dim=1),
                lambda x: TTF.softmin(x.reshape(-1, 1)[:172].reshape(43, 4), dim=1)),
    "glu": (lambda x: TF.glu(x[:172].reshape(43, 4)), lambda x: TTF.glu(x[:172].reshape(43, 4))),
    "glu_dim0": (lambda x: TF.glu(x[:172].reshape(4, 43), 0),
                 lambda x: TTF.glu(x[:172].reshape(4, 43), 0)),
}


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def _compare(fn_ours, fn_theirs, arrays, dtype, seed=1):
    ours = [tn.from_numpy(a.copy()).requires_grad_() for a in arrays]
    theirs = [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]
    y, yt = fn_ours(*ours), fn_theirs(*theirs)
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), **_tol(dtype))
    assert y.dtype.name == str(yt.dtype).split(".")[1]
    assert type(y.grad_fn).__name__ == type(yt.grad_fn).__name__
    g = np.random.default_rng(seed).standard_normal(tuple(yt.shape)).astype(dtype)
    y.backward(tn.from_numpy(g))
    yt.backward(torch.from_numpy(g))
    gtol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else _tol(dtype)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **gtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_values_and_gradients_match_torch(name, dtype):
    ours, theirs = UNARY[name]
    _compare(ours, theirs, [_points(dtype)], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prelu_values_and_gradients_match_torch(dtype):
    x = _points(dtype)[:172]
    # one shared weight, over 1-d, 2-d and 4-d inputs; one weight per channel
    for shape in [(172,), (43, 4), (2, 2, 43)]:
        _compare(TF.prelu, TTF.prelu, [x.reshape(shape), np.array([0.25], dtype)], dtype)
    _compare(TF.prelu, TTF.prelu, [x.reshape(43, 4), np.array([0.3, -0.2, 1.5, 0.0], dtype)],
             dtype)
    _compare(TF.prelu, TTF.prelu, [x[:168].reshape(2, 4, 21, 1),
                                   np.array([0.3, -0.2, 1.5, 0.0], dtype)], dtype)
    _compare(TF.prelu, TTF.prelu, [np.array(-1.5, dtype), np.array([0.25], dtype)], dtype)


MODULES = [
    ("SELU", (), {}), ("SELU", (), {"inplace": True}),
    ("CELU", (), {}), ("CELU", (0.5,), {"inplace": True}),
    ("Softsign", (), {}), ("Tanhshrink", (), {}),
    ("Softmin", (), {"dim": 1}), ("Softmin", (), {}),
    ("LogSigmoid", (), {}),
    ("GLU", (), {}), ("GLU", (1,), {}),
    ("PReLU", (), {}), ("PReLU", (3, 0.1), {}),
    ("Hardtanh", (), {}), ("Hardtanh", (-2, 3, True), {}), ("Hardtanh", (-0.5,), {"max_val": 2.}),
    ("ReLU6", (), {}), ("ReLU6", (True,), {}),
]


@pytest.mark.parametrize("name,args,kwargs", MODULES)
def test_module_reprs_match_torch(name, args, kwargs):
    assert repr(getattr(tnn, name)(*args, **kwargs)) == repr(getattr(torch.nn, name)(*args,
                                                                                     **kwargs))


def test_prelu_module_matches_torch():
    ours, theirs = tnn.PReLU(3, 0.1), torch.nn.PReLU(3, 0.1)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    x = np.random.default_rng(3).standard_normal((2, 3, 5)).astype(np.float32)
    y, yt = ours(tn.from_numpy(x)), theirs(torch.from_numpy(x))
    assert y.dtype is tn.float32 and type(y.grad_fn).__name__ == type(yt.grad_fn).__name__
    y.sum().backward()
    yt.sum().backward()
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=1e-5)
    assert tnn.PReLU(dtype=tn.float64).weight.dtype is tn.float64


INPLACE = [
    ("selu", lambda m, x: m.selu(x, inplace=True)),
    ("selu_", lambda m, x: m.selu_(x)),
    ("celu", lambda m, x: m.celu(x, 0.7, inplace=True)),
    ("celu_", lambda m, x: m.celu_(x, 1.3)),
    ("hardtanh", lambda m, x: m.hardtanh(x, -0.5, 2.0, inplace=True)),
    ("hardtanh_", lambda m, x: m.hardtanh_(x)),
    ("relu6", lambda m, x: m.relu6(x, inplace=True)),
]


@pytest.mark.parametrize("name,call", INPLACE)
def test_inplace_forms_match_torch(name, call):
    x = np.concatenate([np.random.default_rng(2).standard_normal(15) * 4,
                        [0.0, -1.0, 1.0, 6.0, 2.0, -0.5]])
    a, b = tn.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(x.copy()).requires_grad_()
    ya, yb = a * 1, b * 1
    ra, rb = call(TF, ya), call(TTF, yb)
    assert ra is ya and rb is yb
    assert type(ra.grad_fn).__name__ == type(rb.grad_fn).__name__
    np.testing.assert_allclose(ra.detach().numpy(), rb.detach().numpy(), rtol=1e-12)
    ra.backward(tn.from_numpy(x))
    rb.backward(torch.from_numpy(x))
    # torch's in-place celu backward works from the result with input_scale 1 / float32(alpha):
    # within ~1e-8 of the exact derivative
    tol = dict(rtol=1e-7, atol=1e-9) if name.startswith("celu") else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **tol)


@pytest.mark.parametrize("name", ["SELU", "CELU", "Hardtanh", "ReLU6"])
def test_inplace_modules_match_torch(name):
    x = np.random.default_rng(4).standard_normal((3, 5)) * 4
    a, b = tn.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(x.copy()).requires_grad_()
    ya, yb = a * 1, b * 1
    ra, rb = getattr(tnn, name)(inplace=True)(ya), getattr(torch.nn, name)(inplace=True)(yb)
    assert ra is ya and rb is yb
    assert type(ra.grad_fn).__name__ == type(rb.grad_fn).__name__
    ra.sum().backward()
    rb.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)


def _raises_like_torch(ours, theirs):
    with pytest.raises(Exception) as theirs_err:
        theirs()
    with pytest.raises(type(theirs_err.value)) as ours_err:
        ours()
    assert str(ours_err.value) == str(theirs_err.value)


ERRORS = {
    "selu_int": lambda m, t: m.nn.functional.selu(t.tensor([1, 2])),
    "celu_int": lambda m, t: m.nn.functional.celu(t.tensor([1, 2])),
    "celu_alpha0": lambda m, t: m.nn.functional.celu(t.tensor([1.0, 2.0]), 0.0),
    "logsigmoid_int": lambda m, t: m.nn.functional.logsigmoid(t.tensor([1, 2])),
    "softmin_int": lambda m, t: m.nn.functional.softmin(t.tensor([1, 2]), 0),
    "glu_int": lambda m, t: m.nn.functional.glu(t.tensor([1, 2])),
    "glu_odd": lambda m, t: m.nn.functional.glu(t.ones(3, 5)),
    "glu_scalar": lambda m, t: m.nn.functional.glu(t.tensor(1.0)),
    "prelu_int": lambda m, t: m.nn.functional.prelu(t.tensor([1, 2]), t.tensor([1])),
    "prelu_promote": lambda m, t: m.nn.functional.prelu(t.ones(2, 3),
                                                       t.ones(3, dtype=t.float64)),
    "prelu_channels": lambda m, t: m.nn.functional.prelu(t.ones(2, 3), t.ones(4)),
    "prelu_no_channel": lambda m, t: m.nn.functional.prelu(t.ones(3), t.ones(3)),
    "prelu_weight_2d": lambda m, t: m.nn.functional.prelu(t.ones(2, 3), t.ones(3, 1)),
    "hardtanh_bounds": lambda m, t: m.nn.functional.hardtanh(t.ones(3), 2.0, 1.0),
    "Hardtanh_bounds": lambda m, t: m.nn.Hardtanh(1.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_match_torch(name):
    _raises_like_torch(lambda: ERRORS[name](tn, tn), lambda: ERRORS[name](torch, torch))


@pytest.mark.parametrize("name", ["softsign", "tanhshrink", "hardtanh", "relu6"])
def test_integer_inputs_match_torch(name):
    # torch computes these for integer tensors (softsign, tanhshrink promote to float)
    x = [-9, -3, -1, 0, 1, 2, 5, 7]
    y, yt = getattr(TF, name)(tn.tensor(x)), getattr(TTF, name)(torch.tensor(x))
    assert y.dtype.name == str(yt.dtype).split(".")[1]
    np.testing.assert_allclose(y.numpy(), yt.numpy(), rtol=1e-6)
    y, yt = TF.hardtanh(tn.tensor(x), -2.5, 2.5), TTF.hardtanh(torch.tensor(x), -2.5, 2.5)
    np.testing.assert_array_equal(y.numpy(), yt.numpy())


DOUBLE = {
    "selu": (TF.selu, TTF.selu),
    "celu": (lambda x: TF.celu(x, 0.6), lambda x: TTF.celu(x, 0.6)),
    "softsign": (TF.softsign, TTF.softsign),
    "tanhshrink": (TF.tanhshrink, TTF.tanhshrink),
    "logsigmoid": (TF.logsigmoid, TTF.logsigmoid),
    "softmin": (lambda x: TF.softmin(x.reshape(3, 6), 1), lambda x: TTF.softmin(x.reshape(3, 6), 1)),
    "glu": (lambda x: TF.glu(x.reshape(3, 6)), lambda x: TTF.glu(x.reshape(3, 6))),
    "hardtanh": (lambda x: TF.hardtanh(x, -2, 3), lambda x: TTF.hardtanh(x, -2, 3)),
    "relu6": (TF.relu6, TTF.relu6),
}


@pytest.mark.parametrize("name", sorted(DOUBLE))
def test_double_backward_matches_torch(name):
    ours, theirs = DOUBLE[name]
    x = np.concatenate([np.linspace(-7, 7, 15), [0.0, 6.0, 3.0]])
    w = np.random.default_rng(5).standard_normal(x.shape)
    a = tn.from_numpy(x.copy()).requires_grad_()
    b = torch.from_numpy(x.copy()).requires_grad_()
    (ga,) = tn.autograd.grad(ours(a).sum(), a, create_graph=True)
    (gb,) = torch.autograd.grad(theirs(b).sum(), b, create_graph=True)
    np.testing.assert_allclose(ga.detach().numpy(), gb.detach().numpy(), rtol=1e-10, atol=1e-12)
    (ga * tn.from_numpy(w)).sum().backward()
    (gb * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_prelu_double_backward_matches_torch():
    x = np.random.default_rng(6).standard_normal((4, 3)) * 2
    w = np.array([0.25, -0.5, 1.5])
    a, wa = (tn.from_numpy(v.copy()).requires_grad_() for v in (x, w))
    b, wb = (torch.from_numpy(v.copy()).requires_grad_() for v in (x, w))
    ga = tn.autograd.grad((TF.prelu(a, wa) ** 2).sum(), (a, wa), create_graph=True)
    gb = torch.autograd.grad((TTF.prelu(b, wb) ** 2).sum(), (b, wb), create_graph=True)
    (ga[0].sum() + ga[1].sum()).backward()
    (gb[0].sum() + gb[1].sum()).backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(wa.grad.numpy(), wb.grad.numpy(), rtol=1e-10, atol=1e-12)


# --- compiled -------------------------------------------------------------------------------

# activation -> the fused kind of "Linear -> activation" (selu and celu are elu, as in torch;
# relu6 is hardtanh)
FUSED = {"SELU": "gemm_elu", "CELU": "gemm_elu", "LogSigmoid": "gemm_log_sigmoid",
         "Hardtanh": "gemm_hardtanh", "ReLU6": "gemm_hardtanh"}


def _net():
    tn.manual_seed(3)
    return tnn.Sequential(
        tnn.Linear(7, 16), tnn.SELU(), tnn.Linear(16, 16), tnn.CELU(0.7),
        tnn.Linear(16, 16), tnn.LogSigmoid(), tnn.Linear(16, 16), tnn.Hardtanh(-0.3, 0.4),
        tnn.Linear(16, 16), tnn.ReLU6(), tnn.Linear(16, 16), tnn.Softsign(),
        tnn.Linear(16, 16), tnn.Tanhshrink(), tnn.Linear(16, 16), tnn.GLU(),
        tnn.Linear(8, 6), tnn.PReLU(6, 0.2), tnn.Linear(6, 4), tnn.Softmin(dim=1))


def test_compiled_forward_and_backward_match_eager_and_fuse():
    net = _net()
    x = tn.randn(5, 7) * 3
    eager = net(x)
    w = tn.randn(5, 4)
    (eager * w).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    cnet = tn.compile(net)
    out = cnet(x)
    (out * w).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), eager.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    for p, g in zip(net.parameters(), grads):
        np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=1e-4, atol=1e-6)
    kinds = [n.attrs["kind"] for n in cnet.graph.nodes if n.op == "fused"]
    for kind in set(FUSED.values()):
        assert kind in kinds, kinds


@pytest.mark.parametrize("name", sorted(FUSED))
def test_linear_then_activation_is_one_gemm(name):
    tn.manual_seed(5)
    net = tnn.Sequential(tnn.Linear(6, 5), getattr(tnn, name)())
    x = tn.randn(4, 6) * 4
    cnet = tn.compile(net)
    with tn.no_grad():
        out = cnet(x)
        eager = net(x)
    np.testing.assert_allclose(out.numpy(), eager.numpy(), rtol=1e-5, atol=1e-6)
    kinds = [n.attrs["kind"] for n in cnet.graph.nodes if n.op == "fused"]
    assert kinds == [FUSED[name]], kinds


def test_compiled_training_step_with_prelu_matches_the_eager_loop():
    def make():
        tn.manual_seed(7)
        return tnn.Sequential(tnn.Conv2d(2, 3, 3, padding=1), tnn.PReLU(3), tnn.Flatten(),
                              tnn.Linear(48, 8), tnn.PReLU(), tnn.Linear(8, 4), tnn.ReLU6())
    net, ref = make(), make()
    x, y = tn.randn(3, 2, 4, 4) * 2, tn.randn(3, 4)
    loss_fn = tnn.MSELoss()
    opt = tn.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    ref_opt = tn.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    step = tn.compile_step(lambda a, b: loss_fn(net(a), b), opt)
    for _ in range(5):
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = loss_fn(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for p, q in zip(net.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-4, atol=1e-6)
    # the PReLU weights moved
    assert not np.allclose(net[1].weight.detach().numpy(), 0.25)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "exp", "sqrt", "expm1", "rsqrt",
                                  "reciprocal"])
def test_double_backward_through_ops_that_save_their_output(name):
    """Their backward rules read the saved output (tanh: 1 - y^2): under create_graph that
    output is differentiated through its own node, as torch's saved output variables are."""
    x = np.linspace(0.2, 2.5, 9)
    a = tn.from_numpy(x.copy()).requires_grad_()
    b = torch.from_numpy(x.copy()).requires_grad_()
    (ga,) = tn.autograd.grad(getattr(a, name)().sum(), a, create_graph=True)
    (gb,) = torch.autograd.grad(getattr(b, name)().sum(), b, create_graph=True)
    (gga,) = tn.autograd.grad(ga.sum(), a)
    (ggb,) = torch.autograd.grad(gb.sum(), b)
    np.testing.assert_allclose(gga.numpy(), ggb.numpy(), rtol=1e-10, atol=1e-12)
