"""Adam's compiled update of float32 parameters (templates/adam_update.c.j2), which with AVX-512
multiplies by the reciprocal of the bias correction's square root in double instead of dividing
by it: bit for bit the numpy rule's floats, on values chosen to be hard (denormal, huge,
infinite and NaN gradients, bias corrections far from one), built for AVX-512 and for AVX2 only;
and the MLP's training step through ``tracenet.compile`` against eager and PyTorch."""
import os

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as nn
import tracenet.optim as optim
from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from tracenet import fused_optim
from tracenet.codegen.target import Parallelism
from tracenet.runtime import toolchain

torch = pytest.importorskip("torch")

STEPS = 12


def _reciprocal_compiled(source):
    """Whether the float Adam loop in ``source`` multiplies by the reciprocal (it does where
    the compiler targets AVX-512)."""
    return "inv_bc2_sqrt" in source and toolchain.vector_bits() >= 512


def _hard_values(rng, shape):
    """Gradients spanning float32: normal, tiny (squares that underflow to denormals or 0),
    huge (squares that overflow), zeros, and a few infinities and NaNs."""
    g = rng.standard_normal(shape)
    scale = 10.0 ** rng.integers(-44, 30, size=shape)
    g = (g * scale).astype(np.float32)
    flat = g.reshape(-1)
    flat[rng.integers(0, flat.size, 3)] = 0
    return g


def _grads(seed, shape, steps, specials):
    rng = np.random.default_rng(seed)
    out = [_hard_values(rng, shape) for _ in range(steps)]
    if specials:
        out[3].reshape(-1)[[1, 5]] = [np.inf, -np.inf]
        out[7].reshape(-1)[2] = np.nan
    return out


def _run(kwargs, params, grads, numpy_rule):
    """The parameters and state after an Adam step per gradient: the fused step, or the numpy
    rule."""
    ps = [tn.Tensor._wrap(p.copy(), requires_grad=True) for p in params]
    opt = optim.Adam(ps, **kwargs)
    for g in grads:
        for p, gi in zip(ps, g):
            p.grad = tn.Tensor._wrap(gi.copy())
        if numpy_rule:
            os.environ[fused_optim.ENV] = "0"
            try:
                opt.step()
            finally:
                del os.environ[fused_optim.ENV]
        else:
            opt.step()
    fused = opt.__dict__.get("_fused_update")
    steps = [] if fused is None else list(fused.specs.values())
    state = [{k: v.detach().numpy().copy() for k, v in opt.state[p].items() if k != "step"}
             for p in ps]
    return [p.detach().numpy().copy() for p in ps], state, steps


# betas whose bias corrections stay far from one (0.999999: sqrt(1 - beta2^t) near 1e-3) or
# are one from the first step (beta2 = 0)
CASES = [
    dict(lr=1e-3),
    dict(lr=0.1, betas=(0.5, 0.999999), eps=1e-12),
    dict(lr=0.01, betas=(0.0, 0.0), eps=0.0),
    dict(lr=0.01, betas=(0.9, 0.37), weight_decay=0.1),
    dict(lr=0.01, amsgrad=True, maximize=True, weight_decay=0.05),
    dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.8, 0.99)),
]


@pytest.mark.parametrize("specials", [False, True], ids=["finite", "inf_nan"])
@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in
                                                                   k.items()))
def test_fused_adam_is_the_numpy_rule_bit_for_bit(march, monkeypatch, kwargs, specials):
    monkeypatch.delenv(fused_optim.ENV, raising=False)
    shapes = [(67, 31), (5,), (1,)]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = list(zip(*[_grads(i, s, STEPS, specials and i == 0)
                       for i, s in enumerate(shapes)]))
    fused_p, fused_s, steps = _run(kwargs, params, grads, numpy_rule=False)
    numpy_p, numpy_s, _ = _run(kwargs, params, grads, numpy_rule=True)
    assert len(steps) == 1 and steps[0] is not None  # compiled, not the numpy fallback
    for a, b in zip(fused_p, numpy_p):
        np.testing.assert_array_equal(a, b)
    for sa, sb in zip(fused_s, numpy_s):
        assert list(sa) == list(sb)
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    if specials:
        assert np.isnan(fused_p[0]).any()


