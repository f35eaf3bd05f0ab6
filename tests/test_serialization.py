"""tracenet.save / tracenet.load: PyTorch's checkpoint format, both directions, weights-only."""
import io
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

import tracenet as tn


def to_torch(obj):
    if isinstance(obj, tn.Tensor):
        return torch.from_numpy(np.array(obj._data))
    if isinstance(obj, dict):
        return type(obj)((k, to_torch(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_torch(v) for v in obj)
    return obj


def assert_same(a, b):
    """a (tracenet) and b (torch) hold the same structure, dtypes and values."""
    if isinstance(b, torch.Tensor):
        assert isinstance(a, tn.Tensor), (type(a), b)
        assert str(a.dtype) == str(b.dtype)
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    elif isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b)
        assert isinstance(a, OrderedDict) == isinstance(b, OrderedDict)
        for k in b:
            assert_same(a[k], b[k])
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b), (a, b)


def lenet(lib):
    lib.manual_seed(0)
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 120),
                         nn.ReLU(), nn.Linear(120, 10), nn.BatchNorm1d(10))


def trained(lib, opt_name):
    model = lenet(lib)
    if opt_name == "sgd":
        opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    x = lib.from_numpy(np.random.RandomState(0).rand(4, 1, 28, 28).astype(np.float32))
    loss = (model(x) ** 2).mean()
    loss.backward()
    opt.step()
    return model, opt


@pytest.fixture
def path(tmp_path):
    return tmp_path / "ckpt.pt"


def test_archive_layout_matches_torch(path):
    tn.save({"a": tn.ones(2, 3)}, path)
    names = zipfile.ZipFile(path).namelist()
    for rec in ("ckpt/data.pkl", "ckpt/data/0", "ckpt/version", "ckpt/byteorder"):
        assert rec in names
    # the storages start 64-byte aligned, so torch.load(..., mmap=True) works too
    loaded = torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(loaded["a"], torch.ones(2, 3))


