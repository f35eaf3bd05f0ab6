"""The build cache and the compiler under hostile names, damaged cache entries, unusable cache
directories, misbehaving compilers and concurrent processes."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.optim as optim
from tracenet.runtime import build, cache, toolchain

from test_ir import MLP

SRC = "int tn_probe(void) { return 42; }\n"
CDEF = "int tn_probe(void);"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, no_prebuilt):  # (these damage the cache's own records)
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path / "cache"))
    toolchain.reset()  # (probed by an earlier test in this process: its record is elsewhere)
    yield
    toolchain.reset()


def _escaped(source):
    """Whether the word EVIL_MARKER is C code (not in a comment nor part of an identifier)."""
    source = source.replace("\\\n", "")  # the compiler splices lines before comments
    code = re.sub(r"/\*.*?\*/|//[^\n]*", " ", source, flags=re.S)
    return re.search(r"\bEVIL_MARKER\b", code) is not None


def _temps(d):
    return [f for f in os.listdir(d) if f.startswith(".tmp-")]


def _fake_cc(tmp_path, kernel_action, name="fakecc"):
    """A compiler that is gcc for the probes and the version query, and runs the shell snippet
    ``kernel_action`` (``$out`` is the -o file) for the kernel compile."""
    fake = tmp_path / name
    fake.write_text("#!/bin/sh\n"
                    "for a in \"$@\"; do case $a in --version) echo fakecc 1.0; exit 0;; esac; "
                    "done\n"
                    "case \"$*\" in *probe*|*-dM*) exec gcc \"$@\";; esac\n"
                    "out=; prev=; for a in \"$@\"; do [ \"$prev\" = -o ] && out=$a; prev=$a; "
                    "done\n" + kernel_action + "\n")
    fake.chmod(0o755)
    return str(fake)


@pytest.fixture
def use_cc(monkeypatch):
    def use(cc):
        monkeypatch.setenv("CC", cc)
        toolchain.reset()
    return use


# --- names reaching C and file names ------------------------------------------------------------

HOSTILE = ["Evil*/ int EVIL_MARKER = 1; /*",
           "Nl\n#error EVIL_MARKER\n",
           "Splice*\\\n/ int EVIL_MARKER; /*",
           "Line// \\\nint EVIL_MARKER;",
           "N" * 220,
           "Ünïcödé ∗/ EVIL_MARKER"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_module_names_build_and_stay_inside_comments(name):
    net = type(name, (MLP,), {})()
    compiled = torch.compile(net)
    x = torch.randn(2, 20)
    np.testing.assert_allclose(compiled(x).detach().numpy(), net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert not _escaped(compiled.source())
    d = os.environ["TRACENET_CACHE_DIR"]
    assert all(len(f) < 100 for f in os.listdir(d)) and not _temps(d)


@pytest.mark.parametrize("name", HOSTILE[:2] + ["S" * 220])
def test_hostile_step_function_names(name):
    net = MLP()
    opt = optim.SGD(net.parameters(), lr=0.1)

    def step(x):
        return net(x).sum()
    step.__name__ = name
    compiled = torch.compile_step(step, opt)
    compiled(torch.randn(2, 20))
    assert not _escaped(compiled.source())


def test_hostile_source_file_names(tmp_path):
    """A module defined in a file whose name could end a comment, splice lines or start a
    directive: its nodes' locations reach the kernels' comments."""
    src = textwrap.dedent("""
        class FromEvilFile(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return torch.relu(self.fc(x)) * 2
    """)
    for filename in ["evil*/ int EVIL_MARKER; /*.py", "evil\n#error EVIL_MARKER\n.py",
                     "evil*\\\n/ int EVIL_MARKER; /*.py", "evil// \\\nint EVIL_MARKER;.py"]:
        scope = {"nn": nn, "torch": torch}
        exec(compile(src, filename, "exec"), scope)
        net = scope["FromEvilFile"]()
        compiled = torch.compile(net)
        x = torch.randn(2, 4)
        np.testing.assert_allclose(compiled(x).detach().numpy(), net(x).detach().numpy(), rtol=1e-5)
        assert not _escaped(compiled.source()), filename


# --- damaged cache entries ------------------------------------------------------------------------

def _forget(lib):
    build._loaded.pop(lib.path, None)  # as a new process would
    os.unlink(lib.path)  # damage a new file: this process has the old one mapped


_TRUNCATED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from tracenet.runtime import build
    lib = build.build({src!r}, {cdef!r}, name="tiny")
    data = open(lib.path, "rb").read()
    os.unlink(lib.path)  # a new file: this process has the old one mapped
    data = {damage}
    open(lib.path, "wb").write(data)
    build._loaded.clear()  # as a new process would
    again = build.build({src!r}, {cdef!r}, name="tiny")
    print(again.lib.tn_probe(), again.cached)
""")


