"""How a parallel GEMM's work is split between threads: by columns when it has no more rows
than columns (each thread packs only its columns of b), by rows otherwise. Values and
gradients against PyTorch on 1, 2 and 3 threads, with tails in M, N and K, every transpose
flag, float64, and a symbolic batch on either side of the column count."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.runtime import threads
from test_conv_kernels import _copy_to_torch, _step_against_torch

SPLIT = "omp_get_max_threads() > 1"  # the guard of the column-split path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def n_threads():
    """Sets the compiled code's thread count for one test, restored after it."""
    before, adaptive = list(threads._threads), list(threads._adaptive)
    threads._adaptive[0] = False

    def set_count(n):
        threads._threads[0] = n
    yield set_count
    threads._threads[:], threads._adaptive[:] = before, adaptive


def _kernel(source, name_part):
    """The body of the one generated kernel whose name contains ``name_part``."""
    bodies = [b for b in source.split("\nstatic void ")[1:]
              if b.split("(", 1)[0].endswith(name_part)]
    assert len(bodies) == 1, [b.split("(", 1)[0] for b in bodies]
    return bodies[0]


@pytest.mark.parametrize("threads_n", [1, 2, 3])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
@pytest.mark.parametrize("m,k,n", [(40, 301, 131), (61, 257, 400), (150, 200, 120)])
def test_matmul_split_matches_torch(m, k, n, trans_a, trans_b, threads_n, n_threads):
    """(a or a^T) @ (b or b^T): columns split when m <= n (tails of 3 and 4 columns past the
    last two-vector panel, K past a vector and past the core's 256-row chunk), rows when
    m > n."""
    n_threads(threads_n)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)

    def f(x, y):
        return (x.t() if trans_a else x) @ (y.t() if trans_b else y)

    compiled = tn.compile(f)
    out = compiled(tn.from_numpy(a), tn.from_numpy(b))
    ref = f(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    source = compiled.source()
    if m <= n:
        assert SPLIT in source
    else:  # never split by columns, or (rows of a symbolic size) not at these sizes
        assert SPLIT not in source or f"<= {n} && {SPLIT}" in source


@pytest.mark.parametrize("threads_n", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_symbolic_batch_split_matches_torch(dtype, threads_n, n_threads):
    """Linear -> ReLU -> Linear built once with a symbolic batch: batches below, at and above
    the first layer's 200 columns (the column split is chosen when the kernel runs), and
    below the 12 rows worth a second thread; outputs, input and parameter gradients."""
    n_threads(threads_n)
    tn.manual_seed(0)
    torch.manual_seed(0)

    def net(lib):
        return lib.nn.Sequential(lib.nn.Linear(333, 200), lib.nn.ReLU(), lib.nn.Linear(200, 70))

    model, tmodel = net(tn), net(torch)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (64, 7, 200, 263, 64):
        x = rng.standard_normal((batch, 333)).astype(dtype)
        _step_against_torch(compiled, model, tmodel, x, tol, f"at batch {batch}")
    assert len(compiled.specialisations) == 1
    # the first layer's forward decides at run time: columns while the batch is <= 200
    forward = _kernel(compiled.source(), "forward_k0_gemm_relu")
    assert f"(tn_N) <= 200 && {SPLIT}" in forward


def test_sgd_fused_gemm_keeps_row_split(n_threads):
    """The weight gradient fused with its SGD update updates whole rows: never split by
    columns, and the parameters after a step match PyTorch's."""
    n_threads(2)
    tn.manual_seed(0)
    model = tn.nn.Sequential(tn.nn.Linear(300, 256), tn.nn.ReLU(), tn.nn.Linear(256, 10))
    tmodel = torch.nn.Sequential(torch.nn.Linear(300, 256), torch.nn.ReLU(),
                                 torch.nn.Linear(256, 10))
    _copy_to_torch(model, tmodel)
    opt = tn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
    crit, tcrit = tn.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    step = tn.compile_step(lambda a, b: crit(model(a), b), opt)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.standard_normal((64, 300)).astype(np.float32)
        y = rng.integers(0, 10, 64)
        step(tn.from_numpy(x), tn.from_numpy(y))
        topt.zero_grad()
        tcrit(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
    for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    for body in step.source().split("\nstatic void ")[1:]:
        if "sgd_update" in body and "gemm" in body.split("(", 1)[0]:
            assert SPLIT not in body
