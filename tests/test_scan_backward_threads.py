"""An LSTM's backward loop on several threads (``codegen/lowerings/scan.py``): split by batch
rows, each thread runs its rows of every step alone; split by columns, each step is two phases
in one parallel region, each thread's columns of the gates' gradients, one barrier, then each
thread's columns of their product with the recurrent weight (the state gradient the same
thread reads in the next step). Every test here runs both ways. The weights' gradients are summed after the loop, as one
product over the stacked gate gradients, never across threads inside it.

Every call here runs in work memory filled with NaN (a fresh arena per call), so a read of
memory no step wrote, or of another thread's columns before they are written, shows up as a
wrong gradient instead of a stale right one; gradients are checked against eager mode and
PyTorch on one, two and three threads, with hidden sizes that give each thread exactly one
block of columns, unequal shares, or none. A GRU's step adds the product to the state's direct
gradient, on each thread's columns."""
import re

import numpy as np
import pytest

import tracenet as tn
import tracenet.executable as executable
import tracenet.nn as tnn
from tracenet.codegen.target import Parallelism
from tracenet.runtime import target as runtime_target

torch = pytest.importorskip("torch")

import sweep  # noqa: E402
from compile_checks import nan_filled_arenas  # noqa: E402
from test_catalogue_rnn import _cache, rand, twins  # noqa: E402,F401  (cache fixture)
from test_scan import run  # noqa: E402
from test_scan_cell import _step  # noqa: E402
from test_scan_threads import _restore_threads, _split_scans  # noqa: E402,F401  (fixture)

F32 = dict(rtol=1e-4, atol=2e-5)
F64 = dict(rtol=1e-9, atol=1e-10)



@pytest.fixture(autouse=True)
def _nan_arenas(monkeypatch):
    """Every call's work memory is new and all NaN (bytes 0xFF)."""
    nan_filled_arenas(monkeypatch)


@pytest.fixture(params=["rows", "columns"])
def _small_steps_split(monkeypatch, policy_cache, request):
    """Small loops split too, by batch rows whenever each thread gets one, or by columns
    only."""
    monkeypatch.setattr(Parallelism, "recurrent_min_step_flops", 0)
    monkeypatch.setattr(Parallelism, "recurrent_min_columns", 0)
    monkeypatch.setattr(Parallelism, "recurrent_min_rows_per_thread",
                        1 if request.param == "rows" else 0)
    policy_cache(f"small-steps-split-{request.param}")  # builds of this policy apart
    return request.param


def _openmp():
    if not runtime_target.current().openmp:
        pytest.skip("no OpenMP here")


def test_the_arena_really_starts_as_nan(_small_steps_split):
    """The fixture's arena reaches the C code: a kernel that reads its scratch before writing
    it would see NaN (checked on the arena object itself)."""
    arena = executable._Arena(64)
    assert np.isnan(np.frombuffer(executable._cffi_backend.buffer(arena.pointer),
                                  np.float32)).all()
    pool = executable.Arenas()
    pool.idle.append(arena)
    assert len(pool) == 0


def test_backward_step_is_gates_barrier_then_each_threads_columns_of_the_product(
        _small_steps_split):
    _openmp()
    m = tnn.LSTM(6, 32)
    compiled = tn.compile(m)
    _step(compiled, tn.randn(4, 20, 6))
    source = compiled.source()
    (scan,) = [s for s in _split_scans(source) if "backward" in s]
    body = re.search(rf"static void {scan}_body\(.*?\n\}}\n", source, re.S).group(0)
    lines = [line.strip() for line in body.splitlines()[3:-1]]
    assert re.match(r"\w+_cell_cols\(.*, v0, v1, u0, u1\);$", lines[0])
    # split by columns, the threads wait for every thread's gates; by rows, they do not
    assert lines[1:4] == ["if (by_columns) {", lines[2], "}"]
    assert lines[2].startswith("#pragma omp barrier")
    # rows [v0, v1) of the [20, 128] gates @ the weight's columns [u0, u1) -> those rows and
    # columns of the state gradient: whole blocks of 16 columns on the step's register tiles,
    # a narrower rest on the GEMM's
    a, w, d = (r"\(float \*\)args\[\d+\]",) * 3
    assert re.match(rf"if \(u1 > u0 && v1 > v0\) \{{ int j = u0; "
                    rf"for \(; j \+ 16 <= u1; j \+= 16\) "
                    rf"tn_scan_block_f32\(\(int\)\(v1 - v0\), 128, {a} \+ \(size_t\)v0 \* 128, "
                    rf"128, {w} \+ j, 32, {d} \+ \(size_t\)v0 \* 32 \+ j, 32, 0\); "
                    rf"if \(j < u1\) tn_gemm_f32\(\(int\)\(v1 - v0\), u1 - j, 128, "
                    rf"{a} \+ \(size_t\)v0 \* 128, 128, 1, {w} \+ j, 32, NULL, "
                    rf"{d} \+ \(size_t\)v0 \* 32 \+ j, 32, 0\); \}}$", lines[4])
    assert len(lines) == 5
    # the gate gradients live in the step's own slice of the stacked output: the next step
    # writes another, so the loop needs no second barrier per step, only one after it
    loop = re.search(rf"static void {scan}\(.*?\n\}}\n", source, re.S).group(0)
    assert loop.count("#pragma omp barrier") == 1
    assert loop.index("#pragma omp barrier") > loop.index(f"{scan}_body(args")
    # the gate kernel writes each gate of the wide gradient through a pointer of its own
    cell = re.search(r"static void (\w+_cell)_gates\(([^)]*)\)", source[source.index(scan):])
    assert re.findall(r"\bout1_\d\b", cell.group(2)) == ["out1_0", "out1_1", "out1_2", "out1_3"]


