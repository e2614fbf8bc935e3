"""Read tensors out of a PyTorch-Lightning checkpoint without executing anything it pickled.

Lightning checkpoints (``torch.save`` zip format: ``<name>/data.pkl`` plus one ``<name>/data/<key>`` record per
storage) often hold objects that ``torch.load(weights_only=True)`` refuses: DCFace's ``dcface_3x3.ckpt`` keeps its
hydra config in ``hyper_parameters`` as OmegaConf objects and a ``functools.partial``. Loading them with
``weights_only=False`` would import and call whatever the pickle names.

This module unpickles ``data.pkl`` with :class:`RestrictedUnpickler`: ``find_class`` resolves only

* ``collections.OrderedDict``, ``torch.Size`` and torch dtypes (``torch.float32`` ...),
* the storage type names (``torch.FloatStorage`` ...), which become dtype markers,
* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, which become functions here that only record the
  tensor layout,

and every other global becomes an inert stub class (:class:`PickledGlobal` subclass) that records its name and
the arguments and state pickle hands it, and never calls anything. Storage bytes are read lazily, each record at
most once, with :mod:`zipfile` (no mmap): :func:`read_state_dict` reads only the storages of the requested entry
(not, say, the optimizer state), :func:`read_entries` reads all of them.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "PickledGlobal",
    "RestrictedUnpickler",
    "read_entries",
    "read_state_dict",
]

_CHUNK = 16 << 20

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}

_DTYPE_NAMES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128",
)  # fmt: skip


class CheckpointError(ValueError):
    """A file is not a readable torch zip checkpoint, or lacks what was asked for."""


class PickledGlobal:
    """Base of the inert stand-ins for globals the reader does not allow.

    A subclass per pickled name; its ``global_name`` is ``"module.qualname"``. Instances record what pickle gave
    them (``args``/``kwargs`` from REDUCE or NEWOBJ, ``state`` from BUILD, ``items`` from SETITEM(S),
    ``list_items`` from APPEND(S)); nothing is ever imported or called.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledGlobal:
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.items = {}
        obj.list_items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<stub {self.global_name} args={self.args!r} kwargs={self.kwargs!r} state={self.state!r}>"


class _StorageKind:
    """What ``torch.<X>Storage`` resolves to: the element dtype only."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage kind {self.name}>"


class _StorageRef:
    def __init__(self, key: str, dtype: torch.dtype, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel


class _TensorRef:
    """A tensor whose bytes are not read yet: storage record plus layout."""

    def __init__(self, storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool) -> None:
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)
        self.requires_grad = requires_grad


class _Rebuild:
    """Stands in for ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``: records, reads nothing.

    A fresh instance per ``find_class`` call, refusing BUILD, so a crafted pickle cannot alter shared state.
    """

    def __init__(self, parameter: bool) -> None:
        self._parameter = parameter

    def __call__(self, *args: Any) -> Any:
        if self._parameter:  # (data, requires_grad, backward_hooks[, state]): the tensor record itself
            return args[0]
        storage, offset, size, stride = args[:4]
        requires_grad = bool(args[4]) if len(args) > 4 else False
        return _TensorRef(storage, int(offset), size, stride, requires_grad)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on a tensor rebuild function")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ``data.pkl`` that allows a handful of harmless globals and stubs everything else."""

    _allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "Size"): torch.Size,
    }

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._stubs: dict[str, type[PickledGlobal]] = {}
        self.stubbed: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._allowed.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return _Rebuild(parameter=name == "_rebuild_parameter")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        full = f"{module}.{name}"
        self.stubbed.add(full)
        stub = self._stubs.get(full)
        if stub is None:
            stub = type(full, (PickledGlobal,), {"global_name": full, "__module__": "stub"})
            self._stubs[full] = stub
        return stub

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageKind):
            raise pickle.UnpicklingError(f"unsupported storage type {kind!r}")
        return _StorageRef(str(key), kind.dtype, int(numel))


