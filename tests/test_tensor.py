"""Tensor basics against PyTorch: dtypes, promotion, devices, factories, conversions, shapes."""
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402

import tracenet as tn  # noqa: E402


@pytest.fixture(autouse=True)
def restore_defaults():
    yield
    tn.set_default_dtype(tn.float32)
    torch.set_default_dtype(torch.float32)


def same_dtype(a, b):
    assert repr(a.dtype) == repr(b.dtype), (a.dtype, b.dtype)


def assert_same(got, expected, exact=True, rtol=1e-6, atol=1e-6):
    """tracenet tensor ``got`` equals torch tensor ``expected`` in shape, dtype and values."""
    assert tuple(got.shape) == tuple(expected.shape), (got.shape, expected.shape)
    same_dtype(got, expected)
    g, e = got.detach().numpy(), expected.detach().numpy()
    if exact:
        np.testing.assert_array_equal(g, e)
    else:
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def both(fn):
    """Run ``fn(module)`` with tracenet and with torch."""
    return fn(tn), fn(torch)


def same_error(fn, exc=RuntimeError, match_message=True):
    """``fn(tn)`` and ``fn(torch)`` both raise ``exc`` with the same message."""
    with pytest.raises(exc) as ours:
        fn(tn)
    with pytest.raises(exc) as theirs:
        fn(torch)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    if match_message:
        assert str(ours.value) == str(theirs.value)
    return str(ours.value)


# --- dtypes -------------------------------------------------------------------------------------


def test_dtype_objects_print_like_torch():
    for name in ("float32", "float64", "int64", "bool", "float", "double", "long"):
        assert repr(getattr(tn, name)) == repr(getattr(torch, name))
    assert tn.float is tn.float32 and tn.double is tn.float64 and tn.long is tn.int64
    assert tn.float32.is_floating_point and not tn.int64.is_floating_point
    assert tn.float64.itemsize == 8 and tn.bool.itemsize == 1


def test_default_dtype_is_float32():
    assert tn.get_default_dtype() is tn.float32
    for factory in ("zeros", "ones", "empty", "rand", "randn"):
        a, b = both(lambda m: getattr(m, factory)(2, 3))
        same_dtype(a, b)
    a, b = both(lambda m: m.tensor([1.5, 2.0]))
    same_dtype(a, b)


def test_set_default_dtype():
    tn.set_default_dtype(tn.float64)
    torch.set_default_dtype(torch.float64)
    assert tn.get_default_dtype() is tn.float64
    cases = [
        lambda m: m.zeros(2), lambda m: m.tensor([1.0]), lambda m: m.tensor(2.5),
        lambda m: m.arange(0.0, 2.0), lambda m: m.tensor([1, 2]) / 2,
        lambda m: m.tensor([1, 2]) * 1.5, lambda m: m.randn(2), lambda m: m.full((2,), 1.5),
        lambda m: m.eye(2), lambda m: m.linspace(0, 1, 3), lambda m: m.tensor([1]).exp(),
        lambda m: m.ones(2, dtype=m.float32) * 2.0,
    ]
    for case in cases:
        a, b = both(case)
        same_dtype(a, b)
    with pytest.raises(TypeError):
        tn.set_default_dtype(tn.int64)


PROMOTION_OPERANDS = {
    "f32": lambda m: m.ones(2, dtype=m.float32),
    "f64": lambda m: m.ones(2, dtype=m.float64),
    "i64": lambda m: m.ones(2, dtype=m.int64),
    "bool": lambda m: m.ones(2, dtype=m.bool),
    "f32_0d": lambda m: m.tensor(1.0, dtype=m.float32),
    "f64_0d": lambda m: m.tensor(1.0, dtype=m.float64),
    "i64_0d": lambda m: m.tensor(1, dtype=m.int64),
    "bool_0d": lambda m: m.tensor(True),
    "int": lambda m: 3,
    "float": lambda m: 2.5,
    "pybool": lambda m: True,
}


@pytest.mark.parametrize("left,right", [
    (a, b) for a, b in itertools.product(PROMOTION_OPERANDS, repeat=2)
    if not (a in ("int", "float", "pybool") and b in ("int", "float", "pybool"))])
@pytest.mark.parametrize("op", ["add", "mul", "sub", "div", "where", "max", "gt"])
def test_type_promotion_grid(left, right, op):
    def run(m):
        a, b = PROMOTION_OPERANDS[left](m), PROMOTION_OPERANDS[right](m)
        if op == "add":
            return a + b
        if op == "mul":
            return a * b
        if op == "sub":
            return a - b
        if op == "div":
            return a / b
        if op == "gt":
            return a > b
        if op == "max":
            if not (hasattr(a, "dtype") and hasattr(b, "dtype")):
                return None
            return m.maximum(a, b)
        cond = m.tensor([True, False])
        return m.where(cond, a, b)

    try:
        theirs = run(torch)
    except RuntimeError as e:  # torch refuses (bool subtraction): so must we, identically
        with pytest.raises(RuntimeError) as ours:
            run(tn)
        assert str(ours.value) == str(e)
        return
    ours = run(tn)
    if theirs is None:
        return
    same_dtype(ours, theirs)
    assert_same(ours, theirs)


def test_promotion_with_numpy_scalars_and_default_dtype():
    tn.set_default_dtype(tn.float64)
    torch.set_default_dtype(torch.float64)
    for case in (lambda m: m.ones(2, dtype=m.int64) * 2.5,
                 lambda m: m.ones(2, dtype=m.float32) * 2.5,
                 lambda m: m.tensor(True) + 1.5,
                 lambda m: m.tensor([True]) + m.tensor(1.5, dtype=m.float32)):
        a, b = both(case)
        same_dtype(a, b)


