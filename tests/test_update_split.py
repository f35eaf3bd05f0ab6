"""An optimizer's update of one parameter in a compiled step is split between the threads from
``Parallelism.update_min_elements`` values (codegen/target.py: both cores read all of a large
convolution's weight in the step, so a serial update waits for the other core's copies): the
decision, and the split update of a 64 x 64 x 3 x 3 weight against eager mode and PyTorch."""
import numpy as np
import pytest
import torch

import tracenet as tn
from tracenet import nn, optim
from tracenet.codegen.target import Parallelism

from compile_checks import nan_filled_arenas
from test_conv_kernels import _copy_to_torch


def test_the_decision_follows_the_threshold():
    on, off = Parallelism(True), Parallelism(False)
    n = Parallelism.update_min_elements
    assert on.update(n) == 1 and on.update(n - 1) == 0 and off.update(n) == 0


def _nets(lib):
    return lib.nn.Sequential(lib.nn.Conv2d(64, 64, 3, padding=1), lib.nn.ReLU(),
                             lib.nn.Flatten(), lib.nn.Linear(64 * 4 * 4, 5))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_update_matches_eager_and_torch(monkeypatch, threads):
    """Three SGD steps with momentum and weight decay on NaN-filled work memory: the split
    update gives eager mode's and PyTorch's parameters."""
    nan_filled_arenas(monkeypatch)
    compiled_model, eager_model, tmodel = _nets(tn), _nets(tn), _nets(torch)
    eager_model.load_state_dict(compiled_model.state_dict())
    _copy_to_torch(compiled_model, tmodel)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt_c, opt_e = optim.SGD(compiled_model.parameters(), **kw), optim.SGD(
        eager_model.parameters(), **kw)
    opt_t = torch.optim.SGD(tmodel.parameters(), **kw)
    crit, tcrit = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    @tn.compile
    def step(x, y):
        opt_c.zero_grad()
        loss = crit(compiled_model(x), y)
        loss.backward()
        opt_c.step()
        return loss

    tn.set_num_threads(threads)  # (conftest.py restores the count)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((2, 64, 4, 4)).astype(np.float32)
        y = rng.integers(0, 5, 2)
        step(tn.from_numpy(x), tn.from_numpy(y))
        opt_e.zero_grad()
        crit(eager_model(tn.from_numpy(x)), tn.from_numpy(y)).backward()
        opt_e.step()
        opt_t.zero_grad()
        tcrit(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt_t.step()
    for pc, pe, pt in zip(compiled_model.parameters(), eager_model.parameters(),
                          tmodel.parameters()):
        np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pc.detach().numpy(), pt.detach().numpy(), rtol=1e-4, atol=1e-5)
    source = step.source()
    weight_update = source[source.index("sgd_step(%optimizer0.group0.param0"):]
    weight_update = weight_update[:weight_update.index("\n}\n")]
    assert "omp" in weight_update
