"""The linear layers' GEMM with AVX-512, float32 (tn_gemm_zmm in templates/_gemm.c.j2): column
panels of four 16-float vectors read in place, register tiles of 6 rows x 4 vectors then 4, 2
and 1 rows, the columns past the panels by tn_gemm_wide; at sizes that leave every remainder,
against PyTorch and eager in float32 and float64, built for AVX-512 and for AVX2 only, on work
memory filled with NaN and split between 1-3 threads; and a linear layer's forward and
gradients at a symbolic batch."""
import numpy as np
import pytest

import tracenet as tn
from compile_checks import nan_filled_arenas
from test_conv_small_channels import march  # noqa: F401  (the fixture)
from test_mlp_gemm_tiles import check_transposed_product
from test_mlp_nt_tiles import check_linear_layer
from tracenet.codegen.emit import gemm_sources
from tracenet.codegen.target import Parallelism
from tracenet.runtime import target, toolchain

torch = pytest.importorskip("torch")

SIX_ROW_TILES = "tn_ztile_f32_6x4(K, A + i0 * sai"  # tn_gemm_zmm's panel loop


def _zmm_tiles_taken(source, march, dtype):
    """Whether the product goes through tn_gemm_zmm and its 6 x 4 tiles: float32 built for
    AVX-512 (the tiles are compiled where AVX-512VL is)."""
    core = gemm_sources(target.current(), ["tn_gemm_f32"])["tn_gemm_f32"]
    taken = "tn_gemm_zmm_f32(" in source and SIX_ROW_TILES in core and \
        march == "native" and toolchain.vector_bits() >= 512
    return taken == (march == "native" and dtype == np.float32 and
                     toolchain.vector_bits() >= 512)


# name -> (M, N, K) of a^T @ b (a weight gradient's layout: a is K x M, b K x N)
SHAPES = {
    "mlp_weight_gradient": (256, 784, 64),
    # 6-row tiles then a 4-, a 2- and a 1-row tile; three panels of 64 columns, then 24 + 16
    # + 3 columns for tn_gemm_wide
    "every_remainder": (6 * 3 + 4 + 2 + 1, 64 * 3 + 24 + 16 + 3, 70),
    "one_row_one_panel": (1, 64, 5),
    "rows_past_panels_only": (13, 63, 300),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SHAPES))
def test_transposed_product_matches_torch_and_eager(march, monkeypatch, name, dtype):
    monkeypatch.setattr(Parallelism, "gemm_min_flops", 0)
    compiled = check_transposed_product(monkeypatch, *SHAPES[name], dtype)
    assert _zmm_tiles_taken(compiled.source(), march, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_product_with_bias_and_relu_matches_torch(march, monkeypatch, dtype):
    """relu(a @ b + c) with b's rows 200 apart: 6-row tiles then a 1-row one, three panels
    and 8 columns past them."""
    nan_filled_arenas(monkeypatch)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((43, 70)).astype(dtype)
    b = rng.standard_normal((70, 200)).astype(dtype)
    c = rng.standard_normal(200).astype(dtype)
    compiled = tn.compile(lambda x, y, z: tn.relu(x @ y + z))
    got = compiled(tn.from_numpy(a), tn.from_numpy(b), tn.from_numpy(c)).numpy()
    ref = torch.relu(torch.from_numpy(a) @ torch.from_numpy(b) + torch.from_numpy(c)).numpy()
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * 10)
    assert _zmm_tiles_taken(compiled.source(), march, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_linear_layer_at_symbolic_batch(march, monkeypatch, threads):
    """A linear layer + ReLU at batches 1, 7 and 64 (the weight gradient's K)."""
    compiled = check_linear_layer(monkeypatch, 200, 75, (1, 7, 64), threads)
    assert _zmm_tiles_taken(compiled.source(), march, np.float32)
