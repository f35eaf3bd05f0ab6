"""The forward step's gates, a block of columns at a time (``templates/scan_cell.c.j2``): the
gate kernel calls one inlined function per block: for a whole block, when built for AVX-512,
with the constant 16 (one vector iteration whose trip count gcc knows), otherwise with the
block's count of columns. Compiled outputs and gradients of a training step follow eager and
torch with hidden sizes of whole blocks only and with a partial block, on one to three
threads (rows or gate columns split between them), in NaN-filled work memory; the test
asserts that both calls are built."""
import re

import pytest

import tracenet as tn
from tracenet.codegen.target import Parallelism

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_lstm_train_weight_panels import follows, lstm_pair, training_step
from test_scan_fused import F32
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from compile_checks import nan_filled_arenas

pytest.importorskip("torch")


@pytest.mark.parametrize("hidden", [16, 40])  # 40: two whole blocks and one of 8 columns
def test_the_gates_run_a_block_at_a_time(monkeypatch, policy_cache, hidden):
    nan_filled_arenas(monkeypatch)
    monkeypatch.setattr(Parallelism, "recurrent_min_step_flops", 0)  # small loops split too
    policy_cache("recurrent-split")
    th, ours = lstm_pair(hidden, False)
    step, compiled = training_step(ours)
    for n in (2, 1, 3):
        tn.set_num_threads(n)
        for batch, length in ((20, 4), (3, 5), (1, 3)):
            follows(th, ours, step, compiled, batch, length, F32)
    source = compiled.source()
    assert re.search(r"#ifdef __AVX512F__\n\s+if \(jb == 16\)\n"
                     r"\s+\w+_cell_block\([^;]*, tile, r0, rb, j0, 16\);\n\s+else\n#endif\n"
                     r"\s+\w+_cell_block\([^;]*, tile, r0, rb, j0, jb\);", source)