def test_sub_of_bools_errors_like_torch():
    msg = same_error(lambda m: m.tensor([True]) - m.tensor([False]))
    assert "Subtraction, the `-` operator, with two bool tensors is not supported" in msg


# --- device -------------------------------------------------------------------------------------


def test_cpu_device_accepted():
    x = tn.zeros(2, 3, device="cpu")
    assert str(x.device) == "cpu" and x.device == "cpu" and x.device.type == "cpu"
    assert repr(x.device) == repr(torch.zeros(1).device)
    assert x.cpu() is x
    assert x.to("cpu") is x
    assert x.to(tn.device("cpu")) is x
    assert x.to(device="cpu") is x
    assert tn.tensor([1.0], device="cpu").device.type == "cpu"
    assert tn.ones(2, device=tn.device("cpu")).is_cuda is False
    y = x.to("cpu", tn.float64)
    assert y.dtype is tn.float64
    assert x.to("cpu", copy=True) is not x
    assert not x.is_cuda
    for factory in (lambda: tn.randn(2, device="cpu"), lambda: tn.arange(3, device="cpu"),
                    lambda: tn.full((2,), 1.0, device="cpu"), lambda: tn.eye(2, device="cpu"),
                    lambda: tn.zeros_like(x, device="cpu"), lambda: tn.tensor(1, device="cpu")):
        assert factory().device.type == "cpu"


@pytest.mark.parametrize("make", [
    lambda: tn.zeros(2, device="cuda"), lambda: tn.tensor([1.0], device="cuda"),
    lambda: tn.ones(2).to("cuda"), lambda: tn.ones(2).cuda(), lambda: tn.device("cuda:0"),
    lambda: tn.randn(2, device="cuda"), lambda: tn.ones(2).to(device="cuda"),
    lambda: tn.arange(3, device="cuda"), lambda: tn.ones(2).new_zeros(2, device="cuda"),
])
def test_cuda_is_a_clear_runtime_error(make):
    with pytest.raises(RuntimeError, match="cuda"):
        make()


# --- creation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    [1, 2, 3], [1.0, 2, 3], [True, False], [True, 2], [True, 2.5], [[1, 2], [3, 4]],
    [[1.5], [2]], 3, 3.5, True, [], [[]], [[], []], (1, 2), [(1, 2), (3, 4)],
    [np.float64(1.0)], [np.int64(2), 3], np.float32(1.0), [np.float64(1.0), 2.5],
    [np.float32(1.0), 2.5], [np.float32(1.0), np.float64(2.0)], np.float64(2.0),
])
def test_tensor_dtype_inference(data):
    a, b = both(lambda m: m.tensor(data))
    assert_same(a, b)


@pytest.mark.parametrize("arr", [
    np.array([1, 2], np.int64), np.array([1, 2], np.int32), np.array([1.0], np.float64),
    np.array([1.0], np.float32), np.array([True]), np.zeros((2, 0)), np.array(3.0),
])
def test_tensor_from_numpy_array_copies(arr):
    ours = tn.tensor(arr)
    theirs = torch.tensor(arr)
    if arr.dtype == np.int32:
        assert ours.dtype is tn.int64  # tracenet's one integer type
    else:
        assert_same(ours, theirs)
    if arr.size:
        arr.reshape(-1)[0] = 7
        assert ours.reshape(-1)[0].item() != 7


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "bool"])
def test_tensor_explicit_dtype(dtype):
    a, b = both(lambda m: m.tensor([0, 1.5, -2], dtype=getattr(m, dtype)))
    assert_same(a, b)


def test_tensor_from_tensor_warns_like_torch():
    with pytest.warns(UserWarning) as ours:
        a = tn.tensor(tn.ones(2))
    with pytest.warns(UserWarning) as theirs:
        b = torch.tensor(torch.ones(2))
    assert str(ours[0].message) == str(theirs[0].message)
    assert_same(a, b)
    src = tn.ones(2, requires_grad=True)
    with pytest.warns(UserWarning):
        c = tn.tensor(src)
    assert not c.requires_grad and c.is_leaf
    c[0] = 5
    assert src[0].item() == 1


def test_tensor_of_tensors_and_ragged():
    for make in (lambda m: [m.tensor(1.0), m.tensor(2.0)], lambda m: [m.tensor(1), 2.5],
                 lambda m: [m.tensor(1.0, dtype=m.float64), 2],
                 lambda m: [[m.tensor(True)], [m.tensor(False)]], lambda m: [m.tensor(1), 2]):
        a, b = both(lambda m: m.tensor(make(m)))
        assert_same(a, b)
    with pytest.raises(ValueError):
        tn.tensor([[1, 2], [3]])
    with pytest.raises(ValueError):
        torch.tensor([[1, 2], [3]])


def test_tensor_requires_grad_flag():
    x = tn.tensor([1.0, 2.0], requires_grad=True)
    assert x.requires_grad and x.is_leaf and x.grad is None
    same_error(lambda m: m.tensor([1, 2], requires_grad=True))
    same_error(lambda m: m.zeros(2, dtype=m.int64, requires_grad=True))
    same_error(lambda m: m.arange(3, requires_grad=True))
    same_error(lambda m: m.ones(2, dtype=m.bool).requires_grad_())
    same_error(lambda m: setattr(m.ones(2, dtype=m.int64), "requires_grad", True))


def test_from_numpy_shares_memory_both_ways():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = tn.from_numpy(arr)
    assert t.dtype is tn.float32 and tuple(t.shape) == (2, 3)
    arr[0, 0] = 100
    assert t[0, 0].item() == 100
    t[1, 2] = -5
    assert arr[1, 2] == -5
    t.add_(1)
    assert arr[0, 0] == 101
    assert t.numpy() is arr or np.shares_memory(t.numpy(), arr)
    for dt, ref in ((np.float64, tn.float64), (np.int64, tn.int64), (np.bool_, tn.bool)):
        assert tn.from_numpy(np.zeros(2, dt)).dtype is ref
    with pytest.raises(TypeError):
        tn.from_numpy([1, 2])