def test_writer_does_not_import_torch(tmp_path):
    import subprocess
    import sys
    code = ("import sys, tracenet as tn; tn.save({'a': tn.ones(2), 'd': tn.float64}, "
            f"{str(tmp_path / 'x.pt')!r}); tn.load({str(tmp_path / 'x.pt')!r}); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_checkpoint_tracenet_to_torch(path, opt_name):
    model, opt = trained(tn, opt_name)
    ckpt = {"epoch": 3, "model": model.state_dict(), "optim": opt.state_dict()}
    tn.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    assert_same(tn.load(path), loaded)  # and tracenet reads its own file the same way
    assert loaded["epoch"] == 3
    assert_same(ckpt["model"], loaded["model"])
    assert_same(ckpt["optim"], loaded["optim"])
    # torch can resume from it
    tmodel, topt = trained(torch, opt_name)
    tmodel.load_state_dict(loaded["model"])
    topt.load_state_dict(loaded["optim"])


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_checkpoint_torch_to_tracenet(path, opt_name):
    model, opt = trained(torch, opt_name)
    ckpt = {"epoch": 3, "model": model.state_dict(), "optim": opt.state_dict()}
    torch.save(ckpt, path)
    loaded = tn.load(path)
    assert_same(loaded, ckpt)
    tmodel, topt = trained(tn, opt_name)
    tmodel.load_state_dict(loaded["model"])
    topt.load_state_dict(loaded["optim"])
    for (k, a), b in zip(tmodel.state_dict().items(), ckpt["model"].values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def test_resumed_training_matches(path):
    """A torch checkpoint resumed in tracenet takes the same next step as torch does (SGD with
    momentum: Adam would magnify the rounding noise in the near-zero gradients of the biases
    feeding the BatchNorm)."""
    model, opt = trained(torch, "sgd")
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
    ck = tn.load(path)
    tmodel, topt = trained(tn, "sgd")
    tmodel.load_state_dict(ck["model"])
    topt.load_state_dict(ck["optim"])
    x = np.random.RandomState(1).rand(4, 1, 28, 28).astype(np.float32)
    for lib, m, o in ((torch, model, opt), (tn, tmodel, topt)):
        o.zero_grad()
        (m(lib.from_numpy(x)) ** 2).mean().backward()
        o.step()
    for a, b in zip(tmodel.parameters(), model.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-5)


def dtype_cases(lib):
    return {
        "f32": lib.arange(6, dtype=lib.float32).reshape(2, 3),
        "f64": lib.tensor([1.5, -2.25], dtype=lib.float64),
        "i64": lib.tensor([[1, -2], [3, 2 ** 40]]),
        "bool": lib.tensor([True, False, True]),
        "zero_dim": lib.tensor(7.5),
        "zero_dim_long": lib.tensor(3),
        "empty": lib.zeros(0, 4),
        "list": [lib.ones(1), (lib.zeros(2), "x", 1.5, None, True)],
        "od": OrderedDict(b=lib.ones(2), a=2),
        "bytes": b"\x00\x01",
        "set": {1, 2},
    }


def test_dtypes_and_containers_both_directions(path):
    tn.save(dtype_cases(tn), path)
    assert_same(tn.load(path), torch.load(path, weights_only=True))
    assert_same(tn.load(path), dtype_cases(torch))
    torch.save(dtype_cases(torch), path)
    assert_same(tn.load(path), dtype_cases(torch))


def test_dtype_size_device_objects(path):
    tn.save({"dt": tn.float64, "size": tn.Size([2, 3]), "dev": tn.device("cpu")}, path)
    t = torch.load(path, weights_only=True)
    assert t == {"dt": torch.float64, "size": torch.Size([2, 3]), "dev": torch.device("cpu")}
    torch.save(t, path)
    back = tn.load(path)
    assert back["dt"] is tn.float64 and back["size"] == tn.Size([2, 3])
    assert str(back["dev"]) == "cpu"


def test_views_keep_values_and_shared_storage(path):
    base = tn.arange(12.0).reshape(3, 4)
    tn.save({"base": base, "t": base.t(), "row": base[1], "col": base[:, 2]}, path)
    t = torch.load(path, weights_only=True)
    ref = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(t["t"], ref.t()) and t["t"].stride() == (1, 4)
    assert torch.equal(t["row"], ref[1]) and torch.equal(t["col"], ref[:, 2])
    ptrs = {t[k].untyped_storage().data_ptr() for k in t}
    assert len(ptrs) == 1  # one storage, as torch.save would write it
    back = tn.load(path)
    for k in ("t", "row", "col"):
        assert np.shares_memory(back[k].numpy(), back["base"].numpy())
    back["base"].add_(1)
    np.testing.assert_array_equal(back["col"].numpy(), ref[:, 2].numpy() + 1)

    # torch -> tracenet, views without their base in the file
    torch.save({"t": ref.t(), "col": ref[:, 1]}, path)
    back = tn.load(path)
    np.testing.assert_array_equal(back["t"].numpy(), ref.t().numpy())
    np.testing.assert_array_equal(back["col"].numpy(), ref[:, 1].numpy())
    assert np.shares_memory(back["t"].numpy(), back["col"].numpy())


def test_lone_noncontiguous_view_loads_contiguous(path):
    torch.save({"col": torch.arange(12.0).reshape(3, 4)[:, 1]}, path)
    col = tn.load(path)["col"]
    assert col.numpy().flags.c_contiguous and col.numpy().base is None or \
        col.numpy().size == 3
    np.testing.assert_array_equal(col.numpy(), [1.0, 5.0, 9.0])


def test_flipped_and_odd_views_are_copied(path):
    x = tn.arange(6.0)
    flipped = tn.from_numpy(x.numpy()[::-1])  # a negative-stride view torch can't express
    tn.save({"f": flipped}, path)
    np.testing.assert_array_equal(torch.load(path, weights_only=True)["f"].numpy(),
                                  [5, 4, 3, 2, 1, 0])


def test_parameters_and_requires_grad(path):
    p = tn.nn.Parameter(tn.ones(2))
    q = tn.ones(3).requires_grad_()
    tn.save({"p": p, "q": q}, path)
    t = torch.load(path, weights_only=True)
    assert isinstance(t["p"], torch.nn.Parameter) and t["p"].requires_grad
    assert t["q"].requires_grad and not isinstance(t["q"], torch.nn.Parameter)
    torch.save(t, path)
    back = tn.load(path)
    assert isinstance(back["p"], tn.nn.Parameter) and back["p"].requires_grad
    assert back["q"].requires_grad


def test_whole_tensor_identity_is_kept(path):
    w = tn.ones(2)
    tn.save([w, w], path)
    a, b = tn.load(path)
    assert a is b
    a, b = torch.load(path, weights_only=True)
    assert a is b


def test_torch_types_without_tracenet_dtype_load_as_nearest(path):
    torch.save({"i32": torch.tensor([1, 2], dtype=torch.int32),
                "u8": torch.tensor([255], dtype=torch.uint8),
                "f16": torch.tensor([1.5], dtype=torch.float16),
                "bf16": torch.tensor([2.5], dtype=torch.bfloat16)}, path)
    back = tn.load(path)
    assert back["i32"].dtype is tn.int64 and back["i32"].tolist() == [1, 2]
    assert back["u8"].tolist() == [255]
    assert back["f16"].dtype is tn.float32 and back["f16"].tolist() == [1.5]
    assert back["bf16"].dtype is tn.float32 and back["bf16"].tolist() == [2.5]


def test_torch_legacy_format(path):
    ref = torch.arange(12.0).reshape(3, 4)
    obj = {"w": ref, "col": ref[:, 1], "n": 5, "b": torch.tensor([True]),
           "h": torch.tensor([1, 2], dtype=torch.int32)}
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    back = tn.load(path)
    np.testing.assert_array_equal(back["w"].numpy(), ref.numpy())
    np.testing.assert_array_equal(back["col"].numpy(), ref[:, 1].numpy())
    assert back["n"] == 5 and back["b"].tolist() == [True] and back["h"].tolist() == [1, 2]


def test_file_objects_and_bytesio():
    buf = io.BytesIO()
    tn.save({"a": tn.ones(2)}, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=True)["a"], torch.ones(2))
    buf.seek(0)
    assert tn.load(buf)["a"].tolist() == [1.0, 1.0]
    buf = io.BytesIO()
    torch.save({"a": torch.ones(2)}, buf)
    buf.seek(0)
    assert tn.load(buf)["a"].tolist() == [1.0, 1.0]


def test_reads_previous_tracenet_plain_pickles(path):
    # what the previous tracenet.save wrote: a plain pickle of tracenet objects
    model = lenet(tn)
    obj = {"model": model.state_dict(), "p": tn.nn.Parameter(tn.ones(2)), "d": tn.float64,
           "s": tn.Size([1])}
    for proto in (2, 4, 5):
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=proto)
        back = tn.load(path)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(back["model"][k].numpy(), v.numpy())
        assert isinstance(back["p"], tn.nn.Parameter) and back["d"] is tn.float64


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("kind", ["torch_zip", "plain_pickle", "torch_legacy"])
def test_code_in_file_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"w": torch.ones(2), "x": _Payload(marker)}
    if kind == "torch_zip":
        torch.save(obj, path)
    elif kind == "torch_legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"x": _Payload(marker)}, fh)
    with pytest.raises(pickle.UnpicklingError, match=r"refused the global (posix|os|nt)\.system"):
        tn.load(path)
    with pytest.raises(pickle.UnpicklingError):
        tn.load(path, weights_only=None)
    assert not marker.exists()


