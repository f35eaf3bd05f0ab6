"""tracenet.utils.data against torch.utils.data: collated batches, sampler orders, loader
lengths, random_split, weighted sampling, worker processes, errors and a training loop."""
import collections
import math

import numpy as np
import pytest

import tracenet
from tracenet.utils import data as tdata

torch = pytest.importorskip("torch")
import torch.utils.data as rdata  # noqa: E402


Point = collections.namedtuple("Point", ["x", "y"])


def to_py(obj):
    """A batch as plain Python/numpy, with each tensor as ("tensor", dtype name, array)."""
    if isinstance(obj, (tracenet.Tensor, torch.Tensor)):
        return ("tensor", str(obj.dtype).replace("torch.", ""), tuple(obj.shape),
                obj.detach().numpy().tolist())
    if isinstance(obj, dict):
        return {k: to_py(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return (type(obj).__name__,) + tuple(to_py(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [to_py(v) for v in obj])
    return obj


def samples(lib):
    """The same nested samples built with either library's tensors."""
    out = []
    for i in range(3):
        out.append({
            "t": lib.tensor([[i, i + 1.0]]),
            "ti": lib.tensor([i, 2 * i]),
            "np32": np.full((2,), i, dtype=np.float32),
            "np64": np.arange(3, dtype=np.float64) * i,
            "npi": np.arange(2, dtype=np.int64) + i,
            "npscalar": np.float64(i / 2),
            "f": i * 0.5,
            "i": i,
            "b": bool(i % 2),
            "s": f"s{i}",
            "tup": (i, f"x{i}"),
            "lst": [i, i + 0.25],
            "nt": Point(i, float(i)),
        })
    return out


def test_default_collate_matches_torch():
    ours = tdata.default_collate(samples(tracenet))
    theirs = rdata.default_collate(samples(torch))
    assert to_py(ours) == to_py(theirs)
    assert ours["f"].dtype is tracenet.float64 and ours["i"].dtype is tracenet.int64
    assert ours["b"].dtype is tracenet.bool and isinstance(ours["nt"], Point)


@pytest.mark.parametrize("batch", [
    [(1, 2.5), (3, 4.5)],
    [[np.ones((2, 2), np.float32), "a"], [np.zeros((2, 2), np.float32), "b"]],
    [np.int64(3), np.int64(4)],
    [True, False],
])
def test_default_collate_small_cases(batch):
    assert to_py(tdata.default_collate(batch)) == to_py(rdata.default_collate(batch))


def test_default_convert_matches_torch():
    data = {"a": np.arange(3, dtype=np.float32), "b": (np.int64(2), 3, "s"),
            "c": [np.zeros(2), 1.5]}
    assert to_py(tdata.default_convert(data)) == to_py(rdata.default_convert(data))


def test_collate_errors_match_torch():
    for lib in (tdata, rdata):
        with pytest.raises(RuntimeError, match="each element in list of batch should be of "
                                               "equal size"):
            lib.default_collate([[1, 2], [3]])
        with pytest.raises(TypeError, match="default_collate: batch must contain"):
            lib.default_collate([object(), object()])
        with pytest.raises(TypeError, match="default_collate: batch must contain"):
            lib.default_collate([np.array(["a"]), np.array(["b"])])


def test_sequential_and_batch_sampler_match_torch():
    assert list(tdata.SequentialSampler(range(7))) == list(rdata.SequentialSampler(range(7)))
    for n, bs in [(10, 3), (9, 3), (2, 5), (0, 2)]:
        for drop_last in (False, True):
            ours = tdata.BatchSampler(tdata.SequentialSampler(range(n)), bs, drop_last)
            theirs = rdata.BatchSampler(rdata.SequentialSampler(range(n)), bs, drop_last)
            assert list(ours) == list(theirs)
            assert len(ours) == len(theirs)


def test_random_samplers():
    perm = list(tdata.RandomSampler(range(10), generator=0))
    assert sorted(perm) == list(range(10))
    s = tdata.RandomSampler(range(5), num_samples=12)
    drawn = list(s)
    assert len(s) == 12 and len(drawn) == 12
    assert sorted(drawn[:5]) == sorted(drawn[5:10]) == list(range(5))  # whole permutations
    s = tdata.RandomSampler(range(4), replacement=True, num_samples=50,
                            generator=np.random.default_rng(1))
    assert len(list(s)) == 50 and set(s) <= set(range(4))
    # a seed gives a stream of its own: the same stream for the same seed, epochs differ
    a, b = tdata.RandomSampler(range(20), generator=5), tdata.RandomSampler(range(20), generator=5)
    assert list(a) == list(b) and list(a) != list(tdata.RandomSampler(range(20), generator=5))
    sub = list(tdata.SubsetRandomSampler([3, 7, 9, 11]))
    assert sorted(sub) == [3, 7, 9, 11]


def test_random_sampler_errors_match_torch():
    for lib, kind in ((tdata, "ours"), (rdata, "torch")):
        with pytest.raises(TypeError, match="replacement should be a boolean value"):
            lib.RandomSampler(range(3), replacement=1)
        with pytest.raises(ValueError, match="num_samples should be a positive integer"):
            lib.RandomSampler(range(3), num_samples=0)
        with pytest.raises(ValueError, match="batch_size should be a positive integer"):
            lib.BatchSampler(range(3), 0, False)
        with pytest.raises(ValueError, match="drop_last should be a boolean value"):
            lib.BatchSampler(range(3), 2, 1)
        with pytest.raises(ValueError, match="weights should be a 1d sequence"):
            lib.WeightedRandomSampler([[1.0, 2.0]], 2)


def test_weighted_random_sampler():
    weights = [0.0, 1.0, 3.0, 6.0]
    s = tdata.WeightedRandomSampler(weights, 20000, generator=np.random.default_rng(0))
    drawn = np.array(list(s))
    assert len(s) == 20000 and drawn.shape == (20000,)
    assert set(drawn.tolist()) <= {1, 2, 3}
    freq = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(freq, np.array(weights) / sum(weights), atol=0.02)
    no_repl = list(tdata.WeightedRandomSampler(weights, 3, replacement=False))
    assert sorted(no_repl) == [1, 2, 3]
    assert isinstance(s.weights, tracenet.Tensor) and s.weights.dtype is tracenet.float64
    # without replacement, zero weights come last (as torch); more than len(weights) fails
    assert list(tdata.WeightedRandomSampler(weights, 4, replacement=False))[3] == 0
    assert list(rdata.WeightedRandomSampler(weights, 4, replacement=False))[3] == 0
    first = np.bincount([next(iter(tdata.WeightedRandomSampler(weights, 2, replacement=False)))
                         for _ in range(3000)], minlength=4) / 3000
    np.testing.assert_allclose(first, np.array(weights) / sum(weights), atol=0.04)
    for lib in (tdata, rdata):
        with pytest.raises(RuntimeError, match="cannot sample n_sample > prob_dist"):
            list(lib.WeightedRandomSampler(weights, 5, replacement=False))
        for bad in ([-1.0, 1.0], [float("nan"), 1.0]):
            with pytest.raises(RuntimeError, match="probability entry < 0"):
                list(lib.WeightedRandomSampler(bad, 2))
        with pytest.raises(RuntimeError, match="sum of probabilities <= 0"):
            list(lib.WeightedRandomSampler([0.0, 0.0], 2))


@pytest.mark.parametrize("lengths", [[3, 7], [0.3, 0.3, 0.4], [0.5, 0.5], [0.34, 0.33, 0.33],
                                     [1, 0, 9]])
def test_random_split_matches_torch_lengths(lengths):
    ours = tdata.random_split(range(10), lengths, generator=3)
    theirs = rdata.random_split(range(10), lengths, generator=torch.Generator().manual_seed(3))
    assert [len(s) for s in ours] == [len(s) for s in theirs]
    items = [x for s in ours for x in s]
    assert sorted(items) == list(range(10))  # disjoint and covering
    assert all(isinstance(s, tdata.Subset) for s in ours)


def test_random_split_generators_and_errors():
    a = [list(s) for s in tdata.random_split(range(20), [5, 15], generator=7)]
    b = [list(s) for s in tdata.random_split(range(20), [5, 15],
                                             generator=np.random.default_rng(7))]
    assert a == b
    tracenet.manual_seed(11)
    c = [list(s) for s in tdata.random_split(range(20), [5, 15])]
    tracenet.manual_seed(11)
    assert c == [list(s) for s in tdata.random_split(range(20), [5, 15])]
    for lib in (tdata, rdata):
        with pytest.raises(ValueError, match="Sum of input lengths does not equal"):
            lib.random_split(range(10), [3, 3])


def test_datasets_match_torch():
    x, y = np.arange(12.0).reshape(6, 2).astype(np.float32), np.arange(6)
    ours = tdata.TensorDataset(tracenet.tensor(x), tracenet.tensor(y))
    theirs = rdata.TensorDataset(torch.tensor(x), torch.tensor(y))
    assert len(ours) == len(theirs) == 6
    assert to_py(ours[4]) == to_py(theirs[4])
    for lib, mk in ((tdata, tracenet.tensor), (rdata, torch.tensor)):
        with pytest.raises(AssertionError, match="Size mismatch between tensors"):
            lib.TensorDataset(mk(x), mk(y[:5]))
    cat_o = tdata.ConcatDataset([range(3), range(10, 14)])
    cat_t = rdata.ConcatDataset([range(3), range(10, 14)])
    assert len(cat_o) == len(cat_t) == 7
    assert [cat_o[i] for i in range(-7, 7)] == [cat_t[i] for i in range(-7, 7)]
    sub = tdata.Subset(range(100, 110), [9, 0, 4])
    assert [sub[i] for i in range(3)] == [109, 100, 104] and len(sub) == 3
    assert sub.__getitems__([2, 1]) == [104, 100]


class Squares(tdata.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.full((2,), i, dtype=np.float32), "y": i * i, "name": f"n{i}"}


class _Counting:
    """0..n-1, split between workers by get_worker_info(), unless replicate."""
    lib = None

    def __init__(self, n, replicate=False):
        self.n, self.replicate = n, replicate

    def __len__(self):
        return self.n

    def __iter__(self):
        info = self.lib.get_worker_info()
        if info is None or self.replicate:
            return iter(range(self.n))
        return iter(range(info.id, self.n, info.num_workers))


class Counting(_Counting, tdata.IterableDataset):
    lib = tdata


class TorchCounting(_Counting, rdata.IterableDataset):
    lib = rdata


def batches(loader):
    return [to_py(b) for b in loader]


@pytest.mark.parametrize("kw", [dict(batch_size=3), dict(batch_size=3, drop_last=True),
                                dict(batch_size=None), dict(batch_size=4, shuffle=True)])
def test_loader_matches_torch(kw):
    ours, theirs = tdata.DataLoader(Squares(10), **kw), rdata.DataLoader(Squares(10), **kw)
    assert len(ours) == len(theirs)
    got, want = batches(ours), batches(theirs)
    assert len(got) == len(want) == len(ours)
    if not kw.get("shuffle"):
        assert got == want
    else:
        assert sorted(v for b in got for v in b["y"][3]) == [i * i for i in range(10)]
        assert batches(ours) != got  # each epoch reshuffles (equal with chance 1/10!)


def test_loader_lengths_match_torch():
    for n, bs, drop in [(10, 3, False), (10, 3, True), (9, 3, False), (1, 4, False)]:
        for ds_o, ds_t in [(Squares(n), Squares(n)), (Counting(n), TorchCounting(n))]:
            kw = dict(batch_size=bs, drop_last=drop)
            assert len(tdata.DataLoader(ds_o, **kw)) == len(rdata.DataLoader(ds_t, **kw))
    sampler = tdata.BatchSampler(tdata.SequentialSampler(range(7)), 2, True)
    assert len(tdata.DataLoader(range(7), batch_sampler=sampler)) == 3
    assert len(tdata.DataLoader(range(7), batch_size=None)) == 7


def test_loader_iterable_dataset_and_custom_collate():
    assert batches(tdata.DataLoader(Counting(7), batch_size=3)) == \
        batches(rdata.DataLoader(TorchCounting(7), batch_size=3))
    loader = tdata.DataLoader(range(5), batch_size=2, collate_fn=lambda b: sum(b))
    assert list(loader) == [1, 5, 4]
    sampler = tdata.BatchSampler(tdata.SequentialSampler(range(6)), 4, False)
    assert [b.tolist() for b in tdata.DataLoader(range(6), batch_sampler=sampler)] == \
        [[0, 1, 2, 3], [4, 5]]
    loader = tdata.DataLoader(range(6), batch_size=2,
                              sampler=tdata.SubsetRandomSampler([0, 2, 4]))
    assert sorted(v for b in loader for v in b.tolist()) == [0, 2, 4]


def _errors(lib, ds, its):
    cases = [
        dict(batch_sampler=[[0, 1]], batch_size=2),
        dict(batch_sampler=[[0, 1]], shuffle=True),
        dict(batch_sampler=[[0, 1]], sampler=[0, 1]),
        dict(batch_sampler=[[0, 1]], drop_last=True),
        dict(sampler=[0, 1], shuffle=True),
        dict(batch_size=None, drop_last=True),
        dict(num_workers=-1),
        dict(timeout=-1),
        dict(prefetch_factor=2),
        dict(persistent_workers=True),
        dict(multiprocessing_context="fork"),
    ]
    out = []
    for kw in cases:
        with pytest.raises(Exception) as e:
            lib.DataLoader(ds, **kw)
        out.append((type(e.value), str(e.value)))
    for kw in [dict(shuffle=True), dict(sampler=[0]), dict(batch_sampler=[[0]])]:
        with pytest.raises(ValueError) as e:
            lib.DataLoader(its, **kw)
        out.append((type(e.value), str(e.value).split(", but got")[0]))
    return out


def test_loader_errors_match_torch():
    assert _errors(tdata, Squares(4), Counting(3)) == _errors(rdata, Squares(4), TorchCounting(3))
    loader = tdata.DataLoader(range(4))
    with pytest.raises(ValueError, match="batch_size attribute should not be set after "
                                         "DataLoader is initialized"):
        loader.batch_size = 3


def _record_worker(worker_id):
    info = tdata.get_worker_info()
    assert info is not None and info.id == worker_id and info.num_workers == 2
    info.dataset.init_by = worker_id


class Tagged(tdata.Dataset):
    """Each sample says which worker loaded it (and which worker_init_fn ran there)."""
    init_by = None

    def __len__(self):
        return 11

    def __getitem__(self, i):
        info = tdata.get_worker_info()
        wid = -1 if info is None else info.id
        return {"i": i, "x": np.full((3,), i, dtype=np.float64), "wid": wid,
                "init": -1 if self.init_by is None else self.init_by}


class Failing(tdata.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 3:
            raise ValueError("bad sample 3")
        return i


def test_workers_match_single_process():
    plain = batches(tdata.DataLoader(Tagged(), batch_size=2))
    loader = tdata.DataLoader(Tagged(), batch_size=2, num_workers=2,
                              worker_init_fn=_record_worker, persistent_workers=True)
    assert len(loader) == len(plain) == 6
    for _ in range(2):  # a second epoch reuses the persistent workers
        got = batches(loader)
        strip = lambda bs: [(b["i"], b["x"]) for b in bs]  # noqa: E731
        assert strip(got) == strip(plain)
        # round-robin: batch k was loaded by worker k % 2, after worker_init_fn(k % 2)
        assert [b["wid"][3] for b in got] == [[k % 2] * len(b["wid"][3])
                                              for k, b in enumerate(got)]
        assert [b["init"][3] for b in got] == [b["wid"][3] for b in got]
    assert plain[0]["wid"][3] == [-1, -1] and tdata.get_worker_info() is None

    # an IterableDataset is replicated per worker (as torch) unless it splits itself
    rep = tdata.DataLoader(Counting(5, replicate=True), batch_size=2, num_workers=2)
    assert [b.tolist() for b in rep] == [[0, 1], [0, 1], [2, 3], [2, 3], [4], [4]]
    split = tdata.DataLoader(Counting(5), batch_size=2, num_workers=2)
    assert [b.tolist() for b in split] == [b.tolist() for b in rdata.DataLoader(
        TorchCounting(5), batch_size=2, num_workers=2)]

    # an exception in a worker is raised in the main process with its type
    with pytest.raises(ValueError, match="bad sample 3"):
        list(tdata.DataLoader(Failing(), batch_size=1, num_workers=2))


def test_training_loop_from_a_loader():
    tracenet.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]], dtype=np.float32) + 0.3).astype(np.float32)
    ds = tdata.TensorDataset(tracenet.tensor(x), tracenet.tensor(y))
    train, _ = tdata.random_split(ds, [0.75, 0.25], generator=0)
    loader = tdata.DataLoader(train, batch_size=8, shuffle=True, generator=1)
    model = tracenet.nn.Linear(3, 1)
    opt = tracenet.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = tracenet.nn.MSELoss()
    first = None
    for _ in range(15):
        for xb, yb in loader:
            assert tuple(xb.shape) == (8, 3) and tuple(yb.shape) == (8, 1)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
    assert loss.item() < 1e-3 < first
    assert math.isclose(model.bias.item(), 0.3, abs_tol=0.05)


def test_reachable_as_torch_utils_data_after_importing_tracenet():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import tracenet as torch; ds = torch.utils.data.TensorDataset(torch.arange(5)); "
            "print([b[0].tolist() for b in torch.utils.data.DataLoader(ds, batch_size=2)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[0, 1], [2, 3], [4]]"
