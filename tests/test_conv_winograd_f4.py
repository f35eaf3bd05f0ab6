"""The F(4x4, 3x3) Winograd forward and input gradient with several images' tiles interleaved
along a block's tile rows (lowerings/conv_winograd._blocking_f4: images whose rows have fewer
tiles than a vector, or fewer tiles than a block's GEMMs want): against PyTorch and eager mode
over even and odd sizes, a last block of fewer images, batch 1, a symbolic batch, the fused
epilogues (eval-mode batch norm, residual add, relu, the value before the relu kept, a
training-mode batch norm's statistics) and work memory filled with NaN on 1-3 threads."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import check_compiled
from test_conv_kernels import _copy_to_torch, _eval_follows_statistics, _step_against_torch, \
    _stepped_twins
from test_conv_winograd import _block, _biased_block, _forms, _keeps_both, \
    _step_within_torch_rounding, _two_convs_on_nan_arenas, _two_convs_over_batches

# the transforms' comment names the images interleaved per block (templates/conv_winograd_f4.c.j2)
INTERLEAVED = re.compile(r"\((\d+) image\(s\) interleaved\)")
FEWER = "(nb image(s) interleaved)"
# each thread's own transformed weights (templates/conv_winograd_f4.c.j2; from
# codegen/target.py's Parallelism.private_weights_min_elements, 36 x 32 x 34 values and up)
PRIVATE_U = "each thread transforms all of U into its own work memory"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _images_per_block(source):
    """The images per block of each F(4x4) kernel of the compiled source."""
    return [int(j) for j in INTERLEAVED.findall(source)]


# name -> (in channels, out channels, bias, input shape, images per block); a last block of
# fewer images interleaves those only (the kernels' "nb" branch)
CASES = {
    # two tiles a row: eight images a block, the last block of one
    "resnet_8x8_batch9": (64, 64, True, (9, 64, 8, 8), 8),
    # four tiles a row: two images a block, the last one alone
    "resnet_16x16_batch3": (32, 32, False, (3, 32, 16, 16), 2),
    # three tiles a row, nine an image: four images a block, the last block of one
    "odd_12x12": (17, 19, True, (5, 17, 12, 12), 4),
    # edge tiles cut on both sides, three images a block, all of them full
    "odd_10x14": (16, 24, False, (3, 16, 10, 14), 3),
    # six tiles a row, two rows: three images a block, the last block of one
    "wide_6x22": (8, 8, True, (4, 8, 6, 22), 3),
    # (the batch is symbolic: a block of four images holds these two)
    "odd_9x9_batch2": (16, 16, False, (2, 16, 9, 9), 4),
    "batch1_8x8": (16, 16, True, (1, 16, 8, 8), 8),
}


# the default run: the ResNet's 8x8 (eight images a block, the last of one) and 16x16 (two),
# odd channels with four images a block, edge tiles cut with every block full, and batch 1;
# the other odd sizes with -m sweep
DEFAULT_CASES = {"resnet_8x8_batch9", "resnet_16x16_batch3", "odd_12x12", "odd_10x14",
                 "batch1_8x8"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_interleaved_images_match_torch_and_eager(name):
    cin, cout, bias, shape, images = CASES[name]
    tn.manual_seed(0)
    model = tn.nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
    tmodel = torch.nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    assert _forms(source, 4)[:2] == (1, 1)
    assert _images_per_block(source) == [images, images]
    assert source.count(FEWER) == 2 * (images > 1)
    check_compiled(model, shape)


def test_symbolic_batch_blocks_of_fewer_images():
    """One compiled module at batch 3, 9, 5 and 1: blocks of eight 8x8 images, the last one
    of fewer."""
    source = _two_convs_over_batches((8, 8), (3, 9, 5, 1))
    assert _forms(source, 4)[:2] == (2, 2)
    assert set(_images_per_block(source)) == {8} and FEWER in source


def test_eval_batch_norm_residual_relu_interleaved():
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel = _block(tn, True), _block(torch, True)
    source = _eval_follows_statistics(model, tmodel, (3, 16, 8, 8))
    assert "_conv_batch_norm_add_relu(" in source
    assert _forms(source, 4) == (2, 0, 0)
    assert _images_per_block(source) == [8, 8] and FEWER in source


def test_training_statistics_interleaved():
    """The batch norms' statistics summed per block of eight images, then of one."""
    tn.manual_seed(0)
    torch.manual_seed(0)
    model, tmodel, exact = _biased_block(tn), _biased_block(torch), _biased_block(torch).double()
    _copy_to_torch(model, tmodel)
    exact.load_state_dict({k: v.double() for k, v in tmodel.state_dict().items()})
    compiled = tn.compile(model)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.standard_normal((9, 16, 8, 8)).astype(np.float32)
        _step_within_torch_rounding(compiled, model, tmodel, exact, x, 2e-4)
    for name, bn in [(n, m) for n, m in model.named_modules() if isinstance(m, tn.nn.BatchNorm2d)]:
        tbn = dict(tmodel.named_modules())[name]
        for stat in ("running_mean", "running_var"):
            np.testing.assert_allclose(getattr(bn, stat).numpy(), getattr(tbn, stat).numpy(),
                                       rtol=2e-4, atol=2e-4, err_msg=f"{name}.{stat}")
    source = compiled.source()
    assert "the batch statistics per block" in source
    assert _forms(source, 4)[:2] == (2, 2)
    assert set(_images_per_block(source)) == {8} and FEWER in source