class _Archive:
    """An open checkpoint zip: its record prefix and a cache of storages read so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(f"{path}: not a torch zip checkpoint ({exc})") from exc
        pickles = [n for n in self.zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            self.zf.close()
            raise CheckpointError(f"{path}: zip archive without a data.pkl record, not a torch checkpoint")
        self.pkl = min(pickles, key=lambda n: n.count("/"))
        self.prefix = self.pkl[: -len("data.pkl")]
        self._storages: dict[str, torch.UntypedStorage] = {}
        order = self.prefix + "byteorder"
        if order in self.zf.namelist():
            value = self.zf.read(order).decode("ascii", "replace").strip()
            if value != "little":
                self.zf.close()
                raise CheckpointError(f"{path}: byte order {value!r} is not supported")

    def close(self) -> None:
        self.zf.close()

    def load(self) -> Any:
        with self.zf.open(self.pkl) as fh:
            try:
                return RestrictedUnpickler(fh).load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
                raise CheckpointError(f"{self.path}: cannot unpickle {self.pkl} ({exc})") from exc

    def _storage(self, ref: _StorageRef) -> torch.UntypedStorage:
        cached = self._storages.get(ref.key)
        if cached is not None:
            return cached
        name = f"{self.prefix}data/{ref.key}"
        try:
            info = self.zf.getinfo(name)
        except KeyError as exc:
            raise CheckpointError(f"{self.path}: storage record {name} is missing") from exc
        nbytes = ref.numel * torch.empty((), dtype=ref.dtype).element_size()
        if info.file_size < nbytes:
            raise CheckpointError(f"{self.path}: storage record {name} has {info.file_size} bytes, need {nbytes}")
        if info.file_size == 0:
            storage = torch.UntypedStorage(0)
        else:
            buf = bytearray(info.file_size)
            view = memoryview(buf)
            with self.zf.open(info) as fh:
                pos = 0
                while pos < len(buf):
                    got = fh.readinto(view[pos : pos + _CHUNK])
                    if not got:
                        raise CheckpointError(f"{self.path}: storage record {name} is truncated")
                    pos += got
            # shares memory with buf (which the storage keeps alive): no second copy
            storage = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()
        self._storages[ref.key] = storage
        return storage

    def tensor(self, ref: _TensorRef) -> torch.Tensor:
        if not isinstance(ref.storage, _StorageRef):
            raise CheckpointError(f"{self.path}: tensor without a storage record ({ref.storage!r})")
        storage = self._storage(ref.storage)
        out = torch.empty((0,), dtype=ref.storage.dtype)
        out.set_(storage, ref.offset, ref.size, ref.stride)
        if ref.requires_grad:
            out.requires_grad_(True)
        return out

    def materialise(self, obj: Any, seen: dict[int, Any] | None = None) -> Any:
        """Replace tensor records by tensors throughout containers and stubs (in place for mutables)."""
        if seen is None:
            seen = {}
        if isinstance(obj, _TensorRef):
            key = id(obj)
            if key not in seen:
                seen[key] = self.tensor(obj)
            return seen[key]
        if isinstance(obj, (dict, list, PickledGlobal)):
            if id(obj) in seen:
                return obj
            seen[id(obj)] = obj
        if isinstance(obj, dict):
            for k in list(obj):
                obj[k] = self.materialise(obj[k], seen)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                obj[i] = self.materialise(v, seen)
        elif isinstance(obj, tuple) and not isinstance(obj, torch.Size):
            items = tuple(self.materialise(v, seen) for v in obj)
            if any(a is not b for a, b in zip(items, obj, strict=True)):
                obj = items
        elif isinstance(obj, PickledGlobal):
            obj.args = self.materialise(obj.args, seen)
            obj.kwargs = self.materialise(obj.kwargs, seen)
            obj.state = self.materialise(obj.state, seen)
            self.materialise(obj.items, seen)
            self.materialise(obj.list_items, seen)
        return obj


def _open(path: str | os.PathLike[str]) -> _Archive:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    return _Archive(path)


def read_entries(path: str | os.PathLike[str]) -> dict:
    """All top-level entries of the checkpoint, tensors read, unknown globals as :class:`PickledGlobal` stubs."""
    archive = _open(path)
    try:
        top = archive.load()
        if not isinstance(top, dict):
            raise CheckpointError(f"{archive.path}: top-level object is {type(top).__name__}, not a dict")
        return archive.materialise(top)
    finally:
        archive.close()


def read_state_dict(path: str | os.PathLike[str], key: str = "state_dict") -> dict[str, torch.Tensor]:
    """The ``key`` entry (a name -> tensor mapping) of the checkpoint, reading only the storages it uses."""
    archive = _open(path)
    try:
        top = archive.load()
        if not isinstance(top, dict):
            raise CheckpointError(f"{archive.path}: top-level object is {type(top).__name__}, not a dict")
        if key not in top:
            raise CheckpointError(f"{archive.path}: no {key!r} entry (top-level keys: {sorted(map(str, top))})")
        entry = top[key]
        if not isinstance(entry, dict):
            raise CheckpointError(f"{archive.path}: {key!r} is {type(entry).__name__}, not a mapping of tensors")
        out: dict[str, torch.Tensor] = {}
        seen: dict[int, Any] = {}
        for name, value in entry.items():
            if not isinstance(value, _TensorRef):
                raise CheckpointError(f"{archive.path}: {key}[{name!r}] is {type(value).__name__}, not a tensor")
            out[str(name)] = archive.materialise(value, seen)
        return out
    finally:
        archive.close()
