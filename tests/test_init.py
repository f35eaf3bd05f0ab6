"""nn.init: exact values for the deterministic initialisers, distribution statistics for the
random ones, and errors and warnings compared with PyTorch."""
import math
import warnings

import numpy as np
import pytest

from tracenet import _dtype, _random
from tracenet.tensor import Tensor
from tracenet.nn import init
from tracenet.nn.parameter import Parameter

_NP = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "bool": np.bool_}


def tn_empty(*shape, dtype="float32"):
    return Tensor._wrap(np.full(shape, 123, dtype=_NP[dtype]))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def th_empty(torch, *shape, dtype="float32"):
    return torch.full(shape, 123, dtype=getattr(torch, dtype))


def outcome(fn):
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            result = fn()
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return ("raise", type(e).__name__, str(e))
    return ("ok", result, [(w.category.__name__, str(w.message)) for w in rec])


def values(t):
    return t.tolist()


# --- calculate_gain and fans --------------------------------------------------------------------

NONLINEARITIES = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]


@pytest.mark.parametrize("name", NONLINEARITIES)
@pytest.mark.parametrize("param", [None, 0, 0.2, 1, -0.5, 3])
def test_calculate_gain_exact(name, param, torch):
    expected = torch.nn.init.calculate_gain(name, param)
    got = init.calculate_gain(name, param)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("args", [("foo",), ("leaky_relu", "x"), ("leaky_relu", True),
                                  ("Relu",), ("leaky_relu", [1])])
def test_calculate_gain_errors(args, torch):
    assert outcome(lambda: init.calculate_gain(*args)) == \
        outcome(lambda: torch.nn.init.calculate_gain(*args))


@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (4, 3, 5), (6, 2, 3, 3), (2, 3, 4, 5, 6),
                                   (0, 3)])
def test_fan_in_and_fan_out(shape, torch):
    got = outcome(lambda: init._calculate_fan_in_and_fan_out(tn_empty(*shape)))
    expected = outcome(lambda: torch.nn.init._calculate_fan_in_and_fan_out(
        th_empty(torch, *shape)))
    assert got == expected


# --- deterministic fills -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "bool"])
@pytest.mark.parametrize("fill", [("constant_", 2.7), ("constant_", 0.5), ("constant_", -3),
                                  ("ones_",), ("zeros_",)])
def test_constant_ones_zeros(dtype, fill, torch):
    name, *args = fill
    t = tn_empty(2, 3, dtype=dtype)
    out = getattr(init, name)(t, *args)
    ref = getattr(torch.nn.init, name)(th_empty(torch, 2, 3, dtype=dtype), *args)
    assert out is t and t.dtype.name == str(ref.dtype).split(".")[1]
    assert values(t) == values(ref)


@pytest.mark.parametrize("shape", [(3, 3), (2, 5), (5, 2), (1, 1), (0, 4), (3,), (2, 2, 2)])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_eye(shape, dtype, torch):
    t = tn_empty(*shape, dtype=dtype)
    got = outcome(lambda: values(init.eye_(t)))
    expected = outcome(lambda: values(torch.nn.init.eye_(th_empty(torch, *shape, dtype=dtype))))
    assert got == expected


@pytest.mark.parametrize("shape,groups", [
    ((4, 2, 3), 1), ((4, 2, 3), 2), ((2, 4, 3, 3), 1), ((6, 3, 3, 3), 3), ((3, 5, 2, 2), 1),
    ((4, 2, 3, 3, 3), 2), ((4, 2, 3), 3), ((3, 3), 1), ((2, 2, 2, 2, 2, 2), 1), ((4, 4, 4, 2), 4),
])
def test_dirac(shape, groups, torch):
    got = outcome(lambda: values(init.dirac_(tn_empty(*shape), groups)))
    expected = outcome(lambda: values(torch.nn.init.dirac_(th_empty(torch, *shape), groups)))
    assert got == expected


# --- random fills: distribution statistics ----------------------------------------------------------

N = 200_000


