"""How LeNet's batch-1 ``tracenet.compile(step_fn)`` calls come back after something else ran:
per-position medians of the calls after each disturbance, as in the turns of bench/lenet.py.

    python bench/positions.py [--before torch,compile_step] [--threads 1] [--stub] [--turns 40]

``--before``: what runs before each turn of ``--calls`` timed calls, in order, any of ``torch``
(8 PyTorch eager steps), ``compile_step`` (8 of its steps), ``sleep`` (1 ms), ``sum64`` (a
64 MB numpy sum) or ``none``. ``--stub`` replaces the C call with a no-op, so that only the
Python around it is timed. Prints wall and thread-CPU medians per position.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import lenet  # noqa: E402
import tracenet as tn  # noqa: E402


def compiled_function_of(name):
    import gc
    from tracenet.compiled_function import CompiledFunction
    return next(o for o in gc.get_objects()
                if isinstance(o, CompiledFunction) and o.fn.__name__ == name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="torch")
    ap.add_argument("--threads", type=int, default=0, help="tracenet threads (0: adaptive)")
    ap.add_argument("--stub", action="store_true")
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--calls", type=int, default=8)
    args = ap.parse_args()
    if args.threads:
        tn.set_num_threads(args.threads)
    steps = lenet.train_workloads(1, np.random.default_rng(0))
    step = steps["tracenet.compile(step_fn)"]
    big = np.ones(16 << 20, np.float32)
    before = {"torch": lambda: [steps["PyTorch eager"]() for _ in range(8)],
              "compile_step": lambda: [steps["compile_step"]() for _ in range(8)],
              "sleep": lambda: time.sleep(0.001), "sum64": big.sum, "none": lambda: None}
    disturb = [before[name] for name in args.before.split(",")]
    for _ in range(5):
        for fn in disturb:
            fn()
        step()
    if args.stub:
        compiled_function_of("train_step")._steady[3].call.fn = lambda *a: None
    wall = [[] for _ in range(args.calls)]
    cpu = [[] for _ in range(args.calls)]
    for _ in range(args.turns):
        for fn in disturb:
            fn()
        for i in range(args.calls):
            t0, c0 = time.perf_counter(), time.thread_time()
            step()
            cpu[i].append(time.thread_time() - c0)
            wall[i].append(time.perf_counter() - t0)
    print(f"# after {args.before}, {args.turns} turns, threads {args.threads or 'adaptive'}"
          f"{', C call stubbed' if args.stub else ''}; us per position")
    print("wall", [round(statistics.median(w) * 1e6, 1) for w in wall])
    print("cpu ", [round(statistics.median(c) * 1e6, 1) for c in cpu])


if __name__ == "__main__":
    main()
