"""The 1x1 stride-2 convolution's input gradient stored past the caches (streamed) by its
register tiles when it is large (conv_pointwise.STREAMED_GRADIENT_BYTES): values and
gradients against PyTorch and eager mode, on both sides of the threshold in one compiled
step (a symbolic batch), float64, batch 1, output rows of one vector, and in NaN-filled work
memory split between 1-3 threads (the zeros between the strided positions are streamed too)."""
import numpy as np
import pytest

import tracenet as tn
from tracenet.codegen import memory_plan
from tracenet.codegen.lowerings import conv_pointwise
from tracenet.runtime import target as runtime_target

from test_conv_pointwise_rows import compiled_steps

# the fused scatter (and so the streamed stores) is the input gradient's path only with
# AVX-512 (conv_pointwise.takes_input_gradient)
pytestmark = pytest.mark.skipif(runtime_target.current().vector_bits < 512,
                                reason="the 1x1 input gradient is lowered here only with AVX-512")

_STREAMED = "streamed past the caches when {} bytes or more"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def stream_all(monkeypatch):
    """Every fused-scatter input gradient streamed, however small."""
    monkeypatch.setattr(conv_pointwise, "STREAMED_GRADIENT_BYTES", 0)


def _between_two_convs(cin, size, batches, dtype=np.float32):
    """A 1x1 stride-2 convolution (``cin`` in, 2 * cin out) between two 3x3 ones, so its input
    gradient is work memory (64-byte aligned: memory_plan.ALIGN, so the tiles' stores are
    aligned and the streamed path is taken when large enough), through ``compiled_steps``."""
    assert memory_plan.ALIGN % 32 == 0

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(3, cin, 3, 1, 1),
                                 lib.nn.Conv2d(cin, 2 * cin, 1, 2, bias=False),
                                 lib.nn.Conv2d(2 * cin, 4, 3, 1, 1))
    return compiled_steps(make, (3,) + size, batches, dtype)


def test_resnet_shortcut_streamed_above_the_threshold_only():
    """The ResNet's 16->32 shortcut on 32x32: 16 images' gradient is 1 MiB (streamed), 15
    images' is less (stored through the caches); both in one compiled step."""
    per_image = 16 * 32 * 32 * 4
    assert 16 * per_image >= conv_pointwise.STREAMED_GRADIENT_BYTES > 15 * per_image
    source = _between_two_convs(16, (32, 32), (16, 15))
    assert _STREAMED.format(conv_pointwise.STREAMED_GRADIENT_BYTES) in source


@pytest.mark.parametrize("name,cin,size,batches,dtype", [
    # the 32->64 shortcut's 16x16 images: output rows of one vector, pairs span two rows
    ("shortcut_32_64", 32, (16, 16), (3, 1), np.float32),
    # 6x16: 24 positions, the last vector of each image a single one; channels 6 + 4 + 2
    ("single_last_vector", 12, (6, 16), (2,), np.float32),
    ("float64", 8, (8, 8), (3, 1), np.float64),
])
def test_streamed_matches_torch(stream_all, name, cin, size, batches, dtype):
    source = _between_two_convs(cin, size, batches, dtype)
    assert _STREAMED.format(0) in source


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_streamed_nan_arena_threads(nan_arenas_split, stream_all, threads):
    """Five and then two images split between threads over NaN work memory: a zero between
    the strided positions left unwritten (or a streamed store not yet visible to the next
    kernel's thread) shows as NaN in the first convolution's gradients."""
    tn.set_num_threads(threads)
    source = _between_two_convs(8, (16, 16), (5, 2))
    assert _STREAMED.format(0) in source
    assert "_STREAMED();" in source
