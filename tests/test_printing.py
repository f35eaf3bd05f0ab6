"""repr(tensor) must match PyTorch's character for character."""
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tracenet import _dtype  # noqa: E402
from tracenet._tensor_str import get_printoptions, set_printoptions  # noqa: E402
from tracenet.tensor import Tensor  # noqa: E402

DEFAULT_OPTIONS = dict(precision=4, threshold=1000, edgeitems=3, linewidth=80, sci_mode=None)


@pytest.fixture(autouse=True)
def restore_defaults():
    yield
    set_printoptions(profile="default")
    torch.set_printoptions(profile="default")
    _dtype.set_default_dtype(_dtype.float32)
    torch.set_default_dtype(torch.float32)


def both_set_printoptions(**kwargs):
    set_printoptions(**kwargs)
    torch.set_printoptions(**kwargs)


def assert_same_repr(arr, requires_grad=False):
    arr = np.array(arr, order="C")  # a copy that keeps 0-dim arrays 0-dim
    expected = torch.from_numpy(arr.copy())
    if requires_grad:
        expected.requires_grad_()
    got = Tensor._wrap(arr.copy(), requires_grad=requires_grad)
    assert repr(got) == repr(expected)
    assert str(got) == str(expected)


f32, f64 = np.float32, np.float64

CASES = {
    "floats": np.array([1.5, -2.25, 3.0], f32),
    "integral floats": np.array([1.0, -2.0, 30.0], f32),
    "zeros": np.zeros(4, f32),
    "negative zero": np.array([-0.0, 1.0], f32),
    "negative zero alone": np.array([-0.0, 0.0], f32),
    "negative zero fraction": np.array([-0.0, 1.5], f32),
    "scalar": np.array(3.5, f32),
    "integral scalar": np.array(3.0, f32),
    "negative scalar": np.array(-0.0001234, f32),
    "nan scalar": np.array(np.nan, f32),
    "int scalar": np.array(7, np.int64),
    "bool scalar": np.array(True),
    "nan and inf": np.array([np.nan, np.inf, -np.inf], f32),
    "nan with numbers": np.array([100.0, np.nan, -np.inf, 2.5], f32),
    "inf with integers": np.array([1000.0, np.inf, -2.0], f32),
    "sci by ratio": np.array([1.0, 1001.0], f32),
    "no sci at ratio 1000": np.array([1.0, 1000.0], f32),
    "sci by large": np.array([1.5e8, 2.0e8], f32),
    "large integral": np.array([123456789.0, 1.0], f64),
    "sci by small": np.array([5e-5, 1e-4], f32),
    "sci with nan": np.array([1e-6, np.nan, 0.0, np.inf], f32),
    "sci negative": np.array([[-1e10, 2.5], [3e-3, -4.0]], f64),
    "huge": np.array([1e300, -1e-300], f64),
    "tiny": np.array([np.finfo(f32).tiny, 1.0], f32),
    "float64": np.array([0.1, 0.2, 0.30000000000000004], f64),
    "float64 integral": np.array([[1.0, 2.0], [3.0, 4.0]], f64),
    "int64": np.array([1, -20, 300], np.int64),
    "int64 big": np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max], np.int64),
    "bool": np.array([[True, False], [False, True]]),
    "matrix": np.arange(12, dtype=f32).reshape(3, 4) / 7,
    "3d": np.arange(24, dtype=f32).reshape(2, 3, 4) - 11.5,
    "4d": np.arange(48, dtype=np.int64).reshape(2, 2, 3, 4) - 20,
    "5d": np.arange(32, dtype=f64).reshape(2, 2, 2, 2, 2),
    "long row wraps": np.linspace(-1, 1, 60).astype(f32),
    "long int row wraps": np.arange(100, dtype=np.int64) * 1001,
    "long bool row": np.arange(50) % 3 == 0,
    "wide matrix wraps": np.linspace(-5, 5, 3 * 30).reshape(3, 30),
    "summarised vector": np.arange(1001, dtype=f32),
    "not summarised at threshold": np.arange(1000, dtype=f32),
    "summarised matrix": np.arange(40 * 40, dtype=f32).reshape(40, 40) / 3,
    "summarised 3d": np.arange(11 * 10 * 12, dtype=np.int64).reshape(11, 10, 12),
    "summarised short dim": np.arange(2 * 1000, dtype=f32).reshape(2, 1000),
    "summarised hidden outlier": np.concatenate([[1.0, 2.0, 3.0], np.full(1000, 1e9),
                                                 [4.0, 5.0, 6.0]]),
    "empty": np.zeros(0, f32),
    "empty float64": np.zeros(0, f64),
    "empty int": np.zeros(0, np.int64),
    "empty bool": np.zeros(0, bool),
    "empty 2d": np.zeros((0, 3), f32),
    "empty 3d int": np.zeros((2, 0, 3), np.int64),
}


