"""A parallel A B with no more rows than columns (templates/gemm.c.j2's column split): each
thread takes an equal share of whole panels of the GEMM core's columns (64 with AVX-512, 16
with AVX2 only), and the columns past the shares are split by rows, so no thread waits on
another's extra panel (the MLP's weight gradient, 256 x 784 x 64: 12 panels and 16 columns).
At the MLP's sizes and at sizes whose shares are none, one panel or several, with and without
columns past them, every transpose of a, with bias and ReLU, against PyTorch and eager in
float32 and float64, built for AVX-512 and for AVX2 only, on work memory filled with NaN and
split between 1-3 threads; and the MLP's training step at a symbolic batch."""
import numpy as np
import pytest

import sweep
import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet.codegen.target import Parallelism

torch = pytest.importorskip("torch")

SHARES = "const int rest = share * parts"  # the column split's shares of whole panels


# (M, N, K) of (a or a^T) @ b: the MLP's weight gradient; 2 panels of 64 and 3 columns (two
# threads: a panel each; three: none, all by rows); 13 rows, 784 columns (a 6-row tile or
# less per thread past the shares); one panel exactly; 100 columns (AVX-512: no share on two
# threads, all by rows)
SHAPES = {"mlp_weight_gradient": (256, 784, 64), "two_panels_and_3": (40, 131, 301),
          "thirteen_rows": (13, 784, 33), "one_panel": (20, 64, 50), "no_share": (12, 100, 9)}


def _product(lib, trans_a, bias_relu):
    def f(x, y, z=None):
        out = (x.t() if trans_a else x) @ y
        return lib.relu(out + z) if bias_relu else out
    return f


# the default run: float32 at every shape, form and thread count, float64 at the MLP's weight
# gradient; the other float64 cases with -m sweep
@sweep.keep(lambda p: p["dtype"] == np.float32 or p["name"] == "mlp_weight_gradient")
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,bias_relu", [(True, False), (False, True)])
@pytest.mark.parametrize("name", list(SHAPES))
def test_product_matches_torch_and_eager(march, monkeypatch, name, trans_a, bias_relu, dtype,
                                         threads):
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    m, n, k = SHAPES[name]
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(shape).astype(dtype)
              for shape in ((k, m) if trans_a else (m, k), (k, n), (n,))]
    if not bias_relu:
        values.pop()
    compiled = tn.compile(_product(tn, trans_a, bias_relu))
    tn.set_num_threads(threads)  # (conftest.py restores the count)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    got = compiled(*map(tn.from_numpy, values)).numpy()
    eager = _product(tn, trans_a, bias_relu)(*map(tn.from_numpy, values)).numpy()
    ref = _product(torch, trans_a, bias_relu)(*map(torch.from_numpy, values)).numpy()
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(k))
    np.testing.assert_allclose(got, eager, rtol=tol, atol=tol * np.sqrt(k))
    assert SHARES in compiled.source()


def test_mlp_training_step_at_symbolic_batch(march, monkeypatch):
    """bench/zoo.py's MLP trained with Adam through compile_step on 1-3 threads (its weight
    gradient split in column shares from two), batches 64, 1 and 37, against PyTorch. The
    weights come from a fixed seed: drawn from whatever state earlier tests in the process left,
    some draws put a parameter where Adam's step (about lr times the sign of a near-zero
    gradient's moments) turns float32 rounding into a difference past the tolerance."""
    nan_filled_arenas(monkeypatch)
    tn.manual_seed(0)
    nets = [lib.nn.Sequential(lib.nn.Flatten(), lib.nn.Linear(784, 256), lib.nn.ReLU(),
                              lib.nn.Linear(256, 10)) for lib in (tn, torch)]
    for p, tp in zip(nets[0].parameters(), nets[1].parameters()):
        with torch.no_grad():
            tp.copy_(torch.from_numpy(p.detach().numpy().copy()))
    crit, tcrit = tn.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    opt = tn.optim.Adam(nets[0].parameters(), lr=1e-3)
    topt = torch.optim.Adam(nets[1].parameters(), lr=1e-3)
    step = tn.compile_step(lambda a, b: crit(nets[0](a), b), opt)
    rng = np.random.default_rng(3)
    for threads, batch in ((2, 64), (1, 64), (3, 64), (2, 1), (2, 37), (2, 64)):
        tn.set_num_threads(threads)
        x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        loss = step(tn.from_numpy(x), tn.from_numpy(y))
        topt.zero_grad()
        tloss = tcrit(nets[1](torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(float(loss), tloss.item(), rtol=1e-4, atol=1e-5)
        for p, tp in zip(nets[0].parameters(), nets[1].parameters()):
            np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-4,
                                       atol=1e-5)
    assert SHARES in step.source()
