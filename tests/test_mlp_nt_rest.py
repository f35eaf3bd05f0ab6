"""A @ B^T with AVX-512, float32, where tn_gemm_nt takes its 3 x 8 tiles of dot products (fewer
than 36 rows, or fewer than 16 columns): the columns past the 8-column tiles by tiles of 3 rows
x 4 columns and of 6, then 3, rows x 2 and 1 columns (templates/_gemm.c.j2's tn_nt_rest; the
MLP's second layer, 10 = 8 + 2 columns). At sizes that leave each of them, 3 rows past the
6-row tiles or none, rows past the 3-row tiles and K past a vector,
with and without bias and ReLU, against PyTorch and eager in float32 and float64, built for
AVX-512 and for AVX2 only, on work memory filled with NaN and split between 1-3 threads; and
the MLP's second layer trained at a symbolic batch."""
import numpy as np
import pytest

from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_mlp_nt_tiles import check_linear_layer, check_product_with_transposed_b
from tracenet.codegen.emit import gemm_sources
from tracenet.runtime import target, toolchain

torch = pytest.importorskip("torch")

REST_TILES = "tn_nt_rest_f32(M3, N8, N, K"  # tn_gemm_nt's call of the remainder tiles


def _rest_tiles_taken(source, march, dtype):
    """Whether the product goes through tn_gemm_nt's 3 x 8 tiles and the remainder tiles
    exactly where they are built: float32 with AVX-512."""
    core = gemm_sources(target.current(), ["tn_gemm_nt_f32"])["tn_gemm_nt_f32"]
    taken = "tn_gemm_nt_f32(" in source and REST_TILES in core and \
        march == "native" and toolchain.vector_bits() >= 512
    return taken == (march == "native" and dtype == np.float32 and
                     toolchain.vector_bits() >= 512)


# (M, N, K) of a @ b^T: the MLP's second layer (2 columns past 8; 63 rows: ten 6-row tiles and
# a 3-row one, then 1 row); 7 columns past 8 (tiles of 4, 2 and 1), 2 rows past the 3-row
# tiles, K 4 past a vector; 5 columns past 16 (4 and 1), two 6-row tiles and 1 row past, K =
# 77; 3 rows (one 3-row tile) of 14 columns (6 past 8: 4 and 2), K below a vector
SHAPES = {"mlp_head": (64, 10, 256), "seven_past": (35, 15, 300), "five_past": (13, 21, 77),
          "three_rows": (3, 14, 5)}


@pytest.mark.parametrize("bias_relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SHAPES))
def test_product_with_transposed_b_matches_torch_and_eager(march, monkeypatch, name, dtype,
                                                           bias_relu):
    compiled = check_product_with_transposed_b(monkeypatch, *SHAPES[name], dtype,
                                               bias_relu=bias_relu)
    assert _rest_tiles_taken(compiled.source(), march, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_mlp_second_layer_at_symbolic_batch(march, monkeypatch, threads):
    """The MLP's second layer (256 -> 10) + ReLU at batches 1, 37 and 64."""
    compiled = check_linear_layer(monkeypatch, 256, 10, (1, 37, 64), threads)
    assert _rest_tiles_taken(compiled.source(), march, np.float32)
