"""Cold builds: identical kernels emitted once, large units compiled as several files at once
and linked, and TRACENET_DEBUG=time's account of where a specialisation's compile time went."""
import os
import re
import warnings

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.optim as optim
from tracenet.codegen.emit import gemm_sources
from tracenet.runtime import build, split, target, toolchain

from test_ir import MLP, LeNet

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, no_prebuilt):  # (these look at the GEMM objects it builds)
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path / "cache"))
    yield
    toolchain.reset()


def _cache_files(suffix):
    d = os.environ["TRACENET_CACHE_DIR"]
    return sorted(f for f in os.listdir(d) if f.endswith(suffix))


class Twice(nn.Module):
    """The same convolution + relu geometry twice: one kernel in the C."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))))


def test_identical_kernels_are_emitted_once_and_match_eager():
    net = Twice()
    compiled = torch.compile(net)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), net(x).numpy(), **TOL)
        src = compiled.source()
    defined = re.findall(r"^static void (\w+conv\w*)\(", src, re.M)
    assert len(defined) == 1, defined
    # both layers call it, each with its own weights
    calls = re.findall(rf"^\s+{defined[0]}\(([^;]*)\);", src, re.M)
    assert len(calls) == 2 and calls[0] != calls[1]


def test_identical_kernels_train_like_eager():
    torch.manual_seed(0)
    net, ref = Twice(), Twice()
    ref.load_state_dict(net.state_dict())
    compiled = torch.compile(net)
    x = torch.randn(2, 4, 8, 8)
    compiled(x).sum().backward()
    ref(x).sum().backward()
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), err_msg=name, **TOL)


def _build_gemm_objects(names):
    """The GEMM objects ``names`` built into the cache first. A unit whose objects are still
    compiling in the background counts each as a core's work (``split.plan``'s ``started``),
    so how many files its kernels made depended on how far those compiles had got and on the
    target's source sizes (one file with AVX2 and three jobs)."""
    sources = gemm_sources(target.current(), names)
    for name, text in sources.items():
        build.build_object(build.object_path(name, text), text)


@pytest.mark.parametrize("jobs", ["2", "3"])
def test_split_unit_builds_and_matches_eager(monkeypatch, jobs):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", jobs)
    _build_gemm_objects(["tn_gemm_f32", "tn_gemm_nt_f32", "tn_ggemm_f32", "tn_gemm_dots_f32"])
    torch.manual_seed(0)
    net, ref = LeNet(), LeNet()
    ref.load_state_dict(net.state_dict())
    compiled = torch.compile(net)
    x = torch.randn(3, 1, 32, 32)
    np.testing.assert_allclose(compiled(x).detach().numpy(), ref(x).detach().numpy(), **TOL)
    compiled(x).sum().backward()
    ref(x).sum().backward()
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), err_msg=name, **TOL)
    lib = compiled._last.library
    stem = os.path.basename(lib.path)[:-3]
    d = os.path.dirname(lib.path)
    parts = sorted(f for f in _cache_files(".c") if f.startswith(stem + ".part"))
    assert 2 <= len(parts) <= int(jobs), parts
    assert os.path.exists(lib.source_path)  # the whole unit is kept too
    texts = [open(os.path.join(d, f)).read() for f in parts]
    # the entry points live in the first file, with its kernels static as in one file
    assert "void tn_LeNet_0_forward(void *const *args" in texts[0]
    assert re.search(r"^static void tn_LeNet_0_\w+_k\d+", texts[0], re.M)
    for text in texts[1:]:
        assert re.search(r'^__attribute__\(\(visibility\("hidden"\)\)\) void tn_LeNet', text,
                         re.M)
    # no file has a copy of the GEMM: the files that call it declare it, and link the GEMM's
    # objects, built once in the cache (hidden: they are no entry points of the library)
    for text in texts:
        assert not re.search(r"\bvoid tn_g?gemm(_nt|_dots)?_f32\([^;{]*\)\s*\{", text)
        if re.search(r"^\s+tn_g?gemm(_nt|_dots)?_f32\(", text, re.M):
            assert re.search(r'^__attribute__\(\(visibility\("hidden"\)\)\) void '
                             r'tn_gemm_f32\(', text, re.M)
    objects = _cache_files(".o")
    # (the GEMM's two entry points, the dot-product tiles of the first convolution's weight
    # gradient and the gathered GEMM of the second convolution)
    assert [o.split("-")[0] for o in objects] == ["tn_gemm_dots_f32", "tn_gemm_f32",
                                                  "tn_gemm_nt_f32", "tn_ggemm_f32"], objects
    for obj in objects:
        assert os.path.exists(os.path.join(d, obj[:-2] + ".meta"))
        with pytest.raises(AttributeError):  # not exported from the library
            getattr(lib.lib, obj.split("-")[0])


