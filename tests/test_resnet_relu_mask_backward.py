"""A training step's relu mask in the batch-norm backward (fusion group ``norm_backward``,
templates/norm_batch_norm_backward.c.j2 with ``mask``): threshold_backward -> the
batch_norm_backward of the masked gradient is one kernel that recomputes the mask from the
batch norm's input as the forward computed it, when the relu's output is the ``norm`` group
relu(batch_norm(x)). Compiled steps (``compile_step``) against PyTorch's and eager mode's
(loss, parameter gradients, updated parameters) over the ResNet's sizes, odd sizes, batch 1,
float64, a batch norm without weight and bias, a symbolic batch, an input half below zero (the
mask in play), work memory filled with NaN on 1-3 threads; relus after a residual add keep
the mask where it was, those whose gradient is a sum take the sum into the kernel too."""
import re

import numpy as np
import pytest
import torch

import sweep
import tracenet as tn

from compile_checks import nan_filled_arenas, sgd_steps_against_torch_and_eager

# the fused kernel's comment (templates/norm_batch_norm_backward.c.j2)
MASKED = "g is the output gradient masked by the relu after the forward batch norm"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _net(lib, cin, c, affine):
    """conv -> batch norm -> relu -> conv -> mean over the plane -> linear: the batch norm's
    backward reads the relu's mask and its input gradient flows to the first convolution."""
    nn = lib.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(c, affine=affine)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.fc = nn.Linear(c, 10)

        def forward(self, x):
            y = nn.functional.relu(self.bn(self.conv1(x)))
            return self.fc(self.conv2(y).mean((2, 3)))
    return Net()


def twins_with_shifted_batch_norms(make, names, dtype):
    """``make(lib)``'s model in tracenet and torch with the same weights (seed 0), the affine
    parameters of its batch norms ``names`` drawn away from (1, 0) (the shift moves the relu
    mask), in ``dtype``."""
    tn.manual_seed(0)
    model, tmodel = make(tn), make(torch)
    with torch.no_grad():
        for name in names:
            getattr(tmodel, name).weight.uniform_(0.5, 1.5)
            getattr(tmodel, name).bias.uniform_(-0.5, 0.5)
    tmodel.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                            for k, v in model.state_dict().items()
                            if k.split(".")[0] not in names}, strict=False)
    model.load_state_dict({k: tn.from_numpy(v.detach().numpy().copy())
                           for k, v in tmodel.state_dict().items()})
    if dtype == np.float64:
        model, tmodel = model.double(), tmodel.double()
    return model, tmodel


def _models(cin, c, affine, dtype):
    return twins_with_shifted_batch_norms(lambda lib: _net(lib, cin, c, affine),
                                          ("bn",) if affine else (), dtype)


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    return x, rng.integers(0, 10, shape[0])


def _steps_against_torch_and_eager(model, tmodel, batches, tol, dynamic=True):
    """SGD steps compiled, in eager mode and in PyTorch agree (``compile_checks``)."""
    eager = _net(tn, model.conv1.in_channels, model.conv1.out_channels, model.bn.affine)
    if model.conv1.weight.dtype == tn.float64:
        eager = eager.double()
    return sgd_steps_against_torch_and_eager(model, tmodel, eager, batches, tol, dynamic)


def _kernels(source):
    """(masked batch-norm backwards, threshold_backward passes) of a compiled step."""
    return source.count(MASKED), len(re.findall(r"static void \w+_threshold_backward\(", source))


def _tol(dtype):
    return 1e-9 if dtype == np.float64 else 2e-4


# name -> (in channels, channels, batch norm weight and bias, input shape, dtype)
CASES = {
    "resnet_16ch_32x32": (16, 16, True, (2, 16, 32, 32), np.float32),
    "odd_5ch_7x9": (3, 5, True, (3, 3, 7, 9), np.float32),
    "batch1_32ch_16x16": (16, 32, True, (1, 16, 16, 16), np.float32),
    "no_weight_no_bias": (4, 6, False, (2, 4, 9, 6), np.float32),
    "float64_odd": (3, 7, True, (2, 3, 11, 5), np.float64),
    "float64_no_affine": (3, 7, False, (3, 3, 6, 6), np.float64),
}

