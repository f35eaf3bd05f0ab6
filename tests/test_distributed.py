"""tracenet.distributed, DistributedDataParallel and DistributedSampler.

The MPI tests launch this file under ``mpiexec -n 2`` (from the Python environment running
the tests, with a timeout) once; each rank runs every scenario below and prints its results as
one JSON line, which the tests read. Without mpi4py or mpiexec they skip, saying why.
"""
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    sys.path.insert(0, ROOT)

import tracenet  # noqa: E402
import tracenet.distributed as dist  # noqa: E402
import tracenet.nn as nn  # noqa: E402
import tracenet.nn.functional as F  # noqa: E402
from tracenet.nn.parallel import DistributedDataParallel  # noqa: E402
from tracenet.utils.data import DistributedSampler  # noqa: E402

LAUNCH_TIMEOUT = 240  # seconds: a hung collective fails the test instead of the whole run
STEPS, BATCH, LR, MOMENTUM = 5, 16, 0.05, 0.9


# ---------------------------------------------------------------------------------------------
# what each rank runs

class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = tracenet.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def lenet(seed):
    tracenet.manual_seed(seed)
    return LeNet().double()


def data():
    rng = np.random.default_rng(0)
    return (tracenet.tensor(rng.standard_normal((BATCH, 1, 32, 32))),
            tracenet.tensor(rng.integers(0, 10, BATCH)))


def sgd(net):
    return tracenet.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)


def reference():
    """One process, the full batch."""
    net = lenet(0)
    opt = sgd(net)
    x, y = data()
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def my_half(rank, world):
    x, y = data()
    n = BATCH // world
    return x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def train_eager(ddp, net, rank, world):
    opt = sgd(net)
    x, y = my_half(rank, world)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()


def train_no_sync(ddp, net, rank, world):
    """Two micro-batches per step, the first under no_sync."""
    opt = sgd(net)
    x, y = my_half(rank, world)
    n = x.shape[0] // 2
    for _ in range(STEPS):
        opt.zero_grad()
        with ddp.no_sync():
            (F.cross_entropy(ddp(x[:n]), y[:n]) / 2).backward()
        (F.cross_entropy(ddp(x[n:]), y[n:]) / 2).backward()
        opt.step()


def train_compiled_step(ddp, net, rank, world):
    opt = sgd(net)
    step = tracenet.compile_step(lambda x, y: F.cross_entropy(ddp(x), y), opt)
    x, y = my_half(rank, world)
    for _ in range(STEPS):
        step(x, y)


def train_compiled_function(ddp, net, rank, world):
    opt = sgd(net)

    @tracenet.compile
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        return loss

    x, y = my_half(rank, world)
    for _ in range(STEPS):
        step(x, y)


def max_diff(a, b):
    return max(float(np.abs(p.detach().numpy() - q.detach().numpy()).max())
               for p, q in zip(a.parameters(), b.parameters()))


def equivalence(rank, world, expected):
    out = {}
    for name, wrap, train in [("eager", lambda n: n, train_eager),
                              ("compiled module", tracenet.compile, train_eager),
                              ("compiled step", lambda n: n, train_compiled_step),
                              ("compiled step of a compiled module", tracenet.compile,
                               train_compiled_step),
                              ("compiled function", lambda n: n, train_compiled_function),
                              ("no_sync", lambda n: n, train_no_sync)]:
        net = lenet(rank)  # rank 1 starts elsewhere: rank 0's parameters must reach it
        ddp = DistributedDataParallel(wrap(net), bucket_cap_mb=0.1)
        train(ddp, net, rank, world)
        out[name] = {"diff": max_diff(net, expected), "buckets": len(ddp._buckets),
                     "grad_sum": float(sum(p.grad.double().sum().item()
                                           for p in net.parameters()))}
    return out


def _error(fn):
    try:
        fn()
    except Exception as e:  # the test checks the type and message
        return [type(e).__name__, str(e)]
    return None


def collectives(rank, world):
    out = {}
    for op in ("SUM", "AVG", "MAX", "MIN"):
        t = tracenet.tensor([rank + 1.0, 10.0 * rank, -rank])
        dist.all_reduce(t, getattr(dist.ReduceOp, op))
        out[op] = t.tolist()
    t = tracenet.tensor([rank, rank])
    dist.broadcast(t, src=1)
    out["broadcast"] = t.tolist()
    parts = [tracenet.zeros(2, dtype=tracenet.int64) for _ in range(world)]
    dist.all_gather(parts, tracenet.tensor([rank, 2 * rank]))
    out["all_gather"] = [p.tolist() for p in parts]
    o = tracenet.zeros(2)
    dist.reduce_scatter(o, [tracenet.full((2,), float(10 * rank + r)) for r in range(world)])
    out["reduce_scatter"] = o.tolist()
    w = dist.all_reduce(tracenet.ones(4), async_op=True)
    out["async"] = w.wait()
    out["mismatch"] = _error(lambda: dist.all_reduce(tracenet.ones(3 + rank)))
    out["after_mismatch"] = _error(lambda: dist.barrier())
    return out


