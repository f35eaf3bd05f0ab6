"""Tensor math against PyTorch: broadcasting arithmetic, Python scalars and reflected operators,
matrix products, unary math, clamp, reductions, comparisons, where and integer division."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import tracenet as tn  # noqa: E402


@pytest.fixture(autouse=True)
def restore_defaults():
    yield
    tn.set_default_dtype(tn.float32)
    torch.set_default_dtype(torch.float32)


def both(fn):
    return fn(tn), fn(torch)


def assert_same(got, expected, rtol=1e-6, atol=1e-6, exact=False):
    assert tuple(got.shape) == tuple(expected.shape), (got.shape, expected.shape)
    assert repr(got.dtype) == repr(expected.dtype), (got.dtype, expected.dtype)
    g, e = got.detach().numpy(), expected.detach().numpy()
    if exact or g.dtype.kind in "biu":
        np.testing.assert_array_equal(g, e)
    else:
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)


def same_error(fn, exc=RuntimeError, match_message=True):
    with pytest.raises(exc) as ours:
        fn(tn)
    with pytest.raises(exc) as theirs:
        fn(torch)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    if match_message:
        assert str(ours.value) == str(theirs.value)
    return str(ours.value)


def pair(arr, dtype=None):
    """The same data as a tracenet and a torch tensor."""
    arr = np.asarray(arr)
    if dtype is not None:
        arr = arr.astype(dtype)
    return tn.tensor(arr.copy()), torch.tensor(arr.copy())


def data(*shape, dtype=np.float32, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        a = rng.standard_normal(shape).astype(dtype)
        return np.abs(a) + 0.5 if positive else a
    if np.dtype(dtype).kind == "b":
        return rng.random(shape) > 0.5
    a = rng.integers(-5, 6, shape).astype(dtype)
    return np.where(a == 0, 1, a) if positive else a


# --- binary arithmetic with broadcasting ----------------------------------------------------

BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a.abs() ** b if a.dtype.is_floating_point
    else a ** b.abs(), "maximum": lambda a, b: (torch if isinstance(a, torch.Tensor) else tn)
    .maximum(a, b), "minimum": lambda a, b: (torch if isinstance(a, torch.Tensor) else tn)
    .minimum(a, b), "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b,
    "add_alpha": lambda a, b: a.add(b, alpha=2), "sub_alpha": lambda a, b: a.sub(b, alpha=3),
}


def broadcastable_shapes():
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4)


@settings(max_examples=60, deadline=None)
@given(broadcastable_shapes(), st.sampled_from(sorted(BINARY)),
       st.sampled_from([np.float32, np.float64, np.int64]), st.integers(0, 2 ** 16))
def test_binary_broadcasting_hypothesis(shapes, name, dtype, seed):
    sa, sb = shapes.input_shapes
    positive = name in ("div", "floordiv", "mod")
    ta, ra = pair(data(*sa, dtype=dtype, seed=seed))
    tb, rb = pair(data(*sb, dtype=dtype, seed=seed + 1, positive=positive))
    if name == "pow" and dtype == np.int64:
        tb, rb = tb.clamp(0, 3), rb.clamp(0, 3)
    ours, theirs = BINARY[name](ta, tb), BINARY[name](ra, rb)
    assert tuple(ours.shape) == tuple(shapes.result_shape)
    assert_same(ours, theirs, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(BINARY)), st.sampled_from([np.float32, np.float64, np.int64,
                                                          np.bool_]),
       st.sampled_from([2, -3, 2.5, -0.5, True]), st.booleans(), st.integers(0, 1000))
def test_binary_with_python_scalars_hypothesis(name, dtype, scalar, reflected, seed):
    if name in ("floordiv", "mod", "div") and scalar is True:
        scalar = 3
    ta, ra = pair(data(2, 3, dtype=dtype, seed=seed, positive=True))

    def run(x):
        if name == "pow":
            return (scalar ** x.abs() if dtype != np.bool_ else scalar ** x) if reflected \
                else (x.abs() ** scalar if dtype != np.bool_ else x ** scalar)
        if name in ("add_alpha", "sub_alpha", "maximum", "minimum"):
            return None
        return BINARY[name](scalar, x) if reflected else BINARY[name](x, scalar)

    try:
        theirs = run(ra)
    except RuntimeError as e:
        with pytest.raises(RuntimeError) as ours:
            run(ta)
        assert str(ours.value) == str(e)
        return
    ours = run(ta)
    if theirs is None:
        return
    assert_same(ours, theirs, rtol=1e-5, atol=1e-5)


def test_broadcast_error_matches_torch():
    same_error(lambda m: m.ones(2, 3) + m.ones(4))
    same_error(lambda m: m.ones(2, 3) * m.ones(3, 3))
    same_error(lambda m: m.ones(5, 2, 3) - m.ones(4, 1, 3))


@pytest.mark.parametrize("expr", [
    lambda x: 2 - x, lambda x: 2 / x, lambda x: 2 ** x, lambda x: x ** 2, lambda x: 2 + x,
    lambda x: 2 * x, lambda x: 2.5 - x, lambda x: 2.5 / x, lambda x: 0.5 ** x, lambda x: x ** 0.5,
    lambda x: x ** -1, lambda x: x ** 0, lambda x: x ** 1, lambda x: x ** 3, lambda x: -x,
    lambda x: +x, lambda x: abs(x), lambda x: x ** -2.0, lambda x: 2 // x, lambda x: 7 % x,
    lambda x: x % 3, lambda x: x // 3, lambda x: x % -3, lambda x: x // -2.5,
    lambda x: x % 2.5, lambda x: -7 // x, lambda x: -7 % x,
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_scalar_and_reflected_operators(expr, dtype):
    arr = np.array([[1, 2, 3], [4, 5, 7]], dtype=dtype)
    if dtype != np.int64:
        arr = arr * np.array(0.75, dtype)
    ta, ra = pair(arr)
    try:
        theirs = expr(ra)
    except RuntimeError as e:
        with pytest.raises(RuntimeError) as ours:
            expr(ta)
        assert str(ours.value) == str(e)
        return
    assert_same(expr(ta), theirs, rtol=1e-6)


def test_integer_division_rules():
    ta, ra = pair([-7, -6, 5, 6, 7], np.int64)
    tb, rb = pair([2, -4, 3, -3, 7], np.int64)
    for expr in (lambda a, b: a / b, lambda a, b: a // b, lambda a, b: a % b,
                 lambda a, b: a / 2, lambda a, b: a // 2, lambda a, b: a % 2,
                 lambda a, b: a.div(b, rounding_mode="trunc"),
                 lambda a, b: a.div(b, rounding_mode="floor"),
                 lambda a, b: a.div(2.5, rounding_mode="floor"),
                 lambda a, b: a.float().div(b, rounding_mode="trunc"),
                 lambda a, b: a.true_divide(b), lambda a, b: a.remainder(b),
                 lambda a, b: a.floor_divide(b), lambda a, b: a.double() % b,
                 lambda a, b: a.double() // b, lambda a, b: (a * 1.5) % -2.0):
        assert_same(expr(ta, tb), expr(ra, rb), exact=True)
    big_t, big_r = pair([1000000007, -1000000007, 2 ** 40 + 1, 2 ** 62 - 1], np.int64)
    for expr in (lambda a: a // 3, lambda a: a % 7, lambda a: a.div(3, rounding_mode="trunc"),
                 lambda a: a.div(-3, rounding_mode="floor"), lambda a: a // a.flip(0)):
        assert_same(expr(big_t), expr(big_r), exact=True)
    same_error(lambda m: m.tensor([1, 2]) // 0)
    same_error(lambda m: m.tensor([1, 2]) % m.tensor([1, 0]))
    same_error(lambda m: m.tensor([4]).div(m.tensor([0]), rounding_mode="trunc"))
    a, b = both(lambda m: m.tensor([1, 2]) / 0)
    assert_same(a, b)
    a, b = both(lambda m: m.tensor([1.0, -1.0, 0.0]) // 0)
    assert_same(a, b)
    a, b = both(lambda m: m.tensor([1.0, -1.0, 0.0]) % 0)
    assert_same(a, b)
    a, b = both(lambda m: m.remainder(m.tensor([5, -5]), 3))
    assert_same(a, b)
    a, b = both(lambda m: m.floor_divide(m.tensor([5., -5]), 3))
    assert_same(a, b)
    same_error(lambda m: m.tensor([1.0]).div(2, rounding_mode="round"))


def test_pow_variants():
    ta, ra = pair([[0.5, 1.5], [2.0, 3.0]], np.float32)
    tb, rb = pair([[2.0, -1.0], [0.5, 0.0]], np.float32)
    for expr in (lambda m, a, b: a ** b, lambda m, a, b: m.pow(a, b), lambda m, a, b: a.pow(2),
                 lambda m, a, b: m.pow(a, 3), lambda m, a, b: m.pow(2, a),
                 lambda m, a, b: a ** m.tensor(2), lambda m, a, b: m.tensor(2) ** a,
                 lambda m, a, b: a.square(), lambda m, a, b: m.square(a),
                 lambda m, a, b: m.tensor([2, 3]) ** m.tensor([2, 0]),
                 lambda m, a, b: m.tensor([2, 3]) ** 2.0, lambda m, a, b: 2.0 ** m.tensor([2, 3]),
                 lambda m, a, b: m.tensor([0, 1, -1, 2]) ** m.tensor([-1, -1, -3, -2])):
        assert_same(expr(tn, ta, tb), expr(torch, ra, rb), rtol=1e-6)
    same_error(lambda m: m.tensor([2, 3]) ** -1)
    same_error(lambda m: m.pow(m.tensor([2, 3]), -2))


def test_bool_arithmetic():
    ta, ra = pair([True, False, True])
    tb, rb = pair([True, True, False])
    for expr in (lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a & b,
                 lambda a, b: a | b, lambda a, b: a ^ b, lambda a, b: ~a,
                 lambda a, b: a + 1, lambda a, b: a * 2.5, lambda a, b: a / b.float() + 1,
                 lambda a, b: a.sum(), lambda a, b: a.logical_not(),
                 lambda a, b: a.logical_and(b), lambda a, b: a.logical_or(b)):
        assert_same(expr(ta, tb), expr(ra, rb), exact=True)
    same_error(lambda m: m.tensor([True]) - m.tensor([False]))
    same_error(lambda m: m.tensor([1.0]) - m.tensor([False]))
    same_error(lambda m: 1 - m.tensor([True]))
    same_error(lambda m: m.tensor([2.0]) - True)
    same_error(lambda m: -m.tensor([True]))


def test_integer_bitwise_and_invert():
    ta, ra = pair([5, -3, 0], np.int64)
    for expr in (lambda a: a & 3, lambda a: a | 8, lambda a: a ^ 1, lambda a: ~a):
        assert_same(expr(ta), expr(ra), exact=True)
    same_error(lambda m: m.ones(2) & m.ones(2), NotImplementedError)
    same_error(lambda m: m.ones(2, dtype=m.float64) | 1, NotImplementedError)


def test_function_forms():
    ta, ra = pair(data(2, 3))
    tb, rb = pair(data(2, 3, seed=1, positive=True))
    for name in ("add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt",
                 "ge", "subtract", "multiply", "divide", "true_divide", "greater", "less",
                 "greater_equal", "less_equal", "not_equal"):
        assert_same(getattr(tn, name)(ta, tb), getattr(torch, name)(ra, rb))
    assert_same(tn.add(ta, tb, alpha=2), torch.add(ra, rb, alpha=2))
    assert_same(tn.sub(ta, 1.5, alpha=2), torch.sub(ra, 1.5, alpha=2))
    assert_same(tn.rsub(ta, tb), torch.rsub(ra, rb))
    assert_same(tn.rsub(ta, 2), torch.rsub(ra, 2))


# --- unary math ---------------------------------------------------------------------------

UNARY = ["exp", "log", "sqrt", "tanh", "sigmoid", "abs", "neg", "sin", "cos", "log2", "log1p",
         "expm1", "rsqrt", "reciprocal", "sign", "floor", "ceil", "round", "trunc", "relu",
         "square", "negative", "absolute"]


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_unary(name, dtype):
    positive = name in ("log", "sqrt", "log2", "rsqrt", "log1p", "reciprocal")
    arr = data(3, 4, dtype=dtype, positive=positive)
    if dtype != np.int64:
        arr = arr * 2.5  # round() halfway cases are covered below
    ta, ra = pair(arr)
    try:
        theirs = getattr(ra, name)()
    except RuntimeError as e:
        with pytest.raises(RuntimeError) as ours:
            getattr(ta, name)()
        assert str(ours.value) == str(e)
        return
    assert_same(getattr(ta, name)(), theirs, rtol=2e-6)
    if hasattr(torch, name):
        assert_same(getattr(tn, name)(ta), getattr(torch, name)(ra), rtol=2e-6)


def test_unary_special_values():
    ta, ra = pair([0.0, -0.0, 1e30, -1e30, 0.5, 1.5, 2.5, -0.5, -2.5, 80.0, -80.0, 1e-30],
                  np.float32)
    for name in ("exp", "tanh", "sigmoid", "abs", "sign", "round", "floor", "ceil", "trunc",
                 "relu", "expm1", "log1p"):
        with np.errstate(all="ignore"):
            got = getattr(ta.abs() if name == "log1p" else ta, name)()
        assert_same(got, getattr(ra.abs() if name == "log1p" else ra, name)(), rtol=1e-6)
    with np.errstate(all="ignore"):
        for name in ("log", "sqrt", "rsqrt", "reciprocal"):
            assert_same(getattr(ta, name)(), getattr(ra, name)(), rtol=1e-6)
        assert_same(tn.tensor([-1.0, 0.0]).log(), torch.tensor([-1.0, 0.0]).log())


def test_isnan_isinf_isfinite():
    vals = [0.0, float("nan"), float("inf"), -float("inf"), 1.0]
    ta, ra = pair(vals, np.float32)
    for name in ("isnan", "isinf", "isfinite"):
        assert_same(getattr(ta, name)(), getattr(ra, name)())
        assert_same(getattr(tn, name)(ta), getattr(torch, name)(ra))


@pytest.mark.parametrize("kwargs", [
    {"min": 0.0}, {"max": 0.5}, {"min": -0.5, "max": 0.5}, {"min": 1, "max": 0},
    {"min": 0}, {"min": -1, "max": 2},
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_clamp_scalar_bounds(kwargs, dtype):
    ta, ra = pair(data(3, 4, dtype=dtype) * (1 if dtype == np.int64 else 2))
    assert_same(ta.clamp(**kwargs), ra.clamp(**kwargs), exact=True)
    assert_same(tn.clamp(ta, **kwargs), torch.clamp(ra, **kwargs), exact=True)
    assert_same(ta.clip(**kwargs), ra.clip(**kwargs), exact=True)
    positional = [kwargs.get("min"), kwargs.get("max")]
    assert_same(ta.clamp(*positional), ra.clamp(*positional), exact=True)


def test_clamp_min_max_functions():
    ta, ra = pair(data(3, 4))
    assert_same(ta.clamp_min(0.1), ra.clamp_min(0.1))
    assert_same(ta.clamp_max(0.1), ra.clamp_max(0.1))
    assert_same(tn.clamp_min(ta, 0.1), torch.clamp_min(ra, 0.1))
    assert_same(tn.clamp_max(ta, -0.1), torch.clamp_max(ra, -0.1))


def test_clamp_tensor_bounds():
    ta, ra = pair(data(3, 4))
    lo_t, lo_r = pair(data(3, 4, seed=1) - 0.5)
    hi_t, hi_r = pair(data(1, 4, seed=2) + 0.5)
    assert_same(ta.clamp(lo_t, hi_t), ra.clamp(lo_r, hi_r))
    assert_same(ta.clamp(min=lo_t), ra.clamp(min=lo_r))
    assert_same(ta.clamp(max=hi_t), ra.clamp(max=hi_r))
    assert_same(tn.clamp(ta, tn.tensor(0.0), tn.tensor(0.5)),
                torch.clamp(ra, torch.tensor(0.0), torch.tensor(0.5)))
    s_t, s_r = pair(data(4, seed=3))
    assert_same(ta.clamp(min=s_t), ra.clamp(min=s_r))


def test_clamp_errors_and_dtypes():
    same_error(lambda m: m.ones(2).clamp())
    a, b = both(lambda m: m.tensor([1, 5, 9]).clamp(2.5, 7.5))
    assert_same(a, b)
    a, b = both(lambda m: m.tensor([1, 5, 9]).clamp(m.tensor([2.5]), m.tensor(7)))
    assert_same(a, b)
    a, b = both(lambda m: m.tensor([1., float("nan")]).clamp(0, 2))
    assert_same(a, b)


# --- comparisons, where ---------------------------------------------------------------------


@pytest.mark.parametrize("other", [0.0, 1, lambda m: m.tensor([0.5, 1.0, -1.0]),
                                   lambda m: m.tensor(0.1), lambda m: m.tensor([[0], [1]])])
def test_comparisons(other):
    for op in (lambda a, b: a == b, lambda a, b: a != b, lambda a, b: a < b,
               lambda a, b: a <= b, lambda a, b: a > b, lambda a, b: a >= b,
               lambda a, b: b < a, lambda a, b: b == a):
        def run(m):
            o = other(m) if callable(other) else other
            return op(m.tensor([0.0, 1.0, 2.0]), o)
        a, b = both(run)
        assert_same(a, b)
    for name in ("eq", "ne", "lt", "le", "gt", "ge"):
        def run(m):
            o = other(m) if callable(other) else other
            return getattr(m.tensor([0.0, 1.0, 2.0]), name)(o)
        a, b = both(run)
        assert_same(a, b)


def test_eq_with_non_tensor_returns_notimplemented_semantics():
    assert (tn.ones(2) == None) is False  # noqa: E711
    assert (tn.ones(2) != "a") is True
    assert tn.ones(1) in [tn.ones(1)]


@pytest.mark.parametrize("a,b", [
    (lambda m: m.arange(6.0).reshape(2, 3), lambda m: -m.arange(6.0).reshape(2, 3)),
    (lambda m: m.arange(3.0), lambda m: m.zeros(2, 1)),
    (lambda m: m.arange(3.0), lambda m: 0.0), (lambda m: 1.0, lambda m: m.arange(3.0)),
    (lambda m: 1, lambda m: 0), (lambda m: 1.5, lambda m: 2),
    (lambda m: m.arange(3), lambda m: 0.5), (lambda m: m.arange(3), lambda m: m.zeros(3)),
    (lambda m: m.arange(3, dtype=m.float64), lambda m: m.zeros(3)),
    (lambda m: m.tensor(1.0, dtype=m.float64), lambda m: m.zeros(3)),
    (lambda m: m.ones(3, dtype=m.bool), lambda m: m.zeros(3, dtype=m.bool)),
])
def test_where(a, b):
    def run(m):
        cond = m.tensor([[True, False, True], [False, False, True]])
        return m.where(cond, a(m), b(m))
    x, y = both(run)
    assert_same(x, y)


def test_where_method_and_errors():
    a, b = both(lambda m: m.arange(3.0).where(m.tensor([True, False, True]), m.zeros(3)))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(3.0).where(m.tensor([True, False, True]), 5.0))
    assert_same(a, b)
    with pytest.raises(RuntimeError):
        tn.where(tn.ones(3), tn.ones(3), tn.zeros(3))
    ours = tn.where(tn.tensor([[0, 1], [2, 0]]))
    theirs = torch.where(torch.tensor([[0, 1], [2, 0]]))
    assert len(ours) == len(theirs)
    for x, y in zip(ours, theirs):
        assert_same(x, y)


def test_logical_and_misc():
    ta, ra = pair([0.0, 1.0, -2.0])
    tb, rb = pair([1.0, 0.0, 0.0])
    for name in ("logical_and", "logical_or", "logical_xor"):
        assert_same(getattr(tn, name)(ta, tb), getattr(torch, name)(ra, rb))
    assert_same(tn.logical_not(ta), torch.logical_not(ra))
    assert_same(ta.sign(), ra.sign())
    assert_same(tn.lerp(ta, tb, 0.25), torch.lerp(ra, rb, 0.25))
    assert_same(tn.addcmul(ta, ta, tb, value=2), torch.addcmul(ra, ra, rb, value=2))
    assert_same(tn.addcdiv(ta, ta, tb + 2, value=2), torch.addcdiv(ra, ra, rb + 2, value=2))


# --- matrix products ---------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)), ((5, 2, 3), (3,)),
    ((3,), (5, 3, 4)), ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)), ((5, 2, 3), (5, 3, 4)),
    ((5, 2, 3), (1, 3, 4)), ((2, 1, 2, 3), (5, 3, 4)), ((2, 5, 2, 3), (3,)),
    ((3,), (2, 5, 3, 4)), ((1, 2, 3), (3, 4)), ((4, 1, 2, 3), (1, 5, 3, 2)), ((0, 3), (3, 2)),
    ((2, 0), (0, 3)), ((2, 3, 0), (2, 0, 4)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_all_rank_combinations(sa, sb):
    ta, ra = pair(data(*sa))
    tb, rb = pair(data(*sb, seed=1))
    assert_same(ta @ tb, ra @ rb, rtol=1e-5, atol=1e-6)
    assert_same(tn.matmul(ta, tb), torch.matmul(ra, rb), rtol=1e-5, atol=1e-6)
    assert_same(ta.matmul(tb), ra.matmul(rb), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_matmul_dtypes(dtype):
    ta, ra = pair(data(2, 3, dtype=dtype))
    tb, rb = pair(data(3, 2, dtype=dtype, seed=1))
    assert_same(ta @ tb, ra @ rb)
    tv, rv = pair(data(3, dtype=dtype, seed=2))
    assert_same(ta @ tv, ra @ rv)
    assert_same(tv @ tv, rv @ rv)


def test_matmul_errors():
    same_error(lambda m: m.ones(2, 3) @ m.ones(4, 5))
    same_error(lambda m: m.ones(3) @ m.ones(4))
    same_error(lambda m: m.ones(2, 3) @ m.ones(4))
    same_error(lambda m: m.tensor(1.0) @ m.ones(3))
    same_error(lambda m: m.ones(2, 3).mm(m.ones(2, 3)))
    same_error(lambda m: m.ones(2, 3).mm(m.ones(3, 2, dtype=m.float64)))
    same_error(lambda m: m.ones(2, 2, 3).bmm(m.ones(3, 3, 2)))
    same_error(lambda m: m.ones(2, 2, 3).bmm(m.ones(2, 2, 2)))
    same_error(lambda m: m.ones(2, 3).bmm(m.ones(2, 3, 2)))
    same_error(lambda m: m.ones(2, 3).mv(m.ones(2)))
    same_error(lambda m: m.ones(3).dot(m.ones(2)))
    same_error(lambda m: m.ones(3, 1).dot(m.ones(3)))
    same_error(lambda m: m.ones(2, 2, 3) @ m.ones(2, 4, 3))


def test_mm_bmm_mv_dot_outer_addmm():
    ta, ra = pair(data(2, 3))
    tb, rb = pair(data(3, 4, seed=1))
    assert_same(ta.mm(tb), ra.mm(rb), rtol=1e-5)
    assert_same(tn.mm(ta, tb), torch.mm(ra, rb), rtol=1e-5)
    tv, rv = pair(data(3, seed=2))
    assert_same(ta.mv(tv), ra.mv(rv), rtol=1e-5)
    assert_same(tn.mv(ta, tv), torch.mv(ra, rv), rtol=1e-5)
    assert_same(tv.dot(tv), rv.dot(rv), rtol=1e-5)
    assert_same(tn.dot(tv, tv), torch.dot(rv, rv), rtol=1e-5)
    assert_same(tn.outer(tv, tv), torch.outer(rv, rv), rtol=1e-5)
    t3, r3 = pair(data(5, 2, 3))
    u3, s3 = pair(data(5, 3, 4, seed=3))
    assert_same(t3.bmm(u3), r3.bmm(s3), rtol=1e-5)
    assert_same(tn.bmm(t3, u3), torch.bmm(r3, s3), rtol=1e-5)
    bias_t, bias_r = pair(data(4, seed=5))
    assert_same(tn.addmm(bias_t, ta, tb), torch.addmm(bias_r, ra, rb), rtol=1e-5)
    assert_same(tn.addmm(bias_t, ta, tb, beta=0.5, alpha=2),
                torch.addmm(bias_r, ra, rb, beta=0.5, alpha=2), rtol=1e-5)
    assert_same(ta.T @ ta, ra.T @ ra, rtol=1e-5)  # non-contiguous operands


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       st.booleans(), st.booleans())
def test_matmul_batched_hypothesis(n, k, mm, batch, vec_a, vec_b):
    sa = tuple(batch.input_shapes[0]) + (n, k) if not vec_a else (k,)
    sb = tuple(batch.input_shapes[1]) + (k, mm) if not vec_b else (k,)
    ta, ra = pair(data(*sa, dtype=np.float64))
    tb, rb = pair(data(*sb, dtype=np.float64, seed=4))
    assert_same(ta @ tb, ra @ rb, rtol=1e-10, atol=1e-12)


# --- reductions ---------------------------------------------------------------------------

DIMS = [None, 0, 1, -1, 2, (0, 1), (0, 2), (-1, 0), (0, 1, 2), ()]


@pytest.mark.parametrize("name", ["sum", "mean"])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_mean(name, dim, keepdim):
    ta, ra = pair(data(2, 3, 4))
    kw = {} if dim is None and not keepdim else {"dim": dim, "keepdim": keepdim}
    if dim is None and keepdim:
        return
    assert_same(getattr(ta, name)(**kw), getattr(ra, name)(**kw), rtol=1e-5)
    assert_same(getattr(tn, name)(ta, **kw), getattr(torch, name)(ra, **kw), rtol=1e-5)


def test_sum_dtypes_and_positional():
    for make in (lambda m: m.arange(6).reshape(2, 3), lambda m: m.ones(2, 3, dtype=m.bool),
                 lambda m: m.ones(2, 3, dtype=m.float64)):
        a, b = both(lambda m: make(m).sum())
        assert_same(a, b)
        a, b = both(lambda m: make(m).sum(1, True))
        assert_same(a, b)
        a, b = both(lambda m: make(m).sum(dtype=m.float64))
        assert_same(a, b)
    a, b = both(lambda m: m.ones(2, 3).mean(1, True))
    assert_same(a, b)
    a, b = both(lambda m: m.ones(2, 3).mean(dtype=m.float64))
    assert_same(a, b)
    same_error(lambda m: m.arange(4).mean())
    same_error(lambda m: m.ones(2, 3).sum(2), IndexError)
    same_error(lambda m: m.ones(2, 3).sum((0, 0)))
    a, b = both(lambda m: m.zeros(0, 3).sum(0))
    assert_same(a, b)
    a, b = both(lambda m: m.zeros(0, 3).mean(0))
    assert_same(a, b)
    a, b = both(lambda m: m.tensor(2.5).sum(0))
    assert_same(a, b)
    a, b = both(lambda m: m.tensor(2.5).mean(-1, keepdim=True))
    assert_same(a, b)


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("dim", [0, 1, -1, 2])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_dim_namedtuple(name, dim, keepdim):
    ta, ra = pair(data(2, 3, 4))
    ours, theirs = getattr(ta, name)(dim, keepdim), getattr(ra, name)(dim, keepdim)
    assert type(ours).__name__ == type(theirs).__name__ == name
    assert ours._fields == ("values", "indices")
    values, indices = ours
    assert_same(values, theirs.values)
    assert_same(indices, theirs.indices)
    assert_same(ours[0], theirs[0])
    ours = getattr(tn, name)(ta, dim=dim, keepdim=keepdim)
    theirs = getattr(torch, name)(ra, dim=dim, keepdim=keepdim)
    assert_same(ours.values, theirs.values)
    assert_same(ours.indices, theirs.indices)


def test_max_min_full_and_binary_forms():
    ta, ra = pair(data(3, 4))
    tb, rb = pair(data(3, 4, seed=1))
    for name in ("max", "min"):
        assert_same(getattr(ta, name)(), getattr(ra, name)())
        assert_same(getattr(tn, name)(ta), getattr(torch, name)(ra))
        assert_same(getattr(tn, name)(ta, tb), getattr(torch, name)(ra, rb))
        assert_same(getattr(ta, name)(tb), getattr(ra, name)(rb))
    ti, ri = pair(data(3, 4, dtype=np.int64))
    assert_same(ti.max(), ri.max())
    assert_same(ti.max(0).values, ri.max(0).values)
    same_error(lambda m: m.zeros(0).max())
    same_error(lambda m: m.zeros(0, 3).max(0), IndexError)


def test_max_ties_pick_first_index():
    a, b = both(lambda m: m.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 1.0]]).max(1))
    assert_same(a.indices, b.indices)
    a, b = both(lambda m: m.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 1.0]]).argmax(1))
    assert_same(a, b)
    a, b = both(lambda m: m.tensor([[1.0, 1.0], [1.0, 1.0]]).min(0))
    assert_same(a.indices, b.indices)


def test_max_namedtuple_repr_prefix():
    ours = repr(tn.tensor([[1.0, 2.0]]).max(1))
    theirs = repr(torch.tensor([[1.0, 2.0]]).max(1))
    assert ours == theirs


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_argmax_argmin(name, dim, keepdim):
    ta, ra = pair(data(3, 4))
    assert_same(getattr(ta, name)(dim, keepdim), getattr(ra, name)(dim, keepdim))
    assert_same(getattr(tn, name)(ta, dim=dim, keepdim=keepdim),
                getattr(torch, name)(ra, dim=dim, keepdim=keepdim))


@pytest.mark.parametrize("name", ["amax", "amin"])
@pytest.mark.parametrize("dim", [0, -1, (0, 1), ()])
def test_amax_amin(name, dim):
    ta, ra = pair(data(2, 3, 4))
    assert_same(getattr(ta, name)(dim), getattr(ra, name)(dim))
    assert_same(getattr(tn, name)(ta, dim, keepdim=True), getattr(torch, name)(ra, dim,
                                                                                keepdim=True))


@pytest.mark.parametrize("name", ["var", "std"])
@pytest.mark.parametrize("dim", [None, 0, 1, -1, (0, 2), (0, 1, 2)])
@pytest.mark.parametrize("extra", [{}, {"unbiased": False}, {"unbiased": True},
                                   {"correction": 0}, {"correction": 2}, {"keepdim": True},
                                   {"unbiased": False, "keepdim": True}])
def test_var_std(name, dim, extra):
    ta, ra = pair(data(3, 4, 5, dtype=np.float64))
    kw = dict(extra)
    if dim is not None:
        kw["dim"] = dim
    elif "keepdim" in kw:
        kw["dim"] = None
    assert_same(getattr(ta, name)(**kw), getattr(ra, name)(**kw), rtol=1e-10)
    assert_same(getattr(tn, name)(ta, **kw), getattr(torch, name)(ra, **kw), rtol=1e-10)


def test_var_std_positional_forms():
    ta, ra = pair(data(3, 4))
    for args in ((0,), (1, False), (1, True, True), (False,), (True,)):
        assert_same(ta.var(*args), ra.var(*args), rtol=1e-5)
        assert_same(ta.std(*args), ra.std(*args), rtol=1e-5)
    same_error(lambda m: m.arange(4).var())


def test_logsumexp_all_any_count_nonzero():
    ta, ra = pair(data(3, 4))
    for dim in (0, 1, -1, (0, 1)):
        assert_same(ta.logsumexp(dim), ra.logsumexp(dim), rtol=1e-5)
        assert_same(tn.logsumexp(ta, dim, keepdim=True), torch.logsumexp(ra, dim, keepdim=True),
                    rtol=1e-5)
    tb, rb = ta > 0, ra > 0
    for name in ("all", "any"):
        assert_same(getattr(tb, name)(), getattr(rb, name)())
        assert_same(getattr(tb, name)(1), getattr(rb, name)(1))
        assert_same(getattr(tn, name)(tb, dim=0, keepdim=True),
                    getattr(torch, name)(rb, dim=0, keepdim=True))
    assert_same(tb.count_nonzero(), rb.count_nonzero())
    assert_same(tn.count_nonzero(ta > 0, dim=1), torch.count_nonzero(ra > 0, dim=1))


@settings(max_examples=40, deadline=None)
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), st.data())
def test_reductions_hypothesis(shape, draw):
    ta, ra = pair(data(*shape, dtype=np.float64, seed=len(shape)))
    nd = len(shape)
    dims = draw.draw(st.lists(st.integers(-nd, nd - 1), min_size=1, max_size=nd,
                              unique_by=lambda d: d % nd))
    keepdim = draw.draw(st.booleans())
    dim = tuple(dims) if len(dims) > 1 or draw.draw(st.booleans()) else dims[0]
    for name in ("sum", "mean", "amax", "amin"):
        assert_same(getattr(ta, name)(dim, keepdim=keepdim),
                    getattr(ra, name)(dim, keepdim=keepdim), rtol=1e-10)
    if all(shape[d] > 1 for d in dims):
        for name in ("var", "std"):
            assert_same(getattr(ta, name)(dim, keepdim=keepdim),
                        getattr(ra, name)(dim, keepdim=keepdim), rtol=1e-10)
    d0 = dims[0]
    assert_same(ta.max(d0, keepdim).indices, ra.max(d0, keepdim).indices)
    assert_same(ta.argmin(d0, keepdim), ra.argmin(d0, keepdim))


# --- assorted edge cases: same value, or the same error ---------------------------------------

EDGE_CASES = {
    "bool_argmax": lambda m: m.tensor([False, True]).argmax(),
    "bool_argmin": lambda m: m.tensor([False, True]).argmin(0),
    "bool_sum_dim": lambda m: m.tensor([[True, True]]).sum(1),
    "std_int": lambda m: m.tensor([1, 2]).std(),
    "exp_bool": lambda m: m.tensor([True, False]).exp(),
    "abs_bool": lambda m: m.tensor([True, False]).abs(),
    "neg_int": lambda m: -m.tensor([1, 2]),
    "sqrt_int": lambda m: m.tensor([1, 4]).sqrt(),
    "sigmoid_int": lambda m: m.tensor([1, 4]).sigmoid(),
    "relu_int": lambda m: m.tensor([-1, 4]).relu(),
    "sign_bool": lambda m: m.tensor([True, False]).sign(),
    "round_half_even": lambda m: m.tensor([0.5, 1.5, 2.5, -0.5]).round(),
    "clamp_int": lambda m: m.tensor([1, 5]).clamp(2),
    "max_int_dim": lambda m: m.tensor([[1, 5], [7, 2]]).max(1),
    "min_bool": lambda m: m.tensor([True, False]).min(),
    "where_float_int": lambda m: m.where(m.tensor([True, False]), 1.0, 0),
    "where_int_int": lambda m: m.where(m.tensor([True, False]), 1, 0),
    "cat_bool_int": lambda m: m.cat([m.tensor([True]), m.tensor([2])]),
    "stack_0d_mixed": lambda m: m.stack([m.tensor(1), m.tensor(2.0)]),
    "arange_negative_float": lambda m: m.arange(-1, -2.5, -0.5),
    "full_0d_bool": lambda m: m.full((), False),
    "linspace_int": lambda m: m.linspace(0, 10, 5, dtype=m.int64),
    "eye_bool": lambda m: m.eye(2, dtype=m.bool),
    "full_like_float_on_int": lambda m: m.full_like(m.tensor([1, 2]), 2.7),
    "view_same_dtype": lambda m: m.ones(2).view(m.float32),
    "reshape_empty": lambda m: m.zeros(0, 3).reshape(-1, 3),
    "reshape_empty_ambiguous": lambda m: m.zeros(0, 3).reshape(-1, 0),
    "transpose_1d": lambda m: m.arange(3.0).transpose(0, -1),
    "expand_0d": lambda m: m.tensor(3.0).expand(2),
    "repeat_0d": lambda m: m.tensor(3.0).repeat(2, 2),
    "flip_0d": lambda m: m.tensor(3.0).flip(0),
    "narrow_negative_start": lambda m: m.arange(5).narrow(0, -2, 2),
    "split_bigger_than_dim": lambda m: m.arange(5).split(10),
    "split_zero": lambda m: m.arange(5).split(0),
    "chunk_negative_dim": lambda m: m.arange(5).chunk(2, -1),
    "chunk_zero": lambda m: m.arange(5).chunk(0),
    "index_negative_list": lambda m: m.arange(5)[[-1, -2]],
    "index_0d_true": lambda m: m.tensor(5.0)[m.tensor(True)],
    "index_true": lambda m: m.tensor([1.0, 2.0])[True],
    "nonzero_0d": lambda m: m.tensor(1.0).nonzero(),
    "nonzero_0d_false": lambda m: m.tensor(0.0).nonzero(),
    "nonzero_0d_tuple": lambda m: m.tensor(1.0).nonzero(as_tuple=True),
    "pow_int_negative_tensor": lambda m: m.tensor([2, 1, -1]) ** m.tensor([-1, -2, -3]),
    "remainder_negative_float": lambda m: m.tensor([-3.5, 3.5]) % 2,
    "floordiv_negative_divisor": lambda m: m.tensor([-3.5, 3.5]) // -2,
    "rtruediv_int": lambda m: 3 / m.tensor([2, 4]),
    "rfloordiv_int": lambda m: 7 // m.tensor([2, -4]),
    "rmod_int": lambda m: 7 % m.tensor([2, -4]),
    "rpow_float_int": lambda m: 2.5 ** m.tensor([2, 3]),
    "eq_python_bool": lambda m: m.tensor([1, 0]) == True,  # noqa: E712
    "lt_int_float": lambda m: m.tensor([1, 2]) < m.tensor([1.5, 1.5]),
    "matmul_int": lambda m: m.tensor([[1, 2]]) @ m.tensor([[3], [4]]),
    "matmul_bool": lambda m: m.tensor([[True]]) @ m.tensor([[True]]),
    "dot_bool": lambda m: m.tensor([True]).dot(m.tensor([True])),
    "mv_bool": lambda m: m.tensor([[True]]).mv(m.tensor([True])),
    "bmm_bool": lambda m: m.ones(1, 1, 1, dtype=m.bool).bmm(m.ones(1, 1, 1, dtype=m.bool)),
    "mm_mixed_dtypes": lambda m: m.ones(2, 2) @ m.ones(2, 2, dtype=m.float64),
    "dot_mixed_dtypes": lambda m: m.ones(2).dot(m.ones(2, dtype=m.float64)),
    "mv_mixed_dtypes": lambda m: m.ones(2, 2).mv(m.ones(2, dtype=m.int64)),
    "bmm_mixed_dtypes": lambda m: m.ones(1, 2, 2).bmm(m.ones(1, 2, 2, dtype=m.float64)),
    "mean_empty_tuple_dim": lambda m: m.ones(2, 3).mean(()),
    "var_single_element": lambda m: m.ones(1).var(),
    "argmax_keepdim_no_dim": lambda m: m.ones(2, 3).argmax(keepdim=True),
    "all_int": lambda m: m.tensor([1, 0]).all(),
    "any_float": lambda m: m.tensor([0.0, 0.5]).any(),
    "count_nonzero_dims": lambda m: m.ones(2, 3).count_nonzero((0, 1)),
    "masked_fill_int_with_float": lambda m: m.tensor([1, 2]).masked_fill(
        m.tensor([True, False]), 3.7),
    "gather_negative_dim": lambda m: m.arange(6.).reshape(2, 3).gather(-1, m.tensor([[0], [2]])),
    "index_select_negative_dim": lambda m: m.arange(6.).reshape(2, 3).index_select(
        -1, m.tensor([2])),
    "new_full_float_on_int": lambda m: m.ones(2, dtype=m.int64).new_full((2,), 1.5),
    "logsumexp_inf": lambda m: m.tensor([[-float("inf"), -float("inf")], [float("inf"), 1.0]])
    .logsumexp(1),
    "logsumexp_int": lambda m: m.tensor([1, 2]).logsumexp(0),
    "sum_0d_dim": lambda m: m.tensor(2.0).sum(0),
    "max_0d_dim": lambda m: m.tensor(2.0).max(0),
    "argmax_0d_dim": lambda m: m.tensor(2.0).argmax(0, keepdim=True),
    "var_0d_dim_biased": lambda m: m.tensor(2.0).var(0, correction=0),
}


def _compare(ours, theirs):
    if isinstance(theirs, torch.Tensor):
        assert_same(ours, theirs, rtol=1e-6)
    elif isinstance(theirs, tuple):
        assert type(ours).__name__ == type(theirs).__name__ and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _compare(a, b)
    else:
        assert ours == theirs


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases(name):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theirs = EDGE_CASES[name](torch)
        except Exception as e:  # noqa: BLE001  (torch's error is the expectation)
            with pytest.raises(Exception) as ours:
                EDGE_CASES[name](tn)
            assert type(ours.value) is type(e)
            assert str(ours.value) == str(e)
            return
        _compare(EDGE_CASES[name](tn), theirs)