def _kernel(name, size, gemm=()):
    body = f"static void {name}(void) {{ /* {'x' * size} */ }}\n"
    return (name, body, body.replace("static", "HIDDEN"), f"HIDDEN void {name}(void);", [],
            list(gemm))


def _pieces(kernels):
    return {"header": "H\n", "gemm": {"tn_gemm_f32": "G" * 20_000, "tn_gemm_nt_f32": "T" * 6_000},
            "helpers": {}, "kernels": kernels, "tail": "TAIL"}


def test_split_plan_balances_and_builds_the_gemm_apart():
    pieces = _pieces([_kernel(f"k{i}", 6_000, ["tn_gemm_f32"] * (i < 2)) for i in range(8)])
    layout = split.plan(pieces, jobs=2)
    files = layout.files
    assert len(files) == 2 and "TAIL" in files[0] and "TAIL" not in files[1]
    # every kernel once, no file with the GEMM in it: it is an object of its own, to build
    for i in range(8):
        assert sum(f"void k{i}(void) {{" in f for f in files) == 1
    assert not any("G" * 100 in f for f in files)
    assert layout.objects == ["tn_gemm_f32"]
    jobs = [j for core in layout.cores for j in core]
    assert sorted(jobs) == [("file", 0), ("file", 1), ("object", "tn_gemm_f32")]
    # balanced: the core that builds the GEMM gets less kernel source
    cost = {("object", "tn_gemm_f32"): split.gemm_cost("G" * 20_000),
            ("file", 0): len(files[0]), ("file", 1): len(files[1])}
    loads = sorted(sum(cost[j] for j in core) for core in layout.cores)
    assert loads[1] - loads[0] < 12_000, loads
    # built already: nothing to compile but the kernels, on both cores
    layout = split.plan(pieces, jobs=2, built={"tn_gemm_f32"})
    assert layout.objects == ["tn_gemm_f32"]
    assert sorted(j for core in layout.cores for j in core) == [("file", 0), ("file", 1)]


def test_split_plan_one_file_when_that_is_quicker():
    # one core, the GEMM still to build: one file (no link, no second compiler)
    pieces = _pieces([_kernel(f"k{i}", 6_000, ["tn_gemm_f32"] * (i < 2)) for i in range(8)])
    assert split.plan(pieces, jobs=1) is None
    # one core, the GEMM built: the unit's kernels alone, linked with it
    layout = split.plan(pieces, jobs=1, built={"tn_gemm_f32"})
    assert len(layout.files) == 1 and layout.cores == [[("file", 0)]]
    # a small unit without GEMM calls: one file, however many cores
    small = _pieces([_kernel("k0", 6_000), _kernel("k1", 1_000)])
    assert split.plan(small, jobs=4) is None
    assert split.plan(_pieces([_kernel("k0", 60_000)]), jobs=4) is None


def test_small_units_and_one_core_build_one_file(monkeypatch):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "1")
    torch.compile(LeNet())(torch.randn(2, 1, 32, 32))
    assert not [f for f in _cache_files(".c") if ".part" in f]
    assert not _cache_files(".o")
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "4")
    torch.compile(nn.Sequential(nn.Tanh()))(torch.randn(2, 20))
    assert not [f for f in _cache_files(".c") if ".part" in f]
    assert len(_cache_files(".so")) == 2


def _compiler_runs(monkeypatch):
    """The compiler commands run from now on, as lists of arguments."""
    runs = []
    real = toolchain.run_compiler

    def run(cmd, *args):
        runs.append(cmd)
        return real(cmd, *args)
    monkeypatch.setattr(toolchain, "run_compiler", run)
    return runs


