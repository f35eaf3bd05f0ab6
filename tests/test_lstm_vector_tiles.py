"""The recurrent steps' register tiles (``templates/scan_tiles.c.j2``): built for AVX-512, a
row of a 16-column block is one vector of 16 floats (tiles of 8, 4, 2 and 1 rows); for AVX2
only, two vectors of 8 (tiles of 6, 4, 2 and 1 rows). The forward step's gate blocks, the
linear layer a loop runs after each step (inference) and the backward step's state gradient
(training) follow eager and torch under both builds: batch 15 on one thread (a tile of every
height), 20 and 3 on two and three threads (rows, then gate columns split between them),
batch 1, sequence length 1, float32 (the tiles) and float64 (the GEMM's), in NaN-filled work
memory; a batch's rows give what each row gives alone. The loop's weights, transposed once a
call (the recurrent weight into panels, the linear layer's into rows of padded blocks), are
packed by 8 x 8 blocks in registers and the rest one by one: hidden sizes 20 and 40, 37 outputs."""
import numpy as np
import pytest

import sweep
import tracenet as tn

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_conv_small_channels import march  # noqa: F401  (native and AVX2-only builds)
from test_lstm_train_weight_panels import follows, lstm_pair, training_step
from test_scan_fused import (SMALL_LOOPS_SPLIT, F32, F64, headed, inferred, pair,
                             small_loops_split_on_nan_arenas, tokens)
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)

pytest.importorskip("torch")

# (threads, batch, length): one thread's 15 rows run a tile of 8, 4, 2 and 1 rows; two
# threads take 10 rows each (8 + 2); three split 20 rows by rows and 3 by gate columns
CASES = [(1, 15, 4), (1, 1, 1), (2, 20, 3), (2, 3, 5), (3, 20, 2), (3, 3, 1)]


def built_with_both_tiles(source):
    """Whether the source holds both forms of the step's tiles (the compiler's target picks
    one: vectors of 16 with AVX-512VL, of 8 without)."""
    return "tn_scan_ztile_f32_8x1(" in source and "tn_scan_tile_f32_6x2(" in source


def test_inference_follows_eager_on_the_vector_tiles(march, monkeypatch, policy_cache):
    small_loops_split_on_nan_arenas(monkeypatch, policy_cache(f"{SMALL_LOOPS_SPLIT}-{march}"))
    # 40 units: two whole blocks of gate columns and one of 8 (the GEMM's); 37 outputs: two
    # whole blocks of the layer and one of 5
    th, ours = pair("LSTM", batch_first=True, out_width=37)
    compiled = tn.compile(ours)
    for threads, batch, length in CASES:
        tn.set_num_threads(threads)
        inferred(th, ours, compiled, tokens(batch, length, True, threads + batch), F32)
    assert built_with_both_tiles(compiled.source())
    assert len(headed(compiled.graph)) == 1


# 20 units: panels of 16 and 4 of the weight's rows, packed as blocks of 8 x 8 and one by one
# the default run: 20 units (whole panels and a partial one) in float32 and float64; 64 units
# (whole panels only) with -m sweep
@sweep.keep(lambda p: p["hidden"] == 20)
@pytest.mark.parametrize("hidden", [20, 64])
@pytest.mark.parametrize("f64", [False, True])
def test_training_follows_eager_on_the_vector_tiles(march, monkeypatch, policy_cache, f64,
                                                    hidden):
    small_loops_split_on_nan_arenas(monkeypatch, policy_cache(f"{SMALL_LOOPS_SPLIT}-{march}"))
    th, ours = lstm_pair(hidden, f64)
    step, compiled = training_step(ours)
    for threads, batch, length in CASES:
        tn.set_num_threads(threads)
        follows(th, ours, step, compiled, batch, length, F64 if f64 else F32)
    assert built_with_both_tiles(compiled.source()) != f64  # float64 has no such tiles


def test_the_tiles_round_as_one_chain_per_element(march, monkeypatch, policy_cache):
    """Every element of a step's product is one chain of FMAs over k from its start, whatever
    the tile: batch 15 (a tile of each height) gives row for row what batch 1 gives."""
    small_loops_split_on_nan_arenas(monkeypatch, policy_cache(f"{SMALL_LOOPS_SPLIT}-{march}"))
    th, ours = pair("LSTM", batch_first=True, out_width=37)
    compiled = tn.compile(ours)
    toks = tokens(15, 6, True, 3)
    tn.set_num_threads(1)
    with tn.no_grad():
        together = compiled(tn.from_numpy(toks)).numpy().copy()
        alone = np.concatenate([compiled(tn.from_numpy(toks[r:r + 1])).numpy()
                                for r in range(15)])
    np.testing.assert_array_equal(together, alone)
