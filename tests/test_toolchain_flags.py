"""The compiler flags every kernel is built with keep the kernels' loops vectorised where the
target has no masked arithmetic: relu's backward (``m > 0 ? g : 0``, g read only where m > 0)
is a select of two vectors only if floating-point operations may be computed where their
result is then dropped (``-fno-trapping-math``); with AVX2 only it was a branch per element,
4.4x slower."""
import subprocess

import pytest

from tracenet.runtime import toolchain

# relu's backward of a residual sum, as the elementwise kernels write it
_SELECT = r"""
#include <stddef.h>
void masked_sum(size_t n, const float *restrict a, const float *restrict b,
                const float *restrict mask, float *restrict out)
{
    #pragma omp simd
    for (size_t i = 0; i < n; i++) {
        const float t0 = a[i] + b[i];
        out[i] = mask[i] > 0.0f ? t0 : 0;
    }
}
"""


def _gcc():
    argv, identity = toolchain.compiler()
    if "gcc" not in identity.lower() or "clang" in identity.lower():
        pytest.skip("the vectoriser's report is read in gcc's format")
    return list(argv)


def _vectorised(tmp_path, flags):
    src = tmp_path / "select.c"
    src.write_text(_SELECT)
    out = subprocess.run(_gcc() + flags + ["-fopt-info-vec-optimized", "-c", str(src), "-o",
                                           str(tmp_path / "select.o")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return "loop vectorized" in out.stderr


def _avx2_flags():
    return [f for f in toolchain.flags() if not f.startswith("-march") and f != "-shared"] + \
        ["-march=x86-64-v3"]


def test_a_select_vectorises_with_avx2_only(tmp_path):
    assert _vectorised(tmp_path, _avx2_flags())


def test_the_flags_are_part_of_the_probe_cache_key(monkeypatch):
    """Recorded probe results from a build with other base flags are not reused."""
    before = toolchain._probe_cache_path()
    monkeypatch.setattr(toolchain, "_BASE_FLAGS", toolchain._BASE_FLAGS + ("-fwrapv",))
    assert toolchain._probe_cache_path() != before
