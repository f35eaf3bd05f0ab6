"""The build cache and the compiler under hostile names."""
import os
import re
import textwrap

import numpy as np
import pytest

import tracenet as torch
import tracenet.nn as nn
import tracenet.optim as optim
from tracenet.runtime import toolchain

from test_ir import MLP

SRC = "int tn_probe(void) { return 42; }\n"
CDEF = "int tn_probe(void);"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path / "cache"))
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