@pytest.mark.parametrize("damage", ["data[:len(data) // 2]", "data[:-100]",
                                    "data[:4] + os.urandom(200) + data[204:]"])
def test_truncated_or_garbled_library_is_rebuilt(damage):
    # in a child process: before validation, loading such a library could kill the process
    script = _TRUNCATED.format(root=os.path.dirname(os.path.dirname(__file__)), src=SRC,
                               cdef=CDEF, damage=damage)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.split() == ["42", "False"]
    assert "discarding the cached library" in res.stderr


@pytest.mark.parametrize("kind", ["garbage", "empty", "directory", "no record",
                                  "bad record"])
def test_bad_cache_entry_is_replaced_with_a_warning(kind):
    lib = build.build(SRC, CDEF, name="tiny")
    with open(lib.path, "rb") as f:
        data = f.read()
    _forget(lib)
    if kind == "directory":
        os.mkdir(lib.path)
    else:
        if kind == "no record":
            os.unlink(lib.path[:-3] + ".meta")
        elif kind == "bad record":
            with open(lib.path[:-3] + ".meta", "w") as f:
                f.write("{")
        with open(lib.path, "wb") as f:
            f.write({"garbage": b"not a library at all", "empty": b""}.get(kind, data))
    if kind == "no record":  # as left by an older version: replaced quietly
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = build.build(SRC, CDEF, name="tiny")
    else:
        with pytest.warns(RuntimeWarning, match="discarding the cached library"):
            again = build.build(SRC, CDEF, name="tiny")
    assert again.lib.tn_probe() == 42 and not again.cached
    build._loaded.pop(again.path)
    third = build.build(SRC, CDEF, name="tiny")
    assert third.cached and third.lib.tn_probe() == 42


@pytest.mark.parametrize("action", ["exit 0", "echo garbage > \"$out\"; exit 0",
                                    "gcc \"$@\" && truncate -s 3000 \"$out\""])
def test_compiler_success_without_a_library_does_not_poison_the_cache(tmp_path, use_cc,
                                                                      action):
    cc = _fake_cc(tmp_path, action)
    use_cc(cc)
    with pytest.raises(toolchain.CompilerError, match="not a library"):
        build.build(SRC, CDEF, name="tiny")
    d = os.environ["TRACENET_CACHE_DIR"]
    assert not [f for f in os.listdir(d) if f.endswith(".so")] and not _temps(d)
    # the same compiler, working now, builds the same entry
    use_cc(_fake_cc(tmp_path, "exec gcc \"$@\""))
    lib = build.build(SRC, CDEF, name="tiny")
    assert lib.lib.tn_probe() == 42


@pytest.mark.parametrize("content", ["", "null", "[]", '{"flags": "-O2"}',
                                     '{"flags": [1], "openmp": [], "vector_bits": 0}',
                                     "\x00\xff garbage"])
def test_corrupt_toolchain_record_is_probed_again(content):
    build.build(SRC, CDEF, name="tiny")  # writes the record
    d = os.environ["TRACENET_CACHE_DIR"]
    records = [f for f in os.listdir(d) if f.startswith("toolchain-")]
    assert records
    for r in records:
        with open(os.path.join(d, r), "w", encoding="latin-1") as f:
            f.write(content)
    toolchain.reset()
    compiled = torch.compile(MLP())
    compiled(torch.randn(2, 20))
    assert "-O2" in toolchain.flags()


# --- unusable cache directories --------------------------------------------------------------------

def _unwritable_dir(tmp_path):
    if os.geteuid() == 0:  # permissions do not stop root; sysfs does
        return "/sys"
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    return str(d)


