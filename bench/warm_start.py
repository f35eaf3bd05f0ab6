"""Warm start: how long a new process takes to finish its first training step.

    python bench/warm_start.py [--rounds N]

Every case runs in fresh subprocesses against a temporary cache directory: first with the cache
cold (trace, passes, codegen, C compiler), then warm (a new process finding everything cached).
The times printed are wall-clock times of the whole subprocess minus the time of
``python -c "import tracenet"`` (interpreter start and import), measured the same way, and, in
brackets, the time the child measured itself from after ``import tracenet`` to the end of its
first step (model construction included). On a busy machine the medians move a lot: the
minimum over the rounds is printed too.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODELS = textwrap.dedent('''
    import tracenet as torch
    import tracenet.nn as nn
    import tracenet.nn.functional as F


    class LeNet(nn.Module):
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
            x = torch.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)


    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                              nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))


    class ResNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                        BasicBlock(32, 64, 2))
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = F.relu(self.bn(self.conv(x)))
            x = self.layers(x)
            x = F.adaptive_avg_pool2d(x, 1)
            return self.fc(torch.flatten(x, 1))
''')

CHILD = textwrap.dedent('''
    import sys, time
    import tracenet as torch
    import tracenet.compiler, tracenet.compiled_function, tracenet.step
    start = time.perf_counter()
    ready = [0.0]

    def timed(make):  # how long getting the specialisation takes (trace... or graph cache)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return make(*args, **kwargs)
            finally:
                ready[0] += time.perf_counter() - t
        return wrapper

    for driver in (tracenet.compiler, tracenet.compiled_function, tracenet.step):
        if hasattr(driver, "_specialise"):  # (in this tree or an older one)
            driver._specialise = timed(driver._specialise)
    import models
    model_name, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    net = getattr(models, model_name)()
    shape = (8, 1, 32, 32) if model_name == "LeNet" else (8, 3, 32, 32)
    x, y = torch.randn(*shape), torch.randint(0, 10, (8,))
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    if mode == "step":
        def loss_fn(x, y):
            return criterion(net(x), y)
        step = torch.compile_step(loss_fn, optimizer)
        loss = step(x, y)
    elif mode == "function":
        def train_step(x, y):
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
            return loss
        loss = torch.compile(train_step)(x, y)
    else:
        model = torch.compile(net)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    print(f"{(time.perf_counter() - start) * 1e3:.2f} {ready[0] * 1e3:.2f} {float(loss):.6f}")
''')


CRASHES = []  # (command, exit code) of children that died after printing their result


def run(args, env, cwd):
    start = time.perf_counter()
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = out.stdout.split()
    if out.returncode:
        if len(result) < 2:
            sys.exit(f"{' '.join(args)} failed (exit {out.returncode}):\n{out.stderr}")
        CRASHES.append((" ".join(args[1:]), out.returncode))
    return wall * 1e3, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7, help="warm runs per case")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the children (default: as set here)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tn-warm-bench-") as tmp:
        with open(os.path.join(tmp, "models.py"), "w") as f:
            f.write(MODELS)
        with open(os.path.join(tmp, "child.py"), "w") as f:
            f.write(CHILD)
        env = dict(os.environ, TRACENET_CACHE_DIR=os.path.join(tmp, "cache"),
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        env.pop("TRACENET_DEBUG", None)
        if opts.threads:
            env["OMP_NUM_THREADS"] = str(opts.threads)
        py = [sys.executable]
        imports = [run(py + ["-c", "import tracenet"], env, tmp)[0] for _ in range(opts.rounds)]
        imp_med, imp_min = statistics.median(imports), min(imports)
        print(f"python -c 'import tracenet': median {imp_med:.0f} ms, min {imp_min:.0f} ms")
        print("per case: wall time of the process minus the import's (median from median, min "
              "from min);\n  in brackets, measured inside: after import to first step done / "
              "of which getting the specialisation")
        print(f"{'case':26s} {'cold':>22s}   {'warm median':>22s}   {'warm min':>22s}  target")
        results = {"import_ms": [round(t, 1) for t in imports]}

        def cell(wall, inside, ready):
            return f"{wall:6.0f} ({inside:6.1f} /{ready:6.1f})"

        for model, target in (("LeNet", 30), ("ResNet", 100)):
            for mode in ("loop", "step", "function"):
                cold, out = run(py + ["child.py", model, mode], env, tmp)
                warm = [run(py + ["child.py", model, mode], env, tmp)
                        for _ in range(opts.rounds)]
                walls = [w for w, _ in warm]
                inside = [float(o[0]) for _, o in warm]
                ready = [float(o[1]) for _, o in warm]
                med = statistics.median(walls) - imp_med
                name = f"{model} " + {"loop": "compile + loop", "step": "compile_step",
                                      "function": "compile(step_fn)"}[mode]
                print(f"{name:26s} {cell(cold - imp_med, float(out[0]), float(out[1]))}   "
                      f"{cell(med, statistics.median(inside), statistics.median(ready))}   "
                      f"{cell(min(walls) - imp_min, min(inside), min(ready))}  < {target} ms")
                results[name] = {"cold_ms": round(cold, 1), "warm_wall_ms": walls,
                                 "warm_inside_ms": inside, "warm_ready_ms": ready}
        for command, code in CRASHES:
            print(f"note: {command} exited with {code} after printing its result")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
