"""Autograd against PyTorch: backward-node names and graph structure, backward/grad API, hooks,
grad modes, custom Functions, and a finite-difference check of every differentiable op."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402

import tracenet as tn  # noqa: E402
from tracenet.autograd import Variable  # noqa: E402


@pytest.fixture(autouse=True)
def grad_mode_restored():
    yield
    tn.set_grad_enabled(True)
    torch.set_grad_enabled(True)


def assert_same(got, expected, rtol=1e-6, atol=1e-7):
    assert tuple(got.shape) == tuple(expected.shape), (got.shape, expected.shape)
    assert repr(got.dtype) == repr(expected.dtype), (got.dtype, expected.dtype)
    np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), rtol=rtol,
                               atol=atol)


def same_error(fn, exc=RuntimeError, match_message=True):
    with pytest.raises(exc) as ours:
        fn(tn)
    with pytest.raises(exc) as theirs:
        fn(torch)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    if match_message:
        assert str(ours.value) == str(theirs.value)
    return str(ours.value)


def node_name(node):
    return None if node is None else type(node).__name__


# --- node names ---------------------------------------------------------------------------------

GRAD_FN_CASES = {
    "add": lambda m, x, y: x + y, "add_scalar": lambda m, x, y: x + 2,
    "radd": lambda m, x, y: 2 + x, "sub": lambda m, x, y: x - y, "rsub": lambda m, x, y: 2 - x,
    "rsub_fn": lambda m, x, y: m.rsub(x, y), "mul": lambda m, x, y: x * y,
    "rmul": lambda m, x, y: 2 * x, "div": lambda m, x, y: x / y, "div_scalar": lambda m, x, y: x / 2,
    "rdiv": lambda m, x, y: 2 / x, "div_floor": lambda m, x, y: x.div(y, rounding_mode="floor"),
    "pow": lambda m, x, y: x ** y, "pow_scalar": lambda m, x, y: x ** 2,
    "rpow": lambda m, x, y: 2 ** x, "pow_tensor0d": lambda m, x, y: x ** m.tensor(2.0),
    "neg": lambda m, x, y: -x, "remainder": lambda m, x, y: x % y,
    "remainder_scalar": lambda m, x, y: x % 2, "exp": lambda m, x, y: x.exp(),
    "log": lambda m, x, y: y.log(), "sqrt": lambda m, x, y: y.sqrt(),
    "tanh": lambda m, x, y: x.tanh(), "sigmoid": lambda m, x, y: x.sigmoid(),
    "abs": lambda m, x, y: x.abs(), "sin": lambda m, x, y: x.sin(), "cos": lambda m, x, y: x.cos(),
    "log2": lambda m, x, y: y.log2(), "log1p": lambda m, x, y: y.log1p(),
    "expm1": lambda m, x, y: x.expm1(), "rsqrt": lambda m, x, y: y.rsqrt(),
    "reciprocal": lambda m, x, y: x.reciprocal(), "sign": lambda m, x, y: x.sign(),
    "relu": lambda m, x, y: x.relu(), "floor": lambda m, x, y: x.floor(),
    "ceil": lambda m, x, y: x.ceil(), "round": lambda m, x, y: x.round(),
    "trunc": lambda m, x, y: x.trunc(), "square": lambda m, x, y: x.square(),
    "clamp": lambda m, x, y: x.clamp(0, 1), "clamp_min_kw": lambda m, x, y: x.clamp(min=0),
    "clamp_max_kw": lambda m, x, y: x.clamp(max=0), "clamp_tensor": lambda m, x, y: x.clamp(y),
    "clamp_min": lambda m, x, y: m.clamp_min(x, 0.0), "clamp_max": lambda m, x, y: m.clamp_max(x, 0.0),
    "clamp_min_tensor": lambda m, x, y: x.clamp_min(y),
    "maximum": lambda m, x, y: m.maximum(x, y), "minimum": lambda m, x, y: m.minimum(x, y),
    "max_binary": lambda m, x, y: m.max(x, y), "where": lambda m, x, y: m.where(x > 0, x, y),
    "double": lambda m, x, y: x.double(), "to": lambda m, x, y: x.to(m.float64),
    "clone": lambda m, x, y: x.clone(), "sum": lambda m, x, y: x.sum(),
    "sum_dim": lambda m, x, y: x.sum(0), "sum_dims": lambda m, x, y: x.sum((0, 1)),
    "mean": lambda m, x, y: x.mean(), "mean_dim": lambda m, x, y: x.mean(1, keepdim=True),
    "max": lambda m, x, y: x.max(), "max_dim": lambda m, x, y: x.max(0)[0],
    "min": lambda m, x, y: x.min(), "min_dim": lambda m, x, y: x.min(1).values,
    "amax": lambda m, x, y: x.amax(0), "amin": lambda m, x, y: x.amin((0, 1)),
    "var": lambda m, x, y: x.var(), "var_dim": lambda m, x, y: x.var(0, correction=0),
    "std": lambda m, x, y: x.std(), "std_dim": lambda m, x, y: x.std(1),
    "logsumexp": lambda m, x, y: x.logsumexp(1), "view": lambda m, x, y: x.view(-1),
    "reshape": lambda m, x, y: x.reshape(3, 2), "reshape_copy": lambda m, x, y: x.t().reshape(6),
    "flatten": lambda m, x, y: x.flatten(), "unflatten": lambda m, x, y: x.unflatten(1, (3, 1)),
    "unsqueeze": lambda m, x, y: x.unsqueeze(0), "squeeze": lambda m, x, y: x[None].squeeze(),
    "squeeze_dim": lambda m, x, y: x[None].squeeze(0),
    "squeeze_dims": lambda m, x, y: x[None].squeeze((0,)),
    "permute": lambda m, x, y: x.permute(1, 0), "transpose": lambda m, x, y: x.transpose(0, 1),
    "t": lambda m, x, y: x.t(), "t_1d": lambda m, x, y: x[0].t(), "T": lambda m, x, y: x.T,
    "mT": lambda m, x, y: x.mT, "expand": lambda m, x, y: x.expand(2, 2, 3),
    "expand_as": lambda m, x, y: x[:1].expand_as(x), "broadcast_to": lambda m, x, y:
    m.broadcast_to(x, (4, 2, 3)), "contiguous": lambda m, x, y: x.t().contiguous(),
    "cat": lambda m, x, y: m.cat([x, y]), "stack": lambda m, x, y: m.stack([x, y]),
    "split": lambda m, x, y: x.split(1)[0], "split_sizes": lambda m, x, y: x.split([1, 2], 1)[1],
    "chunk": lambda m, x, y: x.chunk(2)[1], "chunk_uneven": lambda m, x, y: x.chunk(2, 1)[1],
    "unbind": lambda m, x, y: x.unbind()[1], "narrow": lambda m, x, y: x.narrow(1, 0, 2),
    "repeat": lambda m, x, y: x.repeat(2, 1), "flip": lambda m, x, y: x.flip(0),
    "select": lambda m, x, y: x.select(1, 0),
    "index_select": lambda m, x, y: x.index_select(1, m.tensor([0, 2])),
    "gather": lambda m, x, y: x.gather(1, m.tensor([[0], [1]])),
    "scatter_add": lambda m, x, y: x.scatter_add(1, m.tensor([[0], [1]]), y[:, :1]),
    "masked_fill": lambda m, x, y: x.masked_fill(x > 0, 0.0),
    "masked_select": lambda m, x, y: x.masked_select(x > 0),
    "getitem_int": lambda m, x, y: x[0], "getitem_slice": lambda m, x, y: x[:, 1:],
    "getitem_none": lambda m, x, y: x[None], "getitem_ellipsis": lambda m, x, y: x[...],
    "getitem_index": lambda m, x, y: x[m.tensor([0, 0])], "getitem_mask": lambda m, x, y: x[x > 0],
    "getitem_mixed": lambda m, x, y: x[0, m.tensor([0, 1])],
    "mm": lambda m, x, y: x.mm(y.t()), "matmul_2d": lambda m, x, y: x @ y.t(),
    "matmul_1d_1d": lambda m, x, y: x[0] @ y[0], "matmul_2d_1d": lambda m, x, y: x @ y[0],
    "matmul_1d_2d": lambda m, x, y: x[0] @ y.t(),
    "matmul_3d_2d": lambda m, x, y: x.expand(4, 2, 3) @ y.t(),
    "matmul_3d_3d": lambda m, x, y: x.expand(4, 2, 3) @ y.t().expand(4, 3, 2),
    "matmul_3d_1d": lambda m, x, y: x.expand(4, 2, 3) @ y[0],
    "mv": lambda m, x, y: x.mv(y[0]), "dot": lambda m, x, y: x[0].dot(y[0]),
    "bmm": lambda m, x, y: x[None].bmm(y.t()[None]),
    "addmm": lambda m, x, y: m.addmm(y[0, :2], x, y.t()),
    "outer": lambda m, x, y: m.outer(x[0], y[0]), "softmax": lambda m, x, y: x.softmax(1),
    "log_softmax": lambda m, x, y: x.log_softmax(1),
}


@pytest.mark.parametrize("name", sorted(GRAD_FN_CASES))
def test_grad_fn_names(name):
    def run(m):
        x = m.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]], requires_grad=True)
        y = m.tensor([[1.5, 2.0, 0.5], [0.25, 1.0, 3.0]], requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = GRAD_FN_CASES[name](m, x, y)
        return out
    ours, theirs = run(tn), run(torch)
    assert node_name(ours.grad_fn) == node_name(theirs.grad_fn)
    assert ours.grad_fn.name() in (node_name(theirs.grad_fn), theirs.grad_fn.name())
    assert ours.requires_grad and not ours.is_leaf
    assert_same(ours, theirs, rtol=1e-5, atol=1e-6)


def structure(node, depth=4):
    """A graph as nested (name, [children]) with AccumulateGrad leaves, None for no edge."""
    if node is None:
        return None
    children = [] if depth == 0 else [structure(n, depth - 1) for n, _ in node.next_functions]
    return (node_name(node), children)


@pytest.mark.parametrize("build", [
    lambda m, x, w: (x * w).sum(),
    lambda m, x, w: (x.exp() + w).mean(),
    lambda m, x, w: (x @ w.t()).relu().sum(1),
    lambda m, x, w: m.cat([x, w]).sigmoid(),
    lambda m, x, w: (x - w).pow(2).mean(),
    lambda m, x, w: x.t().tanh() * 2,
    lambda m, x, w: (x / w.abs()).max(),
    lambda m, x, w: m.stack([x, w.detach()]).sum(0),
    lambda m, x, w: x.view(6).unsqueeze(1).squeeze(1),
])
def test_next_functions_structure(build):
    def run(m):
        x = m.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]], requires_grad=True)
        w = m.tensor([[1.5, 2.0, 0.5], [0.25, 1.0, 3.0]], requires_grad=True)
        out = build(m, x, w)
        first_leaf = out.grad_fn
        while first_leaf is not None and node_name(first_leaf) != "AccumulateGrad":
            first_leaf = next((n for n, _ in first_leaf.next_functions if n is not None), None)
        return structure(out.grad_fn), first_leaf, x, w
    (s_t, leaf_t, x_t, w_t), (s_r, leaf_r, x_r, w_r) = run(tn), run(torch)
    assert s_t == s_r
    assert leaf_t.variable is x_t or leaf_t.variable is w_t
    assert (leaf_t.variable is x_t) == (leaf_r.variable is x_r)


def test_next_functions_omit_non_differentiable_inputs():
    def run(m):
        x = m.tensor([0.5, -1.0], requires_grad=True)
        return [structure(o.grad_fn) for o in (m.where(x > 0, x, -x), x[m.tensor([1, 0])])]
    assert run(tn) == run(torch)


def test_accumulate_grad_node_is_shared_and_names_match():
    def run(m):
        x = m.ones(2, requires_grad=True)
        a, b = x * 2, x + 1
        na, nb = a.grad_fn.next_functions[0][0], b.grad_fn.next_functions[0][0]
        return na is nb, node_name(na), na.variable is x, a.grad_fn.next_functions[1]
    ours, theirs = run(tn), run(torch)
    assert ours == theirs


def test_output_nr_of_multi_output_nodes():
    def run(m):
        x = m.arange(6.0, requires_grad=True)
        parts = x.split(2)
        values, indices = x.reshape(2, 3).max(1)
        return ([p.grad_fn is parts[0].grad_fn for p in parts], [p._version for p in parts],
                node_name(values.grad_fn), indices.grad_fn, indices.requires_grad)
    assert run(tn) == run(torch)


# --- backward and grad ------------------------------------------------------------------------


def test_backward_with_gradient_argument():
    def run(m):
        x = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * x
        y.backward(m.tensor([0.1, 1.0, 10.0]))
        z = (x.reshape(3, 1) * m.ones(1, 2))
        z.backward(gradient=m.ones(3, 2))
        return x.grad
    assert_same(run(tn), run(torch))


def test_gradient_accumulates_over_two_backward_calls():
    def run(m):
        x = m.tensor([1.0, -2.0], requires_grad=True)
        (x ** 2).sum().backward()
        g1 = x.grad.clone()
        (x * 3).sum().backward()
        return g1, x.grad
    (a1, a2), (b1, b2) = run(tn), run(torch)
    assert_same(a1, b1)
    assert_same(a2, b2)


def test_grad_is_accumulated_in_place():
    def run(m):
        x = m.tensor([1.0, -2.0], requires_grad=True)
        (x * 2).sum().backward()
        g = x.grad
        (x * 3).sum().backward()
        return x.grad is g, g, g._version
    (same_t, g_t, v_t), (same_r, g_r, v_r) = run(tn), run(torch)
    assert same_t == same_r
    assert_same(g_t, g_r)


def test_retain_graph_and_second_backward_error():
    def twice(m, retain):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = (x.exp() * x).sum()
        y.backward(retain_graph=retain)
        y.backward()
        return x.grad
    assert_same(twice(tn, True), twice(torch, True))
    same_error(lambda m: twice(m, False))

    def through_saved_free_op(m):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = (x * 2).sum()  # multiplying by a number saves nothing that can be freed twice
        y.backward()
        y.backward()
        return x.grad
    try:
        expected = through_saved_free_op(torch)
    except RuntimeError as e:
        with pytest.raises(RuntimeError) as ours:
            through_saved_free_op(tn)
        assert str(ours.value) == str(e)
    else:
        assert_same(through_saved_free_op(tn), expected)


def test_backward_errors():
    same_error(lambda m: m.ones(2).sum().backward())
    same_error(lambda m: (m.ones(2, requires_grad=True) * 2).backward())
    same_error(lambda m: (m.ones(2, requires_grad=True) * 2).backward(m.ones(3)))


def test_backward_inputs_argument():
    def run(m):
        x = m.ones(2, requires_grad=True)
        z = m.ones(2, requires_grad=True)
        (x * z * 3).sum().backward(inputs=[x])
        return x.grad, z.grad
    (a, az), (b, bz) = run(tn), run(torch)
    assert_same(a, b)
    assert az is None and bz is None


def test_autograd_grad():
    def run(m):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        w = m.tensor([3.0, -1.0], requires_grad=True)
        u = m.ones(2, requires_grad=True)
        y = (x * w).sum() + (x ** 2).sum()
        gx, gw, gu = m.autograd.grad(y, [x, w, u], allow_unused=True)
        assert x.grad is None and w.grad is None
        (g_single,) = m.autograd.grad((x ** 3).sum(), x)
        (g_vec,) = m.autograd.grad(x * 2, x, grad_outputs=m.tensor([1.0, 10.0]))
        return gx, gw, gu, g_single, g_vec
    ours, theirs = run(tn), run(torch)
    for a, b in zip(ours, theirs):
        if b is None:
            assert a is None
        else:
            assert_same(a, b)
    with pytest.raises(RuntimeError, match="allow_unused=True"):
        x = tn.ones(2, requires_grad=True)
        tn.autograd.grad((x * 2).sum(), [x, tn.ones(2, requires_grad=True)])
    same_error(lambda m: m.autograd.grad((m.ones(2, requires_grad=True) * 2).sum(),
                                         [m.ones(2)]))


def test_autograd_grad_create_graph_second_order():
    def run(m):
        x = m.tensor([2.0, -1.0], requires_grad=True)
        y = (x ** 3).sum()
        (g,) = m.autograd.grad(y, x, create_graph=True)
        (g2,) = m.autograd.grad(g.sum(), x)
        return g, g2
    (a, a2), (b, b2) = run(tn), run(torch)
    assert_same(a, b)
    assert_same(a2, b2)
    assert a.requires_grad == b.requires_grad


def test_retain_grad():
    def run(m):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2
        y.retain_grad()
        z = y * y
        z.retain_grad()
        z.sum().backward()
        return y.grad, z.grad, y.retains_grad, x.retains_grad, z.is_leaf
    (ya, za, *ra), (yb, zb, *rb) = run(tn), run(torch)
    assert_same(ya, yb)
    assert_same(za, zb)
    assert ra == rb
    same_error(lambda m: m.ones(2).retain_grad())


def test_non_leaf_grad_access_warns_like_torch():
    def run(m):
        y = m.ones(2, requires_grad=True) * 2
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            g = y.grad
        return g, [(w.category, str(w.message)) for w in rec]
    (ga, wa), (gb, wb) = run(tn), run(torch)
    assert ga is None and gb is None
    assert len(wa) == len(wb) == 1 and wa[0][0] is wb[0][0] is UserWarning
    assert wb[0][1].startswith(wa[0][1])

    def retained(m):
        y = m.ones(2, requires_grad=True) * 2
        y.retain_grad()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            y.grad
        return len(rec)
    assert retained(tn) == retained(torch) == 0


# --- hooks ----------------------------------------------------------------------------------------


def test_hooks_on_leaf_and_non_leaf():
    def run(m):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        seen = []
        y = x * 3
        y.register_hook(lambda g: seen.append(("y", g.tolist())))
        h = y.register_hook(lambda g: g * 10)  # replaces the gradient flowing on
        x.register_hook(lambda g: seen.append(("x", g.tolist())))
        x.register_hook(lambda g: g + 1)
        (y * y).sum().backward()
        h.remove()
        return x.grad, seen
    (ga, sa), (gb, sb) = run(tn), run(torch)
    assert_same(ga, gb)
    assert sa == sb


def test_hook_removal_and_errors():
    def run(m):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        h = x.register_hook(lambda g: g * 100)
        h.remove()
        (x * 2).sum().backward()
        return x.grad
    assert_same(run(tn), run(torch))
    same_error(lambda m: m.ones(2).register_hook(lambda g: g))


def test_hook_sees_accumulated_gradient_once():
    def run(m):
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = x * 2
        calls = []
        y.register_hook(lambda g: calls.append(g.tolist()))
        (y * 3 + y ** 2).sum().backward()
        return calls, x.grad
    (ca, ga), (cb, gb) = run(tn), run(torch)
    assert ca == cb
    assert_same(ga, gb)


# --- grad modes -------------------------------------------------------------------------------------


def test_no_grad_and_enable_grad_context_managers():
    def run(m):
        x = m.ones(2, requires_grad=True)
        with m.no_grad():
            a = x * 2
            with m.enable_grad():
                b = x * 2
            inner = m.is_grad_enabled()
        return a.requires_grad, a.grad_fn is None, b.requires_grad, inner, m.is_grad_enabled()
    assert run(tn) == run(torch)


def test_grad_mode_decorators():
    def run(m):
        @m.no_grad()
        def f(x):
            return x * 2

        @m.enable_grad()
        def g(x):
            return x * 2

        x = m.ones(2, requires_grad=True)
        with m.no_grad():
            inside = g(x).requires_grad
        return f(x).requires_grad, inside, f.__name__
    assert run(tn) == run(torch)


def test_set_grad_enabled_context_manager_and_function():
    def run(m):
        x = m.ones(2, requires_grad=True)
        with m.set_grad_enabled(False):
            a = (x * 2).requires_grad
            with m.set_grad_enabled(True):
                b = (x * 2).requires_grad
        m.set_grad_enabled(False)
        c = m.is_grad_enabled()
        m.set_grad_enabled(True)
        return a, b, c, m.is_grad_enabled()
    assert run(tn) == run(torch)


def test_set_grad_enabled_decorator():
    def run(m):
        @m.set_grad_enabled(False)
        def f(x):
            return x * 2
        x = m.ones(2, requires_grad=True)
        return f(x).requires_grad, m.is_grad_enabled()
    assert run(tn) == run(torch)


def test_no_grad_bare_decorator():
    def run(m):
        @m.no_grad
        def f(x):
            return x * 2
        return f(m.ones(2, requires_grad=True)).requires_grad
    assert run(tn) == run(torch)


def test_inference_mode():
    def run(m):
        with m.inference_mode():
            y = m.ones(2, requires_grad=True) * 2
        return y.requires_grad
    assert run(tn) == run(torch)


def test_ops_under_no_grad_do_not_record():
    x = tn.ones(2, 3, requires_grad=True)
    with tn.no_grad():
        outs = [x * 2, x.sum(), x[0], x.t(), x.exp(), x @ x.t(), tn.cat([x, x]), x.split(1)[0],
                x.max(0).values, x.clamp(0, 1), x.view(6)]
    assert all(not o.requires_grad and o.grad_fn is None for o in outs)


# --- leaves, requires_grad, Variable, detach ---------------------------------------------------


def test_requires_grad_and_leaves():
    def run(m):
        x = m.ones(2)
        x.requires_grad_()
        y = x * 2
        z = m.ones(2).requires_grad_(False)
        return (x.requires_grad, x.is_leaf, y.requires_grad, y.is_leaf, z.requires_grad,
                (z * 2).requires_grad, (y.detach() * 2).requires_grad)
    assert run(tn) == run(torch)
    same_error(lambda m: (m.ones(2, requires_grad=True) * 2).requires_grad_(False))
    same_error(lambda m: m.ones(2, dtype=m.int64).requires_grad_())


def test_integer_and_bool_results_do_not_require_grad():
    def run(m):
        x = m.tensor([1.5, -2.0], requires_grad=True)
        return [t.requires_grad for t in (x > 0, x.argmax(), x.long(), x.max(0).indices,
                                          x.floor(), x.sign(), x.round(), x.bool())]
    assert run(tn) == run(torch)


def test_variable_is_a_tensor():
    v = Variable(tn.ones(2), requires_grad=True)
    r = torch.autograd.Variable(torch.ones(2), requires_grad=True)
    assert isinstance(v, tn.Tensor)
    assert (v.requires_grad, v.is_leaf) == (r.requires_grad, r.is_leaf)
    (v * 2).sum().backward()
    (r * 2).sum().backward()
    assert_same(v.grad, r.grad)
    assert not Variable(tn.ones(2)).requires_grad


def test_detach_and_detach_inplace():
    def run(m):
        x = m.ones(2, requires_grad=True)
        y = x * 2
        d = y.detach()
        y.detach_()
        return (d.requires_grad, d.is_leaf, y.requires_grad, y.grad_fn is None, y.is_leaf,
                x.requires_grad)
    assert run(tn) == run(torch)


def test_grad_setter_checks():
    x = tn.ones(2, requires_grad=True)
    x.grad = tn.ones(2)
    assert x.grad.tolist() == [1.0, 1.0]
    x.grad = None
    with pytest.raises(RuntimeError):
        x.grad = tn.ones(3)
    with pytest.raises(TypeError):
        x.grad = [1.0, 2.0]


# --- custom Function --------------------------------------------------------------------------------


def make_function(m):
    class MyScale(m.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            ctx.save_for_backward(x)
            ctx.k = k
            return x * k

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * ctx.k + x * 0, None
    return MyScale


def test_custom_function():
    def run(m):
        fn = make_function(m)
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = fn.apply(x, 3.0)
        z = (y * y).sum()
        z.backward()
        return x.grad, node_name(y.grad_fn), y.grad_fn.name(), y.requires_grad
    (ga, *ra), (gb, *rb) = run(tn), run(torch)
    assert_same(ga, gb)
    assert ra == rb


def test_custom_function_saved_tensor_checks():
    def modified(m):
        fn = make_function(m)
        x = m.tensor([1.0, 2.0], requires_grad=True)
        h = x * 1
        y = fn.apply(h, 3.0)
        h.add_(1)
        y.sum().backward()
    with pytest.raises(RuntimeError) as ours:
        modified(tn)
    with pytest.raises(RuntimeError) as theirs:
        modified(torch)
    prefix = ("one of the variables needed for gradient computation has been modified by an "
              "inplace operation")
    assert str(ours.value).startswith(prefix) and str(theirs.value).startswith(prefix)

    def twice(m):
        fn = make_function(m)
        x = m.tensor([1.0, 2.0], requires_grad=True)
        y = fn.apply(x, 3.0).sum()
        y.backward()
        y.backward()
    same_error(twice)


def test_custom_function_no_grad_inputs():
    fn = make_function(tn)
    y = fn.apply(tn.ones(2), 2.0)
    assert not y.requires_grad and y.grad_fn is None


# --- finite differences -------------------------------------------------------------------------

rng_seed = 1234


def _fd_inputs(shapes, kind):
    rng = np.random.default_rng(rng_seed)
    arrays = []
    for shape in shapes:
        a = rng.standard_normal(shape)
        if kind == "positive":
            a = np.abs(a) + 0.5
        elif kind == "away":  # away from kinks, ties and integers
            a = np.round(a * 4) / 4 + rng.uniform(0.05, 0.2, shape) * np.sign(a + 1e-9)
        elif kind == "distinct":  # distinct values, also across inputs: no ties for max/min
            a = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
            a = rng.permutation(a.reshape(-1)).reshape(shape) * 0.37 - 1.1 + 0.011 * len(arrays)
        arrays.append(a)
    return arrays


# (name, function of (module, *tensors), input shapes, input kind)
FD_CASES = [
    ("add", lambda m, a, b: a + b, [(2, 3), (3,)], "normal"),
    ("add_alpha", lambda m, a, b: m.add(a, b, alpha=2.5), [(2, 3), (2, 1)], "normal"),
    ("sub", lambda m, a, b: a - b, [(2, 1), (1, 3)], "normal"),
    ("rsub", lambda m, a: 2.0 - a, [(4,)], "normal"),
    ("mul", lambda m, a, b: a * b, [(2, 3), (2, 3)], "normal"),
    ("mul_scalar", lambda m, a: a * 1.5, [(3,)], "normal"),
    ("div", lambda m, a, b: a / b, [(2, 3), (3,)], "positive"),
    ("rdiv", lambda m, a: 2.0 / a, [(3,)], "positive"),
    ("pow", lambda m, a, b: a ** b, [(2, 3), (2, 3)], "positive"),
    ("pow_scalar", lambda m, a: a ** 3, [(4,)], "normal"),
    ("pow_frac", lambda m, a: a ** 0.5, [(4,)], "positive"),
    ("pow_neg", lambda m, a: a ** -1.5, [(4,)], "positive"),
    ("rpow", lambda m, a: 2.0 ** a, [(4,)], "normal"),
    ("square", lambda m, a: a.square(), [(4,)], "normal"),
    ("maximum", lambda m, a, b: m.maximum(a, b), [(3, 2), (2,)], "distinct"),
    ("minimum", lambda m, a, b: m.minimum(a, b), [(3, 2), (3, 2)], "distinct"),
    ("remainder", lambda m, a, b: a % b, [(5,), (5,)], "positive"),
    ("remainder_scalar", lambda m, a: a % 0.7, [(5,)], "away"),
    ("div_floor", lambda m, a, b: a.div(b, rounding_mode="floor") + a, [(4,), (4,)], "positive"),
    ("neg", lambda m, a: -a, [(3,)], "normal"),
    ("exp", lambda m, a: a.exp(), [(3, 2)], "normal"),
    ("log", lambda m, a: a.log(), [(3,)], "positive"),
    ("log2", lambda m, a: a.log2(), [(3,)], "positive"),
    ("log1p", lambda m, a: a.log1p(), [(3,)], "positive"),
    ("expm1", lambda m, a: a.expm1(), [(3,)], "normal"),
    ("sqrt", lambda m, a: a.sqrt(), [(3,)], "positive"),
    ("rsqrt", lambda m, a: a.rsqrt(), [(3,)], "positive"),
    ("reciprocal", lambda m, a: a.reciprocal(), [(3,)], "positive"),
    ("tanh", lambda m, a: a.tanh(), [(2, 3)], "normal"),
    ("sigmoid", lambda m, a: a.sigmoid(), [(2, 3)], "normal"),
    ("sin", lambda m, a: a.sin(), [(3,)], "normal"),
    ("cos", lambda m, a: a.cos(), [(3,)], "normal"),
    ("abs", lambda m, a: a.abs(), [(5,)], "away"),
    ("relu", lambda m, a: a.relu(), [(5,)], "away"),
    ("sign", lambda m, a: a.sign() * a, [(5,)], "away"),
    ("floor_ceil_round_trunc", lambda m, a: a.floor() + a.ceil() + a.round() + a.trunc() + a,
     [(5,)], "away"),
    ("where", lambda m, a, b: m.where(a > 0, a, b), [(2, 3), (3,)], "away"),
    ("clamp", lambda m, a: a.clamp(-0.5, 0.5), [(6,)], "away"),
    ("clamp_min", lambda m, a: a.clamp(min=0.1), [(6,)], "away"),
    ("clamp_max", lambda m, a: m.clamp_max(a, 0.1), [(6,)], "away"),
    ("clamp_tensor", lambda m, a, lo, hi: a.clamp(lo, hi + 2.5), [(6,), (6,), (6,)], "distinct"),
    ("clamp_tensor_min", lambda m, a, lo: a.clamp(min=lo), [(2, 3), (3,)], "distinct"),
    # float64 -> float32 -> float64 rounds the forward at 1e-7: checked against torch only
    ("to_dtype", lambda m, a: a.float().double() * a, [(3,)], "torch_only"),
    ("clone", lambda m, a: a.clone() * a, [(3,)], "normal"),
    ("lerp_addcmul_addcdiv", lambda m, a, b: m.lerp(a, b, 0.3) + m.addcmul(a, a, b, value=2)
     + m.addcdiv(a, b, a.abs() + 1), [(3,), (3,)], "normal"),
    ("sum", lambda m, a: a.sum(), [(2, 3)], "normal"),
    ("sum_dims", lambda m, a: a.sum((0, 2), keepdim=True), [(2, 3, 2)], "normal"),
    ("mean", lambda m, a: a.mean(-1), [(2, 3)], "normal"),
    ("amax", lambda m, a: a.amax(1), [(3, 4)], "distinct"),
    ("amin", lambda m, a: a.amin((0, 1)), [(3, 4)], "distinct"),
    ("max_all", lambda m, a: a.max(), [(3, 4)], "distinct"),
    ("min_all", lambda m, a: a.min(), [(3, 4)], "distinct"),
    ("max_dim", lambda m, a: a.max(1).values, [(3, 4)], "distinct"),
    ("min_dim_keepdim", lambda m, a: a.min(0, keepdim=True)[0], [(3, 4)], "distinct"),
    ("var", lambda m, a: a.var(1), [(3, 4)], "normal"),
    ("var_all_biased", lambda m, a: a.var(unbiased=False), [(3, 4)], "normal"),
    ("std", lambda m, a: a.std(0, keepdim=True), [(3, 4)], "normal"),
    ("std_correction", lambda m, a: a.std(correction=2), [(3, 4)], "normal"),
    ("logsumexp", lambda m, a: a.logsumexp(1), [(3, 4)], "normal"),
    ("view_reshape", lambda m, a: a.view(6).reshape(3, 2) * m.arange(6.0).reshape(3, 2),
     [(2, 3)], "normal"),
    ("reshape_copy", lambda m, a: a.t().reshape(6) * m.arange(6.0), [(2, 3)], "normal"),
    ("flatten_unflatten", lambda m, a: a.flatten().unflatten(0, (3, 2)) ** 2, [(2, 3)], "normal"),
    ("squeeze_unsqueeze", lambda m, a: a.unsqueeze(1).squeeze() ** 2, [(3,)], "normal"),
    ("permute_transpose_t", lambda m, a: a.permute(2, 0, 1).transpose(0, 2)[0].t() ** 2,
     [(2, 3, 4)], "normal"),
    ("mT", lambda m, a: a.mT ** 2, [(2, 3, 4)], "normal"),
    ("expand", lambda m, a: a.expand(4, 3, 2) * m.arange(24.0).reshape(4, 3, 2), [(3, 1)],
     "normal"),
    ("contiguous", lambda m, a: a.t().contiguous() ** 2, [(2, 3)], "normal"),
    ("cat", lambda m, a, b: m.cat([a, b, a], 1) ** 2, [(2, 1), (2, 3)], "normal"),
    ("stack", lambda m, a, b: m.stack([a, b], -1) ** 2, [(2, 3), (2, 3)], "normal"),
    ("split", lambda m, a: a.split(2)[1] * 3 + a.split([1, 3])[0].sum(), [(4,)], "normal"),
    ("chunk", lambda m, a: a.chunk(3, 1)[2] ** 2, [(2, 5)], "normal"),
    ("unbind", lambda m, a: a.unbind(1)[1] ** 2, [(2, 3)], "normal"),
    ("narrow", lambda m, a: a.narrow(1, 1, 2) ** 2, [(2, 3)], "normal"),
    ("repeat", lambda m, a: a.repeat(2, 1, 3) * m.arange(36.0).reshape(2, 2, 9), [(2, 3)],
     "normal"),
    ("flip", lambda m, a: a.flip(1) * m.arange(6.0).reshape(2, 3), [(2, 3)], "normal"),
    ("getitem_basic", lambda m, a: a[1, ::2, None] ** 2, [(3, 4)], "normal"),
    ("getitem_advanced", lambda m, a: a[m.tensor([0, 2, 0]), 1:] ** 2, [(3, 4)], "normal"),
    ("getitem_mask", lambda m, a: a[a > 0] ** 2, [(3, 4)], "away"),
    ("setitem_basic", lambda m, a, v: _setitem(a * 1, (slice(None), 1), v) ** 2, [(2, 3), (2,)],
     "normal"),
    ("setitem_advanced", lambda m, a, v: _setitem(a * 1, m.tensor([2, 0]), v) ** 2,
     [(3, 2), (2,)], "normal"),
    ("index_select", lambda m, a: a.index_select(0, m.tensor([1, 1, 0])) ** 2, [(2, 3)],
     "normal"),
    ("gather", lambda m, a: a.gather(1, m.tensor([[0, 0], [2, 1]])) ** 2, [(2, 3)], "normal"),
    ("scatter_add", lambda m, a, s: a.scatter_add(1, m.tensor([[0, 0], [2, 1]]), s) ** 2,
     [(2, 3), (2, 2)], "normal"),
    ("masked_fill_select", lambda m, a: a.masked_fill(a > 0, 2.0) * a
     + a.masked_select(a < 0).sum(), [(3, 4)], "away"),
    ("mm", lambda m, a, b: a.mm(b), [(2, 3), (3, 4)], "normal"),
    ("addmm", lambda m, c, a, b: m.addmm(c, a, b, beta=0.5, alpha=2.0), [(4,), (2, 3), (3, 4)],
     "normal"),
    ("bmm", lambda m, a, b: a.bmm(b), [(2, 2, 3), (2, 3, 2)], "normal"),
    ("mv", lambda m, a, v: a.mv(v), [(2, 3), (3,)], "normal"),
    ("dot", lambda m, a, b: a.dot(b), [(3,), (3,)], "normal"),
    ("outer", lambda m, a, b: m.outer(a, b), [(3,), (2,)], "normal"),
    ("matmul_nd", lambda m, a, b: a @ b, [(2, 1, 2, 3), (3, 3, 2)], "normal"),
    ("matmul_1d_nd", lambda m, a, b: a @ b, [(3,), (2, 3, 2)], "normal"),
    ("matmul_nd_1d", lambda m, a, b: a @ b, [(2, 2, 3), (3,)], "normal"),
    ("inplace_chain", lambda m, a, b: _inplace_chain(a, b), [(2, 3), (3,)], "positive"),
    # ops that only appear in backward rules, differentiated through create_graph=True
    ("relu_double_backward", lambda m, a: m.autograd.grad(a.relu(), a, grad_outputs=a * a,
                                                          create_graph=True)[0], [(5,)], "away"),
    ("getitem_double_backward", lambda m, a: m.autograd.grad(
        a[m.tensor([0, 0, 2])], a, grad_outputs=a[1:] ** 2, create_graph=True)[0], [(4,)],
     "normal"),
    ("mm_double_backward", lambda m, a, b: m.autograd.grad(
        (a @ b).sin().sum(), a, create_graph=True)[0], [(2, 3), (3, 2)], "normal"),
]


def _setitem(t, key, value):
    t[key] = value
    return t


def _inplace_chain(a, b):
    y = a * 1
    y.mul_(b).add_(a, alpha=0.5).div_(b + 1).clamp_(max=10.0)
    y[0] = y[1] * 2
    return y


@pytest.mark.parametrize("name,fn,shapes,kind", FD_CASES, ids=[c[0] for c in FD_CASES])
def test_finite_differences_and_torch_gradients(name, fn, shapes, kind):
    arrays = _fd_inputs(shapes, "normal" if kind == "torch_only" else kind)

    def loss(m, arrs, grad=True):
        ts = [m.tensor(a, dtype=m.float64, requires_grad=grad) for a in arrs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(m, *ts)
        w = np.linspace(-1.0, 1.5, int(np.prod(tuple(out.shape))) or 1)[:out.numel()]
        weights = m.tensor(w.reshape(tuple(out.shape)), dtype=m.float64)
        return (out * weights).sum(), ts

    value, ts = loss(tn, arrays)
    value.backward()
    ours = [t.grad for t in ts]
    ref_value, rts = loss(torch, arrays)
    ref_value.backward()
    np.testing.assert_allclose(value.item(), ref_value.item(), rtol=1e-10, atol=1e-12)
    eps = 1e-6
    needs_grad = "backward" in name
    for i, (a, g, rg) in enumerate(zip(arrays, ours, (t.grad for t in rts))):
        assert g is not None, f"{name}: no gradient for input {i}"
        assert g.dtype is tn.float64
        np.testing.assert_allclose(g.numpy(), rg.numpy(), rtol=1e-9, atol=1e-10,
                                   err_msg=f"{name}: input {i} vs torch")
        if kind == "torch_only":
            continue
        fd = np.zeros_like(a)
        for j in range(a.size):
            hi = [x.copy() for x in arrays]
            lo = [x.copy() for x in arrays]
            hi[i].reshape(-1)[j] += eps
            lo[i].reshape(-1)[j] -= eps
            # (with autograd on: some cases compute their value with autograd.grad)
            fd.reshape(-1)[j] = (loss(tn, hi, needs_grad)[0].item()
                                 - loss(tn, lo, needs_grad)[0].item()) / (2 * eps)
        np.testing.assert_allclose(g.numpy(), fd, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{name}: input {i} vs finite differences")


def test_every_differentiable_op_of_the_owned_modules_is_checked():
    """The finite-difference cases above differentiate every differentiable registry op defined
    in the op modules (each is recorded while computing some case's function)."""
    from tracenet.ops import elementwise, index, linalg, reduce, shape
    from tracenet.ops.registry import Op
    import tracenet.autograd.engine as engine
    owned = set()
    for module in (elementwise, reduce, shape, index, linalg):
        for value in vars(module).values():
            op = value if isinstance(value, Op) else getattr(value, "op", None)
            if isinstance(op, Op) and op.differentiable:
                owned.add(op.name)
    assert {"add", "exp", "sum", "view", "index", "mm", "split"} <= owned
    seen = set()
    original = engine._record

    def spy(op, *args, **kwargs):
        seen.add(op.name)
        return original(op, *args, **kwargs)
    engine._record = spy
    try:
        for name, fn, shapes, kind in FD_CASES:
            ts = [tn.tensor(a, dtype=tn.float64, requires_grad=True)
                  for a in _fd_inputs(shapes, "normal" if kind == "torch_only" else kind)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(tn, *ts)
    finally:
        engine._record = original
    missing = owned - seen
    assert not missing, f"ops without a finite-difference case: {sorted(missing)}"


def test_ties_split_gradients_like_torch():
    def run(m):
        a = m.tensor([1.0, 2.0, 3.0, 3.0], requires_grad=True)
        b = m.tensor([1.0, 1.0, 4.0, 3.0], requires_grad=True)
        w = m.tensor([1.0, 2.0, 3.0, 4.0])
        (m.maximum(a, b) * w).sum().backward()
        (m.minimum(a, b) * w * 10).sum().backward()
        (a.max() + a.amax(0) * 2 + a.min()).backward()
        (a.clamp(b, b + 0.5) * w).sum().backward()
        (a.clamp(1.0, 3.0) * 100).sum().backward()
        return a.grad, b.grad
    for g, r in zip(run(tn), run(torch)):
        assert_same(g, r)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["add", "sub", "mul", "div", "maximum", "pow"]),
       st.sampled_from([((2, 3), (3,)), ((2, 1), (1, 3)), ((), (2, 2)), ((4, 1, 2), (3, 1)),
                        ((1,), ())]),
       st.integers(0, 1000))
def test_broadcast_gradients_hypothesis(op, shapes, seed):
    rng = np.random.default_rng(seed)
    arrays = [np.abs(rng.standard_normal(s)) + 0.5 for s in shapes]

    def run(m):
        a, b = (m.tensor(x, dtype=m.float64, requires_grad=True) for x in arrays)
        out = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
               "div": lambda: a / b, "maximum": lambda: m.maximum(a, b),
               "pow": lambda: a ** b}[op]()
        (out * out).sum().backward()
        return a.grad, b.grad
    for g, r in zip(run(tn), run(torch)):
        assert_same(g, r, rtol=1e-10, atol=1e-12)
