"""LeNet (the PyTorch tutorial's net) side by side: PyTorch eager vs tracenet compiled.

    python bench/lenet.py [--quick] [--no-inductor] [--train-only]

Both frameworks run in this process with the same weights; timings alternate between them in
rounds (each framework's turn starts with two untimed calls, so both are timed in the steady
state of a loop, not just after the other one evicted their caches) and report medians, and
every row prints the ratio PyTorch time / tracenet time (> 1
means tracenet is faster). Train step = zero_grad, forward, CrossEntropyLoss, backward, SGD
(momentum 0.9). tracenet runs it four ways: ``compile_step`` (the whole step as one C call),
``tracenet.compile(step_fn)`` of the ordinary step function, the tutorial's loop around
``tracenet.compile(net)`` (loss, backward driver and optimizer in eager mode) and the same loop
in eager mode. Before timing, every path's first losses must equal PyTorch's. Cold/warm compile times and peak memory are measured in fresh subprocesses.
"""
import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import tracenet as tn  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    sys.exit("bench/lenet.py compares against PyTorch: pip install torch==2.13.0")

# ratio PyTorch eager time / tracenet time each training path must reach, per batch size
TRAIN_TARGETS = {
    "compile_step": {1: 15, 8: 6, 64: 2.5, 256: 2.5},
    "tracenet.compile(step_fn)": {1: 20},
    "plain loop around tracenet.compile(net)": {1: 6, 64: 3},
    "tracenet eager": {1: 1},
}
INFER_TARGETS = {1: 10, 64: 2}
# the batch sizes each path is timed at (the eager loop is slow to time at 256)
TRAIN_BATCHES = {"compile_step": (1, 8, 64, 256), "tracenet.compile(step_fn)": (1, 8, 64, 256),
                 "plain loop around tracenet.compile(net)": (1, 8, 64, 256),
                 "tracenet eager": (1, 8, 64)}