def test_gemm_objects_are_built_once_and_linked_into_every_unit(monkeypatch):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    runs = _compiler_runs(monkeypatch)
    torch.compile(LeNet())(torch.randn(2, 1, 32, 32))
    objects = _cache_files(".o")
    # tn_gemm, tn_gemm_nt, the first convolution's dot-product tiles and the gathered GEMM of
    # the second convolution
    assert len(objects) == 4
    # (compiled in the background while the kernels were rendered, so not in ``runs``)
    assert not [c for c in runs if "-c" in c and any(re.search("tn_g?gemm", a) for a in c)]
    d = os.environ["TRACENET_CACHE_DIR"]
    stamps = [os.stat(os.path.join(d, o)).st_mtime_ns for o in objects]
    # a second unit (another process would do the same) links the same objects, even on one
    # core: they are built already
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "1")
    runs.clear()
    torch.manual_seed(0)
    net = MLP()
    compiled = torch.compile(net)
    x = torch.randn(3, 20)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), net(x).numpy(), **TOL)
    assert _cache_files(".o") == objects
    assert [os.stat(os.path.join(d, o)).st_mtime_ns for o in objects] == stamps
    assert not [c for c in runs if "-c" in c and any(re.search("tn_g?gemm", a) for a in c)]
    link = [c for c in runs if "-c" not in c]  # (inference calls only tn_gemm_nt)
    assert len(link) == 1 and any("tn_gemm_nt_f32-" in a for a in link[0]), link


def test_a_damaged_gemm_object_is_rebuilt(monkeypatch):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    torch.manual_seed(0)
    net = LeNet()
    torch.compile(net)(torch.randn(2, 1, 32, 32)).sum().backward()
    d = os.environ["TRACENET_CACHE_DIR"]
    gemm = [f for f in _cache_files(".o") if f.startswith("tn_gemm_f32-")][0]
    with open(os.path.join(d, gemm), "r+b") as f:
        f.seek(200)
        f.write(b"\0" * 64)
    # inference: another unit, whose convolutions call tn_gemm
    compiled = torch.compile(net)
    x = torch.randn(3, 1, 32, 32)
    with pytest.warns(RuntimeWarning, match="tn_gemm_f32.*changed since it was built"):
        with torch.no_grad():
            out = compiled(x)
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), net(x).numpy(), **TOL)
    assert build._entry_problem(os.path.join(d, gemm)) is None


def test_float64_units_link_the_float64_gemm(monkeypatch):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    torch.manual_seed(0)
    net, ref = MLP().double(), MLP().double()
    ref.load_state_dict(net.state_dict())
    compiled = torch.compile(net)
    x = torch.randn(3, 20, dtype=torch.float64)
    out = compiled(x)
    np.testing.assert_allclose(out.detach().numpy(), ref(x).detach().numpy(), rtol=1e-12,
                               atol=1e-12)
    out.sum().backward()
    ref(x).sum().backward()
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), err_msg=name, rtol=1e-10)
    assert {o.split("-")[0] for o in _cache_files(".o")} >= {"tn_gemm_f64"}


def test_compiler_error_in_a_part_names_its_file(monkeypatch):
    monkeypatch.setattr(split, "MIN_KERNEL_BYTES", 0)
    monkeypatch.setattr(split, "FILE_OVERHEAD", 0)
    monkeypatch.setattr(split, "LINK_OVERHEAD", 0)
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    h = '__attribute__((visibility("hidden")))'
    pieces = {"header": "#include <stdint.h>\n", "gemm": {}, "helpers": {},
              "kernels": [("k0", "static void k0(void) { }\n", f"{h} void k0(void) {{ }}\n",
                           f"{h} void k0(void);", [], []),
                          ("k1", "static void k1(void) { this is not C; }\n",
                           f"{h} void k1(void) {{ this is not C; }}\n", f"{h} void k1(void);",
                           [], [])],
              "tail": "int tn_probe(void) { k0(); k1(); return 42; }\n"}
    with pytest.raises(toolchain.CompilerError, match=r"\.part1\.c") as e:
        build.build("/* whole */ int tn_probe(void) { return 42; }\n", "int tn_probe(void);",
                    name="broken", pieces=pieces)
    assert "this is not C" in str(e.value) or "error" in str(e.value)
    d = os.environ["TRACENET_CACHE_DIR"]
    assert not _cache_files(".so") and not [f for f in os.listdir(d) if f.startswith(".tmp-")]


_ROW = re.compile(r"\[tracenet:time\]   (\w+) +([\d.]+) ms +([\d.]+)%")
_HEAD = re.compile(r"\[tracenet:time\] compile (.+): ([\d.]+) ms \((compiled|cache hit)\)")


