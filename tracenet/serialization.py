"""``tracenet.save`` / ``tracenet.load``: checkpoints in PyTorch's file format.

``save`` writes the zip archive ``torch.save`` writes (``<name>/data.pkl`` plus one raw file per
storage under ``<name>/data/``), so ``torch.load(f, weights_only=True)`` reads it. Tensors are
pickled as ``torch._utils._rebuild_tensor_v2`` calls whose storage is a persistent id
``('storage', <torch storage type>, key, 'cpu', numel)``; tensors that share memory share one
storage. The writer never imports torch: the ``torch.*`` globals are written by name.

``load`` reads those archives (from ``torch.save`` or ``tracenet.save``), torch's legacy
non-zip format, and the plain pickles earlier tracenet versions wrote. By default
(``weights_only=True``) every global the pickle names goes through an allow-list (tensor and
parameter rebuild functions, storage types, dtypes, ``OrderedDict`` and the builtin containers
and numbers), so a file that would run code is refused with ``pickle.UnpicklingError`` before
anything in it runs.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from . import _dtype
from .nn import parameter as _param_mod
from .nn.parameter import Parameter
from .size import Size
from .tensor import Tensor, _check_device, _rebuild, device

_ALIGNMENT = 64
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

# torch storage type name -> numpy dtype of its elements, and the dtype tracenet loads it as
_STORAGE_NP = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64,
    "BoolStorage": np.bool_, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
}
_NP_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
               np.dtype(np.int64): "LongStorage", np.dtype(np.bool_): "BoolStorage"}
_TORCH_DTYPES = {"float32": _dtype.float32, "float": _dtype.float32, "float64": _dtype.float64,
                 "double": _dtype.float64, "int64": _dtype.int64, "long": _dtype.int64,
                 "bool": _dtype.bool_}


# --- writing -------------------------------------------------------------------------------

class _Global:
    """A module-level name written into the pickle as a GLOBAL without importing its module."""
    _interned = {}

    def __new__(cls, module, name):
        key = (module, name)
        if key not in cls._interned:
            obj = object.__new__(cls)
            obj.module, obj.name = module, name
            cls._interned[key] = obj
        return cls._interned[key]

    def __call__(self, *args):  # pickle checks that a reduce function is callable
        raise TypeError(f"{self.module}.{self.name} is only a name to write into a pickle")


class _TorchPickler(pickle._Pickler):
    """The pure-Python pickler (protocol 2, as torch writes), with tensors, dtypes, sizes and
    devices written as the torch objects they correspond to."""

    def __init__(self, file, storages):
        super().__init__(file, protocol=2)
        self._storages = storages  # id(root array) -> (key, root array, storage type)

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _dtype.dtype):
            obj = _Global("torch", obj.name)  # written as the bare global torch.float32
        if isinstance(obj, _Global):
            x = self.memo.get(id(obj))
            if x is not None:
                self.write(self.get(x[0]))
                return
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
            self.memoize(obj)
            return
        super().save(obj, save_persistent_id)

    def reducer_override(self, obj):
        if isinstance(obj, Tensor):
            return self._reduce_tensor(obj)
        if isinstance(obj, Size):
            return (_Global("torch", "Size"), (tuple(obj),))
        if isinstance(obj, device):
            return (_Global("torch", "device"), ("cpu",))
        return NotImplemented

    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            return self.save(obj)
        return super().save_global(obj, name)

    def _reduce_tensor(self, t):
        if t._data is None:
            raise RuntimeError("tracenet.save: cannot save a traced tensor (it has no values "
                               "until the compiled function runs)")
        arr = t._data
        storage, offset, strides = self._storage_of(arr)
        rebuild = (_Global("torch._utils", "_rebuild_tensor_v2"),
                   (storage, offset, tuple(arr.shape), strides,
                    bool(t._req) and not isinstance(t, Parameter), collections.OrderedDict()))
        if isinstance(t, Parameter):
            return (_Global("torch._utils", "_rebuild_parameter"),
                    (_Reduced(rebuild), bool(t._req), collections.OrderedDict()))
        return rebuild

    def _storage_of(self, arr):
        """(storage token, element offset, element strides) of ``arr``: the whole memory block it
        views when that block is a C-contiguous array of the same dtype, else a copy of its
        own."""
        itemsize = arr.dtype.itemsize
        root = arr
        # (up to the array of this dtype that the others view: not the raw bytes an aligned
        # array lies in, see tracenet/_aligned.py)
        while isinstance(root.base, np.ndarray) and root.base.dtype == arr.dtype:
            root = root.base
        ptr = arr.__array_interface__["data"][0]
        rptr = root.__array_interface__["data"][0] if root.size else ptr
        usable = (root.dtype == arr.dtype and root.flags.c_contiguous
                  and arr.dtype in _NP_STORAGE and root.dtype.isnative
                  and all(s >= 0 and s % itemsize == 0 for s in arr.strides)
                  and (ptr - rptr) % itemsize == 0 and ptr >= rptr)
        if not usable:
            root = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
            if root.dtype not in _NP_STORAGE:
                raise TypeError(f"tracenet.save: unsupported tensor element type {arr.dtype}")
            ptr = rptr = root.__array_interface__["data"][0]
            arr = root
        entry = self._storages.get(id(root))
        if entry is None:
            entry = (str(len(self._storages)), root)
            self._storages[id(root)] = entry
        key = entry[0]
        offset = (ptr - rptr) // itemsize if root.size else 0
        strides = tuple(s // itemsize for s in arr.strides)
        if arr.size <= 1:  # torch's contiguous strides for empty / one-element tensors
            strides = _contiguous_strides(arr.shape)
        return _Storage(_Global("torch", _NP_STORAGE[root.dtype]), key, root.size), offset, strides

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


class _Storage:
    __slots__ = ("type", "key", "numel")

    def __init__(self, type_, key, numel):
        self.type, self.key, self.numel = type_, key, numel


class _Reduced:
    """A nested reduce value (a Parameter's inner tensor)."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return self.value


def _contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def _padding_extra(offset, name):
    """The zip extra field ("FB" + padding) that puts the record's data at a multiple of 64."""
    start = offset + 30 + len(name.encode("utf-8"))
    pad = -(start + 4) % _ALIGNMENT
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad


def save(obj, f, pickle_module=None, pickle_protocol=2, _use_new_zipfile_serialization=True):
    """Save ``obj`` in PyTorch's zip checkpoint format (readable by ``torch.load``)."""
    if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
        with open(f, "wb") as fh:
            return _save(obj, fh, _archive_name(f))
    return _save(obj, f, "archive")


def _archive_name(path):
    name = os.path.splitext(os.path.basename(os.fsdecode(path)))[0]
    return name or "archive"


def _save(obj, fh, name):
    storages = {}
    buf = io.BytesIO()
    _TorchPickler(buf, storages).dump(obj)
    records = [("data.pkl", buf.getvalue()), (".format_version", b"1"),
               (".storage_alignment", str(_ALIGNMENT).encode()), ("byteorder", b"little")]
    for key, root in storages.values():
        records.append((f"data/{key}", np.ascontiguousarray(root).tobytes()))
    records.append(("version", b"3\n"))
    records.append((".data/serialization_id", str(int.from_bytes(os.urandom(16), "little"))
                    .rjust(40, "0")[:40].encode()))
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as z:
        for rec, data in records:
            full = f"{name}/{rec}"
            info = zipfile.ZipInfo(full, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.extra = _padding_extra(z.fp.tell() if z.fp.seekable() else z.start_dir, full)
            z.writestr(info, data)


# --- reading -------------------------------------------------------------------------------

class _StorageType:
    __slots__ = ("name", "np")

    def __init__(self, name):
        self.name, self.np = name, np.dtype(_STORAGE_NP[name])


def _as_supported(arr, storage_name):
    """Storages of types tracenet has no dtype for load as the nearest one it has."""
    if storage_name == "BFloat16Storage":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu" and arr.dtype != np.int64:
        return arr.astype(np.int64)
    return arr


class _LoadedStorage:
    """A storage read from a checkpoint: its flat numpy array."""
    __slots__ = ("array", "key", "uses")

    def __init__(self, array, key):
        self.array, self.key, self.uses = array, key, 0


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    t = _rebuild_tensor(storage, storage_offset, size, stride)
    if requires_grad:
        t._requires_grad = True
    return t


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _LoadedStorage):
        raise pickle.UnpicklingError("tensor rebuild without a storage")
    flat = storage.array
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    storage.uses += 1
    itemsize = flat.dtype.itemsize
    if any(n == 0 for n in size):
        arr = np.empty(size, dtype=flat.dtype)
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if storage_offset < 0 or last >= flat.size or any(s < 0 for s in stride):
            raise RuntimeError(f"corrupt checkpoint: tensor of size {list(size)} at offset "
                               f"{storage_offset} does not fit its storage of {flat.size} "
                               "elements")
        arr = np.lib.stride_tricks.as_strided(flat[storage_offset:], size,
                                              tuple(s * itemsize for s in stride))
    t = Tensor._wrap(arr)
    t._loaded_from = storage
    return t


def _rebuild_parameter(data, requires_grad, backward_hooks=None, state=None):
    p = Parameter(data, bool(requires_grad) and data.dtype.is_floating_point)
    p._loaded_from = getattr(data, "_loaded_from", None)
    return p


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _torch_dtype(name):
    def missing(*args, **kwargs):
        raise TypeError(f"tracenet has no dtype torch.{name}")
    return _TORCH_DTYPES.get(name, missing)


def _torch_global(module, name):
    """What a ``torch.*`` global in a checkpoint stands for in tracenet (or None)."""
    if module == "torch._utils":
        return {"_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor": _rebuild_tensor,
                "_rebuild_parameter": _rebuild_parameter,
                "_rebuild_parameter_with_state": _rebuild_parameter_with_state}.get(name)
    if module == "torch":
        if name in _STORAGE_NP:
            return _StorageType(name)
        if name == "Size":
            return Size
        if name == "device":
            return device
        if name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
    return None


def _legacy_numpy():
    names = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(mod, "_reconstruct")] = ("numpy._core.multiarray", "_reconstruct")
        names[(mod, "scalar")] = ("numpy._core.multiarray", "scalar")
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        names[(mod, "_frombuffer")] = ("numpy._core.numeric", "_frombuffer")
    names[("numpy", "ndarray")] = ("numpy", "ndarray")
    names[("numpy", "dtype")] = ("numpy", "dtype")
    return names


