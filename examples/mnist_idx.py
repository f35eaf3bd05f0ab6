"""A small reader for MNIST's IDX files (train-images-idx3-ubyte and friends, optionally .gz).

The IDX format: two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
big-endian int32, then the data, big-endian, row-major.
"""
import gzip
import os

import numpy as np

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class IDXError(ValueError):
    """A file that is not a well-formed IDX file."""


def _read_bytes(path):
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head == b"\x1f\x8b":  # gzip, whatever the file is called
            try:
                return gzip.decompress(f.read())
            except (OSError, EOFError) as e:
                raise IDXError(f"{path}: corrupt gzip data ({e})") from None
        return f.read()


def parse_idx(data, name="<bytes>"):
    """The array stored in ``data`` (the bytes of an IDX file)."""
    if len(data) < 4:
        raise IDXError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise IDXError(f"{name}: bad IDX magic number 0x{data[:4].hex()} "
                       "(expected 0x0000 then a type code 08/09/0b/0c/0d/0e and the rank)")
    dtype, ndim = _TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IDXError(f"{name}: truncated IDX header (rank {ndim}, {len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IDXError(f"{name}: size mismatch: shape {shape} of {dtype.name} needs "
                       f"{expected} bytes, the file has {len(data)}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path):
    """The array stored in the IDX file ``path`` (gzip-compressed or not)."""
    return parse_idx(_read_bytes(path), os.fspath(path))


def write_idx(path, array):
    """Write ``array`` as an IDX file (used by the tests; handy for small fixtures)."""
    array = np.asarray(array)
    for code, dtype in _TYPES.items():
        if dtype.kind == array.dtype.kind and dtype.itemsize == array.dtype.itemsize:
            break
    else:
        raise TypeError(f"no IDX type for {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def _find(directory, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{directory}: no {stem} (or {stem}.gz)")


def load_mnist(directory):
    """MNIST from ``directory``: (train_images, train_labels, test_images, test_labels), the
    images uint8 arrays (N, H, W), the labels int64 arrays (N,)."""
    out = {}
    for key, stem in MNIST_FILES.items():
        path = _find(directory, stem)
        array = read_idx(path)
        want = 3 if key.endswith("images") else 1
        if array.ndim != want:
            raise IDXError(f"{path}: expected a rank-{want} array, got shape {array.shape}")
        out[key] = array
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if len(images) != len(labels):
            raise IDXError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise IDXError(f"{directory}: {split} labels outside 0..9")
    return (out["train_images"], out["train_labels"].astype(np.int64),
            out["test_images"], out["test_labels"].astype(np.int64))