def _blocks(err):
    """[(title, total ms, note, {phase: ms})] of the compile-time blocks in ``err``."""
    out = []
    for line in err.splitlines():
        head, row = _HEAD.match(line), _ROW.match(line)
        if head:
            out.append((head[1], float(head[2]), head[3], {}))
        elif row and out:
            out[-1][3][row[1]] = float(row[2])
    return out


def test_time_breakdown_for_compile_lists_each_phase(capfd, monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "time")
    compiled = torch.compile(LeNet())
    compiled(torch.randn(2, 1, 32, 32)).sum().backward()
    blocks = _blocks(capfd.readouterr().err)
    assert len(blocks) == 1, blocks
    title, total, note, phases = blocks[0]
    assert "LeNet" in title and note == "compiled"
    for name in ("trace", "autodiff", "passes", "render", "gcc", "load"):
        assert name in phases, phases
    assert phases["gcc"] > 0
    assert abs(sum(phases.values()) - total) <= 0.01 * total + 0.5


def test_time_breakdown_for_compile_step_and_a_cache_hit(capfd, monkeypatch):
    monkeypatch.setenv("TRACENET_DEBUG", "time")
    for _ in range(2):  # the second net finds the first one's library in the cache
        torch.manual_seed(0)
        net = MLP()
        opt = optim.SGD(net.parameters(), lr=0.1)
        step = torch.compile_step(lambda x: net(x).sum(), opt)
        step(torch.randn(2, 20))
    blocks = _blocks(capfd.readouterr().err)
    assert [b[2] for b in blocks] == ["compiled", "cache hit"], blocks
    assert "training step" in blocks[0][0]
    assert "gcc" in blocks[0][3] and "gcc" not in blocks[1][3]
    for _, total, _, phases in blocks:
        assert {"trace", "autodiff", "passes", "render", "load"} <= set(phases)
        assert abs(sum(phases.values()) - total) <= 0.01 * total + 0.5


def test_clock_phases_nest_without_counting_twice():
    from tracenet.runtime import debug
    clock = debug.CompileClock("t")
    with debug.phase("outer"):
        with debug.phase("inner"):
            pass
    clock.lap("lap")
    total = clock.done()
    assert set(clock.phases) <= {"outer", "inner", "lap", "other"}
    assert abs(sum(clock.phases.values()) - total) < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with debug.phase("no clock"):  # outside a compile: nothing recorded, nothing raised
            pass


def test_gemm_objects_compile_while_the_kernels_are_rendered(monkeypatch):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    events = []
    start, real_build = build.start_objects, build.build

    def started(sources):
        events.append(("start", sorted(sources)))
        start(sources)

    def built(*args, **kwargs):
        events.append(("build",))
        return real_build(*args, **kwargs)
    monkeypatch.setattr(build, "start_objects", started)
    monkeypatch.setattr(build, "build", built)
    runs = _compiler_runs(monkeypatch)
    torch.manual_seed(0)
    net, ref = LeNet(), LeNet()
    ref.load_state_dict(net.state_dict())
    compiled = torch.compile(net)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), ref(x).numpy(), **TOL)
    # the convolution's GEMM was asked for as soon as its kernel was rendered, before the build
    assert events[0] == ("start", ["tn_gemm_f32"]) and ("build",) in events
    assert [o.split("-")[0] for o in _cache_files(".o")][:1] == ["tn_gemm_f32"]
    assert not [c for c in runs if "-c" in c and any("tn_gemm_f32-" in a for a in c)]
    d = os.environ["TRACENET_CACHE_DIR"]
    assert not [p for p in build._started if p.startswith(d)]  # waited for, and published


def test_a_background_object_releases_its_lock_when_the_compiler_ends(monkeypatch):
    # another process waiting for the object's lock (here a thread, with a lock of its own)
    # gets it once the compiler is done, without this process asking for the object
    import threading
    from tracenet.codegen.emit import gemm_sources
    from tracenet.runtime import cache, target
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    sources = gemm_sources(target.current(), ["tn_gemm_nt_f32"])
    build.start_objects(sources)
    path = build.object_path("tn_gemm_nt_f32", sources["tn_gemm_nt_f32"])
    assert path in build._started
    got = []

    def other():
        with cache.locked(path):
            got.append(build._entry_problem(path))
    waiter = threading.Thread(target=other, daemon=True)
    waiter.start()
    waiter.join(timeout=300)
    assert got == [None]  # the lock was free and the object published
    build.build_object(path, sources["tn_gemm_nt_f32"])
    assert path not in build._started
