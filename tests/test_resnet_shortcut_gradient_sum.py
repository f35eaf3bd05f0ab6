"""A residual block's gradient meeting point: the input gradient of a 1x1 convolution (stride 1
or 2, padding 0, one group), read by nothing but the add of another gradient of its shape (then
maybe the mask of the relu that made the block's input), in one kernel of the
``pointwise_gradient_sum`` group (codegen/lowerings/conv_pointwise_sum.py) that never writes
the convolution's own input gradient. Values and gradients against PyTorch and eager mode
(through ``compiled_steps``: a symbolic batch, then batch 1), float32 and float64, odd sizes,
with and without the mask, a ResNet block with its batch norms, NaN-filled work memory split
between 1 and 2 threads, and the convolutions that keep today's kernels."""
import re

import numpy as np
import pytest

import sweep
import tracenet as tn
from tracenet.codegen.target import Parallelism

from test_conv_pointwise_rows import compiled_steps

FUSED = r"static void \w+_conv_backward_input_add(_threshold_backward)?\("
MASKED = r"static void \w+_conv_backward_input_add_threshold_backward\("


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _block(cin, cout, stride, relu=True, kernel=1, padding=0, groups=1, batch_norm=False):
    """``make(lib)`` for ``compiled_steps``: a 3x3 stem (then relu when ``relu``: its mask) whose
    output x is read by a 3x3 convolution of ``stride`` and by the shortcut (``kernel``,
    ``padding``, ``groups``), the two summed: x's gradient is the sum of their input
    gradients. With ``batch_norm``, the ResNet's downsampling block (batch norms after the
    stem, both 3x3 convolutions of the block and its shortcut)."""
    def make(lib):
        nn, F = lib.nn, lib.nn.functional

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(3, cin, 3, 1, 1, bias=not batch_norm)
                self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)
                self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.short = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups,
                                       bias=False)
                norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
                self.bn0, self.bn1, self.bn2, self.bns = norm(cin), norm(cout), norm(cout), \
                    norm(cout)

            def forward(self, x):
                x = self.bn0(self.stem(x))
                if relu:
                    x = F.relu(x)
                y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
                return F.relu(y + self.bns(self.short(x)))
        return Block()
    return make


def _steps(make, size, batches=(3, 1), dtype=np.float32):
    return compiled_steps(make, (3,) + size, batches, dtype)


# the default run: the ResNet's 16 -> 32 shortcut, odd sizes, rows of ten, no mask, stride 1,
# float64; the 32 -> 64 shortcut and float64 stride 1 without the mask with -m sweep
@sweep.keep(lambda p: p["name"] not in ("shortcut_32_64", "float64_stride_1_no_mask"))
@pytest.mark.parametrize("name,cin,cout,stride,size,relu,dtype", [
    # the ResNet's 16->32 and 32->64 shortcuts (rows of two vectors and of one)
    ("shortcut_16_32", 16, 32, 2, (32, 32), True, np.float32),
    ("shortcut_32_64", 32, 64, 2, (16, 16), True, np.float32),
    # odd sizes: the last input row and column are strided positions (H = 2 OH - 1), rows
    # shorter than a vector; channels not a multiple of the GEMM's tiles
    ("odd_7x9", 5, 7, 2, (7, 9), True, np.float32),
    # 6 x 20: output rows of 10, one vector of products and a rest
    ("rows_of_ten", 8, 12, 2, (6, 20), True, np.float32),
    # no relu before: the sum alone
    ("no_mask", 8, 16, 2, (8, 8), False, np.float32),
    # stride 1 (a projection that only changes the channels): the product is every position
    ("stride_1", 8, 12, 1, (6, 10), True, np.float32),
    ("float64", 8, 16, 2, (10, 12), True, np.float64),
    ("float64_stride_1_no_mask", 6, 10, 1, (5, 7), False, np.float64),
])
def test_sum_matches_torch_and_eager(name, cin, cout, stride, size, relu, dtype):
    source = _steps(_block(cin, cout, stride, relu), size, dtype=dtype)
    assert re.search(MASKED if relu else FUSED, source), name
    if not relu:
        assert not re.search(MASKED, source)


