"""The kernel templates' Jinja bytecode: written at package build time (with the prebuilt
GEMM objects) and read by a process
that has an empty cache, so a cold compile does not parse templates; never trusted when the
template's source differs."""
import os
import shutil
import subprocess
import sys

import jinja2
import pytest

from tracenet.codegen import templates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_parsing(monkeypatch):
    parsed = []
    real = jinja2.Environment._parse

    def parse(self, source, name, filename):
        parsed.append(name)
        return real(self, source, name, filename)

    monkeypatch.setattr(jinja2.Environment, "_parse", parse)
    return parsed


def names():
    return sorted(n for n in os.listdir(templates.template_dir()) if n.endswith(".j2"))


def test_shipped_bytecode_serves_every_template_without_parsing(tmp_path, no_parsing):
    shipped = tmp_path / "shipped"
    assert templates.precompile(str(shipped)) == len(names())
    no_parsing.clear()
    env = templates._environment(templates.TemplateBytecode(None, [str(shipped)]))
    for name in names():
        env.get_template(name)
    assert no_parsing == []
    # and renders what a parsed template renders
    plain = templates._environment(None)
    args = dict(max_threads=4, ctypes={"float"})
    assert env.get_template("_preamble.c.j2").render(**args) == \
        plain.get_template("_preamble.c.j2").render(**args)


def test_a_template_whose_source_changed_is_parsed_again(tmp_path, no_parsing):
    src = tmp_path / "src"
    shutil.copytree(templates.template_dir(), src,
                    ignore=shutil.ignore_patterns(templates.SHIPPED))
    shipped = tmp_path / "shipped"
    templates.precompile(str(shipped), str(src))
    with open(src / "permute.c.j2", "a") as f:
        f.write("/* edited */\n")
    no_parsing.clear()
    env = templates._environment(templates.TemplateBytecode(None, [str(shipped)]), str(src))
    env.get_template("permute.c.j2")
    env.get_template("softmax.c.j2")
    assert no_parsing == ["permute.c.j2"]


def test_the_cache_directory_is_written_and_preferred(tmp_path, no_parsing):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = templates._environment(templates.TemplateBytecode(str(cache)))
    env.get_template("softmax.c.j2")
    assert no_parsing == ["softmax.c.j2"]
    assert len(os.listdir(cache)) == 1 and not any(n.endswith(".tmp") for n in os.listdir(cache))
    no_parsing.clear()
    again = templates._environment(templates.TemplateBytecode(str(cache), [str(tmp_path / "no")]))
    again.get_template("softmax.c.j2")
    assert no_parsing == []


def test_a_damaged_entry_is_parsed_again(tmp_path, no_parsing):
    shipped = tmp_path / "shipped"
    templates.precompile(str(shipped))
    for n in os.listdir(shipped):
        (shipped / n).write_bytes(b"garbage")
    no_parsing.clear()
    env = templates._environment(templates.TemplateBytecode(None, [str(shipped)]))
    env.get_template("softmax.c.j2")
    assert no_parsing == ["softmax.c.j2"]


def test_the_package_build_ships_the_bytecode_and_the_prebuilt_gemm(tmp_path):
    out = tmp_path / "build"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(out)], cwd=ROOT,
                   check=True, capture_output=True)
    shipped = out / "tracenet" / "templates" / templates.SHIPPED
    assert len(os.listdir(shipped)) == len(names())
    # (tests/test_prebuilt.py checks what is in it, and that a compile uses it)
    objects = [n for n in os.listdir(out / "tracenet" / "_prebuilt") if n.endswith(".o")]
    assert len(objects) == 8, objects