def lenet(lib):
    """The tutorial's LeNet written once, built with ``lib`` (``torch`` or ``tracenet``)."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = lib.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)
    return Net()


def copy_weights(src, dst):
    for (_, a), (_, b) in zip(src.named_parameters(), dst.named_parameters()):
        b.data.copy_(tn.from_numpy(a.detach().numpy().copy()))


def time_calls(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def compare(fns, rounds, per_round, settle=2, on_start=None):
    """Alternate between the callables in rounds; median seconds per call for each. Each turn
    starts with ``settle`` untimed calls: the first calls after a switch pay for the other
    framework's cache footprint and idle thread pool (PyTorch's as much as ours), and a
    training loop runs in the steady state after them. ``on_start`` is called when the
    rounds start (after the calls that compile)."""
    for fn in fns:
        for _ in range(3):
            fn()
    # the load watch (tracenet/runtime/threads.py) looks back a quarter second: the rounds
    # start after it, not while a compile that just ended (torch.compile's compiler
    # processes) still reads as another process
    time.sleep(0.3)
    if on_start is not None:
        on_start()
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(settle):
                fn()
            samples[i] += time_calls(fn, per_round)
    return [statistics.median(s) for s in samples]


# a training loop's data: each step takes the next of these batches (on one fixed batch LeNet
# memorised it within ~20 steps and its gradients passed through subnormal floats, steps 24-28
# taking ~1 ms instead of ~40 us in tracenet and ~1.7 ms instead of ~0.9 in PyTorch)
BATCHES = 8


def in_turn(batches):
    """A callable returning the next of ``batches`` at each call, round and round."""
    turn = itertools.cycle(batches)
    return lambda: next(turn)


def train_workloads(batch, rng):
    """{name: step callable returning its loss} for PyTorch eager and each tracenet path, every
    network a copy of the same weights, every optimizer SGD with momentum."""
    tnet = lenet(torch)
    xs = [rng.standard_normal((batch, 1, 32, 32)).astype(np.float32) for _ in range(BATCHES)]
    ys = [rng.integers(0, 10, batch) for _ in range(BATCHES)]
    torch_batches = in_turn([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in zip(xs, ys)])
    t_opt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)
    t_crit = torch.nn.CrossEntropyLoss()

    def torch_step():
        tx, ty = torch_batches()
        t_opt.zero_grad()
        loss = t_crit(tnet(tx), ty)
        loss.backward()
        t_opt.step()
        return loss

    crit = tn.nn.CrossEntropyLoss()

    def copy():
        net = lenet(tn)
        copy_weights(tnet, net)
        return net, tn.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def tn_batches():
        return in_turn([(tn.from_numpy(x), tn.from_numpy(y)) for x, y in zip(xs, ys)])

    fused_net, fused_opt = copy()
    fused = tn.compile_step(lambda a, b: crit(fused_net(a), b), fused_opt)
    fused_batches = tn_batches()

    fn_net, fn_opt = copy()

    def train_step(a, b):
        fn_opt.zero_grad()
        loss = crit(fn_net(a), b)
        loss.backward()
        fn_opt.step()
        return loss
    compiled_fn = tn.compile(train_step)
    fn_batches = tn_batches()

    def loop(net, opt):
        batches = tn_batches()

        def step():  # the tutorial's loop
            nx, ny = batches()
            opt.zero_grad()
            loss = crit(net(nx), ny)
            loss.backward()
            opt.step()
            return loss
        return step
    plain_net, plain_opt = copy()
    eager_net, eager_opt = copy()
    return {"PyTorch eager": torch_step,
            "compile_step": lambda: fused(*fused_batches()),
            "tracenet.compile(step_fn)": lambda: compiled_fn(*fn_batches()),
            "plain loop around tracenet.compile(net)": loop(tn.compile(plain_net), plain_opt),
            "tracenet eager": loop(eager_net, eager_opt)}


def check_first_losses(steps, n=3):
    """Every path's first ``n`` losses equal PyTorch's (all start from the same weights)."""
    losses = {name: [step().item() for _ in range(n)] for name, step in steps.items()}
    want = losses["PyTorch eager"]
    for name, got in losses.items():
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: first losses differ from PyTorch's")


def infer_workloads(batch, rng, inductor):
    tnet = lenet(torch).eval()
    net = lenet(tn).eval()
    copy_weights(tnet, net)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
    tx, nx = torch.from_numpy(x), tn.from_numpy(x)
    compiled = tn.compile(net)

    def torch_infer():
        with torch.no_grad():
            tnet(tx)

    def tn_infer():
        with tn.no_grad():
            compiled(nx)
    fns = [torch_infer, tn_infer]
    if inductor:
        ind = torch.compile(tnet)

        def inductor_infer():
            with torch.no_grad():
                ind(tx)
        with torch.no_grad():
            ind(tx)  # compile outside the timed region
        fns.append(inductor_infer)
    with torch.no_grad(), tn.no_grad():
        np.testing.assert_allclose(compiled(nx).numpy(), tnet(tx).numpy(), rtol=1e-4,
                                   atol=1e-5)
    return fns


_CHILD = textwrap.dedent("""
    import json, resource, sys, time

    def rss_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])

    def reset_peak():
        # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss_kb("VmRSS:")
    sys.path.insert(0, {root!r})
    t0 = time.perf_counter()
    import numpy as np
    mode, batch = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    if mode == "torch":
        import torch
        torch.set_num_threads(2)
        sys.path.insert(0, {here!r})
        from lenet import lenet
        net = lenet(torch); opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        crit = torch.nn.CrossEntropyLoss(); tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        first = reset_peak()
        opt.zero_grad(); crit(net(tx), ty).backward(); opt.step()
        cold_peak = rss_kb("VmHWM:") - first
        base = reset_peak()
        for _ in range(5):
            opt.zero_grad(); crit(net(tx), ty).backward(); opt.step()
        print(json.dumps({{"peak_kb": rss_kb("VmHWM:") - base, "first_kb": cold_peak}}))
    else:
        import tracenet as tn
        sys.path.insert(0, {here!r})
        from lenet import lenet
        net = lenet(tn); opt = tn.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        crit = tn.nn.CrossEntropyLoss(); nx, ny = tn.from_numpy(x), tn.from_numpy(y)
        first = reset_peak()
        t1 = time.perf_counter()
        step = tn.compile_step(lambda a, b: crit(net(a), b), opt)
        step(nx, ny)
        ready = time.perf_counter() - t1
        cold_peak = rss_kb("VmHWM:") - first
        base = reset_peak()
        for _ in range(5):
            step(nx, ny)
        print(json.dumps({{"ready_s": ready, "peak_kb": rss_kb("VmHWM:") - base,
                          "first_kb": cold_peak}}))
