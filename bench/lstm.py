"""An LSTM language model side by side: PyTorch eager vs tracenet compiled.

    python bench/lstm.py [--quick] [--root DIR] [--lengths 32,128] [--no-cold] [--no-steady]
                         [--cpu] [--ab OLD_DIR [--ab-threads N]]

The model: Embedding(90, 32) -> LSTM(32, 64) -> Linear(64, 90), batch 16, sequence length T;
the training step is zero_grad, forward, CrossEntropyLoss over every position, backward, SGD.
Both frameworks run in this process with the same weights; timings alternate between them in
rounds (each turn starts with two untimed calls: ``bench/lenet.py``'s ``compare``) and report
medians; every row prints the ratio PyTorch time / tracenet time (> 1 means tracenet is
faster). tracenet runs the step two ways: ``compile_step`` (the whole step as one C call) and
the plain loop around ``tracenet.compile(net)``, plus compiled inference. Cold compile times
(trace, autodiff, C, build and the first step, in a fresh process with an empty cache
directory, with what the package build prebuilds: ``bench/lenet.py``'s ``prebuild``) are
measured for every length. ``--root`` picks the tracenet source tree to measure (default: this checkout),
e.g. an older one to compare against; ``--cpu`` adds tracenet's per-call process CPU time.
``--ab OLD_DIR`` compares two trees instead: worker processes of the old tree and of
``--root`` alternate, each timing tracenet's compiled training step and inference in process
CPU time on one thread (best of its runs), and the table gives the medians over rounds and
the ratio old / new (> 1: the new tree is faster); ``--ab-threads N`` runs both on N threads
and times wall time instead.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

VOCAB, EMBED, HIDDEN, BATCH = 90, 32, 64, 16


def lm(lib):
    """The language model written once, built with ``lib`` (``torch`` or ``tracenet``)."""
    nn = lib.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            self.rnn = nn.LSTM(EMBED, HIDDEN)
            self.out = nn.Linear(HIDDEN, VOCAB)

        def forward(self, x):
            y, _ = self.rnn(self.embed(x))
            return self.out(y).reshape(-1, VOCAB)
    return LM()


def data(length, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, VOCAB, (length, BATCH)),
            rng.integers(0, VOCAB, (length * BATCH,)))


def workloads(tn, torch, length):
    tnet = lm(torch)
    net, plain_net, infer_net = lm(tn), lm(tn), lm(tn)
    for n in (net, plain_net, infer_net):
        for (_, a), (_, b) in zip(tnet.named_parameters(), n.named_parameters()):
            b.data.copy_(tn.from_numpy(a.detach().numpy().copy()))
    x, y = data(length)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    nx, ny = tn.from_numpy(x), tn.from_numpy(y)
    t_opt = torch.optim.SGD(tnet.parameters(), lr=0.01)
    t_crit = torch.nn.CrossEntropyLoss()

    def torch_step():
        t_opt.zero_grad()
        t_crit(tnet(tx), ty).backward()
        t_opt.step()

    crit = tn.nn.CrossEntropyLoss()
    opt = tn.optim.SGD(net.parameters(), lr=0.01)
    step = tn.compile_step(lambda a, b: crit(net(a), b), opt)

    def fused_step():
        step(nx, ny)

    plain = tn.compile(plain_net)
    plain_opt = tn.optim.SGD(plain_net.parameters(), lr=0.01)

    def plain_step():
        plain_opt.zero_grad()
        crit(plain(nx), ny).backward()
        plain_opt.step()

    compiled = tn.compile(infer_net.eval())
    tnet_eval = lm(torch).eval()
    tnet_eval.load_state_dict(tnet.state_dict())

    def torch_infer():
        with torch.no_grad():
            tnet_eval(tx)

    def tn_infer():
        with tn.no_grad():
            compiled(nx)
    with torch.no_grad(), tn.no_grad():
        np.testing.assert_allclose(compiled(nx).numpy(), tnet_eval(tx).numpy(), rtol=1e-4,
                                   atol=1e-5)
    return (torch_step, fused_step, plain_step), (torch_infer, tn_infer)


_CHILD = textwrap.dedent("""
    import sys, time, json
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {here!r})
    import tracenet as tn
    from lstm import lm, data
    length = int(sys.argv[1])
    tn.manual_seed(0)
    net = lm(tn); crit = tn.nn.CrossEntropyLoss(); opt = tn.optim.SGD(net.parameters(), lr=0.01)
    x, y = data(length); nx, ny = tn.from_numpy(x), tn.from_numpy(y)
    t = time.perf_counter()
    step = tn.compile_step(lambda a, b: crit(net(a), b), opt)
    step(nx, ny)
    ready = time.perf_counter() - t
    t = time.perf_counter()
    step(nx, ny)
    print(json.dumps({{"ready_s": ready, "step_s": time.perf_counter() - t,
                      "c_bytes": len(step.source())}}))