def stats(t):
    a = t._data.astype(np.float64).ravel()
    return a.mean(), a.std(), a.min(), a.max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniform_statistics(dtype):
    _random.manual_seed(0)
    t = tn_empty(N, dtype=dtype)
    assert init.uniform_(t, -2.0, 3.0) is t
    assert t._data.dtype == _NP[dtype]
    mean, std, lo, hi = stats(t)
    assert abs(mean - 0.5) < 0.02
    assert abs(std - 5 / math.sqrt(12)) < 0.02
    assert lo >= -2.0 and hi <= 3.0 and lo < -1.99 and hi > 2.99
    init.uniform_(t)
    mean, std, lo, hi = stats(t)
    assert abs(mean - 0.5) < 0.01 and lo >= 0 and hi <= 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_statistics(dtype):
    _random.manual_seed(1)
    t = tn_empty(N, dtype=dtype)
    assert init.normal_(t, 3.0, 0.5) is t
    mean, std, _, _ = stats(t)
    assert abs(mean - 3.0) < 0.01 and abs(std - 0.5) < 0.01
    init.normal_(t)
    mean, std, _, _ = stats(t)
    assert abs(mean) < 0.01 and abs(std - 1) < 0.01


def _truncated_moments(mean, std, a, b):
    alpha, beta = (a - mean) / std, (b - mean) / std
    phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = cdf(beta) - cdf(alpha)
    m = mean + std * (phi(alpha) - phi(beta)) / z
    var = std ** 2 * (1 + (alpha * phi(alpha) - beta * phi(beta)) / z
                      - ((phi(alpha) - phi(beta)) / z) ** 2)
    return m, math.sqrt(var)


