"""The numpy backwards (``eager_backward``) eager autograd runs instead of an op's rule: the
same gradients, bit for bit, as the rule, and PyTorch's values."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.ops import registry

FAST = sorted(name for name, op in registry.REGISTRY.items() if op.eager_backward is not None)


def _grads(fn, inputs, grad_out=None, rule=False):
    """Gradients of ``fn(*inputs)`` w.r.t. the inputs that require grad, with the numpy
    backwards (or, with ``rule``, every op's rule)."""
    saved = {}
    if rule:
        for name in FAST:
            saved[name] = registry.REGISTRY[name].eager_backward
            registry.REGISTRY[name].eager_backward = None
    try:
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        out = fn(*leaves)
        out.backward(grad_out if grad_out is not None else tn.ones_like(out))
        return [t.grad.numpy().copy() for t in leaves if t.requires_grad]
    finally:
        for name, f in saved.items():
            registry.REGISTRY[name].eager_backward = f


def _same_as_rule(fn, inputs, grad_out=None):
    fast = _grads(fn, inputs, grad_out)
    slow = _grads(fn, inputs, grad_out, rule=True)
    assert len(fast) == len(slow) > 0
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    return fast


def _t(rng, *shape, grad=True, dtype=np.float32):
    return tn.from_numpy(rng.standard_normal(shape).astype(dtype)).requires_grad_(grad)


def test_the_lenet_ops_have_numpy_backwards():
    assert {"addmm", "mm", "convolution", "max_pool", "relu", "view", "permute", "log_softmax",
            "nll_loss"} <= set(FAST)


@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), (3, 5)])
def test_linear_and_mm(bias_shape):
    rng = np.random.default_rng(0)
    x, w, b = _t(rng, 3, 4), _t(rng, 5, 4), _t(rng, *bias_shape)
    got = _same_as_rule(lambda x, w, b: tn.nn.functional.linear(x, w, b).relu(), [x, w, b])
    tx, tw, tb = (torch.from_numpy(t.detach().numpy()).requires_grad_() for t in (x, w, b))
    torch.nn.functional.linear(tx, tw, tb).relu().sum().backward()
    for a, t in zip(got, (tx, tw, tb)):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-5, atol=1e-6)
    _same_as_rule(lambda x, w: x.mm(w.t()), [x, w])
    # beta/alpha: the numpy backward declines and the rule runs
    _same_as_rule(lambda b, x, w: tn.addmm(b, x, w.t(), beta=0.5, alpha=2.0), [b, x, w])


@pytest.mark.parametrize("geo", [dict(), dict(stride=2, padding=1), dict(dilation=2, groups=2),
                                 dict(stride=(2, 1), padding=(0, 2), groups=4)])
@pytest.mark.parametrize("bias", [True, False])
def test_convolution(geo, bias):
    rng = np.random.default_rng(1)
    x, w = _t(rng, 2, 4, 9, 8), _t(rng, 8, 4 // geo.get("groups", 1), 3, 3)
    b = _t(rng, 8)
    args = [x, w, b] if bias else [x, w]
    got = _same_as_rule(lambda *a: tn.nn.functional.conv2d(*a, **geo) if bias else
                        tn.nn.functional.conv2d(a[0], a[1], None, **geo), args)
    targs = [torch.from_numpy(t.detach().numpy()).requires_grad_() for t in args]
    y = torch.nn.functional.conv2d(targs[0], targs[1], targs[2] if bias else None, **geo)
    y.sum().backward()
    for a, t in zip(got, targs):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_convolution_input_does_not_require_grad():
    rng = np.random.default_rng(2)
    x, w = _t(rng, 1, 1, 12, 12, grad=False), _t(rng, 6, 1, 5, 5)
    _same_as_rule(lambda x, w: tn.nn.functional.conv2d(x, w), [x, w])


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=2, ceil_mode=True)])
def test_max_pool(kw):
    rng = np.random.default_rng(3)
    x = _t(rng, 2, 3, 7, 7)
    got = _same_as_rule(lambda x: tn.nn.functional.max_pool2d(x, **kw), [x])
    tx = torch.from_numpy(x.detach().numpy()).requires_grad_()
    torch.nn.functional.max_pool2d(tx, **kw).sum().backward()
    np.testing.assert_array_equal(got[0], tx.grad.numpy())