""")


def cpu_times(tn, length, n=40, repeats=5, clock=time.process_time):
    """(train step, inference) seconds of process CPU time per call of tracenet compiled, best
    of ``repeats`` runs of ``n`` calls: steadier than wall time on a busy machine, and
    comparable between source trees (``--root``) when run with OMP_NUM_THREADS=1 (with more
    threads, pass ``clock=time.perf_counter``: CPU time adds up the threads)."""
    net, infer_net = lm(tn), lm(tn).eval()
    crit = tn.nn.CrossEntropyLoss()
    opt = tn.optim.SGD(net.parameters(), lr=0.01)
    x, y = data(length)
    nx, ny = tn.from_numpy(x), tn.from_numpy(y)
    step = tn.compile_step(lambda a, b: crit(net(a), b), opt)
    compiled = tn.compile(infer_net)

    def infer():
        with tn.no_grad():
            compiled(nx)

    out = []
    for fn in (lambda: step(nx, ny), infer):
        fn()
        best = float("inf")
        for _ in range(repeats):
            t = clock()
            for _ in range(n):
                fn()
            best = min(best, (clock() - t) / n)
        out.append(best)
    return out


_AB_WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, {here!r})
    import tracenet as tn
    import time
    from lstm import cpu_times
    clock = time.process_time if sys.argv[3] == "1" else time.perf_counter
    print(json.dumps({{n: cpu_times(tn, int(n), clock=clock) for n in sys.argv[2].split(",")}}))
""")


