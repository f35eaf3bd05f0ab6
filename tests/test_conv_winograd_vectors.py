"""The F(4x4, 3x3) Winograd forward and input gradient's vector paths
(templates/conv_winograd_f4.c.j2): the 36 products on AVX-512 register tiles of output
channels x vectors of tiles (lowerings/conv_winograd._f4_tiles; the rows and columns past the
tiles, and every product without AVX-512, on the GEMM core), and the output transform eight
tiles at a time with each output row's columns interleaved in registers (one, two or four
images a block). Against PyTorch and eager mode over output channels and block widths that
leave rows and columns past the tiles, blocks too narrow for a tile, edge tiles cut, a last
block of fewer images, batch 1, a symbolic batch, fused epilogues, builds for AVX-512 and for
AVX2 only, and NaN-filled work memory on 1-3 threads."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_conv_kernels import _copy_to_torch, _eval_follows_statistics, _step_against_torch
from test_conv_winograd import _block, _forms, _two_convs_on_nan_arenas, \
    _two_convs_over_batches
from test_conv_winograd_f4 import FEWER, _images_per_block

# a kernel's product tiles: its name, TMR output channels, TNV vectors of 16 tiles
TILE = re.compile(r"static inline void (\w+)_tile\(int K")
TILE_ROWS = re.compile(r"o0 \+ (\d+) <= \d+; o0 \+= \d+\)\n\s+for \(int j = 0; j < wide; j \+= (\d+)\)")
VECTOR_OUTPUTS = "8 tiles a step, a row's columns interleaved in registers"


def _tiles(source):
    """(output channels, tiles) of each F(4x4) kernel's product tiles."""
    found = []
    for name in TILE.findall(source):
        body = source[source.index(f"static void {name}("):]
        body = body[:body.index("\n}\n")]
        if "F(4x4,3x3)" in body:  # (the weight gradient has register tiles of its own)
            mr, cols = TILE_ROWS.search(body).groups()
            found.append((int(mr), int(cols)))
    return found


# name -> (in channels, out channels, bias, input shape, product tiles (output channels x
# tiles) of the forward and input gradient, output transforms in vectors); the batch is
# symbolic but in the "batch1_" cases, compiled for batch 1 (one image a block)
CASES = {
    # the ResNet's first block: one image a block of 32 tiles, 8 x 32 tiles, vector outputs
    "resnet_32x32": (16, 16, False, (2, 16, 32, 32), [(8, 32), (8, 32)], 2),
    # 19 and 17 output channels: two and three rows past the tiles; blocks of 36 tiles: four
    # columns past them; three tiles a row: no vector outputs
    "odd_channels_12x12": (17, 19, True, (5, 17, 12, 12), [(8, 32), (8, 32)], 0),
    # two images a block (the last alone: the interleaved form without vectors)
    "two_images_16x16_batch3": (32, 24, False, (3, 32, 16, 16), [(8, 32), (8, 32)], 2),
    # four images a block of 8x16 images, the last block of one
    "four_images_8x16_batch5": (16, 16, True, (5, 16, 16, 8), [(8, 32), (8, 32)], 2),
    # 30 tiles a block: one vector of 16 tiles
    "batch1_wide_9x37": (16, 16, True, (1, 16, 9, 37), [(16, 16), (16, 16)], 0),
    # a block of 4 tiles: the GEMM core alone
    "batch1_8x8": (16, 16, True, (1, 16, 8, 8), [], 0),
    # the last row of tiles cut: 30 columns in eight tiles
    "cut_edges_30x30": (16, 8, False, (2, 16, 30, 30), [(8, 32), (8, 32)], 2),
}

# the default run: one and four images a block with vector outputs, rows and columns past the
# tiles, one vector of tiles, the GEMM core alone, cut edges; two images a block (also
# test_symbolic_batch's) with -m sweep
DEFAULT_CASES = {"resnet_32x32", "four_images_8x16_batch5", "odd_channels_12x12",
                 "batch1_wide_9x37", "batch1_8x8", "cut_edges_30x30"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_vector_paths_match_torch_and_eager(march, name):
    cin, cout, bias, shape, tiles, vectors = CASES[name]
    tn.manual_seed(0)
    model = tn.nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
    tmodel = torch.nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model, dynamic=not name.startswith("batch1_"))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    assert _forms(source, 4)[:2] == (1, 1)
    assert _tiles(source) == tiles
    assert source.count(VECTOR_OUTPUTS) == vectors
    check_compiled(model, shape)


def test_symbolic_batch():
    """One compiled module at batch 3, 5 and 1 (blocks of two 16x16 images, the last one of
    fewer): product tiles and vector outputs in both kernels of both convolutions."""
    source = _two_convs_over_batches((16, 16), (3, 5, 1))
    assert len(_tiles(source)) == 4 and source.count(VECTOR_OUTPUTS) == 4
    assert set(_images_per_block(source)) == {2} and FEWER in source


def test_eval_batch_norm_residual_relu():
    """The epilogue applied to the rows the vector outputs leave (32x32, one image a block)."""
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _block(tn, True), _block(torch, True)
    source = _eval_follows_statistics(model, tmodel, (2, 16, 32, 32))
    assert "_conv_batch_norm_add_relu(" in source
    assert len(_tiles(source)) == 2 and source.count(VECTOR_OUTPUTS) == 2


# the default run: 16x16 (two images a block, the last of one) on 1-3 threads; 32x32 with
# -m sweep
@sweep.keep(lambda p: p["size"] == (16, 16))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [(32, 32), (16, 16)])
def test_nan_arena_threads(nan_arenas_split, threads, size):
    """Two convolutions in a row over five and two images on work memory filled with NaN: a
    product tile or output row left unwritten shows as NaN."""
    source = _two_convs_on_nan_arenas(threads, size, 16)
    assert len(_tiles(source)) == 4 and source.count(VECTOR_OUTPUTS) == 4
