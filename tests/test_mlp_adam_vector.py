"""Adam's AVX-512 loop of float32 parameters (templates/adam_update.c.j2: 16 floats a register,
every array loaded before the first store, specialised on weight decay and the lerp's form):
bit for bit the numpy rule's floats at sizes around the 16-element step (the last elements
through the scalar loop) on hard values, built for AVX-512 and for AVX2 only (where the loop is
not compiled); and the MLP's training step through ``tracenet.compile`` against eager and
PyTorch with its updates split between 1-3 threads on NaN-filled work memory."""
import numpy as np
import pytest

from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_mlp_adam_update import CASES, STEPS, _grads, _run, \
    train_mlp_against_eager_and_torch
from tracenet import fused_optim
from tracenet.runtime import toolchain

pytest.importorskip("torch")  # (the MLP test trains PyTorch's twin)


def _vector_loop_compiled(source):
    """Whether ``source`` has the AVX-512 loop and the build compiles it (AVX-512, GCC)."""
    return "tn_adam_fma" in source and "TN_ADAM_ZMM" in source and \
        toolchain.vector_bits() >= 512 and "clang" not in toolchain.compiler()[1].lower()


def _vector_loop_expected(march, dtype=np.float32):
    """Where the loop is to be taken: float32, built for this machine when it has AVX-512."""
    return march == "native" and dtype == np.float32 and toolchain.vector_bits() >= 512 and \
        "clang" not in toolchain.compiler()[1].lower()


@pytest.mark.parametrize("shape", [(1,), (15,), (16,), (17,), (47,), (3, 37)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in
                                                                   k.items()))
def test_adam_vector_loop_is_the_numpy_rule_bit_for_bit(march, monkeypatch, kwargs, shape):
    check_update_bit_for_bit(march, monkeypatch, kwargs, shape, seed=1)


def check_update_bit_for_bit(march, monkeypatch, kwargs, shape, seed):
    """Adam (``kwargs``) compiled on one float32 parameter of ``shape``, stepped on hard
    gradients (infinities and NaN from 16 elements on), against the numpy rule bit for bit;
    returns the update's C source."""
    monkeypatch.delenv(fused_optim.ENV, raising=False)
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(np.float32)]
    grads = [(g,) for g in _grads(seed + 1, shape, STEPS, specials=np.prod(shape) >= 16)]
    fused_p, fused_s, steps = _run(kwargs, params, grads, numpy_rule=False)
    numpy_p, numpy_s, _ = _run(kwargs, params, grads, numpy_rule=True)
    assert len(steps) == 1 and steps[0] is not None  # compiled, not the numpy fallback
    np.testing.assert_array_equal(fused_p[0], numpy_p[0])
    assert list(fused_s[0]) == list(numpy_s[0])
    for key in fused_s[0]:
        np.testing.assert_array_equal(fused_s[0][key], numpy_s[0][key], err_msg=key)
    source = steps[0].executable.source_code
    assert "adam_step" in source
    assert _vector_loop_compiled(source) == _vector_loop_expected(march)
    return source


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch, threads", [(1, 1), (9, 2), (64, 3)])
def test_mlp_step_with_adam_vector_loop_matches_eager_and_torch(march, monkeypatch, batch,
                                                                 threads, dtype):
    """An MLP whose weights have 16k + 1..15 elements (each thread's block of the update ends
    in the scalar loop), trained through ``tracenet.compile`` of the whole step with AMSGrad
    and weight decay, against the eager loop and PyTorch, on work memory filled with NaN."""
    source = train_mlp_against_eager_and_torch(
        monkeypatch, (41, 23, 7), dict(lr=0.01, amsgrad=True, weight_decay=0.01), batch,
        threads, dtype)
    assert _vector_loop_compiled(source) == _vector_loop_expected(march, dtype)
