"""``optimizer.step()`` alone: tracenet fused (one C call) vs tracenet numpy vs PyTorch.

    PYTHONPATH=. python bench/optim_step.py [--quick]

Parameters of LeNet (the tutorial's net) and of an MLP (784-512-256-10), gradients set once;
each row times ``step()`` only. Timings alternate between the contenders in rounds in one
process (each runs ~20 ms a round) and report medians per step; the ratios are PyTorch time / tracenet time (> 1 means
tracenet is faster). PyTorch runs its default CPU step (``foreach`` off on the CPU) and its
``fused=True`` step where it has one.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tracenet as tn  # noqa: E402
from tracenet.fused_optim import ENV  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    sys.exit("bench/optim_step.py compares against PyTorch: pip install torch==2.13.0")

from lenet import lenet  # noqa: E402  (bench/lenet.py: the same net for both libraries)


def mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, 10))


CASES = [
    ("LeNet", lenet, "SGD", dict(lr=0.01, momentum=0.9)),
    ("LeNet", lenet, "Adam", dict(lr=1e-3)),
    ("LeNet", lenet, "RMSprop", dict(lr=1e-3)),
    ("LeNet", lenet, "Adagrad", dict(lr=1e-2)),
    ("MLP", mlp, "Adam", dict(lr=1e-3)),
    ("MLP", mlp, "AdamW", dict(lr=1e-3, amsgrad=True)),
]


def _params(make, lib, arrays=None):
    torch.manual_seed(0)
    net = make(lib)
    ps = list(net.parameters())
    if arrays is None:
        arrays = [np.array(p.detach().numpy()) for p in ps]
    rng = np.random.default_rng(1)
    for p, a in zip(ps, arrays):
        with lib.no_grad():
            p.copy_(lib.from_numpy(a.copy()))
        p.grad = lib.from_numpy(rng.standard_normal(a.shape).astype(np.float32) * 1e-3)
    return ps, arrays


def _timer(opt, env=None):
    def one():
        if env is not None:
            os.environ[ENV] = env
        opt.step()

    def run(steps):
        for _ in range(2):  # untimed: steady state after another contender ran
            one()
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        return (time.perf_counter() - t0) / steps
    run.__wrapped__ = one
    return run


def _steps_for(contenders, most):
    """Steps per timed run of each contender: ``most``, or fewer so a run takes ~20 ms."""
    took = {}
    for _ in range(2):  # the first step compiles or loads the fused one, and creates state
        for k, run in contenders.items():
            t0 = time.perf_counter()
            run.__wrapped__()
            took[k] = time.perf_counter() - t0
    return {k: max(5, min(most, int(0.02 / t))) for k, t in took.items()}


def bench(name, make, opt_name, kwargs, rounds, steps):
    tn_ps, arrays = _params(make, tn)
    tn_np_ps, _ = _params(make, tn, arrays)
    th_ps, _ = _params(make, torch, arrays)
    th_fused_ps, _ = _params(make, torch, arrays)
    contenders = {
        "tracenet fused": _timer(getattr(tn.optim, opt_name)(tn_ps, **kwargs), "1"),
        "tracenet numpy": _timer(getattr(tn.optim, opt_name)(tn_np_ps, **kwargs), "0"),
        "torch": _timer(getattr(torch.optim, opt_name)(th_ps, **kwargs)),
    }
    if opt_name != "RMSprop":  # torch has no fused RMSprop
        contenders["torch fused"] = _timer(
            getattr(torch.optim, opt_name)(th_fused_ps, fused=True, **kwargs))
    steps = _steps_for(contenders, steps)
    # both paths did the same two steps: they must agree
    for a, b in zip(tn_ps, tn_np_ps):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-6)
    times = {k: [] for k in contenders}
    for i in range(rounds + 1):  # round 0 is untimed
        for k, run in contenders.items():
            t = run(steps[k])
            if i:
                times[k].append(t)
    os.environ.pop(ENV, None)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = sum(int(np.prod(a.shape)) for a in arrays)
    row = f"{name:5s} {opt_name:7s} {len(arrays):2d} params {n:6d} elems | "
    row += "  ".join(f"{k} {v * 1e6:8.1f} us" for k, v in med.items())
    fused = med["tracenet fused"]
    row += f" | numpy/fused {med['tracenet numpy'] / fused:5.1f}x"
    row += f"  torch/fused {med['torch'] / fused:5.2f}"
    if "torch fused" in med:
        row += f"  torch-fused/fused {med['torch fused'] / fused:5.2f}"
    print(row, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tn.set_num_threads(1)
    rounds, steps = (5, 50) if args.quick else (15, 200)
    print(f"torch {torch.__version__}, median of {rounds} rounds (up to {steps} steps, ~20 ms each), 1 thread")
    for case in CASES:
        bench(*case, rounds=rounds, steps=steps)


if __name__ == "__main__":
    main()
