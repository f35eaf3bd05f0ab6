"""A model zoo side by side: PyTorch eager (and torch.compile, ONNX Runtime) vs tracenet.

    python bench/zoo.py [--quick] [--models lenet,cifar,mlp,resnet,lstm,transformer]
                        [--no-inductor]
                        [--no-onnx] [--no-compile-times] [--busy]
                        [--kernels [--kernel-threads N]] [--threads-seen]

Each model is written once and built with either library from the same weights. Timings use
bench/lenet.py's method: the workloads of one row alternate in rounds (each turn after two
untimed calls) and the row reports medians in us per call and the ratio PyTorch eager time /
other time (> 1: the other is faster). PyTorch eager runs with 1 and with 2 threads and
counts as the better of the two.

Rows per model:
* training: tracenet's whole step as one C call (``compile_step``), and the ordinary loop
  around ``tracenet.compile(net)`` (eager loss, backward driver and optimizer step), against
  PyTorch eager's loop and, unless ``--no-inductor``, torch.compile's;
* inference: ``tracenet.compile`` under ``eval()`` and ``no_grad()`` against PyTorch eager,
  torch.compile and ONNX Runtime (``torch.onnx.export``; skipped when onnxruntime or the
  exporter is missing);
* cold and warm compile of the training step in fresh processes (empty, then warm cache).

``--busy`` keeps one core busy with another process (a spinning loop) for the whole run, as a
shared machine often is. ONNX Runtime comes with the ``bench`` extra (``pip install
'.[bench]'``).

``--kernels`` prints instead each kernel's time (best of 20 calls) in the training step and in
inference, with GFLOP/s and the fraction of the machine's FMA peak (measured with a loop of
independent FMAs built with tracenet's flags). Compiled code runs on ``--kernel-threads``
threads (default: every core this process may use), set with ``tracenet.set_num_threads`` so
that the thread count does not follow the load while the kernels are timed.

``--threads-seen`` prints under each row how many threads tracenet's compiled calls chose
(the count follows the machine's load, ``tracenet/runtime/threads.py``), how many cores other
processes kept busy meanwhile, and the share of CPU time the virtual machine's host took
(steal): a row much slower than usual on one thread is the load watch's choice (a misreading
if other processes were near 0 cores), on two with steal it is the host.
"""
import argparse
import atexit
import collections
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
# torch.compile compiles in this process: its pool of compile workers otherwise kept about a
# core busy through the rows timed after it (--threads-seen read "other processes" at
# 0.65-1.15 cores on a quiet machine, and the MLP's step at 532 against 343 us)
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import tracenet as tn  # noqa: E402
from tracenet.runtime.threads import TICKS, busy_cpu_seconds, own_cpu_seconds  # noqa: E402
from lenet import compare, copy_weights, lenet  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    sys.exit("bench/zoo.py compares against PyTorch: pip install torch==2.13.0")


# --- the models, written once -------------------------------------------------------------