_NUMPY_ALLOWED = _legacy_numpy()
_BUILTINS_ALLOWED = {"set", "frozenset", "complex", "slice", "bytearray", "bytes", "int",
                     "float", "bool", "str", "list", "tuple", "dict", "range"}


def _tracenet_legacy(module, name):
    """Globals in the plain pickles earlier tracenet versions wrote."""
    table = {("tracenet.tensor", "_rebuild"): _rebuild,
             ("tracenet.tensor", "Tensor"): Tensor,
             ("tracenet.tensor", "device"): device,
             ("tracenet.nn.parameter", "_rebuild_parameter"): _param_mod._rebuild_parameter,
             ("tracenet.nn.parameter", "Parameter"): _param_mod.Parameter,
             ("tracenet._dtype", "_by_name"): _dtype._by_name,
             ("tracenet.size", "Size"): Size}
    return table.get((module, name))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, weights_only, storage_loader):
        super().__init__(file, encoding="latin1")
        self._weights_only = weights_only
        self._storage_loader = storage_loader

    def find_class(self, module, name):
        found = _torch_global(module, name)
        if found is None and module.startswith("torch"):
            if module == "torch" and (name.endswith("Storage") or name in (
                    "float16", "half", "bfloat16", "int32", "int16", "int8", "uint8",
                    "complex64", "complex128")):
                return _torch_dtype(name)
        if found is not None:
            return found
        found = _tracenet_legacy(module, name)
        if found is not None:
            return found
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:
            return getattr(__import__("builtins"), name)
        if module == "_codecs" and name == "encode":  # protocol-2 pickles of bytes
            import _codecs
            return _codecs.encode
        if (module, name) in _NUMPY_ALLOWED:
            mod, attr = _NUMPY_ALLOWED[(module, name)]
            return getattr(__import__(mod, fromlist=[attr]), attr)
        if self._weights_only:
            raise pickle.UnpicklingError(
                f"weights-only load refused the global {module}.{name}: the file names code "
                "to run, not just tensors and containers. Load it with weights_only=False "
                "only if you trust where it came from.")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in checkpoint")
        return self._storage_loader(pid)


