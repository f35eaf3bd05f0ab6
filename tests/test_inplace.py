"""In-place ops against PyTorch: results, ``.data``/``detach`` aliasing, views sharing memory,
version counters, the leaf errors and the backward-time check of saved tensors."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402

import tracenet as tn  # noqa: E402

INPLACE_PREFIX = ("one of the variables needed for gradient computation has been modified by an "
                  "inplace operation")


def assert_same(got, expected, exact=False):
    assert tuple(got.shape) == tuple(expected.shape), (got.shape, expected.shape)
    assert repr(got.dtype) == repr(expected.dtype), (got.dtype, expected.dtype)
    g, e = got.detach().numpy(), expected.detach().numpy()
    if exact:
        np.testing.assert_array_equal(g, e)
    else:
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def same_error(fn, exc=RuntimeError, match_message=True):
    with pytest.raises(exc) as ours:
        fn(tn)
    with pytest.raises(exc) as theirs:
        fn(torch)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    if match_message:
        assert str(ours.value) == str(theirs.value)
    return str(ours.value)


def start(m, dtype="float32"):
    return m.tensor([[0.5, -1.5, 2.0], [3.0, -0.25, 0.0]], dtype=getattr(m, dtype))


INPLACE_CASES = {
    "add_": lambda x, m: x.add_(2), "add_tensor": lambda x, m: x.add_(m.ones(3)),
    "add_alpha": lambda x, m: x.add_(m.ones(3), alpha=3), "sub_": lambda x, m: x.sub_(1.5),
    "sub_alpha": lambda x, m: x.sub_(m.ones(2, 1), alpha=2), "mul_": lambda x, m: x.mul_(3),
    "mul_tensor": lambda x, m: x.mul_(m.tensor([1.0, 2.0, 3.0])),
    "div_": lambda x, m: x.div_(4), "div_tensor": lambda x, m: x.div_(m.tensor([[2.0], [4.0]])),
    "zero_": lambda x, m: x.zero_(), "fill_": lambda x, m: x.fill_(7),
    "fill_tensor": lambda x, m: x.fill_(m.tensor(2.5)), "copy_": lambda x, m: x.copy_(m.ones(2, 3)),
    "copy_broadcast": lambda x, m: x.copy_(m.tensor([1.0, 2.0, 3.0])),
    "copy_cast": lambda x, m: x.copy_(m.tensor([1, 2, 3])),
    "clamp_both": lambda x, m: x.clamp_(-1, 1), "clamp_min": lambda x, m: x.clamp_(min=0),
    "clamp_max": lambda x, m: x.clamp_(max=0.5),
    "clamp_tensor": lambda x, m: x.clamp_(m.zeros(3), m.ones(3)),
    "iadd": lambda x, m: x.__iadd__(1), "isub": lambda x, m: x.__isub__(m.ones(3)),
    "imul": lambda x, m: x.__imul__(2), "itruediv": lambda x, m: x.__itruediv__(2),
    "neg_": lambda x, m: x.neg_(), "abs_": lambda x, m: x.abs_(), "exp_": lambda x, m: x.exp_(),
    "pow_": lambda x, m: x.pow_(2), "relu_": lambda x, m: x.relu_(),
    "sigmoid_": lambda x, m: x.sigmoid_(), "tanh_": lambda x, m: x.tanh_(),
    "masked_fill_": lambda x, m: x.masked_fill_(x > 0, -9.0),
    "clamp_min_": lambda x, m: x.clamp_min_(0.1), "clamp_max_": lambda x, m: x.clamp_max_(0.1),
    "floor_": lambda x, m: x.floor_(), "square_": lambda x, m: x.square_(),
}


@pytest.mark.parametrize("name", sorted(INPLACE_CASES))
def test_inplace_op_results_and_identity(name):
    def run(m):
        x = start(m)
        out = INPLACE_CASES[name](x, m)
        assert out is x
        return x, x._version
    (a, va), (b, vb) = run(tn), run(torch)
    assert_same(a, b)
    assert va == vb


@pytest.mark.parametrize("name", sorted(INPLACE_CASES))
def test_inplace_op_gradients_and_node_names(name):
    """In-place on a non-leaf: the gradient flows through the op, like torch's."""
    def run(m):
        x = start(m, "float64").requires_grad_()
        y = x * 1.5
        INPLACE_CASES[name](y, m)
        w = m.arange(6.0, dtype=m.float64).reshape(2, 3) - 2
        (y * w).sum().backward()
        return x.grad, type(y.grad_fn).__name__
    (ga, na), (gb, nb) = run(tn), run(torch)
    assert_same(ga, gb)
    assert na == nb