def cifar_net(lib):
    """The CIFAR-10 tutorial's net."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            x = lib.flatten(x, 1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
    return Net()


def mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def resnet(lib):
    """Three BasicBlocks (16/32/64 channels, BatchNorm, residual adds) on 3x32x32."""
    nn, F = lib.nn, lib.nn.functional

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.short(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU())
            self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(lib.flatten(self.pool(self.blocks(self.stem(x))), 1))
    return ResNet()


def lstm_lm(lib):
    """Embedding 90x32 -> LSTM 32->64 -> Linear, batch first; logits flattened for the loss."""
    nn = lib.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(90, 32)
            self.lstm = nn.LSTM(32, 64, batch_first=True)
            self.head = nn.Linear(64, 90)

        def forward(self, tokens):
            out, _ = self.lstm(self.embed(tokens))
            return self.head(out).reshape(-1, 90)
    return LM()


def transformer_lm(lib):
    """Embedding 50x32 plus learned positions -> 2 TransformerEncoderLayers (4 heads,
    feed-forward 64, causal mask, batch first, dropout 0) -> Linear; logits flattened."""
    nn = lib.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.pos = nn.Parameter(lib.randn(16, 32) * 0.1)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 50)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(16))

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos
            return self.head(self.encoder(x, mask=self.mask, is_causal=True)).reshape(-1, 50)
    return LM()


def _images(shape, classes):
    def make(rng):
        return (rng.standard_normal(shape).astype(np.float32),
                rng.integers(0, classes, shape[0]))
    return make


def _tokens(batch, steps, vocab):
    def make(rng):
        return (rng.integers(0, vocab, (batch, steps)),
                rng.integers(0, vocab, batch * steps))
    return make


# name -> (build(lib), make inputs (x, y) from a numpy Generator, optimizer, lr)
MODELS = {
    "lenet": (lenet, _images((1, 1, 32, 32), 10), "SGD", 0.01),
    "cifar": (cifar_net, _images((32, 3, 32, 32), 10), "SGD", 0.01),
    "mlp": (mlp, _images((64, 1, 28, 28), 10), "Adam", 1e-3),
    "resnet": (resnet, _images((32, 3, 32, 32), 10), "SGD", 0.01),
    "lstm": (lstm_lm, _tokens(16, 32, 90), "Adam", 1e-3),
    "transformer": (transformer_lm, _tokens(8, 16, 50), "Adam", 1e-3),
}


def _optimizer(lib, kind, params, lr):
    if kind == "SGD":
        return lib.optim.SGD(params, lr=lr, momentum=0.9)
    return getattr(lib.optim, kind)(params, lr=lr)


def _pair(name):
    """(torch model, tracenet model with the same weights)."""
    build = MODELS[name][0]
    torch.manual_seed(0)
    tmodel = build(torch)
    model = build(tn)
    copy_weights(tmodel, model)
    return tmodel, model


# --- the thread counts compiled calls choose, and the CPU time the host took (--threads-seen)

_threads_seen = collections.Counter()
_cpu_times_at = [None]  # (the machine's counters, this process's CPU seconds)


def _cpu_times():
    """The machine's CPU time counters (/proc/stat's "cpu" line); None where there is none."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def watch_thread_counts():
    """Count the thread count of every compiled call from now on (entry points built later
    look the chooser up when they are built)."""
    import tracenet.executable as executable
    choose = executable.compiled_threads

    def counted(now=None):
        n = choose(now)
        _threads_seen[n] += 1
        return n
    executable.compiled_threads = counted
    restart_thread_counts()


def restart_thread_counts():
    """Count from now on (the timed rounds, not the calls that compile)."""
    _threads_seen.clear()
    _cpu_times_at[0] = (_cpu_times(), own_cpu_seconds())


def thread_counts_line():
    """The thread counts since the last line, as percentages of the calls; the cores other
    processes kept busy on average (the machine's busy time less this process's: a row on one
    thread while they are near 0 is the load watch misreading a quiet machine); and the share
    of the CPU time a virtual machine's host took (steal: a core the host held makes a row
    slow whatever the thread count)."""
    total = sum(_threads_seen.values())
    parts = [f"{n} thread{'s' if n > 1 else ''} {c * 100 / total:.0f} %"
             for n, c in sorted(_threads_seen.items())] if total else []
    (before, own_before), now, own = _cpu_times_at[0], _cpu_times(), own_cpu_seconds()
    restart_thread_counts()
    if before and now and len(now) > 7 and sum(now) > sum(before):
        delta = [b - a for a, b in zip(before, now)]
        busy = busy_cpu_seconds(delta)
        wall = sum(delta) / TICKS / os.cpu_count()  # (all the machine's cores)
        parts.append(f"other processes {max(0.0, busy - (own - own_before)) / wall:.2f} cores")
        parts.append(f"steal {delta[7] * 100 / sum(delta):.0f} %")
    return ", ".join(parts)


# --- workloads -----------------------------------------------------------------------------

def _torch_threads(fn, threads):
    def run():
        torch.set_num_threads(threads)
        fn()
    return run