def _location_map(map_location):
    """A function (array, location) -> array applying ``map_location``."""
    if map_location is None:
        def apply(arr, location):
            _check_location(location)
            return arr
    elif callable(map_location) and not isinstance(map_location, device):
        def apply(arr, location):
            result = map_location(arr, location)
            if result is None:
                _check_location(location)
                return arr
            if isinstance(result, str) or isinstance(result, device):
                _check_location(str(result))
                return arr
            if isinstance(result, _LoadedStorage):
                return result.array
            return np.asarray(result)
    elif isinstance(map_location, dict):
        def apply(arr, location):
            _check_location(str(map_location.get(location, location)))
            return arr
    else:
        _check_location(str(map_location))

        def apply(arr, location):
            return arr
    return apply


def _check_location(location):
    location = str(location)
    if location.split(":")[0] != "cpu":
        if location.startswith("cuda"):
            raise RuntimeError(f"the checkpoint wants device {location!r}, but tracenet runs "
                               "on the CPU only; pass map_location='cpu'")
        _check_device(location)


def load(f, map_location=None, pickle_module=None, *, weights_only=True, mmap=None,
         **pickle_load_args):
    """Load a checkpoint written by ``tracenet.save`` or ``torch.save`` (or an older tracenet's
    plain pickle). ``weights_only`` (the default) refuses any global outside the allow-list."""
    if weights_only is None:
        weights_only = True
    where = os.fsdecode(f) if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__") else None
    if where is not None:
        with open(f, "rb") as fh:
            data = fh.read()
    else:
        data = f.read()
    if isinstance(data, str):
        raise TypeError("tracenet.load needs a binary file (open it with 'rb')")
    desc = where or "the checkpoint"
    mapper = _location_map(map_location)
    if data[:4] == b"PK\x03\x04":
        return _load_zip(data, desc, weights_only, mapper)
    if not data:
        raise RuntimeError(f"{desc} is empty, not a checkpoint")
    return _load_pickle(data, desc, weights_only, mapper)