def test_inplace_dtype_and_shape_errors():
    same_error(lambda m: m.ones(2, dtype=m.int64).add_(1.5))
    same_error(lambda m: m.ones(2, dtype=m.int64).mul_(m.ones(2)))
    same_error(lambda m: m.ones(2, dtype=m.int64).div_(2))
    same_error(lambda m: m.ones(2, dtype=m.bool).add_(1))
    same_error(lambda m: m.ones(2).add_(m.ones(3)))
    same_error(lambda m: m.ones(2).add_(m.ones(2, 2)))
    same_error(lambda m: m.ones(2, 3).copy_(m.ones(4)))
    same_error(lambda m: m.ones(2, 3).copy_(m.ones(2, 1, 3)))
    same_error(lambda m: m.ones(2).fill_(m.ones(2)))
    same_error(lambda m: m.ones(1).expand(3).add_(1))
    a, b = (m.ones(2, dtype=m.int64).div_(2, rounding_mode="floor") for m in (tn, torch))
    assert_same(a, b)
    a, b = (m.ones(2, dtype=m.int64).add_(m.ones(2, dtype=m.bool)) for m in (tn, torch))
    assert_same(a, b)


def test_inplace_on_leaf_requiring_grad_errors():
    for op in (lambda x, m: x.add_(1), lambda x, m: x.zero_(), lambda x, m: x.fill_(1),
               lambda x, m: x.copy_(m.ones(2)), lambda x, m: x.mul_(2),
               lambda x, m: x.clamp_(0, 1), lambda x, m: x.__iadd__(1)):
        same_error(lambda m: op(m.ones(2, requires_grad=True), m))
        same_error(lambda m: op(m.ones(3, requires_grad=True)[1:], m))
        same_error(lambda m: op(m.ones(2, 2, requires_grad=True).t()[0], m))


def test_inplace_on_leaf_allowed_under_no_grad():
    def run(m):
        w = m.ones(3, requires_grad=True)
        with m.no_grad():
            w.mul_(2)
            w[0] = 5.0
            w.add_(m.ones(3), alpha=-0.5)
        assert w.is_leaf and w.requires_grad and w.grad_fn is None
        (w * w).sum().backward()
        return w, w.grad, w._version
    (a, ga, va), (b, gb, vb) = run(tn), run(torch)
    assert_same(a, b)
    assert_same(ga, gb)
    assert va == vb


def test_data_aliasing():
    def run(m):
        f = m.ones(3, requires_grad=True)
        d = f.data
        f.data.sub_(0.5)
        d.mul_(4)
        assert f.is_leaf and f.requires_grad and not d.requires_grad
        return f, f._version, d._version
    (a, va, da), (b, vb, db) = run(tn), run(torch)
    assert_same(a, b)
    assert (va, da) == (vb, db)


def test_data_assignment_and_parameter_style_update():
    def run(m):
        w = m.ones(3, requires_grad=True)
        (w * m.tensor([1.0, 2.0, 3.0])).sum().backward()
        w.data = w.data - 0.1 * w.grad.data
        w.grad.data.zero_()
        return w, w.grad
    (a, ga), (b, gb) = run(tn), run(torch)
    assert_same(a, b)
    assert_same(ga, gb)


def test_detach_shares_memory_and_version():
    def run(m):
        x = m.ones(3, requires_grad=True)
        y = x * 2
        d = y.detach()
        d.add_(1)
        return y, y._version, d._version, d.requires_grad
    (a, *ra), (b, *rb) = run(tn), run(torch)
    assert_same(a, b)
    assert ra == rb


def test_detach_inplace():
    def run(m):
        x = m.ones(3, requires_grad=True)
        y = x * 2
        y.detach_()
        return y.requires_grad, y.is_leaf, y.grad_fn is None
    assert run(tn) == run(torch)
    same_error(lambda m: (m.ones(3, requires_grad=True) * 2)[1:].detach_())


def test_views_share_memory_and_version_counter():
    for make_view in (lambda x: x[0], lambda x: x[:, 1], lambda x: x.view(6), lambda x: x.t(),
                      lambda x: x.reshape(3, 2), lambda x: x.unsqueeze(0), lambda x: x[None, 1:],
                      lambda x: x.transpose(0, 1), lambda x: x.permute(1, 0),
                      lambda x: x.flatten(), lambda x: x.narrow(1, 1, 2), lambda x: x.select(0, 1),
                      lambda x: x.expand(2, 2, 3), lambda x: x.squeeze(), lambda x: x.T,
                      lambda x: x.unflatten(1, (3, 1)), lambda x: x.split(1)[1],
                      lambda x: x.chunk(3, 1)[2], lambda x: x.unbind(1)[0], lambda x: x[...]):
        def run(m):
            x = m.zeros(2, 3)
            v = make_view(x)
            x.add_(1)
            before = v.sum().item()
            if v.numel() and v._version == x._version and m is not torch:
                assert np.shares_memory(v.numpy(), x.numpy())
            x[1] = 5.0
            return before, v.sum().item(), v._version, x._version
        assert run(tn) == run(torch)


