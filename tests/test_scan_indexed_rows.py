"""A loop over a (projected) embedding table's rows whose gate kernel alone reads them reads
each step's rows where they are in the table, by index (``scan_cell.rows_by_index``), instead
of copying them into a slice first. Compiled results and gradients follow eager and torch in
float32 and float64, at batch 1, with a symbolic batch, on one, two and three threads (split
by batch rows and by gate columns) in NaN-filled arenas; an index out of range raises eager's
error; a loop with no gate kernel keeps the copy."""
import re

import numpy as np
import pytest

import tracenet as tn

import sweep
from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from test_scan_threads import _restore_threads  # noqa: F401  (the thread-count fixture)
from test_scan_fused import (SMALL_LOOPS_SPLIT, F32, F64, follows, gathered, inferred, pair,
                             small_loops_split_on_nan_arenas, tokens)
from compile_checks import nan_filled_arenas

torch = pytest.importorskip("torch")

# a gate kernel's read of row ``index[row]`` of the table, at a gate's column
INDEXED_READ = re.compile(r"in\d+\[\(size_t\)in\d+\[row\] \* \d+ \+ c \+ \d+\]")
COPIED = "picked from the table into slice"  # the loop's copy of each step's rows


def reads_by_index(compiled, gates):
    """Whether the last build's loop reads the table by index (one read per gate), with no
    copy of any step's rows."""
    source = compiled.source()
    return len(INDEXED_READ.findall(source)) == gates and COPIED not in source


GATES = {"LSTM": 4, "GRU": 3}


# the default run: the LSTM and the GRU in float32, time first and batch first, the table without
# its bias, and float64 (the LSTM); the GRU in float64 with -m sweep
@sweep.keep(lambda p: not (p["name"] == "GRU" and p["f64"]))
@pytest.mark.parametrize("name,f64,kwargs", [
    ("LSTM", False, {}), ("LSTM", True, dict(batch_first=True)),
    ("GRU", False, dict(batch_first=True)), ("GRU", True, {}),
    ("LSTM", False, dict(out_bias=False, batch_first=True))])
def test_the_gate_kernel_reads_the_table_by_index(monkeypatch, name, f64, kwargs):
    nan_filled_arenas(monkeypatch)
    th, ours = pair(name, f64=f64, **kwargs)
    compiled = tn.compile(ours)
    tol = F64 if f64 else F32
    first = kwargs.get("batch_first")
    # batch 1, odd sizes (more tokens than the table's 11 rows: the table is projected)
    for batch, length in ((4, 7), (1, 13), (7, 3)):
        toks = tokens(batch, length, first, batch)
        follows(th, ours, compiled, toks, tol)  # training: values and every gradient
        assert reads_by_index(compiled, GATES[name])
        inferred(th, ours, compiled, toks, tol)
        assert reads_by_index(compiled, GATES[name])
    assert gathered(compiled.graph)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_threads_read_their_rows_by_index(monkeypatch, policy_cache, name):
    """Batch 20: two threads split the rows; batch 3 and three threads at 20: they split the
    gate columns, every thread reading every row's index."""
    small_loops_split_on_nan_arenas(monkeypatch, policy_cache(SMALL_LOOPS_SPLIT))
    th, ours = pair(name, batch_first=True)
    compiled = tn.compile(ours)
    for n in (2, 1, 3):
        tn.set_num_threads(n)
        for batch, length in ((20, 5), (3, 6), (1, 12)):
            toks = tokens(batch, length, True, n + batch)
            follows(th, ours, compiled, toks, F32)
            assert reads_by_index(compiled, GATES[name])
            inferred(th, ours, compiled, toks, F32)
            assert reads_by_index(compiled, GATES[name])
    assert re.search(r"#pragma omp parallel if\(", compiled.source())


def test_one_build_for_every_batch_size(monkeypatch):
    nan_filled_arenas(monkeypatch)
    th, ours = pair("LSTM", batch_first=True)
    compiled = tn.compile(ours)
    for batch in (4, 1, 9):  # the batch size is the symbol N
        inferred(th, ours, compiled, tokens(batch, 12, True, batch), F32)
    assert len(compiled.specialisations) == 1
    assert reads_by_index(compiled, 4)
    assert "tn_N" in compiled.source()


def test_a_loop_without_a_gate_kernel_keeps_the_copy():
    """A plain RNN's step has no gates: its rows are still copied, and follow eager."""
    th, ours = pair("RNN", f64=True)
    compiled = tn.compile(ours)
    inferred(th, ours, compiled, tokens(4, 5, False, 0), F64)
    assert gathered(compiled.graph)
    assert COPIED in compiled.source() and not INDEXED_READ.search(compiled.source())


@pytest.mark.parametrize("bad", [-1, 11])
def test_an_index_out_of_range_raises_before_it_is_read(bad):
    th, ours = pair("LSTM")
    compiled = tn.compile(ours)
    toks = tokens(3, 4, False, 5)
    with tn.no_grad():
        compiled(tn.from_numpy(toks))
        assert reads_by_index(compiled, 4)
        toks[3, 1] = bad
        with pytest.raises(IndexError) as eager:
            ours(tn.from_numpy(toks))
        with pytest.raises(IndexError) as got:
            compiled(tn.from_numpy(toks))
    assert str(got.value) == str(eager.value)
    with pytest.raises(IndexError):
        th(torch.from_numpy(toks))