def _corrupt(desc, err):
    return RuntimeError(f"{desc} is truncated or corrupt and cannot be loaded ({err})")


def _finish(tensors):
    # a tensor alone on its storage gets contiguous memory of its own (torch keeps strides;
    # here a lone non-contiguous view would only keep the rest of its storage alive)
    for t in tensors:
        st = t.__dict__.pop("_loaded_from", None)
        if st is not None and st.uses == 1 and not t._data.flags.c_contiguous:
            t._data = np.ascontiguousarray(t._data)


def _load_zip(data, desc, weights_only, mapper):
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, struct.error) as err:
        raise _corrupt(desc, err) from None
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
        raise RuntimeError(f"{desc} is a zip archive without a data.pkl record: not a "
                           "checkpoint")
    prefix = pkl[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = z.read(prefix + "byteorder").decode().strip()
    loaded, tensors = {}, []

    def storage_loader(pid):
        _, stype, key, location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {stype!r} in checkpoint")
        if key not in loaded:
            try:
                raw = z.read(f"{prefix}data/{key}")
            except (KeyError, zipfile.BadZipFile, OSError, ValueError, struct.error) as err:
                raise _corrupt(desc, err) from None
            dt = stype.np if byteorder == "little" else stype.np.newbyteorder(">")
            if len(raw) < int(numel) * dt.itemsize:
                raise _corrupt(desc, f"storage {key} holds {len(raw)} bytes, "
                                     f"needs {int(numel) * dt.itemsize}")
            arr = np.frombuffer(bytearray(raw[:int(numel) * dt.itemsize]), dtype=dt)
            arr = _as_supported(arr.astype(stype.np, copy=False), stype.name)
            loaded[key] = _LoadedStorage(mapper(arr, location), key)
        return loaded[key]

    try:
        raw = z.read(pkl[0])
    except (zipfile.BadZipFile, OSError, ValueError, struct.error) as err:
        raise _corrupt(desc, err) from None
    unpickler = _Unpickler(io.BytesIO(raw), weights_only, storage_loader)
    result = _run(unpickler, desc, tensors)
    _finish(tensors)
    return result


def _run(unpickler, desc, tensors):
    try:
        result = unpickler.load()
    except pickle.UnpicklingError as err:
        if "refused the global" in str(err):
            raise
        raise _corrupt(desc, err) from None
    except (EOFError, struct.error, IndexError) as err:
        raise _corrupt(desc, err or "unexpected end of data") from None
    _collect(result, tensors, set())
    return result


def _collect(obj, out, seen):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, out, seen)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _collect(v, out, seen)


