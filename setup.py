"""The package's metadata is in pyproject.toml; this adds one build step: the kernel
templates' Jinja bytecode is written into the built package, so that an installed tracenet
does not parse its templates on the first compile of a process."""
import importlib.util
import os

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
        templates.precompile(out, os.path.join(here, "templates"))


setup(cmdclass={"build_py": build_py_with_template_bytecode})
