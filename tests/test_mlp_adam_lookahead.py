"""Adam's AVX-512 loop loads the next 16 elements of every array before it stores the current
16 (templates/adam_update.c.j2: no load follows a store to its offset in a page): bit for bit
the numpy rule at sizes where the last look-ahead ends exactly at the end, one short of it and
past it, for every option, built for AVX-512 and for AVX2 only (where the loop is not
compiled)."""
import numpy as np
import pytest

from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_mlp_adam_update import CASES, STEPS, _grads, _run
from test_mlp_adam_vector import _vector_loop_compiled, _vector_loop_expected
from tracenet import fused_optim

LOOKAHEAD = "tn_adam_f16 gn, pn, mn, vn"  # the next vectors, loaded a step ahead


@pytest.mark.parametrize("shape", [(32,), (33,), (48,), (63,), (64, 5)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in
                                                                   k.items()))
def test_lookahead_loop_is_the_numpy_rule_bit_for_bit(march, monkeypatch, kwargs, shape):
    monkeypatch.delenv(fused_optim.ENV, raising=False)
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(shape).astype(np.float32)]
    grads = [(g,) for g in _grads(5, shape, STEPS, specials=True)]
    fused_p, fused_s, steps = _run(kwargs, params, grads, numpy_rule=False)
    numpy_p, numpy_s, _ = _run(kwargs, params, grads, numpy_rule=True)
    assert len(steps) == 1 and steps[0] is not None  # compiled, not the numpy fallback
    np.testing.assert_array_equal(fused_p[0], numpy_p[0])
    assert list(fused_s[0]) == list(numpy_s[0])
    for key in fused_s[0]:
        np.testing.assert_array_equal(fused_s[0][key], numpy_s[0][key], err_msg=key)
    source = steps[0].executable.source_code
    assert LOOKAHEAD in source
    assert _vector_loop_compiled(source) == _vector_loop_expected(march)