def errors(rank, world):
    net = lenet(0)
    out = {"compile_ddp": _error(lambda: tracenet.compile(DistributedDataParallel(net))(
        data()[0][:2]))}
    ddp = DistributedDataParallel(net)
    opt = sgd(net)

    def clipped(x, y):
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    out["compiled_clipping"] = _error(lambda: tracenet.compile(clipped)(*my_half(rank, world)))

    def reads_after_step(x, y):
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
        return ddp(x)

    out["compiled_reads_after_step"] = _error(
        lambda: tracenet.compile(reads_after_step)(*my_half(rank, world)))

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    unused = DistributedDataParallel(Unused())
    unused(tracenet.ones(3, 4)).sum().backward()
    out["unused"] = _error(lambda: unused(tracenet.ones(3, 4)))
    # rank 1's running statistics differ; each forward starts from rank 0's
    tracenet.manual_seed(0)
    bn_net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    bn = DistributedDataParallel(bn_net)
    bn_net[1].running_mean.fill_(float(rank))
    bn(tracenet.arange(20.0).reshape(5, 4))  # the same batch on both ranks
    out["running_mean"] = bn_net[1].running_mean.tolist()
    out["state_dict"] = list(ddp.state_dict())[:2]
    out["module_is_given"] = ddp.module is net
    out["repr"] = repr(DistributedDataParallel(nn.Linear(2, 3)))
    return out


def worker(out_dir):
    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"rank": rank, "world": world, "collectives": collectives(rank, world),
              "equivalence": equivalence(rank, world, reference()),
              "errors": errors(rank, world)}
    dist.barrier()
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


# ---------------------------------------------------------------------------------------------
# the tests

def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def _launch_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        # MPICH: start the local ranks directly (no ssh); Open MPI, if that is the mpiexec
        # found: allow running as root, as in a container
        HYDRA_LAUNCHER="fork", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


@functools.lru_cache(maxsize=None)
def _launch():
    """Both ranks' results (one launch for all the MPI tests)."""
    env = _launch_env()
    with tempfile.TemporaryDirectory() as out_dir:
        proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable,
                               os.path.abspath(__file__), out_dir],
                              capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env,
                              cwd=ROOT)
        assert proc.returncode == 0, \
            f"mpiexec failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        results = []
        for rank in range(2):
            with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
                results.append(json.load(f))
    return results


needs_mpi = pytest.mark.skipif(
    not dist.is_available() or _mpiexec() is None,
    reason="needs mpi4py and mpiexec: pip install '.[mpi]'")


@needs_mpi
def test_ranks_come_from_the_launcher():
    assert [(r["rank"], r["world"]) for r in _launch()] == [(0, 2), (1, 2)]


@needs_mpi
def test_collectives_match_torch_semantics():
    r0, r1 = (r["collectives"] for r in _launch())
    for got in (r0, r1):
        assert got["SUM"] == [3.0, 10.0, -1.0]
        assert got["AVG"] == [1.5, 5.0, -0.5]
        assert got["MAX"] == [2.0, 10.0, 0.0]
        assert got["MIN"] == [1.0, 0.0, -1.0]
        assert got["broadcast"] == [1, 1]
        assert got["all_gather"] == [[0, 0], [1, 2]]
        assert got["async"] is True
    assert r0["reduce_scatter"] == [10.0, 10.0]   # 0 + 10: block 0 of each rank
    assert r1["reduce_scatter"] == [12.0, 12.0]   # 1 + 11


@needs_mpi
def test_mismatched_shapes_raise_on_every_rank():
    for r in _launch():
        kind, message = r["collectives"]["mismatch"]
        assert kind == "RuntimeError"
        assert "float32[3]" in message and "float32[4]" in message
        assert r["collectives"]["after_mismatch"] is None  # the ranks are still in step


@needs_mpi
@pytest.mark.parametrize("mode", ["eager", "compiled module", "compiled step",
                                  "compiled step of a compiled module", "compiled function",
                                  "no_sync"])