# the default run: the ResNet's 32 channels at batch 1, odd sizes, no weight and bias, float64;
# the 16-channel ResNet shape and float64 without weight and bias with -m sweep
DEFAULT_CASES = {"batch1_32ch_16x16", "odd_5ch_7x9", "no_weight_no_bias", "float64_odd"}


@sweep.keep(lambda p: p["name"] in DEFAULT_CASES)
@pytest.mark.parametrize("name", list(CASES))
def test_masked_backward_matches_torch_and_eager(name):
    cin, c, affine, shape, dtype = CASES[name]
    model, tmodel = _models(cin, c, affine, dtype)
    batches = [_data(shape, dtype, seed) for seed in range(2)]
    step = _steps_against_torch_and_eager(model, tmodel, batches, _tol(dtype))
    assert _kernels(step.source()) == (1, 0)


def test_symbolic_batch():
    """One specialisation for batches 3, 1 and 5."""
    model, tmodel = _models(3, 8, True, np.float32)
    batches = [_data((n, 3, 10, 7), np.float32, n) for n in (3, 1, 5)]
    step = _steps_against_torch_and_eager(model, tmodel, batches, 2e-4)
    assert len(step._specs) == 1
    assert _kernels(step.source()) == (1, 0) and "tn_N" in step.source()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_on_nan_arenas(monkeypatch, threads):
    """Enough elements to split the channels between threads; the work memory is all NaN, so
    the fused kernel reads only what this call wrote."""
    nan_filled_arenas(monkeypatch)
    old = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        model, tmodel = _models(3, 24, True, np.float32)
        batches = [_data((8, 3, 24, 24), np.float32, seed) for seed in range(2)]
        step = _steps_against_torch_and_eager(model, tmodel, batches, 2e-4, dynamic=False)
        source = step.source()
        assert _kernels(source) == (1, 0)
        body = source.split(MASKED)[1].split("\n}\n")[0]
        assert "omp_get_num_threads" in body  # (built to split the channels)
    finally:
        tn.set_num_threads(old)


def _residual_net(lib):
    """relu(bn(conv(x)) + x): the relu's mask also passes the residual's gradient, so it keeps
    its own pass."""
    nn = lib.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            y = nn.functional.relu(self.bn(self.conv(x)) + x)
            return self.fc(y.mean((2, 3)))
    return Net()


def _two_reader_net(lib):
    """relu(bn(conv(x))) read by a convolution and by the mean after it: the relu's gradient
    is a sum, added and masked in the batch-norm backward's passes."""
    nn = lib.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            y = nn.functional.relu(self.bn(self.conv1(x)))
            return self.fc((self.conv2(y) + y).mean((2, 3)))
    return Net()


def _compiled_step(make, channels):
    tn.manual_seed(0)
    model = make(tn)
    crit = tn.nn.CrossEntropyLoss()
    step = tn.compile_step(lambda a, b: crit(model(a), b),
                           tn.optim.SGD(model.parameters(), lr=0.1))
    x, y = _data((2, channels, 6, 6), np.float32, 0)
    step(tn.from_numpy(x), tn.from_numpy(y))
    return step


def test_mask_stays_out_after_a_residual_add():
    """A relu after a residual add (its mask passes the residual's gradient too): no masked
    backward."""
    assert MASKED not in _compiled_step(_residual_net, 4).source()


def test_mask_of_a_summed_gradient_joins_the_sum():
    """A relu whose gradient is a sum: the backward adds the two and masks the sum in its
    passes (tests/test_batch_norm_backward_fusion.py checks the values)."""
    source = _compiled_step(_two_reader_net, 3).source()
    assert source.count(MASKED) == 1
    assert "the output gradient is the sum (g0 + g1) of two" in source
    assert not re.findall(r"static void \w+_threshold_backward\(", source)