""")


def prebuild(root):
    """Build in the tracenet checkout ``root`` what `pip install` builds ahead of time (the
    GEMM objects, the compiler probe, the templates' bytecode), so that a cold compile there
    is measured as in an installed package. (Not for a tree from before that existed.)"""
    if os.path.exists(os.path.join(root, "tracenet", "runtime", "prebuild.py")):
        subprocess.run([sys.executable, "-m", "tracenet.runtime.prebuild"], check=True,
                       cwd=root, capture_output=True)


def child(mode, batch, cache_dir, **extra_env):
    script = _CHILD.format(root=os.path.dirname(HERE), here=HERE)
    env = dict(os.environ, TRACENET_CACHE_DIR=cache_dir, **extra_env)
    out = subprocess.run([sys.executable, "-c", script, mode, str(batch)], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    ap.add_argument("--cold-runs", type=int, default=3,
                    help="cold compiles to take the median of (default 3)")
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="PyTorch's intra-op threads (default 2; 1 is steadier on a loaded "
                         "machine, where PyTorch's thread pool waits for a busy core)")
    ap.add_argument("--train-only", action="store_true",
                    help="only the training table (no inference, compile times or memory)")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    rounds, per_round = (3, 6) if args.quick else (7, 10)
    rng = np.random.default_rng(0)
    rows = []
    print(f"# LeNet, tracenet vs PyTorch {torch.__version__} eager ({torch.get_num_threads()} "
          f"threads); median us per call over {rounds} alternating rounds of {per_round} "
          f"(each after 2 untimed calls)")
    print()
    print("| train step | batch | PyTorch eager us | tracenet us | ratio | target |")
    print("|---|---|---|---|---|---|")
    for batch in (1, 8, 64, 256):
        reps = per_round if batch < 256 else max(3, per_round // 3)
        steps = train_workloads(batch, rng)
        check_first_losses(steps)
        names = [n for n in steps if n == "PyTorch eager" or batch in TRAIN_BATCHES[n]]
        # PyTorch is timed against each path in turn, interleaved with it
        for name in names[1:]:
            t, ours = compare([steps["PyTorch eager"], steps[name]], rounds, reps)
            target = TRAIN_TARGETS[name].get(batch)
            print(f"| {name} | {batch} | {t * 1e6:.0f} | {ours * 1e6:.0f} | {t / ours:.2f}x | "
                  f"{'>= %gx' % target if target else '-'} |", flush=True)
    if args.train_only:
        return
    print()
    print("| workload | batch | PyTorch eager us | tracenet compiled us | ratio | "
          "torch.compile us | ratio vs torch.compile | target |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (1, 64):
        inductor = not args.no_inductor and batch == 64
        res = compare(infer_workloads(batch, rng, inductor), rounds, per_round)
        ind = f"{res[2] * 1e6:.0f} | {res[2] / res[1]:.2f}x" if inductor else "- | -"
        print(f"| inference | {batch} | {res[0] * 1e6:.0f} | {res[1] * 1e6:.0f} | "
              f"{res[0] / res[1]:.2f}x | {ind} | >= {INFER_TARGETS[batch]}x |", flush=True)
    print()
    prebuild(os.path.dirname(HERE))
    colds, bare = [], []
    for _ in range(args.cold_runs):  # each in a cache of its own: a shared machine is noisy
        for runs, env in ((colds, {}), (bare, {"TRACENET_PREBUILT": "0"})):
            with tempfile.TemporaryDirectory() as cache:
                runs.append(child("tracenet", 64, cache, **env)["ready_s"])
    with tempfile.TemporaryDirectory() as cache:
        child("tracenet", 64, cache)
        warm = child("tracenet", 64, cache)
        peak_torch = child("torch", 64, cache)
    print(f"cold compile of the training step (trace, autodiff, C, build; empty cache, as "
          f"installed): {statistics.median(colds):.2f} s, median of {len(colds)} (min "
          f"{min(colds):.2f} s; target < 0.44 s; TRACENET_DEBUG=time shows where it goes)")
    print(f"the same without what the install builds ahead of time (TRACENET_PREBUILT=0: GEMM "
          f"objects, compiler probe, template bytecode): {statistics.median(bare):.2f} s "
          f"(min {min(bare):.2f} s)")
    print(f"second process, warm cache, until the first step is done: "
          f"{warm['ready_s'] * 1e3:.0f} ms (target < 50 ms)")
    print(f"peak memory growth at batch 64, first step (tracenet: incl. tracing and loading the "
          f"compiled step): tracenet {warm['first_kb'] / 1024:.1f} MiB, PyTorch "
          f"{peak_torch['first_kb'] / 1024:.1f} MiB; during 5 more steps: tracenet "
          f"{warm['peak_kb'] / 1024:.1f} MiB, PyTorch {peak_torch['peak_kb'] / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