def test_numpy_shares_memory():
    t = tn.zeros(3)
    arr = t.numpy()
    arr[1] = 4
    assert t[1].item() == 4
    t[2] = 9
    assert arr[2] == 9


def test_as_tensor():
    arr = np.ones(3, np.float32)
    t = tn.as_tensor(arr)
    arr[0] = 2
    assert t[0].item() == 2
    x = tn.ones(2)
    assert tn.as_tensor(x) is x
    a, b = both(lambda m: m.as_tensor([1, 2], dtype=m.float64))
    assert_same(a, b)


@pytest.mark.parametrize("factory", ["zeros", "ones", "empty"])
@pytest.mark.parametrize("size", [((),), (0,), (3,), (2, 3), ((2, 3),), ([4, 1],), (2, 0, 1)])
@pytest.mark.parametrize("dtype", [None, "float64", "int64", "bool"])
def test_zeros_ones_empty(factory, size, dtype):
    def run(m):
        kw = {} if dtype is None else {"dtype": getattr(m, dtype)}
        return getattr(m, factory)(*size, **kw)
    a, b = both(run)
    if factory == "empty":
        assert tuple(a.shape) == tuple(b.shape)
        same_dtype(a, b)
    else:
        assert_same(a, b)


@pytest.mark.parametrize("name", ["zeros", "ones", "empty", "rand", "randn"])
def test_factories_negative_size_error(name):
    same_error(lambda m: getattr(m, name)(2, -1))
    same_error(lambda m: getattr(m, name)((3, -2)))
    same_error(lambda m: getattr(m, name)(), TypeError, match_message=False)
    same_error(lambda m: m.full((2, -1), 1.0))
    same_error(lambda m: m.ones(1).new_zeros(-1))


@pytest.mark.parametrize("fill", [1, 2.5, True, -3, 0.0])
@pytest.mark.parametrize("dtype", [None, "float64", "int64"])
def test_full_dtype_from_fill_value(fill, dtype):
    def run(m):
        kw = {} if dtype is None else {"dtype": getattr(m, dtype)}
        return m.full((2, 3), fill, **kw)
    a, b = both(run)
    assert_same(a, b)
    a, b = both(lambda m: m.full([2], fill))
    assert_same(a, b)


def test_full_with_tensor_fill_and_0d():
    a, b = both(lambda m: m.full((), 4.0))
    assert_same(a, b)


@pytest.mark.parametrize("args", [(3,), (2, 4), (4, 2), (0,), (1, 1)])
def test_eye(args):
    a, b = both(lambda m: m.eye(*args))
    assert_same(a, b)
    a, b = both(lambda m: m.eye(*args, dtype=m.int64))
    assert_same(a, b)


@pytest.mark.parametrize("args,kwargs", [
    ((5,), {}), ((2, 7), {}), ((2, 7, 2), {}), ((7, 2, -2), {}), ((0, 1, 0.1), {}),
    ((1.5,), {}), ((-3, 3, 0.5), {}), ((5, 0, -1.5), {}), ((0, 5), {"dtype": "float64"}),
    ((0.5, 4), {"dtype": "int64"}), ((0, 0), {}), ((3, 3, -1), {}), ((0, 10, 3), {}),
    ((10, 0, -3), {}), ((0, 1, 0.3), {}), ((1, 2.5, 0.5), {}), ((0, 5), {"dtype": "float32"}),
    ((0.0, 1.0, 0.1), {"dtype": "float64"}),
])
def test_arange(args, kwargs):
    def run(m):
        kw = {k: getattr(m, v) for k, v in kwargs.items()}
        return m.arange(*args, **kw)
    a, b = both(run)
    assert_same(a, b, exact=False)


def test_arange_errors():
    same_error(lambda m: m.arange(0, 5, 0))
    same_error(lambda m: m.arange(5, 0, 1))
    same_error(lambda m: m.arange(0, 5, -1))


def test_arange_tensor_arguments():
    a, b = both(lambda m: m.arange(m.tensor(4)))
    assert_same(a, b)


@pytest.mark.parametrize("args,kwargs", [
    ((0, 3), {}), ((0, 1, 0.25), {}), ((1, 4, 2), {}), ((3, 0, -1), {}), ((0, 2), {"dtype":
                                                                            "int64"}),
    ((0.5, 2.5), {}), ((0, 1, 0.3), {}),
])
def test_range_inclusive_and_warns_like_torch(args, kwargs):
    def run(m):
        kw = {k: getattr(m, v) for k, v in kwargs.items()}
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = m.range(*args, **kw)
        return out, rec
    (a, wa), (b, wb) = both(run)
    assert_same(a, b, exact=False)
    assert [w.category for w in wa] == [UserWarning]
    assert [str(w.message) for w in wa] == [str(w.message) for w in wb]


def test_linspace():
    for args in ((0, 1, 5), (-1, 1, 1), (2, 0, 4), (0, 1, 0)):
        a, b = both(lambda m: m.linspace(*args))
        assert_same(a, b, exact=False)


@pytest.mark.parametrize("name", ["randn", "rand"])
def test_random_float_factories(name):
    fn = getattr(tn, name)
    for size in (((),), (3,), (2, 3), ((4, 5),)):
        t = fn(*size)
        ref = getattr(torch, name)(*size)
        assert tuple(t.shape) == tuple(ref.shape)
        same_dtype(t, ref)
    t = fn(2000, dtype=tn.float64)
    assert t.dtype is tn.float64
    data = t.numpy()
    if name == "rand":
        assert data.min() >= 0 and data.max() < 1 and 0.4 < data.mean() < 0.6
    else:
        assert abs(data.mean()) < 0.1 and 0.9 < data.std() < 1.1
    assert fn(3, requires_grad=True).requires_grad
    same_error(lambda m: getattr(m, name)(3, dtype=m.int64), NotImplementedError)
    same_error(lambda m: getattr(m, name)(3, dtype=m.bool), NotImplementedError)