def test_relu_with_the_value_before_it_kept_interleaved():
    tn.manual_seed(0)
    model, tmodel = _keeps_both(tn), _keeps_both(torch)
    _copy_to_torch(model, tmodel)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((3, 16, 8, 9)).astype(np.float32)
    _step_against_torch(compiled, model, tmodel, x, 1e-4)
    source = compiled.source()
    assert "rdst[ow] = v <= 0 ? 0 : v" in source
    assert _forms(source, 4)[:2] == (1, 1) and set(_images_per_block(source)) == {6}


# the default run: 1-3 threads on 32 channels of 8x8 (eight images a block, each thread's own
# U); the 12x12 and 16x16 images (four and two a block) with -m sweep
DEFAULT_NAN_SIZE = (8, 8)


@sweep.keep(lambda p: p["size"] == DEFAULT_NAN_SIZE)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size,channels", [((8, 8), 32), ((12, 12), 16), ((16, 16), 16)])
def test_nan_arena_threads_interleaved(nan_arenas_split, threads, size, channels):
    """Two Winograd convolutions in a row over five images (blocks split unevenly between the
    threads, the last one of fewer images) and two, on work memory filled with NaN: a tile or
    image left unwritten shows as NaN."""
    source = _two_convs_on_nan_arenas(threads, size, channels)
    assert min(_images_per_block(source)) > 1 and FEWER in source


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size,channels,private", [((8, 8), 32, True), ((12, 12), 16, False)])
def test_weight_transform_per_thread_or_shared(nan_arenas_split, threads, size, channels,
                                               private):
    """The transformed weights U in each thread's own work memory (32 channels: every thread
    transforms all of U before its first block; a thread without blocks none) or in halves of
    one shared copy (16 channels), on work memory filled with NaN over five images (blocks
    split unevenly between the threads) and two: the same answers as PyTorch on 1-3 threads."""
    source = _two_convs_on_nan_arenas(threads, size, channels)
    assert (PRIVATE_U in source) == private


# the weight transform reads a chunk of 16 kernels tap by tap with AVX-512 (the forward by
# shuffles, the input gradient by gathers: templates/conv_winograd_f4.c.j2's taps), where the
# kernels' input channels are whole vectors
TAPS_FORWARD = "_taps(w + ((size_t)o * "
TAPS_INPUT = "_taps(w + ((size_t)c0 * "