def train_row(name, rng, inductor):
    _, make, kind, lr = MODELS[name]
    x, y = make(rng)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    nx, ny = tn.from_numpy(x), tn.from_numpy(y)
    tmodel, step_model = _pair(name)
    _, loop_model = _pair(name)
    t_crit, crit = torch.nn.CrossEntropyLoss(), tn.nn.CrossEntropyLoss()
    t_opt = _optimizer(torch, kind, tmodel.parameters(), lr)

    def torch_step(model=tmodel):
        t_opt.zero_grad()
        t_crit(model(tx), ty).backward()
        t_opt.step()

    opt = _optimizer(tn, kind, step_model.parameters(), lr)
    step = tn.compile_step(lambda a, b: crit(step_model(a), b), opt)

    def fused_step():
        step(nx, ny)

    compiled = tn.compile(loop_model)
    loop_opt = _optimizer(tn, kind, loop_model.parameters(), lr)

    def loop_step():
        loop_opt.zero_grad()
        crit(compiled(nx), ny).backward()
        loop_opt.step()

    fns = [_torch_threads(torch_step, 1), _torch_threads(torch_step, 2), fused_step, loop_step]
    if inductor:
        fns.append(_torch_threads(_inductor_step(tmodel, torch_step), 2))
    return fns


def _inductor_step(tmodel, torch_step):
    compiled = torch.compile(tmodel)

    def step():
        torch_step(compiled)
    step()  # compile outside the timed region
    return step


def infer_row(name, rng, inductor, onnx):
    _, make, _, _ = MODELS[name]
    x, _ = make(rng)
    tmodel, model = _pair(name)
    tmodel.eval()
    model.eval()
    tx, nx = torch.from_numpy(x), tn.from_numpy(x)
    compiled = tn.compile(model)

    def torch_infer():
        with torch.no_grad():
            tmodel(tx)

    def tn_infer():
        with tn.no_grad():
            compiled(nx)

    with torch.no_grad(), tn.no_grad():
        np.testing.assert_allclose(compiled(nx).numpy(), tmodel(tx).numpy(), rtol=1e-3,
                                   atol=1e-4)
    fns = [_torch_threads(torch_infer, 1), _torch_threads(torch_infer, 2), tn_infer]
    names = ["torch.compile", "ONNX Runtime"]
    extra = {}
    if inductor:
        ind = torch.compile(tmodel)
        with torch.no_grad():
            ind(tx)

        def inductor_infer():
            with torch.no_grad():
                ind(tx)
        extra["torch.compile"] = _torch_threads(inductor_infer, 2)
    if onnx:
        session = _onnx_session(tmodel, tx)
        if session is not None:
            feed = {session.get_inputs()[0].name: x}
            extra["ONNX Runtime"] = lambda: session.run(None, feed)
    return fns + [extra[n] for n in names if n in extra], [n for n in names if n in extra]


def _onnx_session(tmodel, tx):
    try:
        import onnxruntime
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        try:
            with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(tmodel, (tx,), path, dynamo=False)
        except Exception as e:  # the exporter needs the onnx package, and may not cover a model
            print(f"  (ONNX export failed: {type(e).__name__}: {e})", file=sys.stderr)
            return None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


_CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
    t0 = time.perf_counter()
    import numpy as np
    import tracenet as tn
    import zoo
    name = sys.argv[1]
    build, make, kind, lr = zoo.MODELS[name]
    x, y = make(np.random.default_rng(0))
    model = build(tn)
    crit = tn.nn.CrossEntropyLoss()
    opt = zoo._optimizer(tn, kind, model.parameters(), lr)
    t1 = time.perf_counter()
    step = tn.compile_step(lambda a, b: crit(model(a), b), opt)
    step(tn.from_numpy(x), tn.from_numpy(y))
    print(json.dumps({{"ready_s": time.perf_counter() - t1}}))