def test_randint():
    t = tn.randint(3, 7, (1000,))
    assert t.dtype is tn.int64 and tuple(t.shape) == (1000,)
    assert t.min().item() == 3 and t.max().item() == 6
    t = tn.randint(5, (2, 3))
    assert tuple(t.shape) == (2, 3) and 0 <= t.min().item() and t.max().item() < 5
    assert tn.randint(0, 2, (3,), dtype=tn.float32).dtype is tn.float32
    a, b = both(lambda m: m.randint(3, 7, (2, 3)))
    assert tuple(a.shape) == tuple(b.shape)
    same_dtype(a, b)
    same_error(lambda m: m.randint(5, 5, (2,)))
    x = tn.randint_like(tn.zeros(2, 3), 10)
    assert tuple(x.shape) == (2, 3) and x.dtype is tn.float32


def test_randperm():
    p = tn.randperm(10)
    assert p.dtype is tn.int64 and sorted(p.tolist()) == list(range(10))


def test_manual_seed_reproducible():
    tn.manual_seed(123)
    a = (tn.randn(3, 4), tn.rand(5), tn.randint(0, 100, (6,)), tn.randperm(7))
    tn.manual_seed(123)
    b = (tn.randn(3, 4), tn.rand(5), tn.randint(0, 100, (6,)), tn.randperm(7))
    for x, y in zip(a, b):
        assert np.array_equal(x.numpy(), y.numpy())
    tn.manual_seed(124)
    c = tn.randn(3, 4)
    assert not np.array_equal(a[0].numpy(), c.numpy())
    assert tn.initial_seed() == 124
    tn.manual_seed(5)
    x = tn.empty(4).normal_()
    tn.manual_seed(5)
    y = tn.empty(4).normal_()
    assert np.array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("name", ["zeros_like", "ones_like", "empty_like", "rand_like",
                                  "randn_like"])
def test_like_factories(name):
    for src in (lambda m: m.ones(2, 3), lambda m: m.ones(2, dtype=m.float64)):
        a, b = both(lambda m: getattr(m, name)(src(m)))
        assert tuple(a.shape) == tuple(b.shape)
        same_dtype(a, b)
        if name in ("zeros_like", "ones_like"):
            assert_same(a, b)
    a, b = both(lambda m: m.zeros_like(m.ones(2, dtype=m.int64), dtype=m.float32))
    assert_same(a, b)
    x = tn.ones(2, requires_grad=True)
    assert not tn.zeros_like(x).requires_grad
    assert tn.zeros_like(x, requires_grad=True).requires_grad


def test_full_like():
    for fill in (2, 2.5, True):
        for src in (lambda m: m.ones(2), lambda m: m.ones(2, dtype=m.int64)):
            a, b = both(lambda m: m.full_like(src(m), fill))
            assert_same(a, b)


@pytest.mark.parametrize("src", ["float32", "float64", "int64", "bool"])
def test_new_factories(src):
    def base(m):
        return m.ones(2, dtype=getattr(m, src))
    for fn in (lambda x: x.new_zeros(2, 3), lambda x: x.new_ones((3,)), lambda x: x.new_zeros(()),
               lambda x: x.new_full((2,), 3), lambda x: x.new_tensor([1, 2]),
               lambda x: x.new_ones(2, dtype=torch.float64 if isinstance(x, torch.Tensor)
                                    else tn.float64)):
        a, b = fn(base(tn)), fn(base(torch))
        assert_same(a, b)
    e, f = base(tn).new_empty(2, 3), base(torch).new_empty(2, 3)
    assert tuple(e.shape) == tuple(f.shape)
    same_dtype(e, f)
    assert base(tn).new_zeros(2, requires_grad=src.startswith("float")).requires_grad == \
        src.startswith("float")


def test_legacy_tensor_constructor():
    a = tn.Tensor(2, 3)
    assert tuple(a.shape) == (2, 3) and a.dtype is tn.float32
    b = tn.Tensor([1, 2])
    assert_same(b, torch.Tensor([1, 2]))


# --- sizes, dims --------------------------------------------------------------------------------


def test_size_and_shape():
    x = tn.zeros(2, 3, 4)
    y = torch.zeros(2, 3, 4)
    assert repr(x.shape) == repr(y.shape) == "torch.Size([2, 3, 4])"
    assert str(x.size()) == str(y.size())
    assert repr(tn.zeros(()).shape) == repr(torch.zeros(()).shape)
    assert x.size(1) == 3 and x.size(-1) == 4 and x.shape[0] == 2
    assert x.dim() == 3 and x.ndim == 3 and x.ndimension() == 3
    assert x.numel() == 24 and tn.numel(x) == 24 and x.nelement() == 24
    assert x.shape == (2, 3, 4) and isinstance(x.shape, tuple) and isinstance(x.shape, tn.Size)
    assert x.shape[1:] == (3, 4) and repr(x.shape[1:]) == "torch.Size([3, 4])"
    assert x.shape.numel() == 24
    assert len(x) == 2
    assert tn.Size([2, 3]) == torch.Size([2, 3])
    assert repr(tn.Size([1]) + tn.Size([2])) == repr(torch.Size([1]) + torch.Size([2]))
    same_error(lambda m: m.zeros(2, 3).size(2), IndexError)
    with pytest.raises(TypeError):
        len(tn.tensor(1.0))


def test_stride_and_element_size():
    for make in (lambda m: m.zeros(2, 3, 4), lambda m: m.zeros(2, 3).t(),
                 lambda m: m.zeros(4, 6)[::2, 1:]):
        a, b = both(make)
        assert a.stride() == b.stride()
        assert a.is_contiguous() == b.is_contiguous()
    assert tn.zeros(1, dtype=tn.float64).element_size() == 8