def test_tap_shuffles_put_each_tap_in_a_vector():
    """lowerings/conv_winograd._tap_shuffles, replayed in numpy: lane j of tap t's vector is
    value 9 j + t of the chunk's 144 contiguous kernel values, for every tap."""
    from tracenet.codegen.lowerings.conv_winograd import _tap_shuffles

    def shuffle(a, b, idx):
        return np.concatenate([a, b])[idx]

    values = np.arange(144, dtype=np.float32) + 0.5
    z = values.reshape(9, 16)
    shuffles = _tap_shuffles()
    assert len(shuffles) == 9
    for t, s in enumerate(shuffles):
        a = [shuffle(z[2 * k], z[2 * k + 1], idx) for k, idx in enumerate(s["pairs"])]
        b0, b1 = shuffle(a[0], a[1], s["blends"][0]), shuffle(a[2], a[3], s["blends"][1])
        tap = shuffle(shuffle(b0, b1, s["blends"][2]), z[8], s["last"])
        np.testing.assert_array_equal(tap, values[9 * np.arange(16) + t], err_msg=f"tap {t}")


def test_taps_form_only_for_whole_vectors_of_float_channels():
    from tracenet.codegen.lowerings.conv_winograd import _taps_form
    assert _taps_form("float", 32, "forward") == "shuffles"
    assert _taps_form("float", 64, "input") == "gathers"
    assert _taps_form("float", 17, "forward") is None
    assert _taps_form("float", 24, "input") is None
    assert _taps_form("double", 32, "forward") is None


# the default run, 1-3 threads: 17 -> 16 (odd input channels: the forward a value at a time,
# the input gradient's gathers) and 32 -> 20 (the forward's shuffles and values, the input
# gradient's values and gathers): every taps form; the whole-vector shapes 16 -> 32 and
# 32 -> 64 and 24 -> 32 with -m sweep
DEFAULT_TAPS = {(17, 16), (32, 20)}


@sweep.keep(lambda p: (p["cin"], p["cout"]) in DEFAULT_TAPS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cin,cout", [(16, 32), (32, 64), (24, 32), (17, 16), (32, 20)])
def test_weight_taps_match_torch(nan_arenas_split, threads, cin, cout):
    """The weight transforms with their chunks read by shuffles (forward) and gathers (input
    gradient) where the chunk's channels are whole vectors, else a value at a time: training
    steps at batch 5 and 1 on one compiled module (a symbolic batch), on 1-3 threads, work
    memory filled with NaN: the same answers as PyTorch and eager."""
    tn.set_num_threads(threads)

    def make(lib):
        return lib.nn.Sequential(lib.nn.Conv2d(cin, cout, 3, 1, 1), lib.nn.ReLU(),
                                 lib.nn.Conv2d(cout, 16, 3, 1, 1))
    compiled = _stepped_twins(make, [(batch, cin, 8, 8) for batch in (5, 1)])
    source = compiled.source()
    assert _forms(source, 4)[:2] == (2, 2)
    # (forward chunks run along each kernel's input channels; the input gradient's along the
    # forward's output channels, the second convolution's 16 always whole)
    assert source.count(TAPS_FORWARD) == (cin % 16 == 0) + (cout % 16 == 0)
    assert source.count(TAPS_INPUT) == (cout % 16 == 0) + 1
    check_compiled(make(tn), (2, cin, 8, 8))


def test_weights_changed_between_calls_are_transformed_again():
    """U is made from the weights on every call: weights changed in place outside the compiled
    module give the answers of the new weights (64 channels: each thread's own U)."""
    tn.set_num_threads(2)
    tn.manual_seed(0)
    model = tn.nn.Conv2d(64, 64, 3, 1, 1)
    tmodel = torch.nn.Conv2d(64, 64, 3, 1, 1)
    compiled = tn.compile(model)
    x = np.random.default_rng(0).standard_normal((4, 64, 8, 8)).astype(np.float32)
    for scale in (1.0, -0.5):
        with tn.no_grad():
            model.weight.mul_(scale)
        _copy_to_torch(model, tmodel)
        _step_against_torch(compiled, model, tmodel, x, 1e-4)
    assert PRIVATE_U in compiled.source()