def ab(old, new, lengths, rounds, threads=1):
    """Medians over ``rounds`` of (train, inference) seconds per call of each tree (CPU time
    on one thread, wall time on more), the trees' worker processes alternating; rows of the
    table ``main`` prints."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)
    runs = {old: [], new: []}
    for _ in range(rounds):
        for root in (old, new):
            out = subprocess.run([sys.executable, "-c", _AB_WORKER.format(here=HERE), root,
                                  ",".join(map(str, lengths)), str(threads)], env=env,
                                 capture_output=True,
                                 text=True, timeout=1200)
            if out.returncode:
                raise RuntimeError(f"{root}: exit {out.returncode}\n{out.stderr}")
            runs[root].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for length in lengths:
        for i, what in enumerate(("train step (compile_step)", "inference")):
            a, b = (sorted(r[str(length)][i] for r in runs[t])[rounds // 2] for t in (old, new))
            rows.append(f"| {length} | {what} | {a * 1e6:.0f} | {b * 1e6:.0f} | {a / b:.3f}x |")
    return rows


def cold_compile(root, length):
    """Seconds until the first compiled training step is done, in a fresh process with an
    empty cache directory; also the C source size."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRACENET_CACHE_DIR=cache)
        env.pop("PYTHONPATH", None)
        out = subprocess.run([sys.executable, "-c", _CHILD.format(root=root, here=HERE),
                              str(length)], env=env, capture_output=True, text=True,
                             timeout=1200)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--root", default=os.path.dirname(HERE),
                    help="the tracenet source tree to measure (default: this checkout)")
    ap.add_argument("--lengths", default="32,128", help="sequence lengths, comma-separated")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold compiles")
    ap.add_argument("--no-steady", action="store_true", help="skip the steady-state timings")
    ap.add_argument("--cpu", action="store_true",
                    help="also time tracenet alone in process CPU time (run with OMP_NUM_THREADS=1 "
                         "to compare source trees)")
    ap.add_argument("--ab", metavar="OLD_DIR",
                    help="compare the tracenet tree OLD_DIR with --root instead (CPU time, "
                         "one thread, alternating worker processes)")
    ap.add_argument("--ab-threads", type=int, default=1, metavar="N",
                    help="--ab with N OpenMP threads (wall time: best of the runs)")
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    lengths = [int(s) for s in args.lengths.split(",")]
    if args.ab:
        old = os.path.abspath(args.ab)
        rounds = 3 if args.quick else 7
        how = "CPU us per call on one thread" if args.ab_threads == 1 else \
            f"wall us per call on {args.ab_threads} threads"
        print(f"# LSTM LM, tracenet {how}, {old} (old) vs {root} "
              f"(new), medians over {rounds} alternating rounds")
        print()
        print("| T | workload | old us | new us | old / new |")
        print("|---|---|---|---|---|")
        for row in ab(old, root, lengths, rounds, args.ab_threads):
            print(row, flush=True)
        return
    sys.path.insert(0, root)
    import tracenet as tn
    try:
        import torch
    except ImportError:  # pragma: no cover
        sys.exit("bench/lstm.py compares against PyTorch: pip install torch==2.13.0")
    # the alternating timing and LeNet's cold compile (it finds the tracenet imported above)
    sys.path.insert(0, HERE)
    import lenet
    torch.set_num_threads(2)
    rounds, per_round = (3, 5) if args.quick else (7, 10)
    print(f"# LSTM LM (Embedding {VOCAB}x{EMBED} -> LSTM {EMBED}->{HIDDEN} -> Linear, batch "
          f"{BATCH}), tracenet ({root}) vs PyTorch {torch.__version__} eager "
          f"({torch.get_num_threads()} threads); median us per call over {rounds} alternating "
          f"rounds of {per_round}")
    if not args.no_steady:
        print()
        print("| T | PyTorch train us | compile_step us | ratio | plain loop us | ratio | "
              "PyTorch infer us | compiled infer us | ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        for length in lengths:
            train, infer = workloads(tn, torch, length)
            t, fused, plain = lenet.compare(train, rounds, per_round)
            ti, ci = lenet.compare(infer, rounds, per_round)
            print(f"| {length} | {t * 1e6:.0f} | {fused * 1e6:.0f} | {t / fused:.2f}x | "
                  f"{plain * 1e6:.0f} | {t / plain:.2f}x | {ti * 1e6:.0f} | {ci * 1e6:.0f} | "
                  f"{ti / ci:.2f}x |", flush=True)
    if args.cpu:
        print()
        for length in lengths:
            train, infer = cpu_times(tn, length)
            print(f"tracenet CPU time per call at T={length}: train step (compile_step) "
                  f"{train * 1e6:.0f} us, inference {infer * 1e6:.0f} us", flush=True)
    if not args.no_cold:
        print()
        lenet.prebuild(root)  # (measured as installed, as bench/lenet.py does)
        cold = {}
        for length in lengths:
            cold[length] = r = cold_compile(root, length)
            print(f"cold compile_step at T={length} (trace, autodiff, C, build, first step; "
                  f"empty cache): {r['ready_s']:.2f} s (without the step: "
                  f"{r['ready_s'] - r['step_s']:.2f} s), C source {r['c_bytes']} bytes; "
                  f"a step then takes {r['step_s'] * 1e3:.1f} ms", flush=True)
        if len(lengths) > 1:
            lo, hi = min(lengths), max(lengths)
            print(f"cold compile T={hi} / T={lo}: "
                  f"{cold[hi]['ready_s'] / cold[lo]['ready_s']:.2f}x (target <= 1.3x)")
        if 32 in cold and root == os.path.dirname(HERE):
            # LeNet's cold compile (bench/lenet.py's measurement), now, on the same machine
            with tempfile.TemporaryDirectory() as cache:
                ref = lenet.child("tracenet", 64, cache)["ready_s"]
            print(f"cold compile at T=32 / LeNet's ({ref:.2f} s): "
                  f"{cold[32]['ready_s'] / ref:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
