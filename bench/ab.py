"""A/B of two tracenet source trees on LeNet, interleaved in one run.

    python bench/ab.py OLD_TREE NEW_TREE [--rounds 5] [--calls 200] [--model resnet]

Each round runs one worker process per tree, alternating A, B, A, B..., so both see the same
phases of a shared, noisy machine. A worker imports tracenet from its tree, compiles LeNet's
training step (``compile_step``, SGD with momentum) and inference (``tracenet.compile`` under
``no_grad``) at one batch size, and reports the median time per call. Each batch size (1, 8,
64) gets its own worker with an empty cache directory, so it is built at that size, as for a
user whose batch size is fixed (a build traced at batch 1 and reused at 64 keeps serial
kernels: see "Shapes" in the README). The table gives each
tree's median over rounds and the ratio A/B (> 1: the new tree is faster). A tree is any
checkout, e.g. one made with ``git worktree add /tmp/old <commit>``.

``--cpu`` times one thread by its CPU time, which a busy machine disturbs less.
``--model NAME`` runs one of bench/zoo.py's models instead (training step with its optimizer,
and inference), at that model's batch size.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

WORKER = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import tracenet as tn
sys.path.insert(0, sys.argv[2])
from lenet import lenet

clock = time.process_time if sys.argv[6] == "cpu" else time.perf_counter

def median_call(fn, n):
    for _ in range(5):
        fn()
    # the load watch (tracenet/runtime/threads.py) looks back a quarter second: timed calls
    # start after it, not while the compile that just ended still reads as other processes
    # (which would run the first calls on one thread)
    time.sleep(0.3)
    times = []
    for _ in range(n):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)

n = int(sys.argv[3])
rng = np.random.default_rng(0)
out = {}
if sys.argv[5] != "lenet":
    import zoo
    build, make, kind, lr = zoo.MODELS[sys.argv[5]]
    tn.manual_seed(0)
    net = build(tn)
    x, y = (tn.from_numpy(a) for a in make(rng))
    crit = tn.nn.CrossEntropyLoss()
    step = tn.compile_step(lambda a, b: crit(net(a), b), zoo._optimizer(tn, kind,
                                                                      net.parameters(), lr))
    out["train"] = median_call(lambda: step(x, y), n)
    infer = tn.compile(build(tn).eval())
    def run():
        with tn.no_grad():
            infer(x)
    out["infer"] = median_call(run, n)
for batch in (int(sys.argv[4]),) if sys.argv[5] == "lenet" else ():
    tn.manual_seed(0)
    net = lenet(tn)
    x = tn.from_numpy(rng.standard_normal((batch, 1, 32, 32)).astype(np.float32))
    y = tn.from_numpy(rng.integers(0, 10, batch))
    crit = tn.nn.CrossEntropyLoss()
    opt = tn.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    step = tn.compile_step(lambda a, b: crit(net(a), b), opt)
    out[f"train b{batch}"] = median_call(lambda: step(x, y), n)
    infer = tn.compile(lenet(tn).eval())
    def run():
        with tn.no_grad():
            infer(x)
    out[f"infer b{batch}"] = median_call(run, n)
print(json.dumps(out))
"""


def run_worker(tree, calls, batch, model, cpu):
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, OMP_NUM_THREADS="1" if cpu else
                   os.environ.get("OMP_NUM_THREADS", "2"),
                   TRACENET_CACHE_DIR=cache)
        res = subprocess.run([sys.executable, "-c", WORKER, os.path.abspath(tree), HERE,
                              str(calls), str(batch), model, "cpu" if cpu else "wall"],
                             capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        sys.exit(f"worker for {tree} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--model", default="lenet", help="lenet, or a model of bench/zoo.py")
    ap.add_argument("--cpu", action="store_true",
                    help="one thread, timed by the process's CPU time: steadier on a busy "
                         "machine (a thread kept waiting for a core is not counted)")
    args = ap.parse_args()
    samples = {"A": {}, "B": {}}
    for r in range(args.rounds):
        for label, tree in (("A", args.old), ("B", args.new)) if r % 2 == 0 else \
                (("B", args.new), ("A", args.old)):
            for batch in (1, 8, 64) if args.model == "lenet" else (None,):
                for k, v in run_worker(tree, args.calls, batch, args.model, args.cpu).items():
                    samples[label].setdefault(k, []).append(v)
    print(f"A = {args.old}\nB = {args.new}\n{args.rounds} rounds, median of {args.calls} calls "
          "each, then the median over rounds")
    print(f"{'workload':<12} {'A us':>9} {'B us':>9} {'A/B':>6}")
    for k in samples["A"]:
        a, b = statistics.median(samples["A"][k]), statistics.median(samples["B"][k])
        print(f"{k:<12} {a * 1e6:9.1f} {b * 1e6:9.1f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
