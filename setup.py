"""The package's metadata is in pyproject.toml; this adds two build steps, so that the first
compile of an installed tracenet does not redo work that is the same for every model:

- the kernel templates' Jinja bytecode is written into the built package (no parsing of the
  templates on the first compile of a process);
- ``tracenet.runtime.prebuild`` probes the C compiler and builds the GEMM's objects into the
  package's ``_prebuilt/``, for this machine's compiler and CPU. Without a compiler this step
  is skipped: the first compile builds them in the cache instead."""
import importlib.util
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_template_bytecode(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        # loaded by path: importing the tracenet package would need its run-time dependencies
        spec = importlib.util.spec_from_file_location(
            "tracenet_templates", os.path.join(here, "tracenet", "codegen", "templates.py"))
        templates = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(templates)
        out = os.path.join(self.build_lib, "tracenet", "templates", templates.SHIPPED)
        shutil.rmtree(out, ignore_errors=True)  # (an earlier build's entries: not shipped)
        templates.precompile(out, os.path.join(here, "templates"))
        prebuilt = os.path.join(self.build_lib, "tracenet", "_prebuilt")
        shutil.rmtree(prebuilt, ignore_errors=True)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(self.build_lib))
        try:
            done = subprocess.run([sys.executable, "-m", "tracenet.runtime.prebuild", prebuilt],
                                  env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            done = e
        if getattr(done, "returncode", 1) != 0:
            print("tracenet: no prebuilt GEMM objects (the first compile builds them): "
                  f"{getattr(done, 'stderr', None) or done}".strip()[:2000], file=sys.stderr)


setup(cmdclass={"build_py": build_py_with_template_bytecode})
