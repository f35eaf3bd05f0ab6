"""The Winograd weight gradient's output-gradient tiles (templates/conv_winograd_weight.c.j2):
D = A dy A^T straight from the output gradient's rows, split into even and odd columns in
registers (vectors of 2 VL columns, then the columns left one by one, an odd last column's
tile alone), a row of zeros standing for the row past an odd height. Against PyTorch and
eager mode over even and odd widths and heights, widths below one vector pair, float32 and
float64, blocks of several images, batch 1, builds for AVX-512 and for AVX2 only, and
NaN-filled work memory on 1-3 threads."""

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
from tracenet.runtime import target as runtime_target

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _copy_to_torch, _step_against_torch
from test_conv_winograd import _two_convs_on_nan_arenas
from test_conv_winograd_weight import _conv, _takes_it

FROM_ROWS = "split into even and odd columns in registers"
ODD_COLUMN = "the last column's tile, its odd column past the edge"


# name -> (in channels, out channels, input shape, dtype)
CASES = {
    # two vector pairs of columns a row, an even height
    "resnet_32x32": (16, 16, (2, 16, 32, 32), np.float32),
    # one vector pair, then three columns one by one and the odd last one; an odd height
    "odd_23x21": (16, 18, (2, 16, 21, 23), np.float32),
    # fewer columns than a vector pair: one by one only; several images a block
    "narrow_9x13_batch5": (16, 16, (5, 16, 13, 9), np.float32),
    # double vectors of four: two pairs and the odd last column
    "float64_odd_17x11": (16, 17, (2, 16, 11, 17), np.float64),
    "batch1_odd_7x15": (24, 16, (1, 24, 7, 15), np.float32),
}

# the default run: two vector pairs, one pair and the columns one by one with an odd last,
# fewer columns than a pair in blocks of several images, float64; batch1_odd_7x15 (one by one,
# an odd last column, a partial block, as narrow_9x13_batch5) with -m sweep
DEFAULT_CASES = {"resnet_32x32", "odd_23x21", "narrow_9x13_batch5", "float64_odd_17x11"}


def _fused(cout, dtype):
    """Whether the tiles are made inside the products instead (test_resnet_wgrad_fused.py)."""
    return (runtime_target.current().vector_bits >= 512 and dtype == np.float32 and
            cout % 16 == 0 and cout <= 32)


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_tiles_from_rows_match_torch_and_eager(march, name):
    cin, cout, shape, dtype = CASES[name]
    tn.manual_seed(0)
    model, tmodel = _conv(tn, cin, cout, True, dtype), _conv(torch, cin, cout, True, dtype)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    _step_against_torch(compiled, model, tmodel, x, tol)
    source = compiled.source()
    _takes_it(source)
    if not _fused(cout, dtype):
        assert FROM_ROWS in source
        assert (ODD_COLUMN in source) == (shape[-1] % 2 == 1)
    check_compiled(model, shape, dtype=tn.float64 if dtype == np.float64 else tn.float32,
                   tol=tol)


# the default run: 9x11 (the row of zeros past an odd height, an odd last column) on 1-3
# threads; 32x32 with -m sweep
@sweep.keep(lambda p: p["size"] == (9, 11))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [(32, 32), (9, 11)])
def test_nan_arena_threads(nan_arenas_split, threads, size):
    """Two convolutions in a row over five and two images on work memory filled with NaN: a
    tile read from an unwritten row of zeros, or left unwritten, shows as NaN (the 18 -> 16
    gradient's tiles are made inside the products where ``_fused``)."""
    source = _two_convs_on_nan_arenas(threads, size, 16)
    assert source.count(FROM_ROWS) == (1 if _fused(16, np.float32) else 2)
