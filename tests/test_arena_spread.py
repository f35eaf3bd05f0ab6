"""Compiled code on a spread memory plan (``codegen.memory_plan``, the default where the L2's
set period is known): the ResNet's stem and residual block trained with SGD against eager mode
and PyTorch (float32 and float64, batches 2, 1 and 3 of one symbolic specialisation, work
memory new and all NaN on every call, 1 and 2 threads), and inference; the source's buffers
carry their pads. A value a kernel reads where no kernel of the call wrote (a pad, or a
buffer placed over another still live) shows as NaN."""
import numpy as np
import pytest

import sweep
import tracenet as tn
from compile_checks import nan_filled_arenas, sgd_steps_against_torch_and_eager
from test_batch_norm_backward_fusion import _models, _stem_and_block, _tol
from tracenet.runtime import target as runtime_target

pytest.importorskip("torch")

PERIOD = 131072  # 2048 sets of 64 bytes: a 2 MB 16-way L2


@pytest.fixture(autouse=True)
def _spread(monkeypatch, policy_cache):
    monkeypatch.delenv("TRACENET_ARENA", raising=False)
    monkeypatch.setattr(runtime_target, "l2_set_period", lambda: PERIOD)
    nan_filled_arenas(monkeypatch)
    policy_cache("arena-spread")
    before = tn.get_num_threads()
    yield
    tn.set_num_threads(before)


def _batches(dtype):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((n, 3, 12, 10)).astype(dtype), rng.integers(0, 10, n))
            for n in (2, 1, 3)]


# the default run: float32 training steps on 1 and 2 threads; float64 with -m sweep
@sweep.keep(lambda p: p["dtype"] == np.float32)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_steps_on_nan_arenas(dtype, threads):
    tn.set_num_threads(threads)
    model, tmodel = _models(8, dtype)
    eager = _stem_and_block(tn, 8)
    if dtype == np.float64:
        eager = eager.double()
    step = sgd_steps_against_torch_and_eager(model, tmodel, eager, _batches(dtype), _tol(dtype))
    assert step.source().count(f"&{PERIOD - 1}))") > 10  # (the buffers' pads)


@pytest.mark.parametrize("threads", [1, 2])
def test_inference_on_nan_arenas(threads):
    tn.set_num_threads(threads)
    tn.manual_seed(0)
    net = _stem_and_block(tn, 8).eval()
    compiled = tn.compile(net)
    for x, _ in _batches(np.float32):
        with tn.no_grad():
            expect, got = net(tn.from_numpy(x)).numpy(), compiled(tn.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
    assert f"&{PERIOD - 1}))" in compiled.source()