""")


def compile_times(name):
    """(cold, warm) seconds until the first compiled training step is done, in new processes."""
    script = _CHILD.format(root=os.path.dirname(HERE), here=HERE)
    times = []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", script, name],
                                 env=dict(os.environ, TRACENET_CACHE_DIR=cache),
                                 capture_output=True, text=True, timeout=900)
            if out.returncode:
                raise RuntimeError(out.stderr)
            times.append(json.loads(out.stdout.strip().splitlines()[-1])["ready_s"])
    return times


# --- per-kernel report -------------------------------------------------------------------

_KERNEL_WORKER = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import numpy as np
import tracenet as tn
import zoo
name, calls, threads = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tn.set_num_threads(threads)  # fixed: an adaptive count could differ from call to call
_, make, kind, lr = zoo.MODELS[name]
x, y = make(np.random.default_rng(0))
nx, ny = tn.from_numpy(x), tn.from_numpy(y)
_, model = zoo._pair(name)
opt = zoo._optimizer(tn, kind, model.parameters(), lr)
crit = tn.nn.CrossEntropyLoss()
step = tn.compile_step(lambda a, b: crit(model(a), b), opt)
_, infer_model = zoo._pair(name)
infer = tn.compile(infer_model.eval())

def run_infer():
    with tn.no_grad():
        infer(nx)

for label, fn in (("train", lambda: step(nx, ny)), ("infer", run_infer)):
    print("=== warm-up", file=sys.stderr, flush=True)
    for _ in range(3):
        fn()
    print("=== " + label, file=sys.stderr, flush=True)
    for _ in range(calls):
        fn()
    print("=== threads %d" % threads, file=sys.stderr, flush=True)
"""

_FMA_LOOP = r"""
#include <stdio.h>
#include <time.h>
/* the widest vectors the flags allow: the kernels' FMAs are 16 lanes wide with AVX-512 */
#ifdef __AVX512F__
enum { LANES = 16 };
#else
enum { LANES = 8 };
#endif
typedef float v8 __attribute__((vector_size(4 * LANES)));
int main(void) {
    v8 b, c;
    for (int l = 0; l < LANES; l++) { b[l] = 0.9999f; c[l] = 1e-7f; }
    %(decl)s
    double best = 1e30;
    for (int r = 0; r < 20; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < 2000000; i++) { %(body)s }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
        if (s < best) best = s;
    }
    float sum = 0;
    %(sum)s
    printf("%%f %%f\n", 2.0 * 2000000 * %(n)d * LANES / best * 1e-9, sum);
    return 0;
}
"""


def fma_peak():
    """One core's float32 FMA peak in GFLOP/s, measured: the best of 20 runs of a loop of 12
    independent FMA chains of the widest vectors the flags allow (16 lanes with AVX-512, else
    8; enough to fill two FMA pipes of 4 cycles' latency), built with the flags tracenet
    builds kernels with."""
    from tracenet.runtime import toolchain
    n = 12
    src = _FMA_LOOP % dict(n=n, decl=" ".join(f"v8 a{i} = b * {i}.0f;" for i in range(n)),
                           body=" ".join(f"a{i} = a{i} * b + c;" for i in range(n)),
                           sum=" ".join(f"sum += a{i}[0];" for i in range(n)))
    argv, _ = toolchain.compiler()
    flags = [f for f in toolchain.flags() if f not in ("-shared", "-fPIC")]
    with tempfile.TemporaryDirectory() as d:
        c_path, exe = os.path.join(d, "fma.c"), os.path.join(d, "fma")
        with open(c_path, "w") as f:
            f.write(src)
        subprocess.run(list(argv) + flags + [c_path, "-o", exe], check=True,
                       capture_output=True)
        return float(subprocess.run([exe], check=True, capture_output=True,
                                    text=True).stdout.split()[0])


def kernel_report(name, threads, calls=20):
    """(part, kernel) -> (best time in us of ``calls``, flops, threads compiled code ran on)
    for the training step and inference, from ``TRACENET_DEBUG=time``."""
    env = dict(os.environ, TRACENET_DEBUG="time")
    out = subprocess.run([sys.executable, "-c", _KERNEL_WORKER, os.path.dirname(HERE), HERE,
                          name, str(calls), str(threads)],
                         env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr)
    best, label, ran_on = {}, None, {}
    for line in out.stderr.splitlines():
        if line.startswith("=== threads "):
            ran_on[label] = int(line.split()[-1])
            label = None
            continue
        if line.startswith("=== "):
            label = line[4:] if line[4:] != "warm-up" else None
            continue
        parts = line.split()
        if label is None or len(parts) < 4 or not line.startswith("[tracenet:time]") or \
                parts[3] != "us":
            continue
        key = (label, parts[1].rstrip(":"))
        us = float(parts[2])
        flops = float(parts[4]) * 1e3 * us if len(parts) > 5 and parts[5] == "GFLOP/s" else 0
        if key not in best or us < best[key][0]:
            best[key] = (us, flops)
    return {k: v + (ran_on.get(k[0], 1),) for k, v in best.items()}


