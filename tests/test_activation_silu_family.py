"""SiLU, Mish, Hardswish and Hardsigmoid against PyTorch: values, gradients (including the kinks
at -3 and 3), grad_fn names, in-place forms, reprs and errors; compiled forward, backward and
training step against eager, with the activations fused into neighbouring kernels."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as TF

torch = pytest.importorskip("torch")

NAMES = ["silu", "mish", "hardswish", "hardsigmoid"]
MODULES = {"silu": "SiLU", "mish": "Mish", "hardswish": "Hardswish",
           "hardsigmoid": "Hardsigmoid"}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tn-cache"))


def _points(dtype):
    x = np.concatenate([np.linspace(-8, 8, 161), [-3.0, 3.0, -30.0, 25.0, 19.9, 20.1, 0.0]])
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_match_torch(name, dtype):
    x = _points(dtype)
    ours = tn.from_numpy(x.copy()).requires_grad_()
    theirs = torch.from_numpy(x.copy()).requires_grad_()
    y, yt = getattr(TF, name)(ours), getattr(torch.nn.functional, name)(theirs)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), **tol)
    assert y.dtype.name == str(yt.dtype).split(".")[1]
    g = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    y.backward(tn.from_numpy(g))
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(),
                               **(dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else tol))
    assert type(y.grad_fn).__name__ == type(yt.grad_fn).__name__


@pytest.mark.parametrize("name", NAMES)
def test_modules_reprs_inplace_and_errors_match_torch(name):
    cls, tcls = getattr(tnn, MODULES[name]), getattr(torch.nn, MODULES[name])
    assert repr(cls()) == repr(tcls())
    assert repr(cls(inplace=True)) == repr(tcls(inplace=True))
    x = np.random.default_rng(2).standard_normal((3, 5)) * 4
    a, b = tn.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(x.copy()).requires_grad_()
    ya, yb = a * 1, b * 1
    ra, rb = cls(inplace=True)(ya), tcls(inplace=True)(yb)
    assert ra is ya and rb is yb
    assert type(ra.grad_fn).__name__ == type(rb.grad_fn).__name__
    np.testing.assert_allclose(ra.detach().numpy(), rb.detach().numpy(), rtol=1e-12)
    ra.sum().backward()
    rb.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError) as ours:
        cls()(tn.tensor([1, 2]))
    with pytest.raises(NotImplementedError) as theirs:
        tcls()(torch.tensor([1, 2]))
    assert str(ours.value) == str(theirs.value)


def test_double_backward_matches_torch():
    x = np.linspace(-4, 4, 17)
    for name in ["silu", "mish", "hardswish"]:  # torch has no double backward of hardsigmoid
        a = tn.from_numpy(x.copy()).requires_grad_()
        b = torch.from_numpy(x.copy()).requires_grad_()
        (ga,) = tn.autograd.grad(getattr(TF, name)(a).sum(), a, create_graph=True)
        (gb,) = torch.autograd.grad(getattr(torch.nn.functional, name)(b).sum(), b,
                                    create_graph=True)
        ga.sum().backward()
        gb.sum().backward()
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=name)
    a = tn.from_numpy(x.copy()).requires_grad_()
    (ga,) = tn.autograd.grad(TF.hardsigmoid(a).sum(), a, create_graph=True)
    ga.sum().backward()
    assert not a.grad.numpy().any()  # piecewise linear: the second derivative is zero


def _net():
    tn.manual_seed(3)
    return tnn.Sequential(tnn.Linear(7, 16), tnn.SiLU(), tnn.Linear(16, 16), tnn.Mish(),
                          tnn.Linear(16, 16), tnn.Hardswish(), tnn.Linear(16, 4),
                          tnn.Hardsigmoid())


def test_compiled_forward_and_backward_match_eager_and_fuse():
    net = _net()
    x = tn.randn(5, 7) * 3
    eager = net(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    cnet = tn.compile(net)
    out = cnet(x)
    out.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), eager.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    for p, g in zip(net.parameters(), grads):
        np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=1e-4, atol=1e-6)
    kinds = [n.attrs["kind"] for n in cnet.graph.nodes if n.op == "fused"]
    # each activation runs in the epilogue of the GEMM before it
    for name in NAMES:
        assert f"gemm_{name}" in kinds, kinds
    # the derivatives (compositions of elementwise ops) fuse into elementwise kernels
    bwd = cnet.backward_graph
    assert not {"silu", "mish", "hardswish", "hardsigmoid"} & set(bwd.op_counts())
    chains = [n for n in bwd.nodes if n.op == "fused" and n.attrs["group"] == "elementwise"]
    assert chains and max(len(n.members) for n in chains) >= 4
    src = cnet.source()
    assert "exp(" in src and "log1p(" in src


def test_conv_then_silu_compiles_as_eager():
    tn.manual_seed(4)
    net = tnn.Sequential(tnn.Conv2d(2, 3, 3, padding=1), tnn.SiLU(), tnn.Hardswish())
    x = tn.randn(2, 2, 6, 6)
    eager = net(x)
    cnet = tn.compile(net)
    with tn.no_grad():  # inference: nothing saved, so the two activations form one kernel
        out = cnet(x)
    np.testing.assert_allclose(out.numpy(), eager.detach().numpy(), rtol=1e-5, atol=1e-6)
    fused = [n for n in cnet.graph.nodes if n.op == "fused" and n.attrs["group"] == "elementwise"]
    assert any({m.op for m in n.members} == {"silu", "hardswish"} for n in fused)


def test_compiled_training_step_matches_the_eager_loop():
    net, ref = _net(), _net()
    x, y = tn.randn(6, 7) * 2, tn.randn(6, 4)
    loss_fn = tnn.MSELoss()
    opt = tn.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ref_opt = tn.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
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
