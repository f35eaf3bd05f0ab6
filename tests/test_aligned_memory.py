"""Parameters, gradients and optimizer state of 4 KiB or more start on a cache line
(tracenet/_aligned.py), with numpy's values and semantics, and checkpoints see them as torch
would."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet import _aligned


def _address(t):
    return t.detach().numpy().ctypes.data


@pytest.mark.parametrize("make", [
    lambda: tn.zeros(1024), lambda: tn.ones(33, 40), lambda: tn.empty(2048, dtype=tn.float64),
    lambda: tn.full((7, 300), 2.5), lambda: tn.zeros_like(tn.ones(30, 50)),
    lambda: tn.nn.Linear(400, 120).weight])
def test_factories_align_large_tensors(make):
    for _ in range(8):  # (numpy's own allocations would land at 16 mod 64 some of the time)
        t = make()
        assert _address(t) % 64 == 0
        assert t.detach().numpy().flags.c_contiguous and t.detach().numpy().flags.writeable


def test_small_tensors_keep_numpy_allocation():
    t = tn.zeros(1023)  # 4092 bytes
    assert t.numpy().base is None


def test_values_and_casting_as_numpy_full():
    for shape, value, dtype in (((40, 40), 1.7, np.int32), ((2000,), 250, np.uint8),
                                ((1100,), float("nan"), np.float32), ((600,), 3, np.float64),
                                ((0, 5000), 1.0, np.float32)):
        with np.errstate(invalid="ignore"):
            want = np.full(shape, value, dtype)
            got = _aligned.full(shape, value, dtype)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    for make in (np.full, _aligned.full):  # (numpy refuses a value out of the dtype's range)
        with pytest.raises(OverflowError):
            make((2000,), -3, np.uint8)


def test_views_of_an_aligned_tensor_share_its_memory_and_base():
    base = tn.arange(2048.0).reshape(32, 64) + tn.zeros(32, 64)
    t = tn.zeros(32, 64)
    t.copy_(base)
    assert _address(t) % 64 == 0
    row, col = t[3], t[:, 5]
    assert row.numpy().base is t.numpy() and col.numpy().base is t.numpy()
    row.add_(1)
    assert t[3, 0].item() == 3 * 64 + 1


def test_checkpoint_of_aligned_tensor_and_views_is_torchs(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    t = tn.zeros(32, 64)
    t.copy_(tn.arange(2048.0).reshape(32, 64))
    tn.save({"t": t, "row": t[3], "tt": t.t()}, path)
    got = torch.load(path, weights_only=True)
    ref = torch.arange(2048.0).reshape(32, 64)
    assert torch.equal(got["t"], ref) and torch.equal(got["row"], ref[3])
    assert torch.equal(got["tt"], ref.t())
    # one storage of exactly the tensor's elements, as torch.save writes it
    assert len({got[k].untyped_storage().data_ptr() for k in got}) == 1
    assert got["t"].storage_offset() == 0
    assert got["t"].untyped_storage().nbytes() == 2048 * 4
    back = tn.load(path)
    assert np.shares_memory(back["row"].numpy(), back["t"].numpy())


def test_compiled_step_gradients_and_state_are_aligned():
    torch.manual_seed(0)
    model = tn.nn.Sequential(tn.nn.Linear(400, 120), tn.nn.ReLU(), tn.nn.Linear(120, 10))
    opt = tn.optim.Adam(model.parameters(), lr=1e-3)
    crit = tn.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = tn.compile(step)
    x, y = tn.randn(8, 400), tn.randint(0, 10, (8,))
    compiled(x, y)
    w = model[0].weight
    assert _address(w) % 64 == 0 and _address(w.grad) % 64 == 0
    for name in ("exp_avg", "exp_avg_sq"):
        assert _address(opt.state[w][name]) % 64 == 0