def test_views_and_log_softmax():
    rng = np.random.default_rng(4)
    x = _t(rng, 2, 3, 4)
    g = tn.from_numpy(rng.standard_normal((4, 6)).astype(np.float32))
    _same_as_rule(lambda x: x.permute(2, 0, 1).reshape(4, 6).log_softmax(0), [x], g)
    got = _same_as_rule(lambda x: x.view(6, 4).t().log_softmax(1), [x], g)
    tx = torch.from_numpy(x.detach().numpy()).requires_grad_()
    tx.view(6, 4).t().log_softmax(1).backward(torch.from_numpy(g.numpy()))
    np.testing.assert_allclose(got[0], tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy(reduction, weighted):
    rng = np.random.default_rng(5)
    x = _t(rng, 5, 4)
    target = tn.tensor([0, 3, -100, 1, 3])
    weight = tn.tensor([0.5, 1.0, 2.0, 0.25]) if weighted else None

    def loss(x):
        out = tn.nn.functional.cross_entropy(x, target, weight=weight, reduction=reduction)
        return out.sum() if reduction == "none" else out
    got = _same_as_rule(loss, [x])
    tx = torch.from_numpy(x.detach().numpy()).requires_grad_()
    out = torch.nn.functional.cross_entropy(
        tx, torch.tensor([0, 3, -100, 1, 3]), reduction=reduction,
        weight=torch.tensor([0.5, 1.0, 2.0, 0.25]) if weighted else None)
    (out.sum() if reduction == "none" else out).backward()
    np.testing.assert_allclose(got[0], tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_a_gradient_of_another_dtype_runs_the_rule():
    # the numpy backward only sees gradients of its outputs' dtype and shape
    x = tn.ones(2, 3, requires_grad=True)
    y = x.relu()
    calls = []
    op = registry.REGISTRY["relu"]
    fast = op.eager_backward

    def spy(ctx, g):
        calls.append(g.dtype)
        return fast(ctx, g)
    op.eager_backward = spy
    try:
        y.backward(tn.ones(2, 3))
        x.grad = None
        y2 = x.relu()
        y2.backward(tn.ones(2, 3, dtype=tn.float64))
    finally:
        op.eager_backward = fast
    assert calls == [np.float32]
    assert x.grad.dtype is tn.float32
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3), np.float32))


def test_create_graph_uses_the_rules():
    # double backward needs the backward recorded: the numpy backward must not run
    rng = np.random.default_rng(6)
    x = _t(rng, 3, 4)
    w = _t(rng, 5, 4)
    y = tn.nn.functional.linear(x, w).log_softmax(1).sum()
    (gx,) = tn.autograd.grad(y, [x], create_graph=True)
    assert gx.grad_fn is not None
    gx.pow(2).sum().backward()
    tx, tw = (torch.from_numpy(t.detach().numpy()).requires_grad_() for t in (x, w))
    ty = torch.nn.functional.linear(tx, tw).log_softmax(1).sum()
    (tgx,) = torch.autograd.grad(ty, [tx], create_graph=True)
    tgx.pow(2).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_freed_graph_and_inplace_checks_still_apply():
    x = tn.ones(2, 3, requires_grad=True)
    y = x.relu()
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()
    a = tn.ones(2, 2, requires_grad=True) * 1
    w = tn.ones(3, 2, requires_grad=True)
    out = tn.nn.functional.linear(a, w)
    a.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), (3,)), ((4, 1, 3), (2, 1)),
                                    ((2, 3), ())])
def test_broadcasting_arithmetic(shapes):
    rng = np.random.default_rng(7)
    a, b = _t(rng, *shapes[0]), _t(rng, *shapes[1])
    out_shape = np.broadcast_shapes(*shapes)
    g = tn.from_numpy(rng.standard_normal(out_shape).astype(np.float32))
    for fn in (lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
               lambda a, b: (a * b - a) * 2 + b):
        got = _same_as_rule(fn, [a, b], g)
        ta, tb = (torch.from_numpy(t.detach().numpy()).requires_grad_() for t in (a, b))
        fn(ta, tb).backward(torch.from_numpy(g.numpy()))
        np.testing.assert_allclose(got[0], ta.grad.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], tb.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_mixed_dtype_products_run_the_rule():
    rng = np.random.default_rng(8)
    a = _t(rng, 2, 3)
    b = _t(rng, 3, dtype=np.float64)
    s = tn.tensor(1.5, dtype=tn.float64, requires_grad=True)
    got = _same_as_rule(lambda a, b, s: (a * b).sum() + (a * s).sum(), [a, b, s])
    assert [g.dtype for g in got] == [np.float32, np.float64, np.float64]


@pytest.mark.parametrize("kw", [dict(), dict(dim=1), dict(dim=(0, 2), keepdim=True),
                                dict(dim=-1, dtype=tn.float64)])
def test_sum_and_mean(kw):
    rng = np.random.default_rng(9)
    x = _t(rng, 2, 3, 4)
    for name in ("sum", "mean"):
        got = _same_as_rule(lambda x: getattr(x, name)(**kw).exp().sum(), [x])
        tkw = dict(kw, dtype=torch.float64) if "dtype" in kw else kw
        tx = torch.from_numpy(x.detach().numpy()).requires_grad_()
        getattr(tx, name)(**tkw).exp().sum().backward()
        np.testing.assert_allclose(got[0], tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_leaf_gradients_are_laid_out_like_torchs():
    # a linear layer's weight gradient arrives transposed; .grad follows the parameter's
    # row-major layout, as torch's gradient layout contract has it
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    lin, tlin = tn.nn.Linear(4, 5), torch.nn.Linear(4, 5)
    lin(tn.from_numpy(x)).sum().backward()
    tlin(torch.from_numpy(x)).sum().backward()
    for p, tp in zip(lin.parameters(), tlin.parameters()):
        assert p.grad.is_contiguous() and p.grad.stride() == tp.grad.stride()
