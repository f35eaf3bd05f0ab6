"""Adam's AVX-512 loop loads the next 16 elements of every array before it stores the current
16 (templates/adam_update.c.j2: no load follows a store to its offset in a page): bit for bit
the numpy rule at sizes where the last look-ahead ends exactly at the end, one short of it and
past it, for every option, built for AVX-512 and for AVX2 only (where the loop is not
compiled)."""
import pytest

from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_mlp_adam_update import CASES
from test_mlp_adam_vector import check_update_bit_for_bit

LOOKAHEAD = "tn_adam_f16 gn, pn, mn, vn"  # the next vectors, loaded a step ahead


@pytest.mark.parametrize("shape", [(32,), (33,), (48,), (63,), (64, 5)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in
                                                                   k.items()))
def test_lookahead_loop_is_the_numpy_rule_bit_for_bit(march, monkeypatch, kwargs, shape):
    source = check_update_bit_for_bit(march, monkeypatch, kwargs, shape, seed=4)
    assert LOOKAHEAD in source
