"""GEMMs of one row (a batch of one through a linear layer): the row kernels of
``templates/gemm.c.j2`` (eight chains of FMAs along the columns, or eight dot products at a
time), switched on at run time when a symbolic batch is one, against PyTorch's values and
gradients, at batch 1 and at a symbolic batch."""
import re

import numpy as np
import pytest
import torch

import tracenet as tn
import tracenet.nn as nn
from test_conv_kernels import _copy_to_torch, _step_against_torch


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _row_calls(source):
    """Names of the kernels that call a one-row helper."""
    bodies = re.findall(r"\bvoid (\w+)\(.*?\n\{(.*?)\n\}", source, re.S)
    return {name for name, body in bodies if re.search(r"\b\w+_row\(", body)}


def _mlp(lib, sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [lib.nn.Linear(a, b)] + ([lib.nn.ReLU()] if i < len(sizes) - 2 else [])
    return lib.nn.Sequential(*layers)


def _against_torch(compiled, model, tmodel, x, tol):
    """One forward and backward, compiled and torch, compared; returns the compiled source."""
    _step_against_torch(compiled, model, tmodel, x, tol)
    return compiled.source()


# layer widths: 400 -> 120 -> 84 -> 10 (LeNet's), and odd ones: columns past the last
# eight-vector chunk, past the last vector, and an inner size short of a vector
SIZES = {"lenet": (400, 120, 84, 10), "odd": (37, 131, 67, 19, 5), "short_inner": (5, 70, 33)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SIZES))
def test_linear_batch1_matches_torch(name, dtype):
    """Built at batch 1 (N symbolic, the row kernels taken), then run at batch 3 and 1 again."""
    sizes = SIZES[name]
    tn.manual_seed(0)
    model, tmodel = _mlp(tn, sizes), _mlp(torch, sizes)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 1):
        x = rng.standard_normal((batch, sizes[0])).astype(dtype)
        source = _against_torch(compiled, model, tmodel, x, tol)
    assert len(compiled.specialisations) == 1 and "tn_N" in source
    # the forward layers (b transposed) and the input gradients (b as is)
    assert sum("gemm" in k for k in _row_calls(source)) >= len(sizes) - 1


def _convnet(lib):
    return lib.nn.Sequential(lib.nn.Conv2d(1, 2, 3), lib.nn.ReLU(), lib.nn.Flatten(),
                             lib.nn.Linear(72, 70), lib.nn.ReLU(), lib.nn.Linear(70, 10))


def test_training_step_symbolic_batch_matches_torch():
    """A compiled training step (cross entropy, SGD with momentum) keeps the batch symbolic:
    one build takes the row kernels when N is one (batch 1) and the GEMM core otherwise
    (batch 3); parameters after each step against PyTorch's."""
    tn.manual_seed(0)
    model, tmodel = _convnet(tn), _convnet(torch)
    _copy_to_torch(model, tmodel)
    opt = tn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
    crit, tcrit = tn.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    step = tn.compile_step(lambda a, b: crit(model(a), b), opt)
    rng = np.random.default_rng(0)
    for batch in (1, 1, 3, 1):
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        loss = step(tn.from_numpy(x), tn.from_numpy(y))
        topt.zero_grad()
        tloss = tcrit(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(float(loss), tloss.item(), rtol=1e-5, atol=1e-5)
        for (name, p), tp in zip(model.named_parameters(), tmodel.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-5,
                                       atol=1e-5, err_msg=name)
    assert len({id(s) for s in step._specs.values()}) == 1
    source = step.source()
    assert "tn_N" in source and sum("gemm" in k for k in _row_calls(source)) >= 3


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
def test_one_row_matmul_transposes_match_torch(trans_a, trans_b):
    """a @ b with either operand stored transposed (a^T of one column is one row of a
    strided view; both transposed: b repacked first)."""
    rng = np.random.default_rng(0)
    k, n = 45, 83
    a = rng.standard_normal((k, 1) if trans_a else (1, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)

    def f(x, y):
        return (x.t() if trans_a else x) @ (y.t() if trans_b else y)

    out = tn.compile(f)(tn.from_numpy(a), tn.from_numpy(b))
    ref = f(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