# --- view / reshape -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6,), (3, 2), (-1,), (2, -1), (1, 6, 1), (-1, 3)])
def test_view_and_reshape(shape):
    for method in ("view", "reshape"):
        a, b = both(lambda m: getattr(m.arange(6.0).reshape(2, 3), method)(*shape))
        assert_same(a, b)
        a, b = both(lambda m: getattr(m.arange(6.0).reshape(2, 3), method)(shape))
        assert_same(a, b)
    a, b = both(lambda m: m.reshape(m.arange(6.0), shape))
    assert_same(a, b)


def test_view_errors_match_torch():
    same_error(lambda m: m.zeros(2, 3).view(4, 2))
    same_error(lambda m: m.zeros(2, 3).view(-1, 4))
    same_error(lambda m: m.zeros(2, 3).view(-1, -1))
    same_error(lambda m: m.zeros(2, 3).t().view(6))
    same_error(lambda m: m.zeros(4, 4)[:, :2].view(8))
    same_error(lambda m: m.zeros(2, 3, 4).transpose(0, 1).view(6, 4))
    same_error(lambda m: m.zeros(2, 3).reshape(5))


def test_view_of_non_contiguous_when_compatible():
    a, b = both(lambda m: m.arange(24.0).reshape(2, 3, 4).permute(1, 0, 2).view(3, 2, 2, 2))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(12.0).reshape(3, 4).t().reshape(12))
    assert_same(a, b)


def test_view_shares_memory_reshape_may_copy():
    x = tn.zeros(2, 3)
    v = x.view(6)
    v[0] = 1
    assert x[0, 0].item() == 1
    r = x.reshape(3, 2)
    r[2, 1] = 2
    assert x[1, 2].item() == 2
    xt = x.t()
    c = xt.reshape(6)
    c[1] = 7
    assert x[1, 0].item() == 0  # reshape of a non-contiguous tensor copies


def test_view_as_reshape_as():
    a, b = both(lambda m: m.arange(6).view_as(m.zeros(3, 2)))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(6).reshape_as(m.zeros(2, 3)))
    assert_same(a, b)


@pytest.mark.parametrize("args", [(), (0,), (1,), (0, 1), (1, 2), (-2, -1), (0, -1), (2, 2)])
def test_flatten(args):
    a, b = both(lambda m: m.arange(24.0).reshape(2, 3, 4).flatten(*args))
    assert_same(a, b)
    a, b = both(lambda m: m.flatten(m.arange(24.0).reshape(2, 3, 4), *args))
    assert_same(a, b)


def test_flatten_edge_cases():
    a, b = both(lambda m: m.tensor(3.0).flatten())
    assert_same(a, b)
    a, b = both(lambda m: m.flatten(m.arange(4.0), start_dim=0, end_dim=0))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(24).reshape(2, 3, 4).flatten(start_dim=1))
    assert_same(a, b)
    same_error(lambda m: m.zeros(2, 3, 4).flatten(2, 1))


@pytest.mark.parametrize("dim,sizes", [(1, (2, 2)), (-1, (3, 1)), (0, (1, 2)), (1, (-1, 2)),
                                       (2, (3, 1, 1)), (1, [4])])
def test_unflatten(dim, sizes):
    a, b = both(lambda m: m.arange(24.0).reshape(2, 4, 3).unflatten(dim, sizes))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(24.0).reshape(3, 4, 2).transpose(0, 2).unflatten(dim, sizes))
    assert_same(a, b)
    a, b = both(lambda m: m.unflatten(m.arange(8.0).reshape(2, 4), 1, (2, 2)))
    assert_same(a, b)


def test_unflatten_error():
    with pytest.raises(RuntimeError):
        tn.zeros(2, 4).unflatten(1, (3, 2))


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_unsqueeze(dim):
    a, b = both(lambda m: m.arange(6.0).reshape(2, 3).unsqueeze(dim))
    assert_same(a, b)
    a, b = both(lambda m: m.unsqueeze(m.arange(6.0).reshape(2, 3), dim))
    assert_same(a, b)


def test_unsqueeze_error():
    same_error(lambda m: m.zeros(2, 3).unsqueeze(3), IndexError)


@pytest.mark.parametrize("args", [(), (0,), (1,), (2,), (-1,), ((0, 2),), ((1, 3),), ((),),
                                  ((0, -1),)])
def test_squeeze(args):
    a, b = both(lambda m: m.zeros(1, 3, 1, 2).squeeze(*args))
    assert_same(a, b)
    a, b = both(lambda m: m.squeeze(m.zeros(1, 3, 1, 2), *args))
    assert_same(a, b)


def test_squeeze_0d_and_errors():
    a, b = both(lambda m: m.tensor(2.0).squeeze())
    assert_same(a, b)
    a, b = both(lambda m: m.tensor(2.0).squeeze(0))
    assert_same(a, b)
    same_error(lambda m: m.zeros(1, 2).squeeze(2), IndexError)


@pytest.mark.parametrize("dims", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (-1, 0, 1)])
def test_permute(dims):
    a, b = both(lambda m: m.arange(24.0).reshape(2, 3, 4).permute(*dims))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(24.0).reshape(2, 3, 4).permute(dims))
    assert_same(a, b)
    a, b = both(lambda m: m.permute(m.arange(24.0).reshape(2, 3, 4), dims))
    assert_same(a, b)
    assert a.is_contiguous() == b.is_contiguous()


def test_permute_errors():
    with pytest.raises(RuntimeError):
        tn.zeros(2, 3).permute(0)
    with pytest.raises(RuntimeError):
        tn.zeros(2, 3).permute(0, 0)


