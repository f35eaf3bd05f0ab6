"""The memory plan of an entry point (``tracenet.codegen.memory_plan``): buffers live at the same
time never overlap, whatever the batch size; every buffer is aligned; a staggered plan puts
each buffer at the same address modulo a page for every batch size, and buffers live at the
same time at different ones (4K aliasing); a spread plan (the default) does the same modulo
the L2's set period, its pads written as C expressions that compute what the plan says, for
about ``period`` bytes more per distinct start; per-thread scratch holds every thread a call
runs."""
import random
import re

import cffi
import numpy as np
import pytest

import tracenet as tn
from tracenet._sym import Sym
from tracenet.codegen.memory_plan import (ALIGN, PAGE, SMALL, Padded, Plan, pick_residue,
                                          pick_stagger)
from tracenet.executable import _Arena
from tracenet.runtime import target as runtime_target
from tracenet.runtime import threads

from test_ir import LeNet

N = Sym.symbol("N", 1)
T = Sym.symbol("T", 1)
BATCHES = (1, 2, 3, 7, 8, 13, 64, 100)
PERIOD = 131072  # the L2 set period of a 2 MB 16-way L2 (2048 sets of 64 bytes)
LAYOUTS = {"packed": {}, "staggered": {"staggered": True}, "spread": {"spread": PERIOD}}


def value(x, n, t=5):
    return x.evaluate({"N": n, "T": t}) if isinstance(x, (Sym, Padded)) else x


def _random_program(rng, steps=60):
    """(size, first step, last step) of buffers: constant, small, batch-scaled (with constant
    terms) and sequence-scaled sizes."""
    buffers = []
    for step in range(steps):
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["small", "constant", "batch", "batch", "batch_const", "seq"])
            size = {"small": lambda: rng.randint(1, SMALL - 1),
                    "constant": lambda: rng.randint(SMALL, 70_000),
                    "batch": lambda: rng.randint(1, 6000) * N,
                    "batch_const": lambda: rng.randint(1, 3000) * N + rng.randint(1, 5000),
                    "seq": lambda: rng.randint(1, 900) * N * T + rng.randint(0, 40) * N}[kind]()
            buffers.append((size, step, step + rng.randint(0, 8)))
    return buffers


def _plan(buffers, staggered=False, **layout):
    """Allocate and release in program order, as ``plan_entry`` does; returns the plan, each
    buffer's slot and the total."""
    plan = Plan(staggered=staggered, **layout)
    slots, live = [None] * len(buffers), []
    steps = max(end for _, _, end in buffers) + 1
    for step in range(steps):
        for i in [i for i in live if buffers[i][2] < step]:
            plan.release(slots[i])
        live = [i for i in live if buffers[i][2] >= step]
        for i, (size, start, _) in enumerate(buffers):
            if start == step:
                slots[i] = plan.alloc(size)
                live.append(i)
    base, total = plan.layout()
    return [Plan.offset(base, s) for s in slots], slots, total


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", range(6))
def test_live_buffers_never_overlap_and_stay_aligned_for_every_batch_size(layout, seed):
    buffers = _random_program(random.Random(seed))
    offsets, _, total = _plan(buffers, **LAYOUTS[layout])
    for n in BATCHES:
        spans = [(value(off, n), value(off, n) + value(size, n), start, end)
                 for off, (size, start, end) in zip(offsets, buffers)]
        assert all(lo % ALIGN == 0 and hi <= value(total, n) for lo, hi, _, _ in spans)
        if layout == "staggered":
            assert value(total, n) % PAGE == 0
        for i, (lo, hi, s0, e0) in enumerate(spans):
            for lo2, hi2, s1, e1 in spans[i + 1:]:
                if s0 <= e1 and s1 <= e0:  # live at the same time
                    assert hi <= lo2 or hi2 <= lo, (n, (lo, hi), (lo2, hi2))


@pytest.mark.parametrize("seed", range(4))
def test_a_staggered_buffer_has_one_address_modulo_a_page_for_every_batch_size(seed):
    buffers = _random_program(random.Random(seed))
    offsets, slots, _ = _plan(buffers, staggered=True)
    for off, slot in zip(offsets, slots):
        residues = {value(off, n) % PAGE for n in BATCHES}
        assert len(residues) == 1
        if slot.stagger:
            assert residues == {slot.stagger}


