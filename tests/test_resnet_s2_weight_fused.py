"""A ResNet downsampling block's two weight gradients of its input x, the 3x3 stride-2
padding-1 convolution's and the 1x1 stride-2 shortcut's, in one kernel of the
``downsample_weight_gradient`` group (codegen/lowerings/conv_downsample_weight.py): with
AVX-512 and float32 the gathered tiles of the 3x3 gradient read x's padded planes once and
keep their centre tap (x at the strided positions) for the shortcut's own tiles; elsewhere
(float64, AVX2-only builds, odd sizes, channels not in fours) the kernel runs the two kernels
of before in turn. Values and gradients against PyTorch and eager mode (through
``compiled_steps``: a symbolic batch, then batch 1), float32 and float64, the ResNet's shapes
with and without batch norms, NaN-filled work memory split between 1 and 2 threads, and graphs
that must keep two kernels: a shortcut of another input, stride 1, a padded or 3x3 shortcut,
a shortcut of a cropped x."""
import re

import numpy as np
import pytest

import sweep
import tracenet as tn

from test_conv_pointwise_rows import compiled_steps
from test_conv_small_channels import march  # noqa: F401 (native and AVX2-only builds)
from test_resnet_shortcut_gradient_sum import _block, _two_shortcuts

GROUP = r"static void \w+_conv_backward_weight_conv_backward_weight\("
FUSED = "the shortcut's weight gradient of 4 output x 4 input channels"
IN_TURN = "the two weight gradients by their own kernels"
ALONE = r"static void \w+_k\d+_conv_backward_weight\("


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _avx512(source):
    """Whether the build has AVX-512's registers: the 3x3 gradient's own tile is there."""
    return "the gathered GEMM's AVX-512 tile" in source


def _steps(make, size, batches=(3, 1), dtype=np.float32):
    return compiled_steps(make, (3,) + size, batches, dtype)


# name -> (block input channels, output channels, input size, batches, dtype, batch norms,
# whether the fused form applies where AVX-512 does)
CASES = {
    # the ResNet's 16 -> 32 on 32x32: one image a call, output rows of 16
    "resnet_16_32": (16, 32, (32, 32), (3, 1), np.float32, False, True),
    # 32 -> 64 on 16x16: four images a call (batch 5: a last call of one), rows of 8
    "resnet_32_64": (32, 64, (16, 16), (5, 1), np.float32, False, True),
    # the ResNet's block with its batch norms (output gradients through batch-norm backwards;
    # on 8x8, output rows of 4: the two kernels in turn. On larger images float32's sums in
    # the stem's and conv1's gradients stray past the tolerance against PyTorch, with or
    # without the group)
    "resnet_block_batch_norms": (16, 32, (8, 8), (4, 2), np.float32, True, False),
    # 8x8 outputs of 16 input channels x 16 outputs: one vector of output channels a tile
    "one_vector_of_outputs": (8, 16, (16, 16), (2, 1), np.float32, False, True),
    # odd sizes: output rows of 5 (not whole halves of a vector): the two kernels in turn
    "odd_9x10": (8, 16, (9, 10), (2, 1), np.float32, False, False),
    # input channels not in fours
    "six_input_channels": (6, 16, (16, 16), (2, 1), np.float32, False, False),
    "float64": (8, 16, (16, 16), (3, 1), np.float64, False, False),
}
# the default run: the fused form's three tilings (one and four images a call, one vector of
# outputs) and the two kernels in turn for rows of 5, six channels and float64; the block with
# batch norms (rows of 4, in turn) with -m sweep
DEFAULT_CASES = {"resnet_16_32", "resnet_32_64", "one_vector_of_outputs", "odd_9x10",
                 "six_input_channels", "float64"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_torch_and_eager(march, name):
    cin, cout, size, batches, dtype, batch_norm, fused = CASES[name]
    source = _steps(_block(cin, cout, 2, batch_norm=batch_norm), size, batches, dtype)
    assert re.search(GROUP, source), name
    expect_fused = fused and _avx512(source)
    assert (FUSED in source) == expect_fused, name
    assert (IN_TURN in source) == (not expect_fused), name
    if march == "x86-64-v3":
        assert not _avx512(source) and IN_TURN in source


# the default run: float32 (the fused kernel where AVX-512 is) on both thread counts; float64
# (the two kernels in turn) with -m sweep
@sweep.keep(lambda p: p["dtype"] == np.float32)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_arena_threads(nan_arenas_split, threads, dtype):
    """Batches 5 (a last call of one image) and 2 over NaN work memory, split between one and
    two threads (each thread's sums, transposed panels and centre-tap rows are its own
    scratch; an element left unwritten reads as NaN in the weight gradients)."""
    tn.set_num_threads(threads)
    source = _steps(_block(32, 64, 2), (16, 16), batches=(5, 2), dtype=dtype)
    assert re.search(GROUP, source)
    assert (FUSED in source) == (dtype == np.float32 and _avx512(source))
    body = re.split(GROUP, source)[1].split("\n}\n")[0]
    assert "omp_get_thread_num()" in body or IN_TURN in source


def _other_input(lib):
    """The shortcut reads x before the relu, the 3x3 convolution after it."""
    nn, F = lib.nn, lib.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 1, 1)
            self.conv1 = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
            self.short = nn.Conv2d(16, 32, 1, 2, 0, bias=False)

        def forward(self, x):
            x = self.stem(x)
            return F.relu(self.conv1(F.relu(x))) + self.short(x)
    return Block()


def _cropped_shortcut(lib):
    """The shortcut reads x without its last row and column: another tensor, of other
    sizes (the same output size)."""
    nn, F = lib.nn, lib.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 1, 1)
            self.conv1 = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
            self.short = nn.Conv2d(16, 32, 1, 2, 0, bias=False)

        def forward(self, x):
            x = F.relu(self.stem(x))
            return F.relu(self.conv1(x)) + self.short(x[:, :, :-1, :-1])
    return Block()


@pytest.mark.parametrize("name,make,size", [
    ("other_input", _other_input, (16, 16)),
    ("cropped_shortcut", _cropped_shortcut, (18, 18)),
    ("stride_1", _block(16, 32, 1), (8, 8)),
    ("kernel_3_shortcut", _block(16, 32, 2, kernel=3, padding=1), (16, 16)),
    ("groups_2_shortcut", _block(16, 32, 2, groups=2), (16, 16)),
])
def test_other_graphs_keep_two_kernels(name, make, size):
    """Where the two weight gradients do not read one x through a 3x3 stride-2 padding-1
    convolution and a 1x1 stride-2 one of one group, each keeps its own kernel."""
    source = _steps(make, size)
    assert not re.search(GROUP, source), name
    assert len(re.findall(ALONE, source)) >= 3, name  # the stem's, conv1's and the shortcut's


def test_padded_shortcut_keeps_its_kernel():
    """x read by a 3x3 stride-2 convolution and two 1x1 stride-2 shortcuts, one of them with
    padding 1: the unpadded one's weight gradient joins the 3x3's, the padded one's keeps its
    kernel."""
    source = _steps(_two_shortcuts, (9, 9))
    assert len(re.findall(GROUP, source)) == 1
    assert len(re.findall(ALONE, source)) >= 2  # the stem's and the padded shortcut's