@pytest.mark.parametrize("arr", list(CASES.values()), ids=list(CASES))
def test_matches_torch(arr):
    assert_same_repr(arr)


@pytest.mark.parametrize("arr", list(CASES.values()), ids=list(CASES))
def test_requires_grad_matches_torch(arr):
    if arr.dtype.kind != "f":
        pytest.skip("only floating point tensors can require gradients")
    assert_same_repr(arr, requires_grad=True)


def test_requires_grad_moves_to_new_line_when_too_long():
    assert_same_repr(np.linspace(0, 1, 11).astype(f32), requires_grad=True)
    assert_same_repr(np.linspace(0, 1, 11).astype(f64), requires_grad=True)
    assert_same_repr(np.linspace(0, 1, 30).astype(f64), requires_grad=True)


class FakeGradFn:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


def with_grad_fn(arr, name):
    t = Tensor._wrap(np.array(arr, order="C"), requires_grad=True)
    t.grad_fn = FakeGradFn(name)
    return t


@pytest.mark.parametrize("shape", [(2,), (), (3, 4), (10,), (1, 11)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_fn_matches_torch(shape, dtype):
    leaf = torch.linspace(-1, 1, int(np.prod(shape)), dtype=dtype).reshape(shape)
    expected = leaf.requires_grad_() * 2
    assert type(expected.grad_fn).__name__ == "MulBackward0"
    got = with_grad_fn(expected.detach().numpy(), "MulBackward0")
    assert repr(got) == repr(expected)


def test_grad_fn_from_addmm_matches_torch():
    x = torch.linspace(0, 1, 6).reshape(2, 3)
    layer = torch.nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-1, 1, 12).reshape(4, 3))
        layer.bias.fill_(0.5)
    expected = layer(x)
    got = with_grad_fn(expected.detach().numpy(), "AddmmBackward0")
    assert repr(got) == repr(expected)


def test_grad_fn_after_dtype_suffix():
    expected = torch.ones(3, dtype=torch.float64, requires_grad=True) * 2
    got = with_grad_fn(np.full(3, 2.0), "MulBackward0")
    assert repr(got) == repr(expected)
    assert repr(got) == "tensor([2., 2., 2.], dtype=torch.float64, grad_fn=<MulBackward0>)"


class Parameter(Tensor):
    """Stands in for tracenet.nn.Parameter: the printer recognises parameters by class name."""


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("arr", [np.linspace(-1, 1, 6).reshape(2, 3).astype(f32),
                                 np.zeros(4, f64), np.zeros((0, 2), f32)])
def test_parameter_matches_torch(arr, requires_grad):
    expected = torch.nn.Parameter(torch.from_numpy(arr.copy()), requires_grad=requires_grad)
    got = Parameter._wrap(arr.copy(), requires_grad=requires_grad)
    assert repr(got) == repr(expected)
    assert repr(got).startswith("Parameter containing:\ntensor(")


def test_traced_tensor_prints_its_type():
    t = Tensor._wrap(np.zeros(1, f32))
    t._data = None
    t._ir = types.SimpleNamespace(shape=(2, 3), dtype=_dtype.float32)
    assert repr(t) == "tensor(<traced f32[2, 3]>)"
    t._requires_grad = True
    assert repr(t) == "tensor(<traced f32[2, 3]>, requires_grad=True)"


@pytest.mark.parametrize("arr", [np.array([1.5, 2.5], f32), np.array([1.5, 2.5], f64),
                                 np.zeros(0, f32), np.zeros(0, f64), np.zeros((0, 2), f64),
                                 np.array(2.0, f32), np.arange(3)])
def test_default_dtype_float64(arr):
    _dtype.set_default_dtype(_dtype.float64)
    torch.set_default_dtype(torch.float64)
    assert_same_repr(arr)
    assert_same_repr(arr, requires_grad=arr.dtype.kind == "f")


# --- print options --------------------------------------------------------------------------

def test_default_printoptions():
    assert get_printoptions() == DEFAULT_OPTIONS == torch._tensor_str.get_printoptions()


def test_printoptions_roundtrip():
    set_printoptions(precision=2, linewidth=50, sci_mode=True)
    saved = get_printoptions()
    set_printoptions(profile="default")
    set_printoptions(**saved)
    assert get_printoptions() == saved
    set_printoptions(precision=3)  # sci_mode is reset whenever it is not given, as in torch
    assert get_printoptions()["sci_mode"] is None