def test_reciprocal_agrees_with_division_at_midpoints():
    """The claim the loop rests on, on the floats hardest for it: s rounded from bc2_sqrt
    times a midpoint between two floats, and its neighbours; s / c and s * (1 / c) in double
    rounded to float agree."""
    rng = np.random.default_rng(0)
    c = np.sqrt(1 - rng.uniform(0, 1, 4000) ** rng.integers(1, 10000, 4000)).astype(np.float32)
    c = np.concatenate([c, rng.uniform(1e-4, 1, 4000).astype(np.float32)])
    f = rng.uniform(1e-30, 1e30, c.size).astype(np.float32)
    mid = (f.astype(np.float64) + np.nextafter(f, np.float32(np.inf)).astype(np.float64)) / 2
    s = (c.astype(np.float64) * mid).astype(np.float32)
    inv = 1.0 / c.astype(np.float64)
    for t in (s, np.nextafter(s, np.float32(0)), np.nextafter(s, np.float32(np.inf))):
        np.testing.assert_array_equal((t.astype(np.float64) * inv).astype(np.float32), t / c)


def _mlp(lib, dims, dtype):
    lib.manual_seed(0)
    model = lib.nn.Sequential(lib.nn.Flatten(), lib.nn.Linear(dims[0], dims[1]), lib.nn.ReLU(),
                              lib.nn.Linear(dims[1], dims[2]))
    return model.double() if dtype == np.float64 else model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch, threads", [(1, 1), (13, 2), (64, 3)])
def test_mlp_adam_step_matches_eager_and_torch(march, monkeypatch, batch, threads, dtype):
    """The MLP of bench/zoo.py at odd sizes, trained through ``tracenet.compile`` of the
    whole step (Adam), against the eager loop and PyTorch, on work memory filled with NaN,
    its GEMMs and updates split between the threads however small."""
    source = train_mlp_against_eager_and_torch(monkeypatch, (37, 19, 5), dict(lr=0.01), batch,
                                               threads, dtype)
    assert _reciprocal_compiled(source) == (march == "native" and dtype == np.float32 and
                                            toolchain.vector_bits() >= 512)


def train_mlp_against_eager_and_torch(monkeypatch, dims, adam_kwargs, batch, threads, dtype):
    """Four Adam steps (``adam_kwargs``) of an MLP of layer widths ``dims`` through
    ``tracenet.compile`` of the whole step, against the eager loop and PyTorch, on work memory
    filled with NaN, every GEMM and update split between ``threads`` however small; returns
    the step's C source."""
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "memory_min_elements", 0)
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    compiled_model, eager_model = _mlp(tn, dims, dtype), _mlp(tn, dims, dtype)
    eager_model.load_state_dict(compiled_model.state_dict())
    tmodel = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(*dims[:2]), torch.nn.ReLU(),
                                 torch.nn.Linear(*dims[1:]))
    if dtype == np.float64:
        tmodel = tmodel.double()
    _copy_to_torch(compiled_model, tmodel)
    opt_c, opt_e = (optim.Adam(m.parameters(), **adam_kwargs)
                    for m in (compiled_model, eager_model))
    opt_t = torch.optim.Adam(tmodel.parameters(), **adam_kwargs)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    @tn.compile
    def step(x, y):
        opt_c.zero_grad()
        loss = crit(compiled_model(x), y)
        loss.backward()
        opt_c.step()
        return loss

    rng = np.random.default_rng(1)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    tn.set_num_threads(threads)  # (conftest.py restores the count)
    for _ in range(4):
        x = rng.standard_normal((batch, 1, dims[0])).astype(dtype)
        y = rng.integers(0, dims[2], batch)
        loss = step(tn.from_numpy(x), tn.from_numpy(y))
        opt_e.zero_grad()
        loss_e = crit(eager_model(tn.from_numpy(x)), tn.from_numpy(y))
        loss_e.backward()
        opt_e.step()
        opt_t.zero_grad()
        loss_t = tcrit(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        loss_t.backward()
        opt_t.step()
        np.testing.assert_allclose(loss.item(), loss_e.item(), rtol=tol)
        np.testing.assert_allclose(loss.item(), loss_t.item(), rtol=tol)
    for p, e, t in zip(compiled_model.parameters(), eager_model.parameters(),
                       tmodel.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), e.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(p.detach().numpy(), t.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(p.grad.numpy(), e.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=tol, atol=tol)
    source = step.source()
    assert "adam_step" in source
    return source
