"""An optimizer's update of one parameter in a compiled step is split between the threads when
it is a 3x3 convolution's weight whose F(4x4) transforms each thread makes on its own
(``Parallelism.update``, codegen/target.py: both cores then hold the weight's lines, so a
serial update waits for the other core's copies), else from the memory-bound kernels' size: the
decision, and the split update of a 64 x 64 x 3 x 3 weight against eager mode and PyTorch."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet.codegen.lowerings.conv_winograd import private_transforms_f4
from tracenet.codegen.target import Parallelism, Target

from compile_checks import nan_filled_arenas, sgd_steps_against_torch_and_eager
from test_conv_kernels import _copy_to_torch


def test_the_decision():
    on, off = Target(openmp=True), Target(openmp=False)

    def split(target, shape):
        return target.parallel.update(int(np.prod(shape)), private_transforms_f4(shape, target))

    assert split(on, (64, 64, 3, 3)) == 1
    assert split(on, (32, 32, 3, 3)) == 1  # (36 x 32 x 32 transformed values)
    assert split(on, (16, 16, 3, 3)) == 0  # (the transforms are shared)
    assert split(on, (120, 400)) == 0  # (LeNet's fc1: a linear layer's weight)
    assert split(on, (64, 64, 1, 1)) == 0
    assert split(on, (Parallelism.memory_min_elements,)) == 1
    assert split(off, (64, 64, 3, 3)) == 0


def _nets(lib):
    return lib.nn.Sequential(lib.nn.Conv2d(64, 64, 3, padding=1), lib.nn.ReLU(),
                             lib.nn.Flatten(), lib.nn.Linear(64 * 4 * 4, 5))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_update_matches_eager_and_torch(monkeypatch, threads):
    """Three SGD steps with momentum and weight decay on NaN-filled work memory: the split
    update gives eager mode's and PyTorch's losses, gradients and parameters."""
    nan_filled_arenas(monkeypatch)
    tn.set_num_threads(threads)  # (conftest.py restores the count)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((2, 64, 4, 4)).astype(np.float32), rng.integers(0, 5, 2))
               for _ in range(3)]
    model, tmodel = _nets(tn), _nets(torch)
    _copy_to_torch(model, tmodel)
    step = sgd_steps_against_torch_and_eager(
        model, tmodel, _nets(tn), batches, 1e-4,
        sgd=dict(lr=0.05, momentum=0.9, weight_decay=1e-3).items())
    source = step.source()
    weight_update = source[source.index("sgd_step(%optimizer0.group0.param0"):]
    weight_update = weight_update[:weight_update.index("\n}\n")]
    assert "omp" in weight_update