@pytest.mark.parametrize("profile", ["default", "short", "full"])
def test_profiles(profile):
    both_set_printoptions(profile=profile)
    assert get_printoptions() == torch._tensor_str.get_printoptions()
    for arr in (np.arange(2000, dtype=f32) / 3, np.linspace(-1, 1, 30 * 40).reshape(30, 40),
                np.arange(10, dtype=np.int64)):
        assert_same_repr(arr)


OPTION_CASES = [
    dict(precision=2),
    dict(precision=0),
    dict(precision=10),
    dict(threshold=5),
    dict(threshold=0),
    dict(edgeitems=1, threshold=10),
    dict(edgeitems=0, threshold=10),
    dict(linewidth=30),
    dict(linewidth=5),
    dict(sci_mode=True),
    dict(sci_mode=False),
    dict(profile="short", precision=6),
]
OPTION_ARRAYS = [
    np.array([1.123456789, -2.5, 3.0], f32),
    np.array([1e-6, 1.0, 1e9], f64),
    np.array([1.0, 2.0, 123456789012.0], f64),
    np.zeros(3, f32),
    np.array([np.nan, 1.0, -0.0], f32),
    np.arange(20, dtype=np.int64),
    np.linspace(-3, 3, 4 * 5 * 6).reshape(4, 5, 6).astype(f32),
    np.arange(12) % 2 == 0,
    np.array(2.5, f32),
]


@pytest.mark.parametrize("options", OPTION_CASES, ids=[str(o) for o in OPTION_CASES])
@pytest.mark.parametrize("arr", OPTION_ARRAYS)
def test_printoptions_match_torch(options, arr):
    both_set_printoptions(**options)
    assert_same_repr(arr)
    if arr.dtype.kind == "f":
        assert_same_repr(arr, requires_grad=True)


def test_narrow_linewidth_wraps_suffixes():
    both_set_printoptions(linewidth=20)
    assert_same_repr(np.array([1.5, 2.5], f64), requires_grad=True)
    assert_same_repr(np.zeros((0, 2, 3), np.int64))


# --- random tensors -------------------------------------------------------------------------

DTYPES = [f32, f64, np.int64, np.bool_]


def random_array(seed, shape, dtype, scale_exp, spread, integral, specials):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype == np.bool_:
        return (rng.random(n) < 0.5).reshape(shape)
    exps = scale_exp + rng.integers(-spread, spread + 1, size=n)
    values = rng.standard_normal(n) * 10.0 ** exps
    if integral or dtype == np.int64:
        values = np.round(values)
    if dtype == np.int64:
        return np.clip(values, -2**62, 2**62).astype(np.int64).reshape(shape)
    values = values.astype(dtype)
    if specials and n:
        picks = rng.integers(0, n, size=max(1, n // 10))
        pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
        values[picks] = rng.choice(pool, len(picks))
    return values.reshape(shape)


small_dims = st.lists(st.integers(0, 5), min_size=0, max_size=4)
# shapes big enough to pass the 1000-element threshold, so summarisation is exercised
big_dims = st.one_of(
    st.tuples(st.integers(990, 1300)),
    st.tuples(st.integers(1, 50), st.integers(1, 50)),
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
)
array_args = dict(
    seed=st.integers(0, 2**32 - 1),
    shape=st.one_of(small_dims.map(tuple), big_dims),
    dtype=st.sampled_from(DTYPES),
    scale_exp=st.integers(-12, 12),
    spread=st.sampled_from([0, 1, 2, 4, 10]),
    integral=st.booleans(),
    specials=st.booleans(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requires_grad=st.booleans(), **array_args)
def test_random_tensors_match_torch(requires_grad, **kwargs):
    arr = random_array(**kwargs)
    assert_same_repr(arr, requires_grad=requires_grad and arr.dtype.kind == "f")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    precision=st.integers(0, 8),
    threshold=st.sampled_from([0, 1, 10, 50, 1000, float("inf")]),
    edgeitems=st.integers(0, 4),
    linewidth=st.integers(10, 150),
    sci_mode=st.sampled_from([None, True, False]),
    **array_args,
)
def test_random_printoptions_match_torch(precision, threshold, edgeitems, linewidth, sci_mode,
                                         **kwargs):
    arr = random_array(**kwargs)
    try:
        both_set_printoptions(precision=precision, threshold=threshold, edgeitems=edgeitems,
                              linewidth=linewidth, sci_mode=sci_mode)
        assert_same_repr(arr, requires_grad=arr.dtype.kind == "f")
    finally:
        both_set_printoptions(profile="default")


def test_non_contiguous_views_match_torch():
    base = np.linspace(-2, 2, 7 * 6).reshape(7, 6).astype(f32)
    for view in (base.T, base[::2, 1:], base[:, ::3], base[1:4, 2]):
        assert repr(Tensor._wrap(view)) == repr(torch.from_numpy(view))
