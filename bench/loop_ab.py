"""A/B of two tracenet source trees on the Python around compiled LeNet calls, per phase.

    python bench/loop_ab.py OLD_TREE NEW_TREE [--rounds 4] [--steps 2000] [--batch 1] [--cpu]

Each round runs one worker process per tree, alternating A, B, A, B..., so both see the same
phases of a shared, noisy machine. A worker imports tracenet from its tree and times, at one
batch size, the tutorial's loop around ``tracenet.compile(net)`` phase by phase (zero_grad,
compiled forward, eager loss, backward, ``optimizer.step()``) and ``tracenet.compile(step_fn)``
of the same step, each the median of ``--steps`` steps. The table gives each tree's median
over rounds and the ratio A/B (> 1: the new tree is faster). ``--cpu`` times with the
thread's CPU clock instead of the wall clock: on a loaded machine a step that the scheduler
interrupts then does not count the time other processes ran (compiled kernels running on
more than one thread are then undercounted, the same in both trees).
"""
import argparse
import json
import statistics
import subprocess
import sys

WORKER = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import tracenet as tn
sys.path.insert(0, sys.argv[2])
from lenet import lenet

batch, steps, cpu = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "cpu"
rng = np.random.default_rng(0)
x = tn.from_numpy(rng.standard_normal((batch, 1, 32, 32)).astype(np.float32))
y = tn.from_numpy(rng.integers(0, 10, batch))
crit = tn.nn.CrossEntropyLoss()
net = lenet(tn)
opt = tn.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
cnet = tn.compile(net)
fn_net = lenet(tn)
fn_opt = tn.optim.SGD(fn_net.parameters(), lr=0.01, momentum=0.9)

def step_fn(a, b):
    fn_opt.zero_grad()
    loss = crit(fn_net(a), b)
    loss.backward()
    fn_opt.step()
    return loss

compiled = tn.compile(step_fn)
clock = time.thread_time if cpu else time.perf_counter

def loop_step():
    t0 = clock()
    opt.zero_grad()
    t1 = clock()
    out = cnet(x)
    t2 = clock()
    loss = crit(out, y)
    t3 = clock()
    loss.backward()
    t4 = clock()
    opt.step()
    t5 = clock()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0

def fn_step():
    t = clock()
    compiled(x, y)
    return (clock() - t,)

out = {}
for name, fn, parts in (("loop", loop_step, ("zero_grad", "forward", "loss", "backward",
                                              "step", "loop total")),
                        ("fn", fn_step, ("compile(step_fn)",))):
    for _ in range(200):
        fn()
    samples = [fn() for _ in range(steps)]
    for part, column in zip(parts, zip(*samples)):
        out[part] = statistics.median(column)
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="time with the thread's CPU clock")
    args = ap.parse_args()
    bench = sys.path[0]
    results = {"old": [], "new": []}
    for _ in range(args.rounds):
        for which in ("old", "new"):
            tree = getattr(args, which)
            proc = subprocess.run([sys.executable, "-c", WORKER, tree, bench, str(args.batch),
                                   str(args.steps), "cpu" if args.cpu else "wall"], capture_output=True, text=True, check=True)
            results[which].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"| batch {args.batch} | A (old) us | B (new) us | A/B |")
    print("|---|---|---|---|")
    for part in results["old"][0]:
        a = statistics.median(r[part] for r in results["old"]) * 1e6
        b = statistics.median(r[part] for r in results["new"]) * 1e6
        print(f"| {part} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
