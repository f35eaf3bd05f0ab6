"""The memory plan of an entry point (``tracenet.codegen.memory_plan``): buffers live at the same
time never overlap, whatever the batch size; every buffer is aligned; a staggered plan puts
each buffer at the same address modulo a page for every batch size, and buffers live at the
same time at different ones (4K aliasing); per-thread scratch holds every thread a call runs."""
import random
import re

import cffi
import numpy as np
import pytest

import tracenet as tn
from tracenet._sym import Sym
from tracenet.codegen.memory_plan import ALIGN, PAGE, SMALL, Plan, pick_stagger
from tracenet.executable import _Arena
from tracenet.runtime import threads

from test_ir import LeNet

N = Sym.symbol("N", 1)
T = Sym.symbol("T", 1)
BATCHES = (1, 2, 3, 7, 8, 13, 64, 100)


def value(x, n, t=5):
    return x.evaluate({"N": n, "T": t}) if isinstance(x, Sym) else x


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


def _plan(buffers, staggered):
    """Allocate and release in program order, as ``plan_entry`` does; returns the plan, each
    buffer's slot and the total."""
    plan = Plan(staggered=staggered)
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


@pytest.mark.parametrize("staggered", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_live_buffers_never_overlap_and_stay_aligned_for_every_batch_size(staggered, seed):
    buffers = _random_program(random.Random(seed))
    offsets, _, total = _plan(buffers, staggered)
    for n in BATCHES:
        spans = [(value(off, n), value(off, n) + value(size, n), start, end)
                 for off, (size, start, end) in zip(offsets, buffers)]
        assert all(lo % ALIGN == 0 and hi <= value(total, n) for lo, hi, _, _ in spans)
        if staggered:
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


def test_the_arena_a_call_gets_is_aligned():
    for nbytes in (64, 5000, 300_000):
        arena = _Arena(nbytes)
        assert _address(arena.pointer) % ALIGN == 0


def _address(pointer):
    return int(cffi.FFI().cast("uintptr_t", pointer))


def _arena_offsets(call):
    """The arena offsets a kernel call passes, as functions of N."""
    out = []
    for m in re.finditer(r"arena \+ \(([^()]*)\)|arena \+ ([0-9]+)\)", call):
        text = m.group(1) or m.group(2)
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
    calls = [line for line in source.splitlines()
             if line.startswith("    tn_") and "arena" in line]
    assert calls
    for call in calls:
        offsets = _arena_offsets(call)
        for n in (1, 8, 64):
            residues = [f(n) % PAGE for f in offsets]
            assert all(r % ALIGN == 0 for r in residues)
            assert len(set(residues)) == len(residues), (n, call)


def test_the_default_plan_packs_lenets_buffers(monkeypatch):
    monkeypatch.delenv("TRACENET_ARENA", raising=False)
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
