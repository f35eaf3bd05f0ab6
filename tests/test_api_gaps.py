"""Small API surface tutorials touch: tracenet.cuda, tracenet.backends, devices, and the legacy
tensor-type constructors, each checked against torch."""
import numpy as np
import pytest
import torch

import tracenet as tn


def test_cuda_is_absent():
    assert tn.cuda.is_available() is False
    assert tn.cuda.device_count() == 0
    tn.cuda.manual_seed(0)
    tn.cuda.manual_seed_all(0)


def test_device_selection_idiom():
    dev = tn.device("cuda:0" if tn.cuda.is_available() else "cpu")
    assert str(dev) == "cpu"
    assert tn.ones(2, device=dev).device == tn.device("cpu")
    assert tn.nn.Linear(2, 2).to(dev) is not None


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_device_is_a_clear_error(name):
    with pytest.raises(RuntimeError, match=f"CPU only.*{name}"):
        tn.device(name)


def test_backend_switches_are_accepted():
    for attr, default in (("benchmark", False), ("deterministic", False), ("enabled", True)):
        assert getattr(tn.backends.cudnn, attr) == getattr(torch.backends.cudnn, attr) \
            == default
        old = getattr(tn.backends.cudnn, attr)
        setattr(tn.backends.cudnn, attr, not default)
        assert getattr(tn.backends.cudnn, attr) is (not default)
        setattr(tn.backends.cudnn, attr, old)
    assert tn.backends.mps.is_available() is False


LEGACY = ["FloatTensor", "DoubleTensor", "LongTensor", "BoolTensor"]


def same(a, b):
    assert str(a.dtype) == str(b.dtype) and tuple(a.shape) == tuple(b.shape)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("data", [[1, 2], [[1.7, -2.0], [0.0, 3.0]], [True, False],
                                  np.array([1.5, 2.0]), np.array([[1, 0]]), (3, 4)])
def test_legacy_constructor_from_data(name, data):
    if isinstance(data, tuple):  # sizes: uninitialised memory, compare shape and dtype only
        a, b = getattr(tn, name)(*data), getattr(torch, name)(*data)
        assert str(a.dtype) == str(b.dtype) and tuple(a.shape) == tuple(b.shape)
        return
    same(getattr(tn, name)(data), getattr(torch, name)(data))


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_constructor_shapes_and_isinstance(name):
    a, b = getattr(tn, name)(), getattr(torch, name)()
    assert tuple(a.shape) == tuple(b.shape) == (0,)
    a = getattr(tn, name)(tn.Size([2, 3]))
    assert tuple(a.shape) == (2, 3)
    for other in LEGACY:
        assert isinstance(a, getattr(tn, other)) == (other == name)
        assert isinstance(getattr(torch, name)(2), getattr(torch, other)) == (other == name)
    assert not isinstance(3, getattr(tn, name))


def test_legacy_isinstance_of_ordinary_tensors():
    assert isinstance(tn.ones(2), tn.FloatTensor)
    assert isinstance(tn.nn.Parameter(tn.ones(1)), tn.FloatTensor)
    assert isinstance(tn.tensor([1]), tn.LongTensor)
    assert not isinstance(tn.tensor([1]), tn.FloatTensor)
    assert isinstance(tn.ones(1, dtype=tn.float64), tn.DoubleTensor)


def test_legacy_constructor_from_tensor():
    x = tn.ones(2)
    assert tn.FloatTensor(x) is x
    assert torch.FloatTensor(torch.ones(2)) is not None
    with pytest.raises(TypeError):
        torch.LongTensor(torch.ones(2))
    with pytest.raises(TypeError, match="int64.*float32"):
        tn.LongTensor(x)
    with pytest.raises(TypeError):
        torch.LongTensor(2.5)
    with pytest.raises(TypeError, match="sequence"):
        tn.LongTensor(2.5)


@pytest.mark.parametrize("name,missing", [("IntTensor", "int32"), ("ByteTensor", "uint8")])
def test_missing_dtypes_are_a_clear_error(name, missing):
    assert hasattr(torch, name)
    with pytest.raises(TypeError, match=f"torch.{missing}"):
        getattr(tn, name)([1, 2])
    assert not isinstance(tn.tensor([1]), getattr(tn, name))