@pytest.mark.parametrize("kind", ["file", "read-only", "missing parent is a file"])
def test_unusable_cache_dir_falls_back_to_a_temporary_one(tmp_path, monkeypatch, kind):
    if kind == "file":
        bad = tmp_path / "afile"
        bad.write_text("")
    elif kind == "read-only":
        bad = _unwritable_dir(tmp_path)
    else:
        (tmp_path / "afile").write_text("")
        bad = tmp_path / "afile" / "cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(bad))
    toolchain.reset()
    with pytest.warns(RuntimeWarning, match=re.escape(str(bad))) as record:
        lib = build.build(SRC, CDEF, name="tiny")
        build.build(SRC + "\n", CDEF, name="tiny")
    assert len(record) == 1  # one warning, not one per file
    assert lib.lib.tn_probe() == 42
    assert not str(lib.path).startswith(str(bad))


def test_full_disk_is_a_cache_error_naming_the_file(tmp_path, monkeypatch):
    class Full:
        def __init__(self, path, mode):
            self.f = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setattr(cache, "open", Full, raising=False)
    target = str(d / "record.json")
    with pytest.raises(cache.CacheError, match=re.escape(target) + ".*No space left"):
        cache.atomic_write(target, "{}")
    assert os.listdir(d) == []


# --- compiler failures ------------------------------------------------------------------------------

def test_hanging_compiler_times_out_with_a_clear_error(tmp_path, use_cc, monkeypatch):
    cc = _fake_cc(tmp_path, "exec sleep 60")
    use_cc(cc)
    monkeypatch.setattr(build, "COMPILE_TIMEOUT", 1)
    t = time.time()
    with pytest.raises(toolchain.CompilerError, match=re.escape(cc) + ".*within 1 s"):
        build.build(SRC, CDEF, name="tiny")
    assert time.time() - t < 30
    assert not _temps(os.environ["TRACENET_CACHE_DIR"])


def test_failing_link_keeps_the_linker_message(tmp_path, use_cc):
    use_cc(_fake_cc(tmp_path, "rm -f \"$out\"; echo \"undefined reference to 'tn_gone'\" >&2; "
                              "exit 1"))
    with pytest.raises(toolchain.CompilerError, match="undefined reference to 'tn_gone'"):
        build.build(SRC, CDEF, name="tiny")
    assert not _temps(os.environ["TRACENET_CACHE_DIR"])


_KILLED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tracenet.runtime import build
    build.build({src!r}, {cdef!r}, name="tiny")
""")


def test_build_killed_midway_leaves_no_orphans(tmp_path, use_cc):
    pidfile = tmp_path / "cc.pid"
    cc = _fake_cc(tmp_path, f"echo $$ > {pidfile}; : > \"$out\"; exec sleep 60")
    d = os.environ["TRACENET_CACHE_DIR"]
    script = _KILLED.format(root=os.path.dirname(os.path.dirname(__file__)), src=SRC, cdef=CDEF)
    child = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, CC=cc))
    try:
        deadline = time.time() + 60
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.time() < deadline and child.poll() is None
            time.sleep(0.05)
        assert [f for f in _temps(d) if ".so~" in f]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    # an old temporary file of something else, from long ago
    old = os.path.join(d, ".tmp-toolchain-0.json~abc")
    open(old, "w").close()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    lib = build.build(SRC + "\n", CDEF, name="tiny")
    assert lib.lib.tn_probe() == 42
    assert not _temps(d)


# --- concurrent processes ---------------------------------------------------------------------------

_CONCURRENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import tracenet as torch
    from test_ir import MLP
    torch.manual_seed(0)
    print(float(torch.compile(MLP())(torch.ones(2, 20)).sum()))
""")


def test_concurrent_processes_compile_once(tmp_path):
    log = tmp_path / "cc.log"
    wrapper = tmp_path / "cc"
    # the kernel compile is slowed down so that every process asks for it while it runs
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                       "case \"$*\" in *probe*|*-dM*|*--version*) ;; *) sleep 2;; esac\n"
                       "exec gcc \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, CC=str(wrapper))
    script = _CONCURRENT.format(tests=os.path.dirname(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), results
    assert len({out for out, _, _ in results}) == 1
    kernel_builds = [line for line in log.read_text().splitlines()
                     if " -o " in line and "probe" not in line]
    # (a unit may be built from several files and the GEMM's objects: each is built once)
    outputs = [re.sub(r"~\w+$", "", line.split(" -o ")[1].split()[0]) for line in kernel_builds]
    assert len(outputs) == len(set(outputs)), kernel_builds
    assert len([o for o in outputs if o.endswith(".so")]) == 1, kernel_builds
    d = os.environ["TRACENET_CACHE_DIR"]
    assert len([f for f in os.listdir(d) if f.endswith(".so")]) == 1 and not _temps(d)
