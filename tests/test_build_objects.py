"""Kernel objects: each large kernel of a unit compiled as an object file of the cache of its
own, renamed after its content, so another unit with the same kernel (the model with another
head, another policy, another batch) links it instead of compiling it again. The object is
keyed like every entry (its exact source, compiler, flags, target CPU), built under its lock,
and rebuilt when damaged."""
import os
import re
import threading

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.nn.functional as F
import tracenet.optim as optim
from tracenet.runtime import build, split, toolchain

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRACENET_BUILD_JOBS", "2")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    toolchain.reset()


def _kernel_objects():
    d = os.environ["TRACENET_CACHE_DIR"]
    return {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in os.listdir(d)
            if f.startswith("kernel_") and f.endswith(".o")}


def _compiler_runs(monkeypatch):
    """The compiler commands run from now on, as lists of arguments."""
    runs = []
    real = toolchain.run_compiler

    def run(cmd, *args):
        runs.append(cmd)
        return real(cmd, *args)
    monkeypatch.setattr(toolchain, "run_compiler", run)
    return runs


class Net(nn.Module):
    """Two convolutions (large kernels) and a head whose width changes between models."""

    def __init__(self, classes):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _train_step_matches_eager(classes, dtype, batch, threads):
    """One compiled training step of ``Net(classes)`` against the same step in eager mode."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, ref = Net(classes).to(getattr(torch, dtype)), Net(classes).to(getattr(torch, dtype))
    ref.load_state_dict(net.state_dict())
    x = torch.randn(batch, 3, 16, 16, dtype=getattr(torch, dtype))
    y = torch.randint(0, classes, (batch,))
    crit = nn.CrossEntropyLoss()
    step = torch.compile_step(lambda a, b: crit(net(a), b),
                              optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
    ref_opt = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = crit(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(np.asarray(loss.detach().numpy()),
                                   np.asarray(ref_loss.detach().numpy()), **TOL[dtype])
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), err_msg=name,
                                   **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_with_another_head_links_the_kernels_it_shares(monkeypatch, dtype):
    _train_step_matches_eager(10, dtype, batch=3, threads=1)
    first = _kernel_objects()
    assert first, "the convolutions' kernels are objects of their own"
    runs = _compiler_runs(monkeypatch)
    _train_step_matches_eager(12, dtype, batch=1, threads=2)
    after = _kernel_objects()
    # the step's unit links the convolutions' objects (the optimizer's update is a unit of
    # its own), as they were: not compiled again
    linked = {os.path.basename(a) for c in runs if "-c" not in c for a in c if a.endswith(".o")}
    shared = [f for f in first if f in linked]
    assert [f for f in shared if "conv" in f], (sorted(first), sorted(linked))
    assert all(after[f] == first[f] for f in shared)
    compiled = [a for c in runs if "-c" in c for a in c if a.endswith(".c")]
    assert not [c for c in compiled if os.path.basename(c)[:-2] + ".o" in first], compiled


def test_a_damaged_kernel_object_is_rebuilt_with_a_warning():
    _train_step_matches_eager(10, "float32", batch=2, threads=1)
    d = os.environ["TRACENET_CACHE_DIR"]
    victim = sorted(_kernel_objects())[0]
    with open(os.path.join(d, victim), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 64)
    with pytest.warns(RuntimeWarning, match="kernel_.*changed since it was built"):
        _train_step_matches_eager(12, "float32", batch=2, threads=1)
    assert build._entry_problem(os.path.join(d, victim)) is None


def _pieces(name, body, header="#include <stdint.h>\n", helpers=None):
    hidden = '__attribute__((visibility("hidden")))'
    definition = f"/* nodes of {name} */\n{hidden} void {name}(int64_t *out)\n{{\n{body}\n}}\n"
    kernel = (name, definition.replace(hidden, "static"), definition,
              f"{hidden} void {name}(int64_t *out);", list(helpers or {}), [])
    return {"header": header, "gemm": {}, "helpers": dict(helpers or {}), "kernels": [kernel],
            "tail": ""}, kernel


OWN = """#define {n}_KEEP(v) (v)
    /* {n}'s tile: it's the kernel's own */
    tn_log("{n}");
    out[0] = {n}_KEEP(42) + (int64_t)sizeof("x's");"""


def test_a_kernel_is_named_after_its_content_in_every_unit():
    a, ka = _pieces("tn_Net_0_forward_k3_conv", OWN.format(n="tn_Net_0_forward_k3_conv"),
                    helpers={"tn_log": "static void tn_log(const char *s) { (void)s; }"})
    b, kb = _pieces("tn_Other_1_step_k7_conv", OWN.format(n="tn_Other_1_step_k7_conv"),
                    helpers={"tn_log": "static void tn_log(const char *s) { (void)s; }"})
    one, other = split.kernel_object(a, ka), split.kernel_object(b, kb)
    assert one.text == other.text and one.symbol == other.symbol
    assert "tn_Net_0" not in one.text and one.name_literal
    assert f"tn_log({one.symbol}_name)" in one.text  # the unit defines it, with its own name
    assert f"{one.symbol}_KEEP(42)" in one.text and '"x\'s"' in one.text
    # another body: another name
    c, kc = _pieces("tn_Net_0_forward_k3_conv", OWN.format(n="tn_Net_0_forward_k3_conv")
                    .replace("42", "43"),
                    helpers={"tn_log": "static void tn_log(const char *s) { (void)s; }"})
    assert split.kernel_object(c, kc).symbol != one.symbol


def test_a_name_in_any_other_literal_keeps_the_object_the_units_own():
    body = 'const char *s = "tn_Net_0_forward_k3_conv: failed"; (void)s; out[0] = 1;'
    a, ka = _pieces("tn_Net_0_forward_k3_conv", body)
    b, kb = _pieces("tn_Other_1_step_k7_conv", body.replace("Net_0_forward_k3",
                                                             "Other_1_step_k7"))
    one, other = split.kernel_object(a, ka), split.kernel_object(b, kb)
    assert '"tn_Net_0_forward_k3_conv: failed"' in one.text and one.text != other.text
    assert not one.name_literal
    # nor is the name under sizeof an array of unknown size
    a, ka = _pieces("tn_Net_0_forward_k3_conv", 'out[0] = sizeof("tn_Net_0_forward_k3_conv");')
    one = split.kernel_object(a, ka)
    assert 'sizeof("tn_Net_0_forward_k3_conv")' in one.text and not one.name_literal


def test_a_unit_of_kernel_objects_builds_and_calls_them_under_its_own_names(monkeypatch):
    monkeypatch.setattr(split, "OBJECT_MIN_BYTES", 0)
    helpers = {"tn_log": "static const char *tn_last;\n"
                         "static void tn_log(const char *s) { tn_last = s; }"}
    pieces, kernel = _pieces("tn_u_0_f_k1_conv", OWN.format(n="tn_u_0_f_k1_conv") +
                             "\n    out[1] = (int64_t)(tn_last[10] - '0');", helpers=helpers)
    pieces["tail"] = "void tn_u_0_f(int64_t *out) { tn_u_0_f_k1_conv(out); }\n"
    lib = build.build("/* whole */\n", "void tn_u_0_f(int64_t *out);", name="u", pieces=pieces)
    out = lib.ffi.new("int64_t[2]")
    lib.lib.tn_u_0_f(out)
    assert list(out) == [46, 1]  # tn_last is "tn_u_0_f_k1_conv", its own name
    assert _kernel_objects()


def test_kernel_objects_are_keyed_by_source_flags_and_target(monkeypatch):
    pieces, kernel = _pieces("tn_u_0_f_k1_conv", "out[0] = 1;")
    obj = split.kernel_object(pieces, kernel)
    flags = build.object_flags()
    path = build.kernel_object_path(obj, flags)
    assert build.kernel_object_path(obj, flags + ["-fopenmp"]) != path
    pieces2, kernel2 = _pieces("tn_u_0_f_k1_conv", "out[0] = 2;")
    assert build.kernel_object_path(split.kernel_object(pieces2, kernel2), flags) != path
    monkeypatch.setattr(toolchain, "target_cpu", lambda: "another-cpu")
    assert build.kernel_object_path(obj, flags) != path


def test_two_builds_of_one_object_at_once_compile_it_once(monkeypatch):
    pieces, kernel = _pieces("tn_u_0_f_k1_conv", "out[0] = 1;")
    obj = split.kernel_object(pieces, kernel)
    flags = build.object_flags()
    path = build.kernel_object_path(obj, flags)
    runs = _compiler_runs(monkeypatch)
    errors = []

    def one():
        try:
            build.build_object(path, obj.text, flags)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and build._entry_problem(path) is None
    assert len([c for c in runs if any(a == path[:-2] + ".c" for a in c)]) == 1


def test_a_compiler_error_in_a_kernel_object_names_its_file(monkeypatch):
    monkeypatch.setattr(split, "OBJECT_MIN_BYTES", 0)
    pieces, kernel = _pieces("tn_u_0_f_k1_conv", "this is not C;")
    pieces["tail"] = "void tn_u_0_f(int64_t *out) { tn_u_0_f_k1_conv(out); }\n"
    with pytest.raises(toolchain.CompilerError, match=r"kernel_conv-\w+\.c") as e:
        build.build("/* whole */\n", "void tn_u_0_f(int64_t *out);", name="broken",
                    pieces=pieces)
    assert "this is not C" in str(e.value) or "error" in str(e.value)
    d = os.environ["TRACENET_CACHE_DIR"]
    assert not [f for f in os.listdir(d) if f.endswith(".so") or f.startswith(".tmp-")]
    assert not re.search(r"\.o$", " ".join(os.listdir(d)))
