"""The 1x1 strided convolution's weight gradient gathering its strided rows transposed (the
ResNet's shortcuts) with the rows between them prefetched: gradients against PyTorch and eager
mode for strides 2 and (3, 2), float64, batch 1, a symbolic batch, and in NaN-filled work
memory split between 1-3 threads; the prefetches only where rows are skipped."""
import numpy as np
import pytest
import torch

import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _step_against_torch

_PREFETCHED = "rows between the strided ones prefetched"
_GATHERED_T = "subsampled by the stride and transposed"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def compiled_steps(make, sample_shape, batches, dtype=np.float32):
    """``make(lib)``'s model (tracenet's and torch's twin), compiled: one step per batch size
    (inputs ``(batch,) + sample_shape``, a symbolic batch) against torch, then against eager;
    the compiled source."""
    tn.manual_seed(0)
    model, tmodel = make(tn), make(torch)
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch,) + sample_shape).astype(dtype)
        _step_against_torch(compiled, model, tmodel, x, tol, what=f"batch {batch}")
    assert len(compiled.specialisations) == 1
    check_compiled(model, (batches[0],) + sample_shape,
                   dtype=tn.float64 if dtype == np.float64 else tn.float32, tol=tol)
    return compiled.source()


def _compiled_step(cin, cout, stride, size, batches, dtype=np.float32, front=False):
    """A 1x1 convolution (after a 3x3 one when ``front``) through ``compiled_steps``."""
    def make(lib):
        conv = lib.nn.Conv2d(cin, cout, 1, stride=stride, bias=True)
        return lib.nn.Sequential(lib.nn.Conv2d(3, cin, 3, 1, 1), conv) if front else conv
    return compiled_steps(make, (3 if front else cin,) + size, batches, dtype)


@pytest.mark.parametrize("name,cin,cout,stride,size,batches,dtype", [
    # the ResNet's 16->32 shortcut on 32x32 (rows of 128 bytes), batch 3 then 1
    ("shortcut_16_32", 16, 32, 2, (32, 32), (3, 1), np.float32),
    # 32->64 on 16x16 (rows of one cache line)
    ("shortcut_32_64", 32, 64, 2, (16, 16), (2,), np.float32),
    # two rows skipped per strided row, an odd height
    ("strides_3_2", 8, 5, (3, 2), (11, 16), (2,), np.float32),
    ("float64", 8, 12, 2, (8, 16), (2, 1), np.float64),
])
def test_skipped_rows_prefetched_matches_torch(name, cin, cout, stride, size, batches, dtype):
    source = _compiled_step(cin, cout, stride, size, batches, dtype)
    assert _GATHERED_T in source and _PREFETCHED in source


def test_stride_one_rows_across_not_prefetched():
    """Stride (1, 2): no row is skipped, so no prefetch of rows between."""
    source = _compiled_step(8, 6, (1, 2), (5, 16), (2,))
    assert _GATHERED_T in source and _PREFETCHED not in source


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_skipped_rows_nan_arena_threads(nan_arenas_split, threads):
    """After a 3x3 convolution (the 1x1 one's input gradient feeds its backward), five and then
    two images split between threads over NaN work memory."""
    tn.set_num_threads(threads)
    source = _compiled_step(16, 24, 2, (16, 16), (5, 2), front=True)
    assert _PREFETCHED in source
