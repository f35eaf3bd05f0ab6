"""glibc's vector math library: elementwise kernels over exp, log, tanh and log1p call its SIMD
versions when the toolchain probe links them, and match eager mode."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import tracenet as torch
from tracenet.codegen.templates import template_dir
from tracenet.runtime import toolchain


def test_the_preamble_declares_exactly_the_probed_functions():
    with open(os.path.join(template_dir(), "_preamble.c.j2")) as f:
        text = f.read()
    block = text[text.index("#ifdef TN_LIBMVEC"):]
    block = block[:block.index("#endif")]
    declared = set(re.findall(r"float (\w+)f\(float\)", block))
    declared_double = set(re.findall(r"double \((\w+)\)\(double\)", block))
    assert declared == declared_double == set(toolchain.VECTOR_MATH)


def test_transcendental_kernels_match_eager_and_use_the_vector_library():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Sigmoid(),
                                torch.nn.Softplus(), torch.nn.LogSigmoid())
    compiled = torch.compile(model)
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        x = torch.randn(33, 16, dtype=dtype) * 4
        out, want = compiled(x), model(x)
        np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), rtol=1e-6,
                                   atol=1e-6)
        out.sum().backward()
    if "-DTN_LIBMVEC" not in toolchain.flags():
        pytest.skip("the C library has no vector math (libmvec)")
    assert "-lmvec" in toolchain.libraries()
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm to list the library's symbols")
    symbols = subprocess.run([nm, "-D", compiled._last.library.path], capture_output=True,
                             text=True).stdout
    assert re.search(r"_ZGV\w*_tanh", symbols)  # a SIMD variant of tanh is what gets called
