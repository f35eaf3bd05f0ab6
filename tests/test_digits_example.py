"""examples/digits.py (LeNet on real digits) and its IDX reader, examples/mnist_idx.py."""
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

import tracenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
sys.path.insert(0, EXAMPLES)
import mnist_idx  # noqa: E402


def _mnist_dir(tmp_path, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        mnist_idx.write_idx(tmp_path / (name + suffix), a)
    return arrays


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_idx_round_trip(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "u1":
        a = np.abs(a).astype(np.uint8)
    mnist_idx.write_idx(tmp_path / "a.idx", a)
    got = mnist_idx.read_idx(tmp_path / "a.idx")
    assert got.dtype == a.dtype and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, a)


def test_idx_header_by_hand(tmp_path):
    data = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    (tmp_path / "x").write_bytes(data)
    np.testing.assert_array_equal(mnist_idx.read_idx(tmp_path / "x"),
                                  np.arange(6, dtype=np.uint8).reshape(2, 3))
    # the same bytes gzipped, under a name without .gz: detected by its magic number
    (tmp_path / "y").write_bytes(gzip.compress(data))
    np.testing.assert_array_equal(mnist_idx.read_idx(tmp_path / "y"),
                                  np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize("data, match", [
    (b"", "too short"),
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x07", "magic"),
    (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x07", "magic"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01\x02", "size mismatch"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01" + b"\x01\x02", "size mismatch"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
])
def test_corrupt_idx(tmp_path, data, match):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(mnist_idx.IDXError, match=match) as e:
        mnist_idx.read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist(tmp_path, gz):
    arrays = _mnist_dir(tmp_path, gz=gz)
    train_x, train_y, test_x, test_y = mnist_idx.load_mnist(tmp_path)
    np.testing.assert_array_equal(train_x, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test_y, arrays["t10k-labels-idx1-ubyte"])
    assert train_y.dtype == np.int64 and test_x.shape == (4, 28, 28)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        mnist_idx.load_mnist(tmp_path)
    _mnist_dir(tmp_path)
    mnist_idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(mnist_idx.IDXError, match="4 test images but 3 labels"):
        mnist_idx.load_mnist(tmp_path)
    mnist_idx.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((4, 1), np.uint8))
    with pytest.raises(mnist_idx.IDXError, match="rank-1"):
        mnist_idx.load_mnist(tmp_path)


def _run(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, "digits.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _check_output(proc, ckpt, epochs):
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for e in range(1, epochs + 1):
        assert f"epoch {e:2d}/{epochs}: loss " in out, out
    assert "test accuracy: " in out and "%" in out.split("test accuracy: ")[1], out
    state = tracenet.load(str(ckpt))
    assert sorted(state) == sorted(
        f"{m}.{p}" for m in ("conv1", "conv2", "fc1", "fc2", "fc3") for p in ("weight", "bias"))
    assert tuple(state["conv1.weight"].shape) == (6, 1, 5, 5)
    assert tuple(state["fc1.weight"].shape) == (120, 400)


@pytest.mark.parametrize("compiled", [False, True])
def test_digits_short_run(tmp_path, compiled):
    pytest.importorskip("sklearn")
    ckpt = tmp_path / "lenet.pt"
    args = ["--epochs", "2", "--max-batches", "5", "--checkpoint", str(ckpt)]
    proc = _run(tmp_path, *args, *(["--compile"] if compiled else []))
    _check_output(proc, ckpt, 2)
    assert "scikit-learn digits" in proc.stdout


def test_digits_on_mnist_files(tmp_path):
    _mnist_dir(tmp_path, n_train=40, n_test=10, gz=True)
    ckpt = tmp_path / "m.pt"
    proc = _run(tmp_path, "--mnist", str(tmp_path), "--epochs", "1", "--batch-size", "8",
                "--checkpoint", str(ckpt), "--no-progress")
    _check_output(proc, ckpt, 1)
    assert "40 train, 10 test images (MNIST" in proc.stdout


def test_digits_bad_mnist_dir(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x01\x02\x03")
    proc = _run(tmp_path, "--mnist", str(tmp_path), "--checkpoint", str(tmp_path / "x.pt"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "bad IDX magic number" in proc.stderr.strip().splitlines()[-1]


def test_digits_without_sklearn(tmp_path):
    # hide scikit-learn behind a package of the same name that fails to import
    fake = tmp_path / "hide" / "sklearn"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "hide"), ROOT]))
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "digits.py"),
                           "--checkpoint", str(tmp_path / "x.pt")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install '.[examples]'" in lines[0], proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_digits_plot(tmp_path):
    """--plot writes a PNG with matplotlib, and says it cannot without it."""
    pytest.importorskip("sklearn")
    png = tmp_path / "loss.png"
    proc = _run(tmp_path, "--epochs", "1", "--max-batches", "3", "--no-progress",
                "--checkpoint", str(tmp_path / "p.pt"), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists() and "matplotlib is not installed" in proc.stderr
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