def test_writes_through_views_reach_the_base():
    def run(m):
        x = m.zeros(2, 3)
        x[0].fill_(1)
        x.t()[2].add_(3)
        x.view(6)[4] = 9
        x[:, 0:1].mul_(2)
        x.unsqueeze(0)[0, 1, 1] = -1
        x.narrow(1, 0, 1).sub_(1)
        return x, x._version
    (a, va), (b, vb) = run(tn), run(torch)
    assert_same(a, b)
    assert va == vb


def test_copies_do_not_share_memory_or_version():
    for make_copy in (lambda x: x[m_idx(x)], lambda x: x.t().reshape(6),
                      lambda x: x[x > 0], lambda x: x.clone(), lambda x: x.flip(0),
                      lambda x: x.contiguous() if not x.is_contiguous() else x.clone(),
                      lambda x: x.t().contiguous(), lambda x: x.repeat(1, 2), lambda x: x.float()):
        def run(m):
            x = m.ones(2, 3)
            c = make_copy(x)
            c.add_(1) if c.dtype.is_floating_point else None
            return x.sum().item(), x._version, c._version
        assert run(tn) == run(torch)


def m_idx(x):
    return (tn if isinstance(x, tn.Tensor) else torch).tensor([1, 0])


def test_version_counter_matches_torch():
    def run(m):
        x = m.zeros(3, 4)
        versions = []
        for op in (lambda: x.add_(1), lambda: x.sub_(1), lambda: x.mul_(2), lambda: x.div_(2),
                   lambda: x.zero_(), lambda: x.fill_(3), lambda: x.copy_(m.ones(4)),
                   lambda: x.clamp_(0, 1), lambda: x.__setitem__(0, 1.0),
                   lambda: x.__setitem__(m.tensor([0, 1]), 1.0), lambda: x[0].add_(1),
                   lambda: x.t().mul_(1), lambda: x.view(12).add_(1), lambda: x.data.add_(1),
                   lambda: x.detach().add_(1), lambda: x.__iadd__(1), lambda: x + 1,
                   lambda: x.masked_fill_(x > 0, 1.0), lambda: x.pow_(2), lambda: x.neg_(),
                   lambda: x.exp_(), lambda: x.uniform_(), lambda: x.normal_(),
                   lambda: x.__setitem__(x > 0, 1.0), lambda: x.sum(), lambda: x.abs_(),
                   lambda: x.sqrt_(), lambda: x.sigmoid_(), lambda: x.tanh_(),
                   lambda: x.relu_(), lambda: x.requires_grad_(), lambda: x.detach_()):
            op()
            versions.append(x._version)
        return versions
    assert run(tn) == run(torch)


def test_version_of_tensors_in_autograd():
    def run(m):
        x = m.ones(3, requires_grad=True)
        y = x * 2
        y.add_(1)
        y[0] = 0.0
        (y.sum()).backward()
        return x._version, y._version, x.grad._version
    assert run(tn) == run(torch)


@pytest.mark.parametrize("case", [
    "sigmoid_mul", "exp_add", "tanh_data_ok", "pow_add", "x_times_w_modified_x",
    "mm_weight_under_no_grad", "view_modified", "saved_output_via_view", "sqrt_zero",
])
def test_modified_saved_tensor_error_at_backward(case):
    def run(m):
        x = m.tensor([0.5, 1.0, 2.0], requires_grad=True)
        if case == "sigmoid_mul":
            y = x.sigmoid()
            y.mul_(2)
            out = y.sum()
        elif case == "exp_add":
            z = (x * 2).exp()
            z.add_(1)
            out = z.sum()
        elif case == "tanh_data_ok":
            y = x.tanh()
            y.data.mul_(2)  # .data is not tracked: no error, a (silently) different gradient
            out = y.sum()
        elif case == "pow_add":
            y = x * 2
            z = y ** 3
            y.add_(1)
            out = z.sum()
        elif case == "x_times_w_modified_x":
            w = m.ones(3)
            out = (x * w).sum()
            w.add_(1)
        elif case == "mm_weight_under_no_grad":
            w = m.ones(2, 3, requires_grad=True)
            out = (w @ x).sum()
            with m.no_grad():
                x.mul_(2)
        elif case == "view_modified":
            y = x * 1
            v = y[1:]
            z = v.exp()
            y[2] = 0.0
            out = z.sum()
        elif case == "saved_output_via_view":
            y = x.exp()
            y[0:1].mul_(2)
            out = y.sum()
        else:
            y = x.sqrt()
            y.zero_()
            out = y.sum()
        out.backward()
        return x.grad

    try:
        expected = run(torch)
    except RuntimeError as e:
        assert str(e).startswith(INPLACE_PREFIX)
        with pytest.raises(RuntimeError) as ours:
            run(tn)
        assert type(ours.value) is type(e)
        assert str(ours.value).startswith(INPLACE_PREFIX)
        # the tensor description (dtype and shape) matches torch's too
        assert str(ours.value).split("]")[0] == str(e).split("]")[0]
    else:
        assert_same(run(tn), expected)


