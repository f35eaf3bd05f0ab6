"""A GEMM built for threads that runs on one (the thread count follows the machine's load)
multiplies its rows as one block, as a serial build does, instead of the blocks meant for two
threads (each of which packed b again): products with tails in M, N and K, every transpose
flag, float64, and the MLP's training step at batches 1, 13 and 64, against PyTorch and eager
on NaN-filled work memory, on one thread and on two and three (where the blocks stay)."""
import numpy as np
import pytest

import sweep
import tracenet as tn
from compile_checks import nan_filled_arenas
from test_mlp_adam_update import train_mlp_against_eager_and_torch
from tracenet.codegen.target import Parallelism

torch = pytest.importorskip("torch")

ONE_THREAD_BLOCK = "omp_get_max_threads() == 1 ?"  # the row block's choice at run time


def _default_product(p):
    """The default run: both shapes in float32 on one thread with every transpose pair, and
    untransposed on two and three threads and in float64 on one; the rest with -m sweep."""
    untransposed = not (p["trans_a"] or p["trans_b"])
    if p["dtype"] == np.float64:
        return untransposed and p["threads"] == 1
    return p["threads"] == 1 or untransposed


@sweep.keep(_default_product)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
@pytest.mark.parametrize("m,k,n", [(61, 257, 45), (40, 785, 131)])
def test_product_matches_torch_and_eager(monkeypatch, m, k, n, trans_a, trans_b, dtype,
                                         threads):
    """More rows than columns (row blocks on threads) and fewer (split by columns on threads):
    on one thread both take all the rows at once."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)

    def f(x, y):
        return (x.t() if trans_a else x) @ (y.t() if trans_b else y)

    compiled = tn.compile(f)
    tn.set_num_threads(threads)  # (conftest.py restores the count)
    got = compiled(tn.from_numpy(a), tn.from_numpy(b)).numpy()
    eager = f(tn.from_numpy(a), tn.from_numpy(b)).numpy()
    ref = f(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(k))
    np.testing.assert_allclose(got, eager, rtol=tol, atol=tol * np.sqrt(k))
    assert ONE_THREAD_BLOCK in compiled.source()


# the default run: every batch and thread count in float32, batch 13 on one thread in float64;
# float64's others with -m sweep
@sweep.keep(lambda p: p["dtype"] == np.float32 or (p["batch"], p["threads"]) == (13, 1))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch, threads", [(1, 1), (13, 1), (64, 1), (13, 2), (64, 3)])
def test_mlp_step_matches_eager_and_torch(monkeypatch, batch, threads, dtype):
    """The MLP's compiled training step (Adam, a symbolic batch) with every GEMM built for
    threads, run on 1-3 of them."""
    source = train_mlp_against_eager_and_torch(monkeypatch, (83, 37, 10), dict(lr=0.01),
                                               batch, threads, dtype)
    assert ONE_THREAD_BLOCK in source


def test_fused_sgd_update_keeps_its_blocks_on_one_thread(monkeypatch):
    """A weight gradient fused with its SGD update keeps its blocks of rows in the first-level
    cache on one thread too (the serial blocks), with the same result as eager."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    tn.manual_seed(0)
    models = [tn.nn.Sequential(tn.nn.Linear(300, 70), tn.nn.ReLU(), tn.nn.Linear(70, 5))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [tn.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    crit = tn.nn.CrossEntropyLoss()
    step = tn.compile_step(lambda x, y: crit(models[0](x), y), opts[0])
    tn.set_num_threads(1)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = tn.from_numpy(rng.standard_normal((29, 300)).astype(np.float32))
        y = tn.from_numpy(rng.integers(0, 5, 29))
        loss = step(x, y)
        opts[1].zero_grad()
        loss_e = crit(models[1](x), y)
        loss_e.backward()
        opts[1].step()
        np.testing.assert_allclose(loss.item(), loss_e.item(), rtol=1e-5)
    for p, e in zip(models[0].parameters(), models[1].parameters()):
        np.testing.assert_allclose(p.detach().numpy(), e.detach().numpy(), rtol=1e-4, atol=1e-5)
    source = step.source()
    assert "sgd_update" in source and ONE_THREAD_BLOCK in source