@pytest.mark.parametrize("mean,std,a,b", [
    (0.0, 1.0, -2.0, 2.0),      # wide window: normal proposals
    (0.0, 0.02, -0.04, 0.04),   # the common ViT-style init
    (1.0, 1.0, 1.5, 3.0),       # narrow window off the mean: uniform proposals
    (0.0, 1.0, -0.2, 0.3),      # narrow window around the mean
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trunc_normal_statistics(mean, std, a, b, dtype):
    _random.manual_seed(2)
    t = tn_empty(N, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert init.trunc_normal_(t, mean, std, a, b) is t
    m, s, lo, hi = stats(t)
    em, es = _truncated_moments(mean, std, a, b)
    assert lo >= a and hi <= b
    assert abs(m - em) < 0.01 * (b - a) and abs(s - es) < 0.01 * (b - a)


def test_trunc_normal_warning_and_errors(torch):
    def run(lib, make):
        return [
            outcome(lambda: lib.trunc_normal_(make(3), 0.0, 1.0, 3.0, 4.0).shape[0]),
            outcome(lambda: lib.trunc_normal_(make(3), 0.0, 1.0, 1.0, -1.0)),
            outcome(lambda: lib.trunc_normal_(make(3, dtype="int64"))),
        ]
    got = run(init, tn_empty)
    expected = run(torch.nn.init, lambda *s, **k: th_empty(torch, *s, **k))
    assert got == expected


@pytest.mark.parametrize("shape,gain", [((300, 400), 1.0), ((64, 3, 5, 5), 2.0),
                                        ((5, 1000), 0.5)])
def test_xavier_statistics(shape, gain, torch):
    fan_in, fan_out = init._calculate_fan_in_and_fan_out(tn_empty(*shape))
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    bound = math.sqrt(3) * std
    _random.manual_seed(3)
    t = tn_empty(*shape)
    init.xavier_uniform_(t, gain)
    mean, s, lo, hi = stats(t)
    assert -bound <= lo and hi <= bound and hi > 0.99 * bound
    assert abs(s - std) < 0.03 * std and abs(mean) < 0.03 * std
    init.xavier_normal_(t, gain=gain)
    mean, s, _, _ = stats(t)
    assert abs(s - std) < 0.03 * std and abs(mean) < 0.03 * std


@pytest.mark.parametrize("shape,a,mode,nonlinearity", [
    ((256, 512), 0, "fan_in", "leaky_relu"),
    ((256, 512), math.sqrt(5), "fan_in", "leaky_relu"),
    ((128, 16, 3, 3), 0, "fan_out", "relu"),
    ((400, 300), 0.2, "FAN_IN", "leaky_relu"),
    ((400, 300), 0, "fan_out", "tanh"),
])
def test_kaiming_statistics(shape, a, mode, nonlinearity):
    fan = init._calculate_correct_fan(tn_empty(*shape), mode)
    std = init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    bound = math.sqrt(3) * std
    _random.manual_seed(4)
    t = tn_empty(*shape, dtype="float64")
    assert init.kaiming_uniform_(t, a, mode, nonlinearity) is t
    mean, s, lo, hi = stats(t)
    assert -bound <= lo and hi <= bound and hi > 0.99 * bound
    assert abs(s - std) < 0.03 * std and abs(mean) < 0.03 * std
    assert init.kaiming_normal_(t, a=a, mode=mode, nonlinearity=nonlinearity) is t
    mean, s, _, _ = stats(t)
    assert abs(s - std) < 0.03 * std and abs(mean) < 0.03 * std


@pytest.mark.parametrize("shape", [(50, 50), (80, 30), (30, 80), (16, 4, 3, 3), (1, 10)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal(shape, gain):
    _random.manual_seed(5)
    t = tn_empty(*shape, dtype="float64")
    assert init.orthogonal_(t, gain) is t
    m = t._data.reshape(shape[0], -1) / gain
    rows, cols = m.shape
    if rows >= cols:
        np.testing.assert_allclose(m.T @ m, np.eye(cols), atol=1e-10)
    else:
        np.testing.assert_allclose(m @ m.T, np.eye(rows), atol=1e-10)
    t32 = tn_empty(*shape)
    init.orthogonal_(t32)
    assert t32._data.dtype == np.float32


def test_orthogonal_empty_and_errors(torch):
    for shape in [(0, 3), (3,)]:
        got = outcome(lambda: tuple(init.orthogonal_(tn_empty(*shape)).shape))
        expected = outcome(lambda: tuple(torch.nn.init.orthogonal_(th_empty(torch, *shape)).shape))
        assert got == expected


def test_sparse():
    _random.manual_seed(6)
    t = tn_empty(100, 400)
    assert init.sparse_(t, 0.3, std=0.05) is t
    zeros_per_col = (t._data == 0).sum(axis=0)
    assert (zeros_per_col == 30).all()
    nonzero = t._data[t._data != 0]
    assert abs(nonzero.std() - 0.05) < 0.002


# --- errors and warnings compared with torch -------------------------------------------------------

ERROR_CASES = [
    ("uniform_", (3,), "int64", (), {}),
    ("uniform_", (3,), "bool", (), {}),
    ("uniform_", (3,), "float64", (2, 1), {}),
    ("uniform_", (3,), "float32", (0.5, 0.25), {}),
    ("normal_", (3,), "int64", (), {}),
    ("normal_", (3,), "float64", (0, -1), {}),
    ("normal_", (3,), "float64", (0, -0.5), {}),
    ("xavier_uniform_", (3,), "float32", (), {}),
    ("xavier_normal_", (3, 3), "int64", (), {}),
    ("kaiming_uniform_", (3,), "float32", (), {}),
    ("kaiming_uniform_", (3, 3), "int64", (), {}),
    ("kaiming_uniform_", (3, 0), "float32", (), {}),
    ("kaiming_normal_", (0,), "float32", (), {}),
    ("kaiming_normal_", (3, 3), "float32", (), {"mode": "foo"}),
    ("kaiming_uniform_", (3, 3), "float32", (), {"nonlinearity": "bad"}),
    ("kaiming_uniform_", (3, 3), "float32", (), {"a": "x"}),
    ("orthogonal_", (3,), "float32", (), {}),
    ("orthogonal_", (3, 3), "int64", (), {}),
    ("eye_", (3,), "float32", (), {}),
    ("dirac_", (3, 3), "float32", (), {}),
    ("dirac_", (4, 2, 3), "float32", (3,), {}),
    ("sparse_", (3, 3, 3), "float32", (0.1,), {}),
]


@pytest.mark.parametrize("name,shape,dtype,args,kwargs", ERROR_CASES)
def test_errors_and_warnings_match_torch(name, shape, dtype, args, kwargs, torch):
    got = outcome(lambda: tuple(getattr(init, name)(tn_empty(*shape, dtype=dtype), *args,
                                                    **kwargs).shape))
    expected = outcome(lambda: tuple(getattr(torch.nn.init, name)(
        th_empty(torch, *shape, dtype=dtype), *args, **kwargs).shape))
    assert got == expected


LEGACY = [("uniform", ()), ("normal", ()), ("constant", (1.5,)), ("xavier_uniform", ()),
          ("xavier_normal", ()), ("kaiming_uniform", ()), ("kaiming_normal", ()),
          ("orthogonal", ()), ("eye", ()), ("dirac", ()), ("sparse", (0.1,))]


@pytest.mark.parametrize("name,args", LEGACY)
def test_legacy_names_warn_like_torch(name, args, torch):
    shape = (3, 3, 3) if name == "dirac" else (3, 3)
    got = outcome(lambda: tuple(getattr(init, name)(tn_empty(*shape), *args).shape))
    expected = outcome(lambda: tuple(getattr(torch.nn.init, name)(
        th_empty(torch, *shape), *args).shape))
    assert got == expected
    assert got[2][0][0] == "FutureWarning"


def test_legacy_names_delegate():
    with pytest.warns(FutureWarning):
        t = init.constant(tn_empty(2), 4.0)
    assert values(t) == [4.0, 4.0]
    with pytest.warns(FutureWarning):
        t = init.eye(tn_empty(2, 2))
    assert values(t) == [[1.0, 0.0], [0.0, 1.0]]


# --- in-place semantics ------------------------------------------------------------------------------

ALL_INPLACE = [
    ("uniform_", ()), ("normal_", ()), ("trunc_normal_", ()), ("constant_", (0.3,)),
    ("ones_", ()), ("zeros_", ()), ("eye_", ()), ("xavier_uniform_", ()), ("xavier_normal_", ()),
    ("kaiming_uniform_", ()), ("kaiming_normal_", ()), ("orthogonal_", ()), ("sparse_", (0.5,)),
]


@pytest.mark.parametrize("name,args", ALL_INPLACE)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inplace_on_parameter(name, args, dtype):
    p = Parameter(tn_empty(4, 6, dtype=dtype))
    data = p._data
    version = p._version
    out = getattr(init, name)(p, *args)
    assert out is p and type(p) is Parameter
    assert p._data is data and p._data.dtype == _NP[dtype]
    assert p.requires_grad and p.is_leaf and p.grad_fn is None
    assert p._version > version
    assert not (p._data == 123).all()


def test_dirac_inplace_on_parameter():
    p = Parameter(tn_empty(2, 2, 3))
    assert init.dirac_(p) is p and p.requires_grad and p.grad_fn is None
    assert p._data.dtype == np.float32


def test_seed_reproducibility_and_generator():
    def draw():
        t = tn_empty(5, 7)
        init.kaiming_uniform_(t, a=math.sqrt(5))
        init.normal_(t, 0, 1)
        return t._data.copy()

    _random.manual_seed(42)
    a = draw()
    _random.manual_seed(42)
    b = draw()
    _random.manual_seed(43)
    c = draw()
    assert np.array_equal(a, b) and not np.array_equal(a, c)

    t1, t2 = tn_empty(10), tn_empty(10)
    init.uniform_(t1, generator=np.random.default_rng(7))
    init.uniform_(t2, generator=np.random.default_rng(7))
    assert np.array_equal(t1._data, t2._data)
    with pytest.raises(TypeError):
        init.uniform_(t1, generator="nope")


def test_default_dtype_untouched():
    assert _dtype.get_default_dtype() is _dtype.float32