@pytest.mark.parametrize("d0,d1", [(0, 1), (1, 0), (0, 2), (-1, -2), (1, 1)])
def test_transpose(d0, d1):
    a, b = both(lambda m: m.arange(24.0).reshape(2, 3, 4).transpose(d0, d1))
    assert_same(a, b)
    a, b = both(lambda m: m.transpose(m.arange(24.0).reshape(2, 3, 4), d0, d1))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(24.0).reshape(2, 3, 4).swapaxes(d0, d1))
    assert_same(a, b)


def test_t_T_mT():
    for shape in ((), (3,), (2, 3)):
        a, b = both(lambda m: m.arange(float(np.prod(shape))).reshape(shape).t())
        assert_same(a, b)
        a, b = both(lambda m: m.t(m.arange(float(np.prod(shape))).reshape(shape)))
        assert_same(a, b)
    same_error(lambda m: m.zeros(2, 3, 4).t())
    same_error(lambda m: m.t(m.zeros(2, 3, 4)))
    for shape in ((2, 3), (2, 3, 4)):
        a, b = both(lambda m: m.arange(float(np.prod(shape))).reshape(shape).mT)
        assert_same(a, b)
    a, b = both(lambda m: m.arange(6.0).reshape(2, 3).T)
    assert_same(a, b)
    same_error(lambda m: m.arange(4.0).mT)
    torch.set_warn_always(True)  # torch warns once per process otherwise
    try:
        for make in (lambda m: m.arange(4.0), lambda m: m.tensor(1.0),
                     lambda m: m.arange(8.0).reshape(2, 2, 2)):
            with pytest.warns(UserWarning) as ours:
                a = make(tn).T
            with pytest.warns(UserWarning) as theirs:
                b = make(torch).T
            assert_same(a, b)
            assert str(theirs[0].message).startswith(str(ours[0].message))
    finally:
        torch.set_warn_always(False)


def test_transpose_is_a_view():
    x = tn.zeros(2, 3)
    y = x.t()
    y[2, 1] = 5
    assert x[1, 2].item() == 5
    assert not y.is_contiguous()
    c = y.contiguous()
    assert c.is_contiguous()
    c[0, 0] = 9
    assert x[0, 0].item() == 0
    assert x.contiguous() is x


def test_contiguous_matches_torch():
    for make in (lambda m: m.zeros(2, 3), lambda m: m.zeros(2, 3).t(),
                 lambda m: m.zeros(2, 3)[:, 1:], lambda m: m.zeros(2, 3)[1:],
                 lambda m: m.zeros(3, 4)[::2], lambda m: m.zeros(2, 3).t().contiguous(),
                 lambda m: m.zeros(1, 3).expand(4, 3)):
        a, b = both(make)
        assert a.is_contiguous() == b.is_contiguous()


@pytest.mark.parametrize("src,sizes", [
    ((3, 1), (3, 4)), ((3, 1), (-1, 4)), ((3, 1), (2, 3, 4)), ((1,), (5,)), ((), (2, 2)),
    ((2, 1, 3), (2, 5, 3)), ((3, 1), (3, 1)), ((1, 3), (2, -1, -1)),
])
def test_expand(src, sizes):
    a, b = both(lambda m: m.arange(float(np.prod(src))).reshape(src).expand(*sizes))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(float(np.prod(src))).reshape(src).expand(sizes))
    assert_same(a, b)


def test_expand_errors():
    same_error(lambda m: m.zeros(3, 2).expand(3, 4))
    same_error(lambda m: m.zeros(3, 2).expand(2))
    same_error(lambda m: m.zeros(3, 2).expand(-1, 3, 2))
    same_error(lambda m: m.zeros(3, 1, dtype=m.float64).expand(4))
    same_error(lambda m: m.zeros(3, 1, dtype=m.int64).expand(2, 4))


def test_expand_as_and_broadcast_to():
    a, b = both(lambda m: m.arange(3.0).expand_as(m.zeros(2, 3)))
    assert_same(a, b)
    a, b = both(lambda m: m.broadcast_to(m.arange(3.0), (2, 3)))
    assert_same(a, b)
    assert repr(tn.broadcast_shapes((2, 1), (3,))) == repr(torch.broadcast_shapes((2, 1), (3,)))


def test_expand_is_a_view_and_writes_error():
    x = tn.zeros(3, 1)
    e = x.expand(3, 4)
    x[0, 0] = 2
    assert e[0, 3].item() == 2
    with pytest.raises(RuntimeError):
        e.add_(1)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dim):
    a, b = both(lambda m: m.cat([m.ones(2, 3), m.zeros(2, 3), m.arange(6.0).reshape(2, 3)],
                                dim=dim))
    assert_same(a, b)
    a, b = both(lambda m: m.cat((m.ones(2, 3), m.zeros(2, 3)), dim))
    assert_same(a, b)
    a, b = both(lambda m: m.concat([m.ones(2, 3), m.zeros(2, 3)], dim))
    assert_same(a, b)


def test_cat_variants():
    a, b = both(lambda m: m.cat([m.ones(2, 3), m.zeros(1, 3)]))
    assert_same(a, b)
    a, b = both(lambda m: m.cat([m.ones(2, 3), m.zeros(2, 1)], 1))
    assert_same(a, b)
    a, b = both(lambda m: m.cat([m.ones(2, dtype=m.int64), m.zeros(2)]))
    assert_same(a, b)
    a, b = both(lambda m: m.cat([m.ones(2, 3), m.tensor([])]))
    assert_same(a, b)
    a, b = both(lambda m: m.cat([m.ones(2, 3)]))
    assert_same(a, b)


