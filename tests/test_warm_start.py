"""Warm starts: a new process finds the traced, optimised graphs in the graph cache and runs
without tracing; anything that could make a stored graph wrong (an edited source file, a
changed hyper-parameter or global, another module tree, another tracenet) makes it trace
again; a damaged or tampered entry is ignored with a warning."""
import glob
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = textwrap.dedent('''
    import os
    import tracenet as torch
    import tracenet.nn as nn
    import tracenet.nn.functional as F

    SHIFT = float(os.environ.get("SHIFT", "0.0"))


    def activation(h):
        return F.relu(h)


    class Net(nn.Module):
        def __init__(self, hidden=16, scale=2.0):
            super().__init__()
            self.fc1 = nn.Linear(8, hidden)
            self.bn = nn.BatchNorm1d(hidden)
            self.fc2 = nn.Linear(hidden, 3)
            self.scale = scale

        def forward(self, x):
            h = activation(self.bn(self.fc1(x)))
            return self.fc2(h) * self.scale + SHIFT
''')

# runs a training step compiled (``mode``: loop, step, or function: tracenet.compile of a step
# function that clips gradients, with a learning-rate schedule around it; with COMPILED_NET set
# the step function calls a compiled module; or forward: tracenet.compile of the loss function,
# its loss keeping its history for the backward and step after it) and the same step
# eagerly on a copy, and prints both losses and the largest difference of the updated weights;
# with NO_TRACE set, tracing raises; BATCH sets the batch size
CHILD = textwrap.dedent('''
    import copy, json, os, sys
    import numpy as np
    import tracenet as torch
    import tracenet.compiler, tracenet.compiled_function
    if os.environ.get("NO_TRACE"):
        def forbidden(*args, **kwargs):
            raise AssertionError("traced in a warm process")
        tracenet.compiler.trace = tracenet.compiled_function.trace = forbidden
    if os.environ.get("OTHER_TRACENET"):
        import tracenet.warm
        tracenet.warm.tracenet_fingerprint = lambda: "another tracenet"
    import model
    mode = sys.argv[1]
    kwargs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    torch.manual_seed(0)
    net = model.Net(**kwargs)
    ref = copy.deepcopy(net)
    if os.environ.get("HOOK"):
        for m in (net, ref):
            m.fc2.register_forward_hook(lambda mod, args, out: out * 2)
    n = int(os.environ.get("BATCH", "4"))
    x, y = torch.randn(n, 8), torch.randint(0, 3, (n,))
    criterion = torch.nn.CrossEntropyLoss()

    def run(m, compiled):
        if os.environ.get("ADAM"):
            opt = torch.optim.Adam(m.parameters(), lr=0.01)
        else:
            opt = torch.optim.SGD(m.parameters(), lr=float(os.environ.get("LR", "0.1")),
                                  momentum=0.9, nesterov=bool(os.environ.get("NESTEROV")))
        if mode == "function":
            # (with COMPILED_NET the step reaches the model only through tracenet.compile(m))
            net = torch.compile(m) if compiled and os.environ.get("COMPILED_NET") else m

            def train_step(a, b):
                opt.zero_grad()
                loss = criterion(net(a), b)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
                opt.step()
                return loss
            step = torch.compile(train_step) if compiled else train_step
            schedule = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
            losses = []
            for _ in range(3):
                losses.append(float(step(x, y)))
                schedule.step()
            return losses
        if mode == "forward":
            def forward_loss(a, b):
                return criterion(m(a), b)
            f = torch.compile(forward_loss) if compiled else forward_loss
            losses = []
            for _ in range(2):
                opt.zero_grad()
                loss = f(x, y)
                loss.backward()
                opt.step()
                losses.append(float(loss))
            return losses
        if compiled and mode == "step":
            step = torch.compile_step(lambda a, b: criterion(m(a), b), opt)
            return [float(step(x, y)) for _ in range(2)]
        f = torch.compile(m) if compiled else m
        losses = []
        for _ in range(2):
            opt.zero_grad()
            loss = criterion(f(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        return losses

    got, want = run(net, True), run(ref, False)
    diff = max(float(np.abs(a._data - b._data).max())
               for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    print(json.dumps({"got": got, "want": want, "diff": diff}))
''')