def test_buffers_live_together_start_at_distinct_addresses_modulo_a_page():
    # a chain of kernels each reading the previous output: at most a few buffers are live
    plan = Plan(staggered=True)
    sizes = [4704 * N, 1600 * N, 480 * N, 59136, 336 * N, 3200 * N * T, 40 * N + 8]
    slots = [plan.alloc(s) for s in sizes]
    base, _ = plan.layout()
    for n in BATCHES:
        residues = [value(Plan.offset(base, s), n) % PAGE for s in slots]
        assert len(set(residues)) == len(residues)
        # none next to 0, where numpy's large arrays start, nor to one another
        assert min(min(r, PAGE - r) for r in residues) >= 256
        gaps = [min((a - b) % PAGE, (b - a) % PAGE) for i, a in enumerate(residues)
                for b in residues[i + 1:]]
        assert min(gaps) >= 256


def test_a_released_buffer_frees_its_residue():
    plan = Plan(staggered=True)
    a = plan.alloc(5000 * N)
    b = plan.alloc(5000 * N)
    assert a.stagger != b.stagger
    plan.release(a)
    c = plan.alloc(5000 * N)
    # chosen against b alone (and 0): a's residue no longer counts
    assert c.stagger == pick_stagger([0, b.stagger]) != pick_stagger([0, a.stagger, b.stagger])