def test_cat_errors_match_torch():
    same_error(lambda m: m.cat([m.ones(2, 3), m.ones(2, 4)]))
    same_error(lambda m: m.cat([m.ones(2, 3), m.ones(3)]))
    same_error(lambda m: m.cat([m.ones(2, 3), m.ones(2, 3)], dim=2), IndexError)
    same_error(lambda m: m.cat([m.tensor(1.0), m.tensor(2.0)]))
    same_error(lambda m: m.cat([]), ValueError)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_stack(dim):
    a, b = both(lambda m: m.stack([m.ones(2, 3), m.arange(6.0).reshape(2, 3)], dim=dim))
    assert_same(a, b)
    a, b = both(lambda m: m.stack((m.ones(2, 3), m.zeros(2, 3)), dim))
    assert_same(a, b)


def test_stack_variants_and_errors():
    a, b = both(lambda m: m.stack([m.tensor(1.0), m.tensor(2.0)]))
    assert_same(a, b)
    a, b = both(lambda m: m.stack([m.ones(2, dtype=m.int64), m.zeros(2)]))
    assert_same(a, b)
    same_error(lambda m: m.stack([m.ones(2, 3), m.ones(2, 4)]))
    same_error(lambda m: m.stack([m.ones(2, 3), m.ones(3)]))
    same_error(lambda m: m.stack([]))
    same_error(lambda m: m.stack([m.ones(2)], dim=2), IndexError)
    a, b = both(lambda m: m.hstack([m.ones(2), m.zeros(3)]))
    assert_same(a, b)
    a, b = both(lambda m: m.vstack([m.ones(2), m.zeros(2)]))
    assert_same(a, b)


@pytest.mark.parametrize("arg", [1, 2, 3, 5, [1, 4], [5, 0], (2, 2, 1)])
@pytest.mark.parametrize("dim", [0, -1])
def test_split(arg, dim):
    ours, theirs = both(lambda m: m.arange(25.0).reshape(5, 5).split(arg, dim))
    assert len(ours) == len(theirs) and isinstance(ours, tuple)
    for a, b in zip(ours, theirs):
        assert_same(a, b)
    ours, theirs = both(lambda m: m.split(m.arange(25.0).reshape(5, 5), arg, dim=dim))
    for a, b in zip(ours, theirs):
        assert_same(a, b)


def test_split_error():
    same_error(lambda m: m.zeros(5).split([1, 2]))


@pytest.mark.parametrize("n,size", [(1, 5), (2, 5), (3, 5), (5, 5), (6, 5), (4, 6), (3, 7),
                                    (4, 0)])
def test_chunk(n, size):
    ours, theirs = both(lambda m: m.arange(float(size)).chunk(n))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert_same(a, b)
    ours, theirs = both(lambda m: m.chunk(m.arange(2.0 * size).reshape(2, size), n, dim=1))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert_same(a, b)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_unbind(dim):
    ours, theirs = both(lambda m: m.arange(6.0).reshape(2, 3).unbind(dim))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert_same(a, b)
    ours, theirs = both(lambda m: m.unbind(m.arange(6.0).reshape(2, 3), dim=dim))
    for a, b in zip(ours, theirs):
        assert_same(a, b)


@pytest.mark.parametrize("dim,start,length", [(0, 0, 1), (1, 1, 2), (-1, 0, 3), (1, -2, 2),
                                              (0, 1, 0)])
def test_narrow(dim, start, length):
    a, b = both(lambda m: m.arange(6.0).reshape(2, 3).narrow(dim, start, length))
    assert_same(a, b)
    a, b = both(lambda m: m.narrow(m.arange(6.0).reshape(2, 3), dim, start, length))
    assert_same(a, b)


def test_narrow_error_and_view():
    same_error(lambda m: m.zeros(2, 3).narrow(1, 2, 2))
    x = tn.zeros(2, 3)
    x.narrow(1, 1, 2)[0, 0] = 3
    assert x[0, 1].item() == 3


@pytest.mark.parametrize("src,reps", [((3,), (2,)), ((3,), (2, 2)), ((2, 3), (1, 1)),
                                      ((2, 3), (2, 3)), ((2, 1), (1, 3, 2)), ((), (3,)),
                                      ((2, 3), (0, 1))])
def test_repeat(src, reps):
    a, b = both(lambda m: m.arange(float(np.prod(src))).reshape(src).repeat(*reps))
    assert_same(a, b)
    a, b = both(lambda m: m.arange(float(np.prod(src))).reshape(src).repeat(reps))
    assert_same(a, b)


def test_repeat_error():
    same_error(lambda m: m.zeros(2, 3).repeat(2))


@pytest.mark.parametrize("dims", [(0,), (1,), (0, 1), (-1,), [0, 2], (2, 1, 0)])
def test_flip(dims):
    a, b = both(lambda m: m.arange(24.0).reshape(2, 3, 4).flip(dims))
    assert_same(a, b)
    a, b = both(lambda m: m.flip(m.arange(24.0).reshape(2, 3, 4), dims))
    assert_same(a, b)


def test_flip_int_dim():
    a, b = both(lambda m: m.arange(6.0).reshape(2, 3).flip(1))
    assert_same(a, b)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_reshape_permute_roundtrip_hypothesis(shape, data):
    n = int(np.prod(shape))
    perm = data.draw(st.permutations(range(len(shape))))
    a, b = both(lambda m: m.arange(float(n)).reshape(shape).permute(perm).reshape(-1))
    assert_same(a, b)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    a, b = both(lambda m: m.arange(float(n)).reshape(shape).permute(perm).flatten(dim))
    assert_same(a, b)


# --- conversions --------------------------------------------------------------------------------


def test_numpy_errors_when_requires_grad():
    same_error(lambda m: m.ones(2, requires_grad=True).numpy())
    same_error(lambda m: (m.ones(2, requires_grad=True) * 2).numpy())
    x = tn.ones(2, requires_grad=True)
    arr = x.detach().numpy()
    arr[0] = 5
    assert x[0].item() == 5
    assert isinstance(x.numpy(force=True), np.ndarray)


