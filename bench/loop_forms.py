"""The three compiled forms of one training loop, interleaved in one process, by CPU time.

    python bench/loop_forms.py [--model lenet] [--rounds 6] [--block 80] [--threads 1]

* ``compile(net)``: ``loss = criterion(cnet(x), y)`` (the loss eager), ``backward``, step;
* ``compile(fn)``: ``loss = f(x, y)`` with ``f = tracenet.compile(lambda a, b:
  criterion(net(a), b))`` (the loss compiled, keeping its history), ``backward``, step;
* ``compile(step_fn)``: the whole step, ``zero_grad`` to ``optimizer.step()``, in one call.

Each form trains a model of its own (the same initial weights, SGD with momentum) on the same
eight batches in turn; the forms take turns in blocks of ``--block`` steps. The median and the
best step of each are printed. (Blocks are short: one batch trained for ~700 steps drives the
momentum into subnormal floats.)
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
import zoo  # noqa: E402


def forms(build, criterion):
    """{name: a function of (x, y) running one training step}, each on a model of its own."""
    def fresh():
        tn.manual_seed(0)
        net = build(tn)
        return net, tn.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    net, opt = fresh()
    cnet = tn.compile(net)

    def module_loop(x, y):
        opt.zero_grad()
        loss = criterion(cnet(x), y)
        loss.backward()
        opt.step()

    fn_net, fn_opt = fresh()
    f = tn.compile(lambda a, b: criterion(fn_net(a), b))

    def function_loop(x, y):
        fn_opt.zero_grad()
        loss = f(x, y)
        loss.backward()
        fn_opt.step()

    step_net, step_opt = fresh()

    def step_fn(a, b):
        step_opt.zero_grad()
        loss = criterion(step_net(a), b)
        loss.backward()
        step_opt.step()
        return loss

    return {"compile(net) loop": module_loop, "compile(fn) loop": function_loop,
            "compile(step_fn)": tn.compile(step_fn)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet", choices=sorted(zoo.MODELS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    tn.set_num_threads(args.threads)
    build, make, _, _ = zoo.MODELS[args.model]
    rng = np.random.default_rng(0)
    batches = [tuple(map(tn.from_numpy, make(rng))) for _ in range(8)]
    steps = forms(build, tn.nn.CrossEntropyLoss())
    for step in steps.values():  # built, and warm
        for x, y in batches[:3]:
            step(x, y)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for i in range(args.block):
                x, y = batches[i % len(batches)]
                t = time.process_time()
                step(x, y)
                times[name].append(time.process_time() - t)
    for name, ts in times.items():
        print(f"{name:20s} median {statistics.median(ts) * 1e6:9.1f} us   "
              f"best {min(ts) * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
