"""Cold builds: identical kernels emitted once, large units compiled as several files at once
and linked with a cached object of the GEMM micro-kernels, and TRACENET_DEBUG=time's account of
where a specialisation's compile time went."""
import os
import re
import warnings

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.optim as optim
from tracenet.runtime import build, split, toolchain

from test_ir import MLP, LeNet

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
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


def _lenet_step(net):
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    return opt, crit


@pytest.mark.parametrize("jobs", ["2", "3"])
def test_split_unit_builds_links_the_shared_object_and_matches_eager(monkeypatch, jobs):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", jobs)
    torch.manual_seed(0)
    net, ref = LeNet(), LeNet()
    ref.load_state_dict(net.state_dict())
    compiled = torch.compile(net)
    x = torch.randn(3, 1, 32, 32)
    np.testing.assert_allclose(compiled(x).detach().numpy(), ref(x).detach().numpy(), **TOL)
    compiled(x).sum().backward()
    ref(x).sum().backward()
    np.testing.assert_allclose(net.conv1.weight.grad.numpy(), ref.conv1.weight.grad.numpy(),
                               **TOL)
    lib = compiled._last.library
    stem = os.path.basename(lib.path)[:-3]
    parts = [f for f in _cache_files(".c") if f.startswith(stem + ".part")]
    assert len(parts) == int(jobs) - 1  # one core builds the shared object
    assert len(_cache_files(".o")) == 1  # the shared object, kept; the parts' objects are not
    # the whole unit is kept too, and its entry points live in the first part
    assert os.path.exists(lib.source_path)
    with open(os.path.join(os.path.dirname(lib.path), stem + ".part0.c")) as f:
        assert "tn_LeNet_0_forward(void *const *args" in f.read()


def test_second_unit_reuses_the_shared_object(tmp_path, monkeypatch):
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec gcc \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    toolchain.reset()
    torch.compile(LeNet())(torch.randn(2, 1, 32, 32))
    torch.compile(LeNet())(torch.randn(3, 1, 32, 32))  # another unit
    shared = [line for line in log.read_text().splitlines() if "tn_shared-" in line and " -c " in
              f" {line} "]
    assert len(shared) == 1, shared
    assert len(_cache_files(".so")) == 2
    # the second unit, with the shared object cached, is split over both cores
    assert len([f for f in _cache_files(".c") if ".part" in f]) == 1 + 2


def test_small_units_and_one_core_build_one_file(monkeypatch):
    torch.compile(MLP())(torch.randn(2, 20))
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "1")
    torch.compile(LeNet())(torch.randn(2, 1, 32, 32))
    assert not [f for f in _cache_files(".c") if ".part" in f] and not _cache_files(".o")
    assert len(_cache_files(".so")) == 2


def test_damaged_shared_object_is_rebuilt(monkeypatch):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    x = torch.randn(2, 1, 32, 32)
    torch.compile(LeNet())(x)
    d = os.environ["TRACENET_CACHE_DIR"]
    (obj,) = _cache_files(".o")
    with open(os.path.join(d, obj), "r+b") as f:
        f.truncate(100)
    x = torch.randn(3, 1, 32, 32)  # another unit that links it
    with pytest.warns(RuntimeWarning, match="tn_shared-.*rebuilding"):
        out = torch.compile(net := LeNet())(x)
    np.testing.assert_allclose(out.detach().numpy(), net(x).detach().numpy(), **TOL)


def test_compiler_error_in_a_part_names_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    monkeypatch.setattr(split, "MIN_KERNEL_BYTES", 0)
    monkeypatch.setattr(split, "MIN_PART_BYTES", 1)
    pieces = {"header": "#include <stdint.h>\n", "shared": None, "helpers": {},
              "kernels": [("k0", "void k0(void) { }\n", "void k0(void);", []),
                          ("k1", "void k1(void) { this is not C; }\n", "void k1(void);", [])],
              "tail": "void k0(void); void k1(void);\nint tn_probe(void) { k0(); k1(); "
                      "return 42; }\n"}
    with pytest.raises(toolchain.CompilerError, match=r"\.part\d\.c") as e:
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
