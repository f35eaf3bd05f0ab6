"""The prebuilt directory (``python -m tracenet.runtime.prebuild``, run by setup.py when the
package is built): with it, the first compile of a model in an empty cache runs no compiler
probe and no GEMM compile, only the model's own files and the link, and gets eager's
answers; a prebuilt file that is damaged, or built for other flags, is not used."""
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a LeNet training step compiled (its second convolution calls the gathered GEMM, its linear
# layers the two others) against the same step in eager mode on a copy
CHILD = textwrap.dedent('''
    import copy, json
    import numpy as np
    import tracenet as torch
    import tracenet.nn as nn
    import tracenet.nn.functional as F

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2 = nn.Linear(400, 120), nn.Linear(120, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))

    torch.manual_seed(0)
    net = LeNet()
    ref = copy.deepcopy(net)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    criterion = nn.CrossEntropyLoss()
    losses = []
    for m, compiled in ((net, True), (ref, False)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)

        def step(a, b):
            opt.zero_grad()
            loss = criterion(m(a), b)
            loss.backward()
            opt.step()
            return loss

        run = torch.compile(step) if compiled else step
        losses.append([float(run(x, y)) for _ in range(3)])
    diff = max(float(np.abs(p.detach().numpy() - q.detach().numpy()).max())
               for p, q in zip(net.parameters(), ref.parameters()))
    print(json.dumps({"losses": losses, "diff": diff}))
''')


def _wrapper(tmp_path):
    """A C compiler that logs each command line it is given."""
    log = tmp_path / "cc.log"
    cc = tmp_path / "cc"
    cc.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec gcc \"$@\"\n")
    cc.chmod(0o755)
    return str(cc), log


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRACENET_MARCH", None)
    env.update(extra)
    return env


def _prebuild(tmp_path, cc):
    out = tmp_path / "prebuilt"
    done = subprocess.run([sys.executable, "-m", "tracenet.runtime.prebuild", str(out)],
                          env=_env(CC=cc, TRACENET_CACHE_DIR=str(tmp_path / "unused")),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def _compile_cold(tmp_path, cc, prebuilt, name, **extra):
    cache = tmp_path / f"cache-{name}"
    done = subprocess.run([sys.executable, "-c", CHILD],
                          env=_env(CC=cc, TRACENET_CACHE_DIR=str(cache),
                                   TRACENET_PREBUILT=str(prebuilt), **extra),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    compiled, eager = result["losses"]
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)
    assert result["diff"] < 1e-5
    return cache


def test_prebuild_writes_every_gemm_object_and_the_probe_records(tmp_path):
    cc, _ = _wrapper(tmp_path)
    out = _prebuild(tmp_path, cc)
    names = sorted(os.path.basename(p).split("-")[0] for p in glob.glob(str(out / "*.o")))
    assert names == ["tn_gemm_dots_f32", "tn_gemm_dots_f64", "tn_gemm_f32", "tn_gemm_f64",
                     "tn_gemm_nt_f32", "tn_gemm_nt_f64", "tn_ggemm_f32", "tn_ggemm_f64"]
    for obj in glob.glob(str(out / "*.o")):
        assert os.path.exists(obj[:-2] + ".meta")
        assert os.stat(obj).st_mode & 0o044 == 0o044  # readable by every user of the package
    assert glob.glob(str(out / "toolchain-*.json")) and glob.glob(str(out / "compiler-*.txt"))
    assert not glob.glob(str(out / "*.lock"))
    assert not (tmp_path / "unused").exists() or not os.listdir(tmp_path / "unused")


def test_a_cold_compile_with_the_prebuilt_directory_compiles_only_the_model(tmp_path):
    cc, log = _wrapper(tmp_path)
    out = _prebuild(tmp_path, cc)
    log.write_text("")
    cache = _compile_cold(tmp_path, cc, out, "prebuilt")
    runs = log.read_text().splitlines()
    assert runs, "nothing was compiled"
    # no probe (no --version, no test compile) and no GEMM object: the unit's files and links
    assert not [r for r in runs if "--version" in r or "probe" in r], runs
    assert not [r for r in runs if re.search(r"/tn_g?gemm(_nt)?_f(32|64)-\w+\.c\b", r)], runs
    assert not glob.glob(str(cache / "*.o")) and not glob.glob(str(cache / "toolchain-*"))
    links = [r for r in runs if " -c " not in f" {r} "]
    assert links and all(f"{out}/tn_gemm_" in r for r in links if "tn_gemm_" in r), links
    assert any(f"{out}/tn_ggemm_f32-" in r for r in links), links


def test_damaged_or_foreign_prebuilt_files_are_not_used(tmp_path):
    cc, log = _wrapper(tmp_path)
    out = _prebuild(tmp_path, cc)
    gemm = glob.glob(str(out / "tn_gemm_f32-*.o"))[0]
    with open(gemm, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 32)
    cache = _compile_cold(tmp_path, cc, out, "damaged")
    built = sorted(os.path.basename(p).split("-")[0] for p in glob.glob(str(cache / "*.o")))
    assert built == ["tn_gemm_f32"]  # its own, in the cache; the intact ones are linked
    # other flags: none of the prebuilt files has their keys
    log.write_text("")
    cache = _compile_cold(tmp_path, cc, out, "other-cpu", TRACENET_MARCH="x86-64-v3")
    assert glob.glob(str(cache / "toolchain-*.json"))
    assert "tn_ggemm_f32" in {os.path.basename(p).split("-")[0]
                              for p in glob.glob(str(cache / "*.o"))}