def test_weights_only_false_allows_trusted_objects(path):
    tn.save({"f": OrderedDict, "fn": np.add}, path)
    with pytest.raises(pickle.UnpicklingError, match="numpy.add"):
        tn.load(path)
    assert tn.load(path, weights_only=False)["fn"] is np.add


def test_truncated_and_corrupt_files(tmp_path):
    path = tmp_path / "c.pt"
    tn.save({"a": tn.arange(100.0)}, path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        (tmp_path / "t.pt").write_bytes(data[:cut])
        with pytest.raises(RuntimeError, match="truncated or corrupt"):
            tn.load(tmp_path / "t.pt")
    (tmp_path / "g.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(RuntimeError, match="truncated or corrupt"):
        tn.load(tmp_path / "g.pt")
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(RuntimeError, match="empty"):
        tn.load(tmp_path / "e.pt")
    # a plain pickle cut short
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": [1, 2, 3]})[:-5])
    with pytest.raises(RuntimeError, match="truncated or corrupt"):
        tn.load(tmp_path / "p.pt")


def test_map_location(path):
    tn.save({"a": tn.ones(2)}, path)
    for loc in ("cpu", tn.device("cpu"), torch.device("cpu"), lambda s, loc: s,
                lambda s, loc: None, {"cpu": "cpu"}):
        assert tn.load(path, map_location=loc)["a"].tolist() == [1.0, 1.0]
    seen = []
    tn.load(path, map_location=lambda s, loc: seen.append(loc))
    assert seen == ["cpu"]
    for loc in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(RuntimeError, match="cuda"):
            tn.load(path, map_location=loc)


def test_cuda_checkpoint_needs_map_location(path):
    # rewrite a torch checkpoint's storage location to 'cuda:0', as a GPU save would have it
    torch.save({"a": torch.ones(2)}, path)
    z = zipfile.ZipFile(path)
    recs = {n: z.read(n) for n in z.namelist()}
    pkl = [n for n in recs if n.endswith("data.pkl")][0]
    recs[pkl] = recs[pkl].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    with zipfile.ZipFile(path, "w") as out:
        for n, d in recs.items():
            out.writestr(n, d)
    with pytest.raises(RuntimeError, match="cuda:0.*map_location='cpu'"):
        tn.load(path)
    assert tn.load(path, map_location="cpu")["a"].tolist() == [1.0, 1.0]
    assert tn.load(path, map_location={"cuda:0": "cpu"})["a"].tolist() == [1.0, 1.0]


def test_module_save_load_state_dict_roundtrip(path):
    model, _ = trained(tn, "sgd")
    tn.save(model.state_dict(), path)
    fresh = lenet(tn)
    fresh.load_state_dict(tn.load(path))
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
