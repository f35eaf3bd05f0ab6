"""The ``tracenet`` command (tracenet/cli.py): ``python -m tracenet`` in subprocesses for the
end-to-end cases, ``main([...])`` in-process for the rest (quicker)."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tracenet.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = textwrap.dedent("""
    import tracenet as torch
    import tracenet.nn as nn
    import tracenet.nn.functional as F


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            return self.fc2(F.relu(self.fc1(x)))


    def make():
        return nn.Sequential(nn.Linear(8, 4), nn.ReLU())


    def make_nothing():
        return 42


    instance = Net()
    NUMBER = 3


    class NotAModule:
        pass


    class Raises(nn.Module):
        def forward(self, x):
            raise ValueError("boom in forward")


    class NeedsArguments(nn.Module):
        def __init__(self, width):
            super().__init__()
""")


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return str(path)


def run(*args, tmp_path):
    """``python -m tracenet ARGS`` with this checkout's tracenet and a private cache."""
    env = dict(os.environ, TRACENET_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TRACENET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tracenet", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line_error(r, code):
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# subprocesses --------------------------------------------------------------------------------
def test_ir_of_a_class_fused(model, tmp_path):
    r = run("ir", f"{model}:Net", "--input", "1,1,32,32", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "graph Net(%x: f32[1,1,32,32]" in r.stdout
    assert "fused[conv_relu_max_pool]" in r.stdout
    assert "convolution(" in r.stdout  # inside the fused node's body
    assert "backward" not in r.stdout


def test_ir_unfused_with_backward_of_an_instance(model, tmp_path):
    r = run("ir", f"{model}:instance", "-i", "2,1,32,32", "--no-fuse", "--backward",
            "--dtype", "float64", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fused[" not in r.stdout
    assert "convolution(" in r.stdout and "f64[2,1,32,32]" in r.stdout
    forward, backward = r.stdout.split("# backward\n")
    assert forward.startswith("# forward\n")
    assert "graph Net" in backward and "max_pool" in backward


def test_c_prints_the_generated_source(model, tmp_path):
    r = run("c", f"{model}:Net", "--input", "1,1,32,32", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "#include" in r.stdout
    assert "void tn_Net_0_forward(" in r.stdout and "void tn_Net_0_backward(" in r.stdout


def test_dot_writes_svg_or_dot_source(model, tmp_path):
    out = tmp_path / "graph.svg"
    r = run("dot", f"{model}:Net", "-i", "1,1,32,32", "-o", str(out), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    if shutil.which("dot"):
        assert "<svg" in out.read_text()
    else:
        assert not out.exists()
        assert (tmp_path / "graph.dot").read_text().startswith('digraph "Net"')
        assert "not installed" in r.stderr and str(tmp_path / "graph.dot") in r.stderr


def test_error_in_forward_is_one_line(model, tmp_path):
    r = run("ir", f"{model}:Raises", "-i", "1,3", tmp_path=tmp_path)
    line = one_line_error(r, 1)
    lineno = next(i for i, text in enumerate(MODEL.splitlines(), 1) if "boom" in text)
    assert line == "tracenet: error: tracing Raises raised ValueError: boom in forward " \
                   f"(model.py:{lineno})"


def test_bad_arguments_exit_2(model, tmp_path):
    r = run("ir", f"{model}:Net", "--input", "1,x", tmp_path=tmp_path)
    assert "1,x" in one_line_error(r, 2)


# in-process ---------------------------------------------------------------------------------
def test_ir_of_a_factory_in_process(model, capsys):
    assert main(["ir", f"{model}:make", "-i", "3,8", "--eval"]) == 0
    out = capsys.readouterr().out
    assert "graph Sequential(%x: f32[3,8]" in out and "training=False" in out


def test_dot_to_a_dot_path(model, tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main(["dot", f"{model}:make", "-i", "3,8", "--backward", "-o", str(out)]) == 0
    assert out.read_text().startswith("digraph")


@pytest.mark.parametrize("target, message", [
    ("missing.py:Net", "no such file: {dir}/missing.py"),
    ("model.py:Nope", "{dir}/model.py has no top-level name 'Nope'"),
    ("model.py:NUMBER", "NUMBER in {dir}/model.py is an int, not a Module class, a function "
                        "returning a Module or a Module instance"),
    ("model.py:NotAModule", "NotAModule in {dir}/model.py is a class but not a "
                            "tracenet.nn.Module"),
    ("model.py:make_nothing", "make_nothing() in {dir}/model.py returned an int, not a "
                              "tracenet.nn.Module"),
    ("model.py:NeedsArguments", "constructing NeedsArguments() raised TypeError: "),
])
def test_wrong_target(model, tmp_path, capsys, target, message):
    assert main(["ir", f"{tmp_path}/{target}", "-i", "1,8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tracenet: error: " + message.format(dir=tmp_path))
    assert err.count("\n") == 1


def test_import_error_of_the_file(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("x = 1\nimport no_such_module_here\n")
    assert main(["c", f"{tmp_path}/broken.py:x", "-i", "1"]) == 1
    assert capsys.readouterr().err == (
        f"tracenet: error: importing {tmp_path}/broken.py raised ModuleNotFoundError: "
        "No module named 'no_such_module_here' (broken.py:2)\n")


@pytest.mark.parametrize("argv", [[], ["frob"], ["ir", "model.py"], ["ir", "m.py:Net"],
                                  ["ir", "m.py:Net", "-i", "-1,2"], ["cache", "wipe"],
                                  ["c", "m.py:Net", "-i", "1", "--dtype", "int8"]])
def test_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tracenet") and err.count("\n") == 1 and "error:" in err


@pytest.mark.parametrize("argv", [[], ["ir"], ["c"], ["dot"], ["cache"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: tracenet")


def test_cache_info_and_clear_only_tracenet_files(tmp_path, monkeypatch, capsys):
    d = tmp_path / "cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))
    d.mkdir()
    ours = ["net-ab12.so", "net-ab12.c", "net-ab12.meta", "net-ab12.lock",
            "toolchain-0123.json", "compiler-4567.txt"]
    for name in ours:
        (d / name).write_bytes(b"x" * 100)
    (d / "jinja").mkdir()
    (d / "jinja" / "tpl.cache").write_bytes(b"y" * 24)
    theirs = ["notes.txt", "toolchain.json", "mine.so.bak"]
    for name in theirs:
        (d / name).write_text("keep")
    (d / "other").mkdir()
    (d / "other" / "lib.so").write_text("keep")

    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert out == f"cache directory: {d}\nentries: 1 compiled libraries, 7 files, 624 bytes\n"

    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out == f"removed 7 files (624 bytes) from {d}\n"
    assert sorted(os.listdir(d)) == sorted(theirs + ["other"])
    assert (d / "other" / "lib.so").exists()

    assert main(["cache", "info"]) == 0
    assert "0 compiled libraries, 0 files, 0 bytes" in capsys.readouterr().out
