"""What DistributedDataParallel's gradient allreduce costs per training step, on local ranks.

    mpiexec -n 2 python bench/ddp.py [--quick] [--models lenet,resnet]

Each rank trains the model (bench/lenet.py's LeNet, bench/zoo.py's ResNet) on its own batch.
Per model and mode (eager: ``DDP(net)`` in the ordinary loop; compiled: ``compile_step`` of
``DDP(net)``, whose allreduce sits between the compiled backward and the fused update), the
step with DDP and the same step without it alternate in rounds in this process (each turn
after two untimed calls; the slower rank's time counts). The row reports the medians, their
ratio (DDP / local, > 1: the overhead) and the difference in microseconds per step.

Then it times a bare allreduce of n bytes for a range of n and fits the latency-bandwidth
model t(n) = alpha + n / beta, which predicts the reduction across hosts from the bytes per
step (4 bytes per float32 parameter; a ring allreduce moves 2 (p - 1) / p of them per rank).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tracenet as tn  # noqa: E402
import tracenet.distributed as dist  # noqa: E402
from tracenet.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from lenet import lenet  # noqa: E402
from zoo import resnet  # noqa: E402

MODELS = {"lenet": (lenet, (32, 1, 32, 32)), "resnet": (resnet, (16, 3, 32, 32))}


def slowest(seconds):
    t = tn.tensor([seconds], dtype=tn.float64)
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return t.item()


def interleaved(fns, rounds, calls):
    """{name: median seconds per call}, the workloads alternating in rounds."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            fn()
            dist.barrier()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append(slowest((time.perf_counter() - start) / calls))
    return {name: statistics.median(t) for name, t in times.items()}


def steps(name, mode):
    """(step with DDP, step without), each on its own replica, same weights and batch."""
    build, shape = MODELS[name]
    rng = np.random.default_rng(dist.get_rank())
    x = tn.from_numpy(rng.standard_normal(shape).astype(np.float32))
    y = tn.from_numpy(rng.integers(0, 10, shape[0]))
    out = []
    for wrap in (DDP, lambda n: n):
        tn.manual_seed(0)
        net = build(tn)
        model = wrap(net)
        opt = tn.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loss_fn = tn.nn.functional.cross_entropy
        if mode == "compiled":
            step = tn.compile_step(lambda x, y, model=model: loss_fn(model(x), y), opt)
            out.append(lambda step=step: step(x, y))
        else:
            def step(model=model, opt=opt):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            out.append(step)
    n_params = sum(p.numel() for p in net.parameters())
    return out, n_params


def allreduce_model(quick):
    """alpha (s), beta (bytes/s) fitted to timed float32 allreduces."""
    sizes = [2 ** k for k in range(3, 23, 2 if quick else 1)]
    points = []
    for n in sizes:
        t = tn.zeros(n // 4)
        med = interleaved({n: lambda t=t: dist.all_reduce(t, check=False)},
                          3 if quick else 7, 20)[n]
        points.append((n, med))
    n, s = np.array(points, dtype=np.float64).T
    slope, alpha = np.polyfit(n, s, 1)
    return alpha, 1.0 / slope, points


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="lenet,resnet")
    args = p.parse_args()
    dist.init_process_group("mpi")
    world = dist.get_world_size()
    say = print if dist.get_rank() == 0 else (lambda *a, **k: None)
    rounds, calls = (3, 5) if args.quick else (9, 10)
    say(f"{world} ranks; per-rank batch: " +
        ", ".join(f"{m} {MODELS[m][1][0]}" for m in args.models.split(",")))
    say(f"{'model':8s} {'mode':9s} {'params':>8s} {'MB/step':>8s} {'DDP us':>9s} "
        f"{'local us':>9s} {'ratio':>6s} {'overhead us':>12s}")
    rows = []
    for name in args.models.split(","):
        for mode in ("eager", "compiled"):
            (with_ddp, local), n_params = steps(name, mode)
            med = interleaved({"ddp": with_ddp, "local": local}, rounds, calls)
            nbytes = 4 * n_params
            rows.append((name, nbytes))
            say(f"{name:8s} {mode:9s} {n_params:8d} {nbytes / 1e6:8.3f} "
                f"{med['ddp'] * 1e6:9.0f} {med['local'] * 1e6:9.0f} "
                f"{med['ddp'] / med['local']:6.2f} {(med['ddp'] - med['local']) * 1e6:12.0f}",
                flush=True)
    alpha, beta, points = allreduce_model(args.quick)
    say("allreduce of n bytes: " + ", ".join(f"{n}B {t * 1e6:.0f}us" for n, t in points))
    say(f"fit t(n) = alpha + n/beta: alpha = {alpha * 1e6:.1f} us, beta = {beta / 1e9:.2f} GB/s")
    for name, nbytes in dict(rows).items():
        ring = 2 * (world - 1) / world * nbytes
        say(f"{name}: {nbytes / 1e6:.3f} MB of gradients per step; predicted here "
            f"{(alpha + nbytes / beta) * 1e6:.0f} us; across hosts, ring allreduce on p ranks "
            f"moves 2(p-1)/p x {nbytes / 1e6:.3f} MB per rank: {ring / 1e6:.3f} MB at p={world},"
            f" e.g. {ring / 1.1e9 * 1e3:.2f} ms at 10 GbE (1.1 GB/s) + 2(p-1) latencies")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