# the default run, split by rows and by columns: hidden 32 (one block a thread, none for one
# of three) and 40 (unequal shares, a narrower rest); 64 (equal shares of several blocks) with
# -m sweep
DEFAULT_HIDDEN = {32, 40}


@sweep.keep(lambda p: p["hidden"] in DEFAULT_HIDDEN)
@pytest.mark.parametrize("hidden", [32, 40, 64])
def test_float32_gradients_follow_eager_on_one_two_and_three_threads(_small_steps_split,
                                                                     hidden):
    """32: one block of 16 columns per thread on two threads, none for one of three; 40 and
    64: unequal and equal shares of several blocks."""
    tn.manual_seed(0)
    m = tnn.LSTM(6, hidden)
    compiled = tn.compile(m)
    for _ in range(3):
        for n in (2, 1, 3):
            tn.set_num_threads(n)
            for batch, length in ((20, 4), (3, 7)):
                x = tn.randn(length, batch, 6)
                got, want = _step(compiled, x), _step(m, x)
                for a, b in zip(got, want):
                    assert a.shape == b.shape
                    assert np.isfinite(a).all()
                    np.testing.assert_allclose(a, b, **F32)
    if runtime_target.current().openmp:
        assert len(_split_scans(compiled.source())) == 2


# the default run, split by rows and by columns: the two-layer bidirectional LSTM and GRU
# (batch first); the one-layer ones (a loop each of those runs) with -m sweep
@sweep.keep(lambda p: p["kwargs"].get("num_layers") == 2)
@pytest.mark.parametrize("name,kwargs", [
    ("LSTM", {}),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("GRU", {}),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True))])
def test_float64_gradients_match_eager_and_torch_on_two_and_three_threads(
        _small_steps_split, name, kwargs):
    """Float64 blocks are 8 columns: hidden 16 gives two threads one block each."""
    T, B, I, H = 5, 13, 4, 16
    th, ours = twins(name, I, H, **kwargs)
    x = rand(B, T, I) if kwargs.get("batch_first") else rand(T, B, I)
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    hx = [rand(layers, B, H, seed=1)] + ([rand(layers, B, H, seed=2)] if name == "LSTM" else [])
    compiled = tn.compile(ours)
    torch_out, torch_grads = run(torch, th, x, hx)
    for n in (2, 3, 2):
        tn.set_num_threads(n)
        ours.zero_grad()
        got_out, got_grads = run(tn, compiled, x, hx)
        ours.zero_grad()
        eager_out, eager_grads = run(tn, ours, x, hx)
        assert len(got_grads) == len(torch_grads)
        for a, b, c in zip(got_out + got_grads, eager_out + eager_grads,
                           torch_out + torch_grads):
            np.testing.assert_allclose(a, b, **F64)
            np.testing.assert_allclose(a, c, **F64)
    if runtime_target.current().openmp:
        assert len([s for s in _split_scans(compiled.source()) if "backward" in s]) == layers


# the default run, split by rows and by columns: hidden 33 (whole blocks and a narrower rest);
# 32 (whole blocks only) with -m sweep
DEFAULT_GRU_HIDDEN = 33


@sweep.keep(lambda p: p["hidden"] == DEFAULT_GRU_HIDDEN)
@pytest.mark.parametrize("hidden", [32, 33])
def test_gru_backward_adds_the_product_to_the_direct_gradient_on_each_threads_columns(
        _small_steps_split, hidden):
    """A GRU's state gradient is the product's plus the direct path through z * h: each
    thread starts its columns of the result from the direct part and accumulates its columns
    of the product onto them (no separate addition kernel)."""
    tn.manual_seed(0)
    m = tnn.GRU(6, hidden)
    compiled = tn.compile(m)
    for _ in range(3):
        for n in (2, 3, 1):
            tn.set_num_threads(n)
            x = tn.randn(4, 20, 6)
            for a, b in zip(_step(compiled, x), _step(m, x)):
                assert np.isfinite(a).all()
                np.testing.assert_allclose(a, b, **F32)
    if not runtime_target.current().openmp:
        return
    source = compiled.source()
    (scan,) = [s for s in _split_scans(source) if "backward" in s]
    body = re.search(rf"static void {scan}_body\(.*?\n\}}\n", source, re.S).group(0)
    assert "_add(" not in body and body.count("#pragma omp barrier") == 1
    assert re.search(r"for \(long r = v0; r < v1; r\+\+\) for \(int c = u0; c < u1; c\+\+\) "
                     r".* = .*; int j = u0; for .* tn_scan_block_f32\(.*, 1\); "
                     r"if \(j < u1\) tn_gemm_f32\(.*, 1\); \}", body)