def test_pick_stagger_is_farthest_from_what_is_taken():
    assert pick_stagger([0]) == PAGE // 2
    assert pick_stagger([0, PAGE // 2]) == PAGE // 4
    assert pick_stagger([]) == 0
    assert all(pick_stagger(list(range(0, PAGE, ALIGN))[:k]) % ALIGN == 0 for k in range(64))


def test_small_constant_buffers_are_packed():
    plan = Plan(staggered=True)
    slots = [plan.alloc(100) for _ in range(8)]
    base, total = plan.layout()
    offsets = sorted(Plan.offset(base, s) for s in slots)
    assert offsets == [i * ALIGN * 2 for i in range(8)]
    assert total == PAGE


def test_an_unstaggered_plan_packs_everything():
    plan = Plan(staggered=False)
    slots = [plan.alloc(s) for s in (100, 5000, 70 * N, 5000 * N)]
    base, total = plan.layout()
    offsets = [Plan.offset(base, s) for s in slots]
    assert [value(o, 1) for o in offsets] == [0, 128, 5184, 5184 + 128]
    assert value(total, 2) == 5184 + 2 * (128 + 5056)


@pytest.mark.parametrize("seed", range(4))
def test_a_spread_buffer_has_its_residue_modulo_the_period_for_every_batch_size(seed):
    buffers = _random_program(random.Random(seed))
    offsets, slots, _ = _plan(buffers, spread=PERIOD)
    for off, slot, (size, _, _) in zip(offsets, slots, buffers):
        residues = {value(off, n) % PERIOD for n in BATCHES}
        if slot.period:
            assert residues == {slot.stagger}
        else:  # small constant buffers: packed at the arena's start
            assert not isinstance(size, Sym) and size < SMALL and value(off, 1) < PAGE


def test_buffers_live_together_start_on_distinct_pages_and_offsets_of_the_period():
    plan = Plan(spread=PERIOD)
    sizes = [65536 * N, 65536 * N, 65536 * N, 262144, 32768 * N, 3200 * N * T, 40 * N + 8]
    slots = [plan.alloc(s) for s in sizes]
    base, _ = plan.layout()
    for n in BATCHES:
        residues = [value(Plan.offset(base, s), n) % PERIOD for s in slots]
        # the first buffer half a period from 0 (the packed region), the next a quarter...
        assert residues[:3] == [PERIOD // 2 + PAGE // 2, PERIOD // 4 + PAGE // 4,
                                3 * PERIOD // 4 + 3 * PAGE // 4]
        pages = [r // PAGE for r in residues] + [0]
        assert len(set(pages)) == len(pages)
        within = [r % PAGE for r in residues] + [0]
        assert len(set(within)) == len(within)


def test_pick_residue_spreads_pages_then_offsets_in_the_page():
    assert pick_residue([0], PERIOD) == PERIOD // 2 + PAGE // 2
    assert pick_residue([0, PERIOD // 2 + PAGE // 2], PERIOD) == PERIOD // 4 + PAGE // 4
    assert pick_residue([0], PAGE) == PAGE // 2 == pick_stagger([0])


def test_a_spread_plan_takes_a_period_more_per_distinct_start_of_a_region():
    buffers = _random_program(random.Random(0))
    plan = Plan(spread=PERIOD)
    slots = [plan.alloc(size) for size, _, _ in buffers]  # (all live at once)
    _, total = plan.layout()
    starts = len({(s.key, s.off) for s in slots if s.period})
    assert {s.key[0] for s in slots if s.period} == {(), ("N",), ("N", "T")}
    for n in BATCHES:
        first_fit = sum(value(r.size * (Sym({key[0]: 1}, 0) if key[0] else 1), n)
                        for key, r in plan.regions.items())
        assert value(total, n) == first_fit + starts * PERIOD


def test_a_padded_offset_is_the_c_expression_it_prints():
    at = 65536 * N + 31930688
    offset = Padded(at, 67584, PERIOD)
    for n in BATCHES:
        c = str(offset).replace("tn_N", str(n))  # (Python's & and - on ints are C's on int64)
        expect = value(at, n) + (67584 - value(at, n)) % PERIOD
        assert eval(c) == offset.evaluate({"N": n}) == expect  # noqa: S307
        assert offset.evaluate({"N": n}) % PERIOD == 67584


def _cache_index(root, name, level, kind, sets, line):
    index = root / name
    index.mkdir()
    for field, text in (("level", level), ("type", kind), ("number_of_sets", sets),
                        ("coherency_line_size", line)):
        (index / field).write_text(f"{text}\n")


def test_the_l2_set_period_is_read_from_sysfs(tmp_path):
    _cache_index(tmp_path, "index0", 1, "Data", 64, 64)
    _cache_index(tmp_path, "index1", 1, "Instruction", 64, 64)
    _cache_index(tmp_path, "index2", 2, "Unified", 2048, 64)
    _cache_index(tmp_path, "index3", 3, "Unified", 245760, 64)
    assert runtime_target.l2_set_period(str(tmp_path)) == PERIOD


@pytest.mark.parametrize("sets", [1536, 32])  # not a power of two; less than a page
def test_an_l2_set_period_the_plan_cannot_use_is_0(tmp_path, sets):
    _cache_index(tmp_path, "index2", 2, "Unified", sets, 64)
    assert runtime_target.l2_set_period(str(tmp_path)) == 0


def test_no_cache_information_means_no_period(tmp_path):
    assert runtime_target.l2_set_period(str(tmp_path / "missing")) == 0


@pytest.mark.parametrize("env, layout", [(None, (False, PERIOD)), ("packed", (False, 0)),
                                         ("staggered", (True, 0))])
def test_tracenet_arena_picks_the_layout(monkeypatch, env, layout):
    monkeypatch.setattr(runtime_target, "l2_set_period", lambda: PERIOD)
    if env is None:
        monkeypatch.delenv("TRACENET_ARENA", raising=False)
    else:
        monkeypatch.setenv("TRACENET_ARENA", env)
    assert runtime_target.arena_layout() == layout
    target = runtime_target.current()
    assert (target.staggered_arena, target.l2_set_period) == layout
    assert (f"l2_set_period={PERIOD}" in repr(target)) == bool(layout[1])  # (caches key on it)


def test_the_arena_a_call_gets_is_aligned():
    for nbytes in (64, 5000, 300_000):
        arena = _Arena(nbytes)
        assert _address(arena.pointer) % ALIGN == 0


def _address(pointer):
    return int(cffi.FFI().cast("uintptr_t", pointer))


def _kernel_calls(source):
    """The lines of ``source`` that call a kernel with arena memory (at least one)."""
    calls = [line for line in source.splitlines()
             if line.startswith("    tn_") and "arena" in line]
    assert calls
    return calls


def _arena_offsets(call):
    """The arena offsets a kernel call passes, as functions of N (the C expression after
    ``arena + ``: a number or a parenthesised expression)."""
    out = []
    for m in re.finditer(r"arena \+ ", call):
        text, depth = "", 0
        for ch in call[m.end():]:
            if ch in ",)" and depth == 0:
                break
            depth += (ch == "(") - (ch == ")")
            text += ch
        out.append(lambda n, text=text: eval(text.replace("tn_N", str(n))))  # noqa: S307
    return out


@pytest.mark.parametrize("train", [False, True])
def test_lenet_kernels_read_and_write_at_distinct_addresses_modulo_a_page(train, monkeypatch):
    monkeypatch.setenv("TRACENET_ARENA", "staggered")
    tn.manual_seed(0)
    net = LeNet()
    compiled = tn.compile(net if train else net.eval())
    x = tn.randn(3, 1, 32, 32)
    if train:
        expect = net(x)
        out = compiled(x)
        out.sum().backward()
    else:
        with tn.no_grad():
            expect, out = net(x), compiled(x)
    np.testing.assert_allclose(out.detach().numpy(), expect.detach().numpy(), rtol=1e-4,
                               atol=1e-5)
    source = compiled.source()
    assert re.search(r"arena [0-9]+\*N\+[0-9]+ bytes", source)
    for call in _kernel_calls(source):
        offsets = _arena_offsets(call)
        for n in (1, 8, 64):
            residues = [f(n) % PAGE for f in offsets]
            assert all(r % ALIGN == 0 for r in residues)
            assert len(set(residues)) == len(residues), (n, call)


def test_a_spread_plan_puts_lenets_kernel_arguments_on_distinct_pages_of_the_period(
        monkeypatch):
    monkeypatch.delenv("TRACENET_ARENA", raising=False)
    monkeypatch.setattr(runtime_target, "l2_set_period", lambda: PERIOD)
    tn.manual_seed(0)
    net = LeNet()
    compiled = tn.compile(net)
    x = tn.randn(3, 1, 32, 32)
    expect, out = net(x), compiled(x)
    np.testing.assert_allclose(out.detach().numpy(), expect.detach().numpy(), rtol=1e-4,
                               atol=1e-5)
    source = compiled.source()
    assert f"&{PERIOD - 1}))" in source
    for call in _kernel_calls(source):
        offsets = _arena_offsets(call)
        for n in (1, 8, 64):
            residues = [f(n) % PERIOD for f in offsets]
            assert all(r % ALIGN == 0 for r in residues)
            assert len({r // PAGE for r in residues}) == len(residues), (n, call)


def test_a_packed_plan_packs_lenets_buffers(monkeypatch):
    monkeypatch.setenv("TRACENET_ARENA", "packed")
    tn.manual_seed(0)
    net = LeNet().eval()
    compiled = tn.compile(net)
    x = tn.randn(2, 1, 32, 32)
    with tn.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-5)
    sizes = re.findall(r"arena ([0-9]+)\*N\+([0-9]+) bytes", compiled.source())
    # packed: the batch-scaled activations take 6336 bytes an image (not whole pages)
    assert sizes and all(int(per_image) < 8192 for per_image, _ in sizes)


@pytest.fixture
def _many_threads():
    before, adaptive = tn.get_num_threads(), list(threads._adaptive)
    tn.set_num_threads(24)  # more than the 16 threads per-thread scratch has slices for
    yield
    tn.set_num_threads(before)
    threads._adaptive[:] = adaptive
    threads.set_blas_threads(1)


@pytest.mark.usefixtures("_many_threads")
def test_more_threads_than_scratch_slices_still_compute_eagers_answer():
    tn.manual_seed(0)
    net = LeNet()
    compiled = tn.compile(net)
    x = tn.randn(64, 1, 32, 32)  # large enough for the convolutions to run in parallel
    with tn.no_grad():
        expect = net(x).numpy()
        for _ in range(3):
            np.testing.assert_allclose(compiled(x).numpy(), expect, rtol=1e-4, atol=1e-5)
    compiled(x).sum().backward()
    grads = [p.grad.numpy().copy() for p in net.parameters()]
    net.zero_grad()
    net(x).sum().backward()
    for g, p in zip(grads, net.parameters()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert "if (threads > TN_MAX_THREADS) threads = TN_MAX_THREADS;" in compiled.source()