def test_resnet_block_with_batch_norms():
    """The ResNet's block: the stem's relu follows a training-mode batch norm (the mask then
    comes from a ``norm`` group's output) and the block's output gradient reaches both 3x3
    convolutions and the shortcut through batch-norm backwards."""
    source = _steps(_block(16, 32, 2, batch_norm=True), (8, 8), batches=(4, 2))
    assert re.search(MASKED, source)


@pytest.mark.parametrize("threads", [1, 2])
def test_nan_arena_threads(nan_arenas_split, monkeypatch, threads):
    """Five and then two images over NaN work memory, split between threads however small
    (the product panels are per-thread scratch; a position the pass skipped shows as NaN in
    the stem's gradients)."""
    monkeypatch.setattr(Parallelism, "memory_min_elements", 0)
    tn.set_num_threads(threads)
    source = _steps(_block(8, 16, 2), (16, 16), batches=(5, 2))
    assert re.search(MASKED, source)
    assert "omp_get_thread_num() *" in re.split(MASKED, source)[1].split("\n}\n")[0]


@pytest.mark.parametrize("name,make,size", [
    ("stride_3", _block(8, 16, 3), (12, 12)),
    ("kernel_3", _block(8, 16, 2, kernel=3, padding=1), (12, 12)),
    ("groups_2", _block(8, 16, 2, groups=2), (12, 12)),
])
def test_other_shortcuts_keep_their_kernels(name, make, size):
    """A 1x1 convolution of stride 3 or in groups, and a 3x3 shortcut: their input gradients
    keep today's kernels (and the add its elementwise one), still correct."""
    source = _steps(make, size)
    assert not re.search(FUSED, source), name


def _two_shortcuts(lib):
    """x read by a 3x3 stride-2 convolution and two 1x1 stride-2 shortcuts, one of them with
    padding 1 (its output cropped to the others'): x's gradient is two adds, of which only
    the unpadded shortcut's may take its input gradient."""
    nn, F = lib.nn, lib.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, 1, 1)
            self.conv1 = nn.Conv2d(8, 16, 3, 2, 1)
            self.short = nn.Conv2d(8, 16, 1, 2, 0, bias=False)
            self.padded = nn.Conv2d(8, 16, 1, 2, 1, bias=False)

        def forward(self, x):
            x = F.relu(self.stem(x))
            return F.relu(self.conv1(x)) + self.short(x) + self.padded(x)[:, :, 1:, 1:]
    return Block()


def test_padded_shortcut_keeps_its_kernel():
    source = _steps(_two_shortcuts, (9, 9))
    assert len(re.findall(FUSED, source)) == 1


@pytest.mark.parametrize("output_padding,size", [(1, (6, 8)), (0, (5, 7))])
def test_transposed_convolution_forward(output_padding, size):
    """A 1x1 stride-2 transposed convolution (no bias) is a ``conv_backward_input`` in the
    forward: added to a tensor of its shape it takes the group too, with an output padding (the
    last row and column no strided position, H = 2 OH) or without (H = 2 OH - 1)."""
    def make(lib):
        nn = lib.nn

        class Up(nn.Module):
            def __init__(self):
                super().__init__()
                self.up = nn.ConvTranspose2d(6, 4, 1, stride=2, output_padding=output_padding,
                                             bias=False)
                self.skip = nn.Conv2d(3, 4, 3, 1, 1)
                self.down = nn.Conv2d(3, 6, 3, 2, 1)

            def forward(self, x):
                return self.up(self.down(x)) + self.skip(x)
        return Up()
    source = _steps(make, size)  # (the input's size: the block's output's)
    assert re.search(FUSED, source)