@pytest.mark.parametrize("make", [
    lambda m: m.tensor(2.5), lambda m: m.tensor([3]), lambda m: m.tensor([[True]]),
    lambda m: m.tensor(7), lambda m: m.tensor([1.5], dtype=m.float64)])
def test_item(make):
    a, b = both(lambda m: make(m).item())
    assert a == b and type(a) is type(b)


def test_item_multi_element_error():
    same_error(lambda m: m.zeros(2).item())
    same_error(lambda m: m.zeros(0).item())


@pytest.mark.parametrize("make", [
    lambda m: m.tensor(2.5), lambda m: m.arange(6).reshape(2, 3), lambda m: m.tensor([True]),
    lambda m: m.zeros(2, 0), lambda m: m.tensor([1.5, 2.25], dtype=m.float64)])
def test_tolist(make):
    a, b = both(lambda m: make(m).tolist())
    assert a == b
    assert type(a) is type(b)
    flat_a = a if not isinstance(a, list) else list(itertools.chain.from_iterable(
        x if isinstance(x, list) else [x] for x in a))
    flat_b = b if not isinstance(b, list) else list(itertools.chain.from_iterable(
        x if isinstance(x, list) else [x] for x in b))
    assert [type(v) for v in np.atleast_1d(flat_a).tolist()] == \
        [type(v) for v in np.atleast_1d(flat_b).tolist()]


def test_python_number_conversions():
    for conv in (float, int, bool):
        for make in (lambda m: m.tensor(2.5), lambda m: m.tensor([3]), lambda m: m.tensor(0)):
            a, b = both(lambda m: conv(make(m)))
            assert a == b and type(a) is type(b)
    same_error(lambda m: bool(m.zeros(2)))
    same_error(lambda m: float(m.zeros(2)), ValueError)
    same_error(lambda m: int(m.zeros(2)), ValueError)
    assert [1, 2, 3][tn.tensor(1)] == 2
    with pytest.raises(TypeError):
        [1, 2][tn.tensor(1.0)]
    assert f"{tn.tensor(2.5):.2f}" == f"{torch.tensor(2.5):.2f}"


def test_detach_shares_memory():
    x = tn.ones(3, requires_grad=True)
    y = x * 2
    d = y.detach()
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    d[0] = 10
    assert y[0].item() == 10
    d2 = x.detach()
    d2.zero_()
    assert x.sum().item() == 0
    assert d2._version == x._version


def test_clone():
    x = tn.arange(3.0, requires_grad=True)
    c = x.clone()
    assert c.requires_grad and c.grad_fn.name() == "CloneBackward0"
    with tn.no_grad():
        c[0] = 5
    assert x[0].item() == 0
    y = tn.arange(4.0).reshape(2, 2).t().clone()
    assert y.tolist() == [[0.0, 2.0], [1.0, 3.0]]
    a, b = both(lambda m: m.clone(m.tensor([1, 2])))
    assert_same(a, b)


@pytest.mark.parametrize("src", ["float32", "float64", "int64", "bool"])
@pytest.mark.parametrize("conv", ["float", "double", "long", "bool"])
def test_dtype_conversion_methods(src, conv):
    def run(m):
        x = m.tensor([0, 1.5, -2.7, 3], dtype=getattr(m, src))
        return getattr(x, conv)()
    a, b = both(run)
    assert_same(a, b)


@pytest.mark.parametrize("src", ["float32", "float64", "int64", "bool"])
@pytest.mark.parametrize("dst", ["float32", "float64", "int64", "bool"])
def test_to_dtype(src, dst):
    def run(m):
        x = m.tensor([0, 1.5, -2.7, 3], dtype=getattr(m, src))
        return x.to(getattr(m, dst)), x.to(dtype=getattr(m, dst)), x.to("cpu", getattr(m, dst)), \
            x.type(getattr(m, dst)), x.to(m.zeros(1, dtype=getattr(m, dst)))
    ours, theirs = both(run)
    for a, b in zip(ours, theirs):
        assert_same(a, b)
    x = tn.ones(2, dtype=getattr(tn, src))
    if src == dst:
        assert x.to(getattr(tn, dst)) is x
        assert x.to(getattr(tn, dst), copy=True) is not x


def test_type_strings():
    for dt in ("float32", "float64", "int64", "bool"):
        a, b = both(lambda m: m.ones(1, dtype=getattr(m, dt)).type())
        assert a == b
    for name in ("torch.DoubleTensor", "torch.FloatTensor", "torch.LongTensor",
                 "torch.BoolTensor"):
        a, b = both(lambda m: m.ones(2).type(name))
        assert_same(a, b)
    a, b = both(lambda m: m.ones(2).type_as(m.ones(1, dtype=m.int64)))
    assert_same(a, b)


def test_half_is_unsupported():
    with pytest.raises(TypeError):
        tn.ones(2).half()


def test_int_is_int64_alias():
    a = tn.ones(2).int()
    assert a.dtype is tn.int64


def test_is_floating_point_and_is_tensor():
    assert tn.ones(1).is_floating_point() and not tn.ones(1, dtype=tn.int64).is_floating_point()
    assert tn.is_tensor(tn.ones(1)) and not tn.is_tensor([1])
    assert tn.is_floating_point(tn.ones(1, dtype=tn.float64))


def test_iteration_and_len():
    a, b = both(lambda m: [t.tolist() for t in m.arange(6).reshape(3, 2)])
    assert a == b
    with pytest.raises(TypeError):
        iter(tn.tensor(1.0))


def test_allclose_equal():
    assert tn.allclose(tn.ones(2), tn.ones(2) + 1e-9)
    assert tn.equal(tn.ones(2), tn.ones(2)) and not tn.equal(tn.ones(2), tn.ones(3))