def test_inplace_not_on_saved_tensors_is_fine():
    def run(m):
        x = m.tensor([0.5, 1.0, 2.0], requires_grad=True)
        y = x * 1
        z = y * 2           # multiplying by a number saves only the number
        y.mul_(3)
        u = (x + 1).relu()  # relu saves its output: modifying u would be an error, y is fine
        y.add_(u)
        (z.sum() + y.sum()).backward()
        return x.grad
    assert_same(run(tn), run(torch))


def test_multiple_inplace_on_non_leaf_chain():
    def run(m):
        x = m.tensor([0.5, -1.0, 2.0], requires_grad=True)
        y = x.clone()
        y.mul_(2).add_(1).clamp_(min=0).pow_(2)
        y[1] = y[2] * 0.5
        y.sum().backward()
        return y, x.grad
    (a, ga), (b, gb) = run(tn), run(torch)
    assert_same(a, b)
    assert_same(ga, gb)


def test_inplace_makes_non_grad_tensor_require_grad():
    def run(m):
        w = m.tensor([1.0, 2.0], requires_grad=True)
        y = m.zeros(2)
        y.add_(w * 3)
        assert y.requires_grad and not y.is_leaf
        (y ** 2).sum().backward()
        return w.grad, type(y.grad_fn).__name__
    (ga, na), (gb, nb) = run(tn), run(torch)
    assert_same(ga, gb)
    assert na == nb


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(sorted(INPLACE_CASES)), min_size=1, max_size=4),
       st.sampled_from(["none", "row", "col", "t"]))
def test_inplace_sequences_through_views_hypothesis(names, view):
    """Any chain of in-place ops, applied through a view of a non-leaf, gives torch's values
    and gradients."""
    def run(m):
        x = start(m, "float64").requires_grad_()
        y = x * 1.25 + 0.5
        target = {"none": lambda t: t, "row": lambda t: t[1], "col": lambda t: t[:, 1:],
                  "t": lambda t: t.t()}[view](y)
        for name in names:
            if name in ("mul_tensor", "div_tensor", "sub_alpha", "add_tensor", "add_alpha",
                        "isub", "copy_", "copy_broadcast", "copy_cast", "clamp_tensor") \
                    and view != "none":
                continue  # these operands are shaped for the full 2x3 tensor
            INPLACE_CASES[name](target, m)
        w = m.arange(6.0, dtype=m.float64).reshape(2, 3) - 2.5
        (y * w).sum().backward()
        return y, x.grad
    try:
        b, gb = run(torch)
    except RuntimeError as e:  # an op saved a value a later op modified: ours must notice too
        with pytest.raises(RuntimeError) as ours:
            run(tn)
        assert str(e).startswith(INPLACE_PREFIX) and str(ours.value).startswith(INPLACE_PREFIX)
        return
    a, ga = run(tn)
    assert_same(a, b)
    assert_same(ga, gb)


def test_random_inplace_initialisers_keep_shape_and_dtype():
    x = tn.empty(200, dtype=tn.float64)
    x.uniform_(-2, 3)
    assert x.dtype is tn.float64 and -2 <= x.min().item() and x.max().item() < 3
    x.normal_(1.0, 0.5)
    assert abs(x.mean().item() - 1.0) < 0.2
    y = tn.empty(100, dtype=tn.int64).random_(0, 4)
    assert set(y.tolist()) <= {0, 1, 2, 3}
    z = tn.empty(100).bernoulli_(0.3)
    assert set(z.tolist()) <= {0.0, 1.0}
    assert x._version == 2 and y._version == 1