def test_two_ranks_half_batches_equal_one_process_full_batch(mode):
    r0, r1 = (r["equivalence"][mode] for r in _launch())
    assert r0["diff"] < 1e-5 and r1["diff"] < 1e-5
    assert r0["grad_sum"] == pytest.approx(r1["grad_sum"], abs=1e-9)  # averaged .grad
    assert r0["buckets"] > 1  # bucket_cap_mb=0.1 splits LeNet's 0.5 MB of gradients


@needs_mpi
def test_compiling_around_ddp_raises_a_clear_error():
    for r in _launch():
        kind, message = r["errors"]["compile_ddp"]
        assert "DistributedDataParallel cannot run inside a compiled program" in message
        assert "compile_step" in message
        kind, message = r["errors"]["compiled_clipping"]
        assert kind == "TraceError" and "between backward and optimizer.step()" in message
        kind, message = r["errors"]["compiled_reads_after_step"]
        assert kind == "TraceError" and "reads parameters after optimizer.step()" in message


@needs_mpi
def test_a_parameter_without_gradient_is_named_at_the_next_forward():
    for r in _launch():
        kind, message = r["errors"]["unused"]
        assert kind == "RuntimeError"
        assert "Expected to have finished reduction in the prior iteration" in message
        assert "unused.weight, unused.bias" in message


@needs_mpi
def test_buffers_are_rank_0s_at_every_forward():
    r0, r1 = (r["errors"]["running_mean"] for r in _launch())
    assert r0 == pytest.approx(r1, abs=0)  # rank 1 started from rank 0's (0), same batch stats
    assert r0 != [0.0, 0.0, 0.0]


@needs_mpi
def test_state_dict_keys_and_module_attribute():
    for r in _launch():
        assert r["errors"]["state_dict"] == ["module.conv1.weight", "module.conv1.bias"]
        assert r["errors"]["module_is_given"] is True
        assert r["errors"]["repr"] == ("DistributedDataParallel(\n  (module): Linear("
                                       "in_features=2, out_features=3, bias=True)\n)")


def _example(ranks, *args):
    env = _launch_env()
    proc = subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable,
                           os.path.join(ROOT, "examples", "ddp_digits.py"), "--epochs", "2",
                           "--max-batches", "8", *args], capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the numbers, without the timings
    return [line.split("(")[0] for line in proc.stdout.splitlines()[1:]]


@needs_mpi
@pytest.mark.parametrize("args", [(), ("--compile",)])
def test_ddp_example_on_two_ranks_prints_what_one_process_prints(args):
    pytest.importorskip("sklearn")
    two, one = _example(2, *args), _example(1, *args)
    assert two == one
    assert two[-1].startswith("test accuracy: ") and len(two) == 3


def test_missing_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r"tracenet\[mpi\]"):
        dist.init_process_group("mpi")
    assert not dist.is_initialized()


def test_other_backends_are_rejected():
    with pytest.raises(ValueError, match="only the 'mpi' backend"):
        dist.init_process_group("nccl")


def test_no_process_group_raises_as_torch():
    with pytest.raises(ValueError, match="has not been initialized"):
        dist.get_rank()
    with pytest.raises(ValueError, match="has not been initialized"):
        DistributedDataParallel(nn.Linear(2, 2))


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 2, False), (11, 3, False), (11, 3, True),
                                                   (3, 4, False), (2, 3, True)])
def test_distributed_sampler_partitions_as_torch(n, replicas, drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    for rank in range(replicas):
        ours = DistributedSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last)
        theirs = torch_data.DistributedSampler(range(n), replicas, rank, shuffle=False,
                                               drop_last=drop_last)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


def test_distributed_sampler_shuffles_the_same_way_on_every_rank():
    parts = [DistributedSampler(range(10), 2, r, seed=3) for r in range(2)]
    first = [list(p) for p in parts]
    assert sorted(first[0] + first[1]) == list(range(10))  # a partition of the dataset
    assert first != [list(range(0, 10, 2)), list(range(1, 10, 2))]  # shuffled
    assert [list(p) for p in parts] == first  # the same order until the epoch changes
    for p in parts:
        p.set_epoch(1)
    second = [list(p) for p in parts]
    assert second != first and sorted(second[0] + second[1]) == list(range(10))


def test_distributed_sampler_import_paths():
    from tracenet.utils.data.distributed import DistributedSampler as from_module
    import tracenet.nn.parallel.distributed as ddp_module
    assert from_module is DistributedSampler
    assert ddp_module.DistributedDataParallel is DistributedDataParallel
    assert tracenet.nn.parallel.DistributedDataParallel is DistributedDataParallel


def test_distributed_sampler_checks_the_rank():
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval "
                                         r"\[0, 1\]"):
        DistributedSampler(range(4), num_replicas=2, rank=2)


if __name__ == "__main__":
    worker(sys.argv[1])