def _load_pickle(data, desc, weights_only, mapper):
    """A plain pickle: torch's legacy format (magic number first) or an earlier tracenet's."""
    fh = io.BytesIO(data)
    pending, tensors = {}, []

    def storage_loader(pid):
        if len(pid) < 6:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in checkpoint")
        _, stype, key, location, numel, view = pid[:6]
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {stype!r} in checkpoint")
        if key not in pending:
            pending[key] = (_LoadedStorage(np.zeros(int(numel), dtype=stype.np), key), stype,
                            location)
        st = pending[key][0]
        if view is not None:
            view_key, offset, size = view
            sub = pending.setdefault(("view", view_key), (
                _LoadedStorage(st.array[offset:offset + size], view_key), stype, location))
            return sub[0]
        return st

    first = _Unpickler(fh, weights_only, storage_loader)
    try:
        magic = first.load()
    except pickle.UnpicklingError as err:
        if "refused the global" in str(err):
            raise
        raise _corrupt(desc, err) from None
    except (EOFError, struct.error, IndexError, ValueError) as err:
        raise _corrupt(desc, err or "unexpected end of data") from None
    if not (type(magic) is int and magic == _LEGACY_MAGIC):
        # an earlier tracenet's plain pickle: the object itself
        if fh.read(1):
            raise _corrupt(desc, "trailing data after the pickle")
        return magic
    try:
        protocol = _Unpickler(fh, True, storage_loader).load()
        if protocol != _LEGACY_PROTOCOL:
            raise RuntimeError(f"{desc}: unsupported legacy checkpoint protocol {protocol}")
        sys_info = _Unpickler(fh, True, storage_loader).load()
        if not sys_info.get("little_endian", True):
            raise RuntimeError(f"{desc}: big-endian legacy checkpoints are not supported")
        result = _run(_Unpickler(fh, weights_only, storage_loader), desc, tensors)
        keys = _Unpickler(fh, True, storage_loader).load()
        for key in keys:
            st, stype, location = pending[key]
            (numel,) = struct.unpack("<q", fh.read(8))
            nbytes = numel * stype.np.itemsize
            raw = fh.read(nbytes)
            if len(raw) != nbytes or numel != st.array.size:
                raise _corrupt(desc, f"storage {key} is short")
            st.array[...] = np.frombuffer(raw, dtype=stype.np)
    except (EOFError, struct.error, KeyError, ValueError) as err:
        raise _corrupt(desc, err or "unexpected end of data") from None
    # convert unsupported element types and apply map_location once the data is in
    for key, (st, stype, location) in pending.items():
        if isinstance(key, tuple):
            continue
        mapper(st.array, location)
    for t in tensors:
        st = t.__dict__.get("_loaded_from")
        stype = next((s for (lst, s, _) in pending.values() if lst is st), None)
        if stype is not None and stype.np not in _NP_STORAGE:
            t._data = _as_supported(np.ascontiguousarray(t._data), stype.name)
    _finish(tensors)
    return result


__all__ = ["save", "load"]
