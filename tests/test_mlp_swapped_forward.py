"""A @ B^T with few rows (a linear layer's forward at a batch far below its sizes) with AVX-512,
float32: out^T = B A^T through tn_gemm_zmm on a copy of A^T, then out^T transposed into out and
the epilogue (gemm.c.j2, lowerings/gemm.py's _swapped); at sizes that leave every remainder
(rows and columns of the transpositions past their 8 x 8 blocks, rows of B past the 6-row
tiles, batch columns past a 64-column panel), with bias and ReLU, against PyTorch and eager,
built for AVX-512 and for AVX2 only (which keeps tn_gemm_nt), on work memory filled with NaN and
split between 1-3 threads; at a symbolic batch on both sides of the 64 rows it starts at; and
float64, which keeps tn_gemm_nt."""
import numpy as np
import pytest

from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_mlp_nt_tiles import check_linear_layer, check_product_with_transposed_b
from tracenet.runtime import toolchain

torch = pytest.importorskip("torch")


def _swapped_taken(source, march, dtype):
    """Whether the product goes through the swapped path exactly where it should: float32
    built for AVX-512 (the build's march and compiler say which)."""
    built = "_transpose(ot, " in source and "tn_gemm_zmm_f32(" in source
    return built == (march == "native" and dtype == np.float32 and
                     toolchain.vector_bits() >= 512)


# (M, N, K) of a @ b^T: the MLP's forward; 70 rows (a panel of 64 and 6 columns for
# tn_gemm_wide, 6 past the transposition's blocks), 301 rows of b (a 1-row tile past the
# 6-row ones), K = 517 (5 past the blocks)
SHAPES = {"mlp_forward": (64, 256, 784), "every_remainder": (70, 301, 517)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SHAPES))
def test_linear_forward_matches_torch_and_eager(march, monkeypatch, name, dtype):
    compiled = check_product_with_transposed_b(monkeypatch, *SHAPES[name], dtype, bias_relu=True)
    assert _swapped_taken(compiled.source(), march, dtype)


def test_product_without_epilogue(march, monkeypatch):
    """x @ y^T alone (no bias, no activation): out^T transposed into out is the result."""
    compiled = check_product_with_transposed_b(monkeypatch, 64, 400, 600, np.float32)
    assert _swapped_taken(compiled.source(), march, np.float32)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_linear_layer_at_symbolic_batch(march, monkeypatch, threads):
    """A linear layer + ReLU traced at batch 64 (the swapped path compiled in), then at
    batches 64 and 100 (the swapped path) and 1 and 63 (tn_gemm_nt)."""
    compiled = check_linear_layer(monkeypatch, 600, 330, (64, 100, 1, 63), threads,
                                  traced_at=64)
    source = compiled.source()
    assert _swapped_taken(source, march, np.float32)
    assert ("if ((tn_N) >= 64 && " in source) == ("_transpose(ot, " in source)