def print_kernel_report(names, peak, threads):
    print()
    print(f"# per-kernel best of 20 calls; FMA peak {peak:.0f} GFLOP/s per core (measured); "
          f"% of peak: of the {threads} thread(s) compiled code ran on "
          f"(--kernel-threads), and of one core in parentheses")
    print("| model | kernel | threads | us | GFLOP/s | % of peak (of one core) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for (label, kernel), (us, flops, threads) in kernel_report(name, threads).items():
            if not flops:
                continue
            gf = flops / us * 1e-3
            short = kernel.split("_k", 1)[-1]
            print(f"| {name} {label} | k{short} | {threads} | {us:.0f} | {gf:.1f} | "
                  f"{100 * gf / (peak * threads):.0f} % ({100 * gf / peak:.0f} %) |",
                  flush=True)


def _print_thread_counts(args):
    line = thread_counts_line()
    if args.threads_seen and line:
        print(f"|  (tracenet's calls: {line}) |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--no-compile-times", action="store_true")
    ap.add_argument("--busy", action="store_true",
                    help="keep one core busy with another process (a spinning loop) throughout")
    ap.add_argument("--kernels", action="store_true",
                    help="only the per-kernel report: time, GFLOP/s and %% of FMA peak")
    ap.add_argument("--kernel-threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads of compiled code in the per-kernel report (default: the "
                         "cores this process may use)")
    ap.add_argument("--threads-seen", action="store_true",
                    help="print under each row the thread counts tracenet's calls chose")
    args = ap.parse_args()
    if args.threads_seen:
        watch_thread_counts()
    if args.busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        atexit.register(spinner.kill)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models: {', '.join(unknown)} (have {', '.join(MODELS)})")
    if args.kernels:
        print_kernel_report(names, fma_peak(), args.kernel_threads)
        return
    rounds, per_round = (3, 5) if args.quick else (7, 10)
    inductor = not args.no_inductor
    print(f"# tracenet vs PyTorch {torch.__version__}; median us per call over {rounds} "
          f"alternating rounds of {per_round}; ratio = PyTorch eager (better of 1 and 2 "
          f"threads) / other" + ("; one core kept busy by another process" if args.busy else ""))
    print()
    print("| model | PyTorch eager us | compile_step us | ratio | compile(net) loop us | ratio"
          + (" | torch.compile us | ratio" if inductor else "") + " |")
    print("|---|---|---|---|---|---" + ("|---|---" if inductor else "") + "|")
    for name in names:
        rng = np.random.default_rng(0)
        res = compare(train_row(name, rng, inductor), rounds, per_round,
                      on_start=restart_thread_counts)
        eager = min(res[0], res[1])
        cells = [f"{eager * 1e6:.0f}"]
        for t in res[2:]:
            cells += [f"{t * 1e6:.0f}", f"{eager / t:.2f}x"]
        print(f"| {name} train | " + " | ".join(cells) + " |", flush=True)
        _print_thread_counts(args)
    print()
    print("| model | PyTorch eager us | tracenet us | ratio | others (us, ratio) |")
    print("|---|---|---|---|---|")
    for name in names:
        rng = np.random.default_rng(0)
        fns, others = infer_row(name, rng, inductor, not args.no_onnx)
        res = compare(fns, rounds, per_round, on_start=restart_thread_counts)
        eager = min(res[0], res[1])
        rest = ", ".join(f"{o} {t * 1e6:.0f} us {eager / t:.2f}x"
                         for o, t in zip(others, res[3:])) or "-"
        print(f"| {name} infer | {eager * 1e6:.0f} | {res[2] * 1e6:.0f} | {eager / res[2]:.2f}x "
              f"| {rest} |", flush=True)
        _print_thread_counts(args)
    if not args.no_compile_times:
        print()
        print("| model | cold compile (first training step) | warm start (new process) |")
        print("|---|---|---|")
        for name in names:
            cold, warm = compile_times(name)
            print(f"| {name} | {cold:.2f} s | {warm * 1e3:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
