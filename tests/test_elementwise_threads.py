"""Elementwise kernels split between the threads (templates/elementwise.c.j2): from the size
of the other memory-bound kernels, each thread a contiguous run of whole cache lines (the flat
loop) or of leading positions (the loop over a trailing block). Every element is written by
exactly one thread: the results equal eager mode's bit for bit with 1-3 threads, with the
sizes around the blocks, work memory filled with NaN, a batch that varies, float64 and boolean
outputs."""
import numpy as np
import pytest

import tracenet as tn
from tracenet.codegen.target import Parallelism

torch = pytest.importorskip("torch")


@pytest.fixture
def split_everything(nan_arenas_split, monkeypatch):
    """Every elementwise kernel splits, however small; work memory is new and NaN
    (``nan_arenas_split``, tests/conftest.py)."""
    monkeypatch.setattr(Parallelism, "memory_min_elements", 0)


class _Chain(tn.nn.Module):
    """A fused chain with a per-channel operand (the loop over a trailing block), a select,
    a relu, a comparison output and an intermediate kept for the backward."""

    def forward(self, a, b, scale):
        s = (a + b) * scale
        picked = tn.where(a > 0, s, a - b).relu()
        return picked * 2, picked > 1


class _Flat(tn.nn.Module):
    def forward(self, a, b):
        return (a - b) * (a + b), tn.where(a > b, a, b * 3)


def _compiled_and_eager(model, arrays, dynamic=True):
    compiled = tn.compile(model, dynamic=dynamic)
    xs = [tn.from_numpy(a) for a in arrays]
    with tn.no_grad():
        return [o.numpy() for o in compiled(*xs)], [o.numpy() for o in model(*xs)], compiled


def _kernel_bodies(compiled):
    src = compiled.source()
    return [part.split("\n}\n")[0] for part in src.split("static void ")[1:]
            if "_elementwise(" in part.split("\n")[0]]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 47, 1000, 4099])
def test_flat_loop_every_element_once(split_everything, threads, dtype, n):
    tn.set_num_threads(threads)
    rng = np.random.default_rng(n)
    a, b = (rng.standard_normal((n,)).astype(dtype) for _ in range(2))
    got, want, compiled = _compiled_and_eager(_Flat(), [a, b], dynamic=False)
    for g, w in zip(got, want):
        assert g.tobytes() == w.tobytes()
    tx, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_allclose(got[0], ((tx - tb) * (tx + tb)).numpy(), rtol=1e-6)
    # (one element is one unit of work: serial)
    assert any("omp_get_num_threads" in body for body in _kernel_bodies(compiled)) == (n > 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_loop_with_a_varying_batch(split_everything, threads, dtype):
    tn.set_num_threads(threads)
    model = _Chain()
    compiled = tn.compile(model)
    rng = np.random.default_rng(threads)
    scale = rng.standard_normal((1, 5, 1, 1)).astype(dtype)
    for batch in (4, 1, 3, 7):
        a, b = (rng.standard_normal((batch, 5, 3, 7)).astype(dtype) for _ in range(2))
        xs = [tn.from_numpy(v) for v in (a, b, scale)]
        with tn.no_grad():
            got = [o.numpy() for o in compiled(*xs)]
            want = [o.numpy() for o in model(*xs)]
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), batch
        ta, tb, ts = (torch.from_numpy(v) for v in (a, b, scale))
        expect = torch.where(ta > 0, (ta + tb) * ts, ta - tb).relu() * 2
        np.testing.assert_allclose(got[0], expect.numpy(), rtol=1e-6, atol=1e-6)
    bodies = _kernel_bodies(compiled)
    assert any("omp_get_num_threads" in body and "for (size_t o = lo" in body
               for body in bodies)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_training_step_with_split_kernels(split_everything, threads):
    """The backward's elementwise kernels (relu's mask of a residual sum) split too; the
    gradients are eager's."""
    tn.set_num_threads(threads)
    rng = np.random.default_rng(0)

    class Residual(tn.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = tn.nn.Linear(9, 9)

        def forward(self, x):
            return (self.lin(x) + x).relu().sum()

    tn.manual_seed(0)
    eager = Residual()
    tn.manual_seed(0)
    model = Residual()
    compiled = tn.compile(model)
    x = rng.standard_normal((37, 9)).astype(np.float32)
    compiled(tn.from_numpy(x)).backward()
    eager(tn.from_numpy(x)).backward()
    for p, q in zip(model.parameters(), eager.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_small_kernels_stay_serial():
    """Below the memory-bound threshold no OpenMP region is built."""
    a = np.ones((100,), np.float32)
    _, _, compiled = _compiled_and_eager(_Flat(), [a, a], dynamic=False)
    assert all("omp_get_num_threads" not in body for body in _kernel_bodies(compiled))
