"""An optimizer's update of one parameter in a compiled step is split between the threads when
it is a 3x3 convolution's weight whose F(4x4) transforms each thread makes on its own
(``Parallelism.update``, codegen/target.py: both cores then hold the weight's lines, so a
serial update waits for the other core's copies), else from the memory-bound kernels' size: the
decision, and the split update of a 64 x 64 x 3 x 3 weight against eager mode and PyTorch.
SGD's update loop runs in runs of the parameter, each requesting the next run's lines for
writing (``owned_runs``, templates/optim_step.c.j2): the runs' edges against the eager rule."""
import numpy as np
import pytest
import torch

import sweep
import tracenet as tn
from tracenet.codegen.lowerings.conv_winograd import private_transforms_f4
from tracenet.codegen.target import Parallelism, Target

from compile_checks import nan_filled_arenas, sgd_steps_against_torch_and_eager
from test_conv_kernels import _copy_to_torch
from test_training_step import UPDATES, _Update


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


def _update_kernel(source, param):
    """The C text of the update kernel of ``param`` in a compiled step's ``source``."""
    kernel = source[source.index(f"sgd_step(%optimizer0.group0.{param}"):]
    return kernel[:kernel.index("\n}\n")]


def _odd_nets(lib):
    # 33 x 31 x 3 x 3 (9207 values, 36 x 33 x 31 transformed): a split update whose threads'
    # blocks end inside a run; the 1x1 convolution's 1550 values a serial one of six runs and a
    # part
    return lib.nn.Sequential(lib.nn.Conv2d(33, 31, 3, padding=1), lib.nn.ReLU(),
                             lib.nn.Conv2d(31, 50, 1), lib.nn.Flatten(),
                             lib.nn.Linear(50 * 5 * 2, 5))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_odd_sized_updates_in_runs_match_eager_and_torch(monkeypatch, threads):
    """Updates whose sizes are no multiple of a run or of the threads' blocks, at batch 1 then
    3 (a symbolic batch), NaN-filled work memory: eager mode's and PyTorch's results; both the
    split and the serial update request their next run's lines for writing."""
    nan_filled_arenas(monkeypatch)
    tn.set_num_threads(threads)  # (conftest.py restores the count)
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((n, 33, 5, 2)).astype(np.float32), rng.integers(0, 5, n))
               for n in (1, 3, 3)]
    model, tmodel = _odd_nets(tn), _odd_nets(torch)
    _copy_to_torch(model, tmodel)
    step = sgd_steps_against_torch_and_eager(
        model, tmodel, _odd_nets(tn), batches, 1e-4,
        sgd=dict(lr=0.05, momentum=0.9, weight_decay=1e-3).items())
    split, serial = (_update_kernel(step.source(), p) for p in ("param0", "param2"))
    assert "omp" in split and "omp" not in serial
    for kernel in (split, serial):
        assert "__builtin_prefetch(p_out + q, 1, 3)" in kernel


# the default run: every rule's split update (past the memory-bound kernels' size) on 1-3
# threads, and SGD's runs (37, 256, 1000: serial updates) on one thread; the rest with -m sweep
@sweep.keep(lambda p: p["n"] > Parallelism.memory_min_elements or
            (p["name"] == "sgd_nesterov" and p["threads"] == 1))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [37, 256, 1000, Parallelism.memory_min_elements + 3])
@pytest.mark.parametrize("name", sorted(UPDATES))
def test_update_runs_are_the_eager_rule(name, n, threads):
    """Each rule's update (SGD's in runs) over one run or less, whole runs, runs and a part,
    and a split update (from the memory-bound kernels' size) of an odd count: float32 bit for
    bit, float64 to its last bits (where the numpy rule rounds a fused step's product on its own:
    test_training_step.py)."""
    from tracenet.optim import update_ops
    tn.set_num_threads(threads)
    op, flags, n_state, hyper = UPDATES[name]
    update = _Update(lambda *a: getattr(update_ops, op)(*a, **flags))
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(n)
        p, g, *state = (rng.standard_normal(n).astype(dtype) for _ in range(2 + n_state))
        # running averages of squares above the squared averages, as in training
        state = [np.abs(s) * (0.1 if i > 0 else 1) + (1 if i == 0 else 0)
                 for i, s in enumerate(state)]
        args = [tn.from_numpy(a) for a in [p, g] + state + [np.array(hyper)]]
        eager = update(*args)
        with tn.no_grad():
            compiled_update = tn.compile(update)
            compiled = compiled_update(*args)
        # (SGD's loop only: the other rules' loops set up their constants each call)
        assert ("__builtin_prefetch(p_out + q, 1, 3)" in compiled_update.source()) == \
            (op == "sgd_step")
        for e, c in zip(eager, compiled):
            if dtype == np.float32:
                np.testing.assert_array_equal(c.numpy(), e.numpy())
            else:
                # (values of order one; a centered RMSprop's smallest come from a difference)
                np.testing.assert_allclose(c.numpy(), e.numpy(), rtol=1e-13, atol=1e-15)
