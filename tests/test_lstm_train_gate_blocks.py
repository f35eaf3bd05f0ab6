"""The forward step's gates, a block of columns at a time (``templates/scan_cell.c.j2``): the
gate kernel calls one inlined function per block: for a whole block, when built for AVX-512,
with the constant 16 (one vector iteration whose trip count gcc knows), otherwise with the
block's count of columns. Compiled outputs and gradients of a training step follow eager and
torch with hidden sizes of whole blocks only and with a partial block, on one to three
threads (rows or gate columns split between them), in NaN-filled work memory; the test
asserts that both calls are built."""
import re

import pytest

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_lstm_train_weight_panels import trained_on_one_to_three_threads
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)

pytest.importorskip("torch")


@pytest.mark.parametrize("hidden", [16, 40])  # 40: two whole blocks and one of 8 columns
def test_the_gates_run_a_block_at_a_time(monkeypatch, policy_cache, hidden):
    compiled = trained_on_one_to_three_threads(monkeypatch, policy_cache, hidden, False)
    assert re.search(r"#ifdef __AVX512F__\n\s+if \(jb == 16\)\n"
                     r"\s+\w+_cell_block\([^;]*, tile, r0, rb, j0, 16\);\n\s+else\n#endif\n"
                     r"\s+\w+_cell_block\([^;]*, tile, r0, rb, j0, jb\);", compiled.source())