@pytest.fixture
def env(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "child.py").write_text(CHILD)
    return dict(os.environ, TRACENET_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=ROOT,
                TRACENET_DEBUG="cache")


def run(tmp_path, env, mode="loop", args=None, tol=1e-4, **extra):
    argv = [sys.executable, "child.py", mode] + ([json.dumps(args)] if args else [])
    res = subprocess.run(argv, cwd=tmp_path, env=dict(env, **extra), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    # compiled code gives eager's answer, whichever way it was made
    assert out["got"] == pytest.approx(out["want"], rel=1e-4, abs=1e-5), out
    assert out["diff"] < tol, out
    return out, res.stderr


def graph_hits(log):
    return log.count("[tracenet:cache] graph hit")


# the default run: a module (compiler.py) and a loss function (its backward after it); a step
# function and compile_step (compiled_function.py, as the loss function) with -m sweep (the
# warm step function tests and test_other_optimizer_is_not_used also run them warm)
@sweep.keep(lambda p: p["mode"] in ("loop", "forward"))
@pytest.mark.parametrize("mode", ["loop", "step", "function", "forward"])
def test_warm_process_runs_without_tracing(tmp_path, env, mode):
    cold, log = run(tmp_path, env, mode)
    assert "stored graph" in log and graph_hits(log) == 0
    assert glob.glob(str(tmp_path / "cache" / "graph-*.graph"))
    warm, log = run(tmp_path, env, mode, NO_TRACE="1")
    assert graph_hits(log) == 1, log
    assert warm["got"] == cold["got"]


def libraries(log, event):
    """The generated libraries a process's log says it built (``miss``) or loaded (``hit``)."""
    return sorted(os.path.basename(line.split()[-1]) for line in log.splitlines()
                  if line.startswith(f"[tracenet:cache] {event} ") and line.endswith(".so")
                  and "_update_" not in line)


# the default run: the two keys (a module's, compiler.py; a function's, compiled_function.py);
# compile_step (a function's key too) with -m sweep
@sweep.keep(lambda p: p["mode"] in ("loop", "function"))
@pytest.mark.parametrize("mode", ["loop", "step", "function"])
def test_warm_process_restores_the_code_planned_for_its_own_batch_size(tmp_path, env, mode):
    """The batch size stays symbolic, but the code's plans (thread splits, tiles) are chosen
    for the size it is traced at: an entry traced at another batch size is not restored, so a
    warm process runs the code a fresh one would have built (not another size's)."""
    small, big = "4", "8192"
    _, log = run(tmp_path, env, mode, BATCH=small)
    built_small = libraries(log, "miss")
    _, log = run(tmp_path, env, mode, BATCH=big)
    built_big = libraries(log, "miss")
    assert graph_hits(log) == 0 and "graph miss" in log, log
    assert built_big and built_big != built_small  # (else this test shows nothing)
    _, log = run(tmp_path, env, mode, BATCH=small, NO_TRACE="1")
    assert graph_hits(log) == 1, log
    assert libraries(log, "hit") == built_small, log
    _, log = run(tmp_path, env, mode, BATCH=big, NO_TRACE="1")
    assert graph_hits(log) == 1, log
    assert libraries(log, "hit") == built_big, log


def test_warm_step_function_runs_without_tracing_or_compiling_at_another_learning_rate(
        tmp_path, env):
    """tracenet.compile(step_fn): a new process with a warm cache neither traces nor runs the
    C compiler, also with another learning rate (read on every call, not part of the key);
    with another update flag (nesterov) it traces."""
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec gcc \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(env, CC=str(wrapper))
    cold, out = run(tmp_path, env, "function")
    assert "stored graph" in out and graph_hits(out) == 0
    assert " -o " in log.read_text()
    log.write_text("")
    for lr in ("0.1", "0.03"):
        warm, out = run(tmp_path, env, "function", NO_TRACE="1", LR=lr)
        assert graph_hits(out) == 1, out
        assert log.read_text().splitlines() == []  # the compiler was not run, not even probed
        if lr == "0.1":
            assert warm["got"] == cold["got"]
        else:  # (the first loss is before any update)
            assert warm["got"][0] == cold["got"][0] and warm["got"][1:] != cold["got"][1:]
    # a compile-time flag of the update is part of the key
    _, out = run(tmp_path, env, "function", NESTEROV="1")
    assert graph_hits(out) == 0 and "graph miss" in out, out


def test_warm_step_function_through_a_compiled_module_runs_without_tracing_or_compiling(
        tmp_path, env):
    """A step function that calls ``tracenet.compile(net)`` is stored too: a new process
    neither traces nor runs the C compiler, and the BatchNorm running statistics (graph
    inputs, compared in ``diff``) follow the eager step."""
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec gcc \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(env, CC=str(wrapper), COMPILED_NET="1")
    cold, out = run(tmp_path, env, "function")
    assert "stored graph" in out and graph_hits(out) == 0, out
    assert "not cached" not in out, out
    assert " -o " in log.read_text()
    log.write_text("")
    warm, out = run(tmp_path, env, "function", NO_TRACE="1")
    assert graph_hits(out) == 1, out
    assert log.read_text().splitlines() == []  # the compiler was not run, not even probed
    assert warm["got"] == cold["got"]


@pytest.mark.parametrize("edit", [("return F.relu(h)", "return F.relu(h) * 0.5"),
                                  ("* self.scale + SHIFT", "* self.scale * 0.5 + SHIFT")],
                         ids=["helper", "forward"])
def test_edited_source_is_traced_again(tmp_path, env, edit):
    first, _ = run(tmp_path, env)
    # the same module tree and shapes, other code: a helper forward calls (its file is
    # checked), forward itself (part of the key)
    (tmp_path / "model.py").write_text(MODEL.replace(*edit))
    out, log = run(tmp_path, env)
    assert graph_hits(log) == 0 and out["got"] != first["got"], log
    assert ("model.py changed" if edit[0].startswith("return") else "graph miss") in log, log
    out2, log = run(tmp_path, env, NO_TRACE="1")
    assert graph_hits(log) == 1 and out2["got"] == out["got"]


def test_changed_hyper_parameter_or_global_is_traced_again(tmp_path, env):
    first, _ = run(tmp_path, env, args={"scale": 2.0})
    out, log = run(tmp_path, env, args={"scale": 3.0})  # a module attribute forward reads
    assert graph_hits(log) == 0 and "scale is not 2.0" in log, log
    assert out["got"] != first["got"]
    out, log = run(tmp_path, env, args={"scale": 3.0}, SHIFT="0.5")  # a global forward reads
    assert graph_hits(log) == 0 and "SHIFT is not 0.0" in log, log


def test_other_module_tree_or_tracenet_is_not_used(tmp_path, env):
    run(tmp_path, env)
    _, log = run(tmp_path, env, args={"hidden": 12})
    assert graph_hits(log) == 0 and "graph miss" in log
    _, log = run(tmp_path, env, OTHER_TRACENET="1")
    assert graph_hits(log) == 0 and "graph miss" in log
    _, log = run(tmp_path, env, HOOK="1")  # a hook changes what forward computes
    assert graph_hits(log) == 0 and "graph miss" in log and "hooks are registered" in log
    _, log = run(tmp_path, env, NO_TRACE="1")  # the first entry is still there
    assert graph_hits(log) == 1


@pytest.mark.parametrize("where, reason", [
    ("global", "global 'BIAS'"),
    ("class attribute", "forward read Net.table"),
    ("default argument", "called with a concrete tensor as 'bias'"),
])
def test_values_another_process_cannot_check_are_not_cached(tmp_path, env, where, reason):
    # a tensor made at import: its values could differ in another process, so nothing is
    # stored (and each process traces, getting its own values right)
    source = MODEL.replace("SHIFT = float(", "BIAS = torch.randn(3)\nSHIFT = float(")
    if where == "global":
        source = source.replace("+ SHIFT", "+ SHIFT + BIAS")
    elif where == "class attribute":
        source = source.replace("class Net(nn.Module):",
                                "class Net(nn.Module):\n    table = torch.randn(3)")
        source = source.replace("+ SHIFT", "+ SHIFT + self.table")
    else:
        source = source.replace("return self.fc2(h) * self.scale + SHIFT",
                                "return out(self.fc2(h), self.scale)").replace(
            "class Net(", "def out(y, scale, bias=BIAS):\n    return y * scale + bias\n\n\n"
                          "class Net(")
    (tmp_path / "model.py").write_text(source)
    _, log = run(tmp_path, env)
    assert "graph not cached: " in log and reason in log, log
    assert not glob.glob(str(tmp_path / "cache" / "graph-*.graph"))


def _entry(tmp_path):
    (path,) = glob.glob(str(tmp_path / "cache" / "graph-*.graph"))
    return path, path[:-len(".graph")] + ".meta"


@pytest.mark.parametrize("damage", ["truncate", "garble", "no meta"])
def test_damaged_entry_is_ignored_with_a_warning_and_rebuilt(tmp_path, env, damage):
    run(tmp_path, env)
    path, meta = _entry(tmp_path)
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[:len(data) // 2])
    elif damage == "garble":
        open(path, "wb").write(data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:])
    else:
        os.unlink(meta)
    _, log = run(tmp_path, env)
    assert "RuntimeWarning: tracenet: ignoring the cached graph" in log, log
    assert graph_hits(log) == 0 and "stored graph" in log
    _, log = run(tmp_path, env, NO_TRACE="1")
    assert graph_hits(log) == 1


def test_tampered_entry_cannot_run_code(tmp_path, env):
    run(tmp_path, env)
    path, meta = _entry(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = pickle.dumps((1, Evil()))
    open(path, "wb").write(data)  # with a matching record: only the unpickler stands guard
    open(meta, "w").write(json.dumps({"size": len(data), "format": 1,
                                      "sha256": hashlib.sha256(data).hexdigest()}))
    _, log = run(tmp_path, env)
    assert not marker.exists()
    assert "ignoring the cached graph" in log and "never holds" in log, log


def test_cache_clear_removes_graph_entries(tmp_path, env):
    run(tmp_path, env)
    assert glob.glob(str(tmp_path / "cache" / "graph-*"))
    res = subprocess.run([sys.executable, "-m", "tracenet", "cache", "clear"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not glob.glob(str(tmp_path / "cache" / "graph-*"))


# the default run: the two restores (a module's, compiler.py; a function's,
# compiled_function.py); compile_step (a function's restore too) with -m sweep
@sweep.keep(lambda p: p["mode"] in ("loop", "function"))
@pytest.mark.parametrize("mode", ["loop", "step", "function"])
def test_entry_that_does_not_fit_is_ignored_with_a_warning(tmp_path, env, mode):
    run(tmp_path, env, mode)
    path, meta = _entry(tmp_path)
    # a well-formed record and pickle, but not what this tracenet stores
    data = pickle.dumps((1, {"state": {"graphs": []}, "checks": {"files": {}, "globals": [],
                                                                 "reads": []}}))
    open(path, "wb").write(data)
    open(meta, "w").write(json.dumps({"size": len(data), "format": 1,
                                      "sha256": hashlib.sha256(data).hexdigest()}))
    _, log = run(tmp_path, env, mode)
    assert "ignoring the cached graph" in log and "does not fit" in log, log
    assert graph_hits(log) == 0


def test_other_optimizer_is_not_used(tmp_path, env):
    run(tmp_path, env, "step")
    # (fc1's bias feeds a batch norm: its gradient is rounding noise, whose sign Adam's
    # normalised steps follow, so each of the two steps (lr 0.01) moves it by up to the
    # learning rate either way, compiled or not: up to 0.04 apart; the losses, compared
    # tightly, tell the optimizers apart)
    _, log = run(tmp_path, env, "step", ADAM="1", tol=0.041)
    assert graph_hits(log) == 0 and "graph miss" in log, log
    _, log = run(tmp_path, env, "step", ADAM="1", NO_TRACE="1", tol=0.041)
    assert graph_hits(log) == 1, log


def test_graph_cache_can_be_turned_off(tmp_path, env):
    _, log = run(tmp_path, env, TRACENET_GRAPH_CACHE="0")
    assert "graph miss" not in log and "stored graph" not in log, log
    assert not glob.glob(str(tmp_path / "cache" / "graph-*.graph"))
    assert glob.glob(str(tmp_path / "cache" / "*.so"))
