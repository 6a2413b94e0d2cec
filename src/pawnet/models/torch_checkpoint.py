"""Reading PyTorch checkpoints with NumPy only: no `torch` import, no arbitrary code.

A `.pth`/`.pt` file is a pickle, and unpickling runs whatever callable the file names.
`load_state_dict` therefore uses a restricted unpickler that resolves only the handful of
names a plain state dict needs (the tensor-rebuild functions, the storage types and
`collections.OrderedDict`) to local stand-ins, and refuses every other name with a
`CheckpointError`. Both on-disk formats are read:

- the legacy format written by torch < 1.6 (and `torch.save(...,
  _use_new_zipfile_serialization=False)`): a magic-number pickle, a protocol-version
  pickle, a sys-info pickle, the object pickle, a pickled list of storage keys, then each
  storage as a little-endian int64 element count followed by its raw bytes;
- the zip format (torch >= 1.6): `<name>/data.pkl` plus one `<name>/data/<key>` record per
  storage, with the byte order in `<name>/byteorder`.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from pawnet.errors import CheckpointError

__all__ = ["CheckpointError", "load_state_dict"]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Storage class name -> NumPy dtype ("bfloat16" has no NumPy dtype and is widened by hand).
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}


class _Rebuilt:
    """pawnet's own reconstruction objects take no pickled state: a BUILD opcode on one
    could rewrite a checked stride or offset, or a storage type, after the fact."""

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"refusing to set state on a {type(self).__name__.strip('_')}: "
                              "not allowed in a weights-only checkpoint")


@dataclass(frozen=True)
class _StorageType(_Rebuilt):
    name: str

    @property
    def dtype(self) -> str:
        return _STORAGE_DTYPES[self.name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bf16" else np.dtype(self.dtype).itemsize


@dataclass
class _Storage(_Rebuilt):
    """A storage referenced by the pickle; its bytes are attached once they are read."""

    key: str
    type: _StorageType
    numel: int
    data: np.ndarray | None = None  # 1-D, dtype of the storage, native byte order
    base: _Storage | None = None  # legacy views: a slice of another storage
    view_offset: int = 0


@dataclass
class _TensorRef(_Rebuilt):
    """A tensor as `_rebuild_tensor_v2` describes it, materialized after the storages."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _check_layout(storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """Refuse a tensor layout that is not plain non-negative ints, or that has more
    elements than its storage (a zero stride would repeat one element billions of times)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor does not reference a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple)):
        raise CheckpointError("tensor size and stride must be tuples")
    ints = (offset, *size, *stride)
    if not all(type(v) is int and v >= 0 for v in ints):
        raise CheckpointError("tensor has a non-integer or negative offset, size or stride")
    if len(size) != len(stride):
        raise CheckpointError("tensor size and stride have different lengths")
    if math.prod(size) > storage.numel:
        raise CheckpointError(f"tensor of shape {size} has more elements than its storage "
                              f"{storage.key} ({storage.numel})")


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any
) -> _TensorRef:
    size, stride = tuple(size), tuple(stride)
    _check_layout(storage, storage_offset, size, stride)
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED_GLOBALS` and torch's storage references."""

    def __init__(self, file: io.BufferedIOBase, storages: dict[str, _Storage], zip_format: bool):
        super().__init__(file)
        self._storages = storages
        self._zip_format = zip_format

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)  # a fresh one per load: nothing shared between loads
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to load {module}.{name}: not allowed in a weights-only checkpoint"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {str(pid)[:60]!r}")
        if self._zip_format and len(pid) == 5:
            _, storage_type, key, _location, numel = pid
            view_metadata = None
        elif not self._zip_format and len(pid) == 6:
            _, storage_type, key, _location, numel, view_metadata = pid
        else:
            raise CheckpointError(f"malformed storage reference {str(pid)[:60]!r}")
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError("storage reference without a known storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError("storage reference with a bad key or size")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, storage_type, numel)
        elif root.type.name != storage_type.name:
            raise CheckpointError(f"storage {key} is used with two different types")
        if view_metadata is None:
            return root
        # Legacy storage views: (view_key, offset, view_size), in elements of the root.
        view_key, view_offset, view_size = view_metadata
        if view_offset < 0 or view_size < 0 or view_offset + view_size > root.numel:
            raise CheckpointError(f"storage view {view_key} lies outside its storage")
        return _Storage(str(view_key), storage_type, view_size, base=root, view_offset=view_offset)


def _array_from_bytes(raw: bytes | memoryview, stype: _StorageType, little: bool) -> np.ndarray:
    order = "<" if little else ">"
    if stype.dtype == "bf16":
        halves = np.frombuffer(raw, dtype=f"{order}u2").astype(np.uint32)
        return (halves << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(stype.dtype).newbyteorder(order))


def _materialize(ref: _TensorRef) -> np.ndarray:
    storage, offset = ref.storage, ref.offset
    _check_layout(storage, offset, ref.size, ref.stride)  # again, where it is used
    if storage.base is not None:
        offset += storage.view_offset
        storage = storage.base
    data = storage.data
    if data is None:
        raise CheckpointError(f"storage {storage.key} has no data in the file")
    if any(n == 0 for n in ref.size):
        return np.zeros(ref.size, dtype=data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= data.size:
        raise CheckpointError(f"tensor reads past the end of storage {storage.key}")
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:],
        shape=ref.size,
        strides=tuple(s * item for s in ref.stride),
        writeable=False,
    )
    return np.array(view, dtype=view.dtype.type, order="C")  # native byte order


def _to_output(value: Any) -> np.ndarray:
    arr = _materialize(value)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def _collect(obj: Any) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, _TensorRef):
            raise CheckpointError(f"state dict entry {str(key)[:60]!r} is not a named tensor")
        out[key] = _to_output(value)
    return out


def _load_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl_names = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise CheckpointError("zip checkpoint without exactly one <name>/data.pkl record")
        prefix = pkl_names[0][: -len("data.pkl")]
        little = True
        if f"{prefix}byteorder" in names:
            order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(f"unknown byte order {order[:20]!r}")
            little = order == "little"
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses
                raise CheckpointError(f"zip record {info.filename[:60]} is compressed; "
                                      "torch writes checkpoints uncompressed")
        storages: dict[str, _Storage] = {}
        with zf.open(pkl_names[0]) as fh:
            obj = _RestrictedUnpickler(fh, storages, zip_format=True).load()
        for key, storage in storages.items():
            record = f"{prefix}data/{key}"
            if record not in names:
                raise CheckpointError(f"zip checkpoint lacks storage record {record}")
            nbytes = storage.numel * storage.type.itemsize
            if zf.getinfo(record).file_size < nbytes:
                raise CheckpointError(f"storage record {record} is shorter than its tensors")
            with zf.open(record) as fh:
                raw = fh.read(nbytes)  # only the bytes the tensors use
            storage.data = _array_from_bytes(raw, storage.type, little)
    return _collect(obj)


def _load_legacy(path: str) -> dict[str, np.ndarray]:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as fh:

        def unpickle() -> Any:
            return _RestrictedUnpickler(fh, storages, zip_format=False).load()

        if unpickle() != LEGACY_MAGIC_NUMBER:
            raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
        protocol = unpickle()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"unsupported legacy checkpoint protocol {protocol!r}")
        sys_info = unpickle()
        little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        obj = unpickle()
        keys = unpickle()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError("legacy checkpoint has a malformed storage key list")
        file_size = os.fstat(fh.fileno()).st_size
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise CheckpointError(f"legacy checkpoint lists unknown storage {key}")
            header = fh.read(8)
            if len(header) != 8:
                raise CheckpointError(f"legacy checkpoint truncated at storage {key}")
            (numel,) = struct.unpack("<q" if little else ">q", header)
            nbytes = numel * storage.type.itemsize
            if numel < storage.numel or nbytes > file_size - fh.tell():
                raise CheckpointError(f"legacy checkpoint truncated at storage {key}")
            storage.data = _array_from_bytes(fh.read(nbytes), storage.type, little)
    return _collect(obj)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict into NumPy arrays, without torch and without running code.

    Only plain state dicts (a mapping of names to tensors, optionally wrapped as
    `{"state_dict": ...}`) are accepted. The pickle may name nothing but
    `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` (and `_rebuild_tensor`,
    `_rebuild_parameter`, `_rebuild_parameter_with_state`) and the `torch.*Storage` types;
    any other name, such as `os.system`, is refused before it is resolved.

    Args:
        path: a checkpoint in either the legacy (torch < 1.6) or the zip format.

    Returns:
        A dict from parameter name to a C-contiguous, native-byte-order NumPy array with the
        tensor's shape (strides and storage offsets are applied). Floating-point tensors
        (float16, bfloat16, float32, float64) come back as float32; integer and bool tensors
        keep their dtype (e.g. BatchNorm's int64 `num_batches_tracked`).

    Raises:
        CheckpointError: a refused name, a malformed or truncated file, or a pickle that is
            not a state dict of tensors.
        OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    try:
        if head == b"PK\x03\x04":
            return _load_zip(path)
        return _load_legacy(path)
    except CheckpointError:
        raise
    except Exception as exc:  # malformed content of any kind: a bad file, not a bug
        name = type(exc).__name__
        raise CheckpointError(
            f"corrupt checkpoint {os.path.basename(path)} ({name}: {exc})"
        ) from None
