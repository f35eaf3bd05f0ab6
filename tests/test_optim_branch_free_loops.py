"""The fused Adam and RMSprop update loops have no branch in them (the lerp's two forms and
weight decay chosen by selects on the values' bits, templates/adam_update.c.j2 and
rmsprop_update.c.j2), so they vectorise with AVX2 only: the same numbers as the numpy rules
and torch with either instruction set, for both forms of the lerp (weight below and above
one half) and with and without weight decay."""
import numpy as np
import pytest

from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_fused_optim import _compare

CASES = [
    ("Adam", dict(lr=0.01, betas=(0.3, 0.99))),  # lerp weight 0.7: back from the end
    ("Adam", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.2, 0.9), weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, betas=(0.6, 0.9), maximize=True, weight_decay=0.05)),
    ("RMSprop", dict(lr=0.01, alpha=0.3, centered=True)),  # lerp weight 0.7
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0] + str(sorted(c[1].items())))
def test_update_loops_match_numpy_and_torch_with_each_instruction_set(march, case, dtype):
    fused, numpy_, _ = _compare(*case, dtype=dtype)
    assert fused.fused_steps()[0] is not None  # the C loop ran
    assert numpy_.fused_steps() == []
