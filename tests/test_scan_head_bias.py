"""The linear layer a fused loop runs after each step (inference) starts its register tiles
from its bias, padded to whole blocks of columns, instead of adding the bias in a pass after
them. Its result follows eager and torch for widths of whole blocks, of a partial last block
only, and of both; without a bias; at batch 1 and with a symbolic batch; on one, two and three
threads (split by rows and by gate columns) in NaN-filled arenas."""
import re

import pytest

import tracenet as tn

from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from test_scan_fused import (SMALL_LOOPS_SPLIT, F32, headed, inferred, pair,
                             small_loops_split_on_nan_arenas, tokens)
from compile_checks import nan_filled_arenas

pytest.importorskip("torch")

# the layer's tiles, starting from the padded bias or from zero
FROM_BIAS = "bias ? bias + j : NULL);"
BIAS_PASS = re.compile(r"c\[r \* ldc \+ q\] \+= bias\[q\]")


def starts_from_bias(compiled, bias, width):
    """Whether the loop's layer passes its padded bias (or NULL) to the tiles of its whole
    blocks and of its partial last block, with no pass adding a bias after them."""
    source = compiled.source()
    padded = re.search(r"bp\[j\] = j < \d+ \? hb\[j\] : 0\.0f;", source)
    return source.count(FROM_BIAS) == 1 + bool(width % 16) and bool(padded) == bias and \
        not BIAS_PASS.search(source)


@pytest.mark.parametrize("width", [11, 32, 37])  # a partial block, whole blocks, both
@pytest.mark.parametrize("bias", [True, False])
def test_the_layer_starts_from_its_bias(monkeypatch, width, bias):
    nan_filled_arenas(monkeypatch)
    th, ours = pair("LSTM", batch_first=True, out_width=width, out_bias=bias)
    compiled = tn.compile(ours)
    for batch in (4, 1, 7):  # batch 1 (13 tokens: the table is projected)
        inferred(th, ours, compiled, tokens(batch, 13, True, batch), F32)
        assert starts_from_bias(compiled, bias, width)
    assert len(compiled.specialisations) == 1  # the batch size is the symbol N
    assert headed(compiled.graph)
    inferred(th, ours, compiled, tokens(5, 3, True, 0), F32)  # another length
    assert starts_from_bias(compiled, bias, width)


@pytest.mark.parametrize("first", [True, False])
def test_threads_start_their_rows_from_the_bias(monkeypatch, policy_cache, first):
    small_loops_split_on_nan_arenas(monkeypatch, policy_cache(SMALL_LOOPS_SPLIT))
    th, ours = pair("LSTM", batch_first=first, out_width=37)
    compiled = tn.compile(ours)
    for n in (2, 1, 3):
        tn.set_num_threads(n)
        for batch, length in ((20, 5), (3, 6), (1, 12)):
            inferred(th, ours, compiled, tokens(batch, length, first, n + batch), F32)
            assert starts_from_bias(compiled, True, 37)
