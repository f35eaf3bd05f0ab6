"""Sorting, scans and structured selections against PyTorch: values, dtypes, gradients,
grad_fn names and errors."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn.functional as TF
from tracenet.ir import interpret, verify
from tracenet.passes.decompose import decompose
from tracenet.codegen.base import has_lowering
from tracenet.trace import trace

torch = pytest.importorskip("torch")

rng = np.random.default_rng(7)


def _pair(a, requires_grad=False):
    t = tn.from_numpy(a.copy())
    o = torch.from_numpy(a.copy())
    if requires_grad:
        t.requires_grad_(True)
        o.requires_grad_(True)
    return t, o


def _same(got, want, tol=1e-6):
    assert str(got.dtype).split(".")[-1] == str(want.dtype).split(".")[-1], (got.dtype,
                                                                              want.dtype)
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=tol, atol=tol)


def _grad_check(fn_t, fn_o, a, tol=1e-6):
    """Values, grad_fn name and input gradient under a random cotangent."""
    t, o = _pair(a, True)
    yt, yo = fn_t(t), fn_o(o)
    _same(yt, yo, tol)
    assert type(yt.grad_fn).__name__ == type(yo.grad_fn).__name__
    cot = rng.standard_normal(tuple(yo.shape)).astype(a.dtype)
    yt.backward(tn.from_numpy(cot.copy()))
    yo.backward(torch.from_numpy(cot.copy()))
    np.testing.assert_allclose(t.grad.numpy(), o.grad.numpy(), rtol=tol, atol=tol)


def _errors_alike(fn_t, fn_o):
    with pytest.raises(Exception) as eo:
        fn_o()
    with pytest.raises(type(eo.value)) as et:
        fn_t()
    assert str(et.value).splitlines()[0] == str(eo.value).splitlines()[0]


SHAPES = [(5,), (3, 4), (2, 3, 5)]


# --- sort / argsort / topk --------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sort_values_indices_and_grad(shape, descending, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    for dim in range(-len(shape), len(shape)):
        t, o = _pair(a)
        vt, it = tn.sort(t, dim, descending)
        vo, io = torch.sort(o, dim, descending)
        _same(vt, vo)
        _same(it, io)
        _same(t.argsort(dim, descending), o.argsort(dim, descending))
        _grad_check(lambda x: x.sort(dim, descending=descending)[0],
                    lambda x: x.sort(dim, descending=descending)[0], a)


@pytest.mark.parametrize("descending", [False, True])
def test_stable_sort_with_ties_ints_and_bools(descending):
    a = rng.integers(0, 3, (4, 9))
    t, o = _pair(a)
    for dim in (0, 1):
        vt, it = t.sort(dim, descending=descending, stable=True)
        vo, io = o.sort(dim=dim, descending=descending, stable=True)
        _same(vt, vo)
        _same(it, io)
        _same(tn.argsort(t, dim, descending, stable=True),
              torch.argsort(o, dim=dim, descending=descending, stable=True))
    b = a > 1
    t, o = _pair(b)
    _same(t.sort(stable=True, descending=descending)[1],
          o.sort(stable=True, descending=descending)[1])
    assert type(tn.randn(3, requires_grad=True).sort(stable=True)[0].grad_fn).__name__ == \
        "SortBackward1"


def test_sort_puts_nan_last_and_first():
    a = np.array([1.0, np.nan, -2.0, 3.0])
    t, o = _pair(a)
    for desc in (False, True):
        _same(t.sort(descending=desc)[1], o.sort(descending=desc)[1])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("largest", [True, False])
def test_topk(shape, largest):
    a = rng.standard_normal(shape)
    for dim in range(len(shape)):
        for k in (0, 1, shape[dim]):
            t, o = _pair(a)
            vt, it = t.topk(k, dim, largest)
            vo, io = o.topk(k, dim, largest)
            _same(vt, vo)
            _same(it, io)
        _grad_check(lambda x: tn.topk(x, 1, dim, largest)[0],
                    lambda x: torch.topk(x, 1, dim, largest)[0], a)
    # unsorted: the same set
    t, o = _pair(a)
    vt = t.topk(2, 0, largest, sorted=False).values.numpy()
    vo = o.topk(2, 0, largest, sorted=False).values.numpy()
    np.testing.assert_allclose(np.sort(vt, 0), np.sort(vo, 0))


def test_topk_and_sort_return_types():
    t = tn.randn(3, 4)
    r = t.topk(2)
    assert r.values is r[0] and r.indices is r[1]
    assert "torch.return_types.topk" in repr(r)
    assert "torch.return_types.sort" in repr(t.sort())


def test_sort_topk_errors():
    a = rng.standard_normal((3, 4))
    t, o = _pair(a)
    _errors_alike(lambda: t.topk(5, 1), lambda: o.topk(5, 1))
    _errors_alike(lambda: t.topk(-1), lambda: o.topk(-1))
    _errors_alike(lambda: t.topk(4, 0), lambda: o.topk(4, 0))
    _errors_alike(lambda: t.sort(2), lambda: o.sort(2))
    _errors_alike(lambda: t.argsort(-3), lambda: o.argsort(-3))


# --- cumsum / cumprod ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
def test_scans_values_and_grads(shape, op):
    a = rng.standard_normal(shape)
    for dim in range(-len(shape), len(shape)):
        _grad_check(lambda x: getattr(x, op)(dim), lambda x: getattr(x, op)(dim), a)
        _grad_check(lambda x: getattr(tn, op)(x, dim), lambda x: getattr(torch, op)(x, dim),
                    a.astype(np.float32), tol=1e-5)


@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
def test_scan_dtypes(op):
    ints = rng.integers(-3, 4, (3, 4))
    t, o = _pair(ints)
    _same(getattr(t, op)(1), getattr(o, op)(1))
    _same(getattr(t, op)(1, dtype=tn.float32), getattr(o, op)(1, dtype=torch.float32))
    b = ints > 0
    t, o = _pair(b)
    _same(getattr(t, op)(0), getattr(o, op)(0))
    a = rng.standard_normal((3, 4)).astype(np.float32)
    _grad_check(lambda x: getattr(x, op)(0, dtype=tn.float64),
                lambda x: getattr(x, op)(0, dtype=torch.float64), a)
    t, o = _pair(np.array(2.5))
    _same(getattr(t, op)(0), getattr(o, op)(0))


@pytest.mark.parametrize("row", [
    [0.5, 1.5, 0.0, 2.0, -3.0],     # one zero
    [0.0, 1.5, 2.0, 0.0, 4.0],      # zero first and a second zero
    [1.0, 0.0, 0.0, 3.0, 2.0],      # consecutive zeros
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [2.0, -1.0, 3.0, 0.5, 1.5],     # no zero
])
def test_cumprod_gradient_with_zeros(row):
    a = np.array([row, row[::-1]])
    for dim in (1, 0):
        _grad_check(lambda x: x.cumprod(dim), lambda x: x.cumprod(dim), a)


def test_scan_errors():
    t, o = _pair(rng.standard_normal((3, 4)))
    _errors_alike(lambda: t.cumsum(2), lambda: o.cumsum(2))
    _errors_alike(lambda: t.cumprod(-3), lambda: o.cumprod(-3))


# --- tril / triu --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 2), (2, 3, 4)])
@pytest.mark.parametrize("op", ["tril", "triu"])
def test_tril_triu(shape, op):
    a = rng.standard_normal(shape)
    for diagonal in (-6, -1, 0, 1, 2, 7):
        _grad_check(lambda x: getattr(x, op)(diagonal), lambda x: getattr(x, op)(diagonal), a)
        t, o = _pair(a > 0)
        _same(getattr(tn, op)(t, diagonal), getattr(torch, op)(o, diagonal))
        t, o = _pair(rng.integers(0, 5, shape))
        _same(getattr(tn, op)(t, diagonal=diagonal), getattr(torch, op)(o, diagonal=diagonal))


def test_tril_triu_in_place_and_errors():
    a = rng.standard_normal((3, 4))
    t, o = _pair(a)
    t.tril_(1)
    o.tril_(1)
    _same(t, o)
    t.triu_()
    o.triu_()
    _same(t, o)
    t, o = _pair(rng.standard_normal(4))
    _errors_alike(lambda: t.tril(), lambda: o.tril())
    _errors_alike(lambda: t.triu(), lambda: o.triu())


# --- roll ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shifts,dims", [(1, None), (-7, None), (2, 0), (-1, 1), ((1, 3), (0, 1)),
                                         ((5, -2), (-1, 0)), ((1, 1), (1, 1)), (0, 1)])
def test_roll(shifts, dims):
    a = rng.standard_normal((3, 4))
    _grad_check(lambda x: x.roll(shifts, dims), lambda x: x.roll(shifts, dims), a)
    t, o = _pair(rng.integers(0, 9, (3, 4)))
    _same(tn.roll(t, shifts, dims), torch.roll(o, shifts, dims))


def test_roll_errors():
    t, o = _pair(rng.standard_normal((3, 4)))
    _errors_alike(lambda: t.roll((1, 2), (0,)), lambda: o.roll((1, 2), (0,)))
    _errors_alike(lambda: t.roll(1, 5), lambda: o.roll(1, 5))
    _errors_alike(lambda: t.roll((), ()), lambda: o.roll((), ()))


# --- diag ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (1,), (3, 3), (3, 5), (5, 2)])
def test_diag(shape):
    a = rng.standard_normal(shape)
    for d in (-3, -1, 0, 1, 2):
        _grad_check(lambda x: tn.diag(x, d), lambda x: torch.diag(x, d), a)
        t, o = _pair(rng.integers(0, 9, shape))
        _same(t.diag(d), o.diag(d))


def test_diag_errors():
    t, o = _pair(rng.standard_normal((2, 2, 2)))
    _errors_alike(lambda: tn.diag(t), lambda: torch.diag(o))


# --- one_hot ------------------------------------------------------------------------------------


def test_one_hot():
    a = np.array([[0, 3, 1], [2, 2, 0]])
    t, o = _pair(a)
    _same(TF.one_hot(t), torch.nn.functional.one_hot(o))
    _same(TF.one_hot(t, 6), torch.nn.functional.one_hot(o, 6))
    _same(TF.one_hot(t[0], num_classes=-1), torch.nn.functional.one_hot(o[0], num_classes=-1))
    t, o = _pair(np.array(2))
    _same(TF.one_hot(t, 3), torch.nn.functional.one_hot(o, 3))
    t, o = _pair(np.zeros((0,), np.int64))
    _same(TF.one_hot(t, 3), torch.nn.functional.one_hot(o, 3))


def test_one_hot_errors():
    F = torch.nn.functional
    for a, n in [(np.array([-1, 2]), -1), (np.array([-1, 2]), 4), (np.array([1, 2]), 2),
                 (np.zeros((0,), np.int64), -1), (np.array([1.0, 2.0]), 3)]:
        t, o = _pair(a)
        _errors_alike(lambda: TF.one_hot(t, n), lambda: F.one_hot(o, n))


# --- bincount / unique ---------------------------------------------------------------------------


def test_bincount():
    a = rng.integers(0, 6, 20)
    t, o = _pair(a)
    _same(tn.bincount(t), torch.bincount(o))
    _same(t.bincount(minlength=10), o.bincount(minlength=10))
    _same(t.bincount(minlength=2), o.bincount(minlength=2))
    for w in (rng.random(20).astype(np.float32), rng.random(20), rng.integers(0, 3, 20),
              rng.random(20) > 0.5):
        wt, wo = _pair(w)
        _same(tn.bincount(t, wt), torch.bincount(o, wo))
    t, o = _pair(np.zeros((0,), np.int64))
    _same(tn.bincount(t), torch.bincount(o))
    _same(tn.bincount(t, minlength=3), torch.bincount(o, minlength=3))


def test_bincount_errors():
    for a, kw in [(np.array([-1, 2]), {}), (np.array([[1]]), {}), (np.array([1.0]), {}),
                  (np.array([1]), {"minlength": -1})]:
        t, o = _pair(a)
        _errors_alike(lambda: tn.bincount(t, **kw), lambda: torch.bincount(o, **kw))
    t, o = _pair(np.array([1]))
    _errors_alike(lambda: tn.bincount(t, tn.tensor([1.0, 2.0])),
                  lambda: torch.bincount(o, torch.tensor([1.0, 2.0])))


@pytest.mark.parametrize("a", [rng.integers(0, 5, (3, 4)), rng.integers(-2, 2, 7),
                               np.array([1.5, -1.0, 1.5, 0.0]), np.array([True, False, True])])
def test_unique(a):
    t, o = _pair(a)
    for sorted_ in (True, False):
        for inv in (False, True):
            for counts in (False, True):
                got = tn.unique(t, sorted=sorted_, return_inverse=inv, return_counts=counts)
                want = torch.unique(o, sorted=sorted_, return_inverse=inv,
                                    return_counts=counts)
                if isinstance(want, tuple):
                    assert len(got) == len(want)
                    for g, w in zip(got, want):
                        _same(g, w)
                else:
                    _same(got, want)
    _same(t.unique(), o.unique())


def test_unique_dim():
    a = np.array([[1, 2], [0, 1], [1, 2]])
    t, o = _pair(a)
    for dim in (0, 1):
        got = tn.unique(t, return_inverse=True, return_counts=True, dim=dim)
        want = torch.unique(o, return_inverse=True, return_counts=True, dim=dim)
        for g, w in zip(got, want):
            _same(g, w)


# --- multinomial --------------------------------------------------------------------------------


def test_multinomial_with_replacement_follows_the_probabilities():
    tn.manual_seed(0)
    p = tn.tensor([0.1, 0.0, 0.6, 0.3])
    s = tn.multinomial(p, 20000, replacement=True)
    assert s.dtype == tn.int64 and tuple(s.shape) == (20000,)
    freq = np.bincount(s.numpy(), minlength=4) / 20000
    np.testing.assert_allclose(freq, [0.1, 0.0, 0.6, 0.3], atol=0.02)
    rows = tn.tensor([[1.0, 3.0], [5.0, 0.0]]).multinomial(4000, True)
    assert tuple(rows.shape) == (2, 4000)
    assert abs(rows[0].float().mean().item() - 0.75) < 0.04
    assert (rows[1] == 0).all().item()


def test_multinomial_without_replacement():
    tn.manual_seed(1)
    p = tn.tensor([[0.2, 0.5, 0.3, 0.0, 1.0]]).expand(3000, 5).contiguous()
    s = tn.multinomial(p, 3)
    assert tuple(s.shape) == (3000, 3)
    arr = s.numpy()
    assert all(len(set(row)) == 3 for row in arr)    # distinct categories in a row
    assert not (arr == 3).any()                       # zero probability never drawn
    first = np.bincount(arr[:, 0], minlength=5) / 3000
    np.testing.assert_allclose(first, [0.1, 0.25, 0.15, 0.0, 0.5], atol=0.03)
    full = tn.multinomial(tn.tensor([1.0, 2.0, 3.0]), 3).numpy()
    assert sorted(full.tolist()) == [0, 1, 2]


def test_multinomial_errors():
    cases = [(np.array([0.5, 0.5]), 3, False), (np.array([-0.5, 0.5]), 1, False),
             (np.array([0.0, 0.0]), 1, True), (np.zeros((2, 2, 2)), 1, False),
             (np.array([0.0, 1.0]), 0, False), (np.array([np.inf, 1.0]), 1, True)]
    for a, n, rep in cases:
        t, o = _pair(a)
        _errors_alike(lambda: tn.multinomial(t, n, rep), lambda: torch.multinomial(o, n, rep))


# --- repeat_interleave ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 3, 2)])
def test_repeat_interleave_int(shape):
    a = rng.standard_normal(shape)
    for reps in (0, 1, 3):
        _grad_check(lambda x: x.repeat_interleave(reps), lambda x: x.repeat_interleave(reps), a)
        for dim in range(-len(shape), len(shape)):
            _grad_check(lambda x: tn.repeat_interleave(x, reps, dim),
                        lambda x: torch.repeat_interleave(x, reps, dim), a)


def test_repeat_interleave_tensor():
    a = rng.standard_normal((3, 4))
    for reps, dim in [([1, 0, 2], 0), ([2, 1, 1, 3], 1), ([2], 1), ([1] * 12, None)]:
        _grad_check(lambda x: x.repeat_interleave(tn.tensor(reps), dim),
                    lambda x: x.repeat_interleave(torch.tensor(reps), dim), a)
    _same(tn.repeat_interleave(tn.tensor([2, 0, 1])),
          torch.repeat_interleave(torch.tensor([2, 0, 1])))
    t, o = _pair(rng.integers(0, 5, (2, 2)))
    _same(t.repeat_interleave(tn.tensor(3), 1), o.repeat_interleave(torch.tensor(3), 1))


def test_repeat_interleave_errors():
    t, o = _pair(rng.standard_normal((3, 4)))
    _errors_alike(lambda: t.repeat_interleave(tn.tensor([1, 2])),
                  lambda: o.repeat_interleave(torch.tensor([1, 2])))
    _errors_alike(lambda: t.repeat_interleave(tn.tensor([1, -2, 1]), dim=0),
                  lambda: o.repeat_interleave(torch.tensor([1, -2, 1]), dim=0))
    _errors_alike(lambda: t.repeat_interleave(-1), lambda: o.repeat_interleave(-1))
    _errors_alike(lambda: t.repeat_interleave(2, 2), lambda: o.repeat_interleave(2, 2))


# --- masked_fill --------------------------------------------------------------------------------


def test_masked_fill():
    a = rng.standard_normal((3, 4))
    m = rng.random((1, 4)) > 0.5
    mt, mo = _pair(m)
    _grad_check(lambda x: x.masked_fill(mt, 2.5), lambda x: x.masked_fill(mo, 2.5), a)
    _grad_check(lambda x: tn.masked_fill(x, mt, tn.tensor(-1.0)),
                lambda x: torch.masked_fill(x, mo, torch.tensor(-1.0)), a)


# --- the compiler: decompositions of the two diag directions, eager-only reasons -----------------


@pytest.mark.parametrize("fn,shape", [
    (lambda x: tn.diag(x, -1), (4,)), (lambda x: tn.diag(x, 2), (3,)),
    (lambda x: tn.diag(x, -2), (5, 3)), (lambda x: tn.diag(x), (2, 4)),
    (lambda x: x.roll(3), (3, 4)), (lambda x: x.roll((-1, 2), (1, 0)), (3, 4)),
    (lambda x: x.triu(-1), (2, 3, 4)),
])
def test_decompositions_match_eager(fn, shape):
    a = rng.standard_normal(shape)
    x = tn.from_numpy(a.copy())
    expected = fn(x).numpy()
    graph = trace(fn, tn.from_numpy(a.copy()))
    decompose(graph, has_lowering)
    verify(graph)
    assert all(has_lowering(n.op) for n in graph.nodes if n.op != "constant"), str(graph)
    (out,) = interpret(graph, x)
    np.testing.assert_allclose(out, expected)


def test_data_dependent_ops_are_eager_only():
    from tracenet.ops.registry import REGISTRY
    for name in ("unique", "bincount"):
        assert "data" in REGISTRY[name].eager_only
    for name in ("sort", "topk", "cumsum", "cumprod"):
        assert REGISTRY[name].eager_only
    for name in ("tril", "triu", "roll", "diag", "one_hot"):
        assert REGISTRY[name].decomposition is not None
