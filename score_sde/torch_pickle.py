"""Read PyTorch `.pth` files without PyTorch and without running pickled code.

`torch.save` writes a pickle whose tensors point at raw storages, in one of two containers:
- the zip format (torch >= 1.6): `<root>/data.pkl` plus one entry `<root>/data/<key>` per storage;
- the legacy format (before 1.6): consecutive pickles in one file (magic number, protocol,
  system info, the object, the storage keys), then each storage as an int64 element count and
  its raw bytes, in key order.
`torch.load` of an unknown file can run arbitrary code: a pickle may name any importable callable
(`os.system`, `builtins.eval`). The unpickler here resolves no name by importing it; it admits only
the tensor-rebuild functions, storage types and `collections.OrderedDict` that a state dict needs,
mapped to local stand-ins, and refuses every other global before anything is called.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import pathlib
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> element dtype (torch.storage's typed storages, pickled by name).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}


class PthError(ValueError):
  """A file that is not a readable, safe PyTorch checkpoint (the message is one line)."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A strided view (offset, shape, stride, in elements) of a storage whose bytes come later."""

  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
  """Stand-in for torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])."""
  if not isinstance(storage, _StorageRef):
    raise PthError(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage")
  return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_ignored):
  """Stand-in for torch._utils._rebuild_parameter(data, requires_grad, hooks[, state]): the data."""
  return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED_GLOBALS`; storages become `_StorageRef`s resolved after unpickling."""

  def __init__(self, file, *, legacy: bool):
    super().__init__(file)
    self._legacy = legacy
    self.storages: dict[str, _StorageRef] = {}
    self.legacy_sizes: dict[str, int] = {}

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise PthError(f"refusing to load: the pickle names the global {module}.{name}, which is not a tensor "
                     "or storage type (a checkpoint has no reason to; the file may run code under torch.load)")
    return _ALLOWED_GLOBALS[(module, name)]

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise PthError(f"refusing to load: unknown persistent id {str(pid)[:60]!r} (only storages are allowed)")
    if self._legacy:
      _, storage_type, key, _location, size, view = (tuple(pid) + (None,))[:6]
      if view is not None:
        raise PthError("legacy storage views are not supported; re-save the file with a newer torch")
      self.legacy_sizes[str(key)] = int(size)
    else:
      _, storage_type, key, _location, _size = pid
    if not isinstance(storage_type, _StorageType):
      raise PthError(f"storage {key!r} has type {storage_type!r}, not a torch.*Storage")
    ref = _StorageRef(str(key), storage_type.dtype)
    self.storages.setdefault(ref.key, ref)
    return self.storages[ref.key]


def _unpickle(data: bytes | io.BufferedIOBase, *, legacy: bool) -> tuple[Any, _RestrictedUnpickler]:
  stream = io.BytesIO(data) if isinstance(data, bytes) else data
  unpickler = _RestrictedUnpickler(stream, legacy=legacy)
  try:
    return unpickler.load(), unpickler
  except PthError:
    raise
  except Exception as e:  # a damaged pickle raises anything from EOFError to UnpicklingError
    raise PthError(f"corrupt or truncated pickle ({type(e).__name__}: {str(e)[:80]})") from e


def _materialize(obj: Any, buffers: dict[str, np.ndarray]) -> Any:
  """Replaces every _TensorRef inside dicts / lists / tuples by a numpy array (a copy)."""
  if isinstance(obj, _TensorRef):
    flat = buffers[obj.storage.key]
    if not obj.shape:
      return flat[obj.offset].copy()
    itemsize = flat.dtype.itemsize
    needed = obj.offset + 1 + sum((n - 1) * s for n, s in zip(obj.shape, obj.stride) if n > 0)
    if min(obj.shape) > 0 and needed > flat.size:
      raise PthError(f"a tensor of shape {obj.shape} reads past the end of storage {obj.storage.key!r}")
    view = np.lib.stride_tricks.as_strided(flat[obj.offset:], obj.shape, tuple(s * itemsize for s in obj.stride))
    return np.array(view)
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, buffers)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, buffers) for v in obj)
  return obj


def _load_zip(path: pathlib.Path) -> Any:
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise PthError(f"{path} is a damaged zip archive ({e})") from e
  with archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise PthError(f"{path} is a zip file but not a torch.save archive (no single data.pkl)")
    root = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if root + "byteorder" in names:
      byteorder = archive.read(root + "byteorder").decode().strip()
    try:
      obj, unpickler = _unpickle(archive.read(pickles[0]), legacy=False)
      buffers = {}
      for key, ref in unpickler.storages.items():
        entry = f"{root}data/{key}"
        if entry not in names:
          raise PthError(f"{path} lacks the storage record {entry}")
        raw = archive.read(entry)
        dtype = ref.dtype.newbyteorder("<" if byteorder == "little" else ">")
        buffers[key] = np.frombuffer(raw[: len(raw) // dtype.itemsize * dtype.itemsize], dtype).astype(ref.dtype)
    except (zipfile.BadZipFile, EOFError, OSError) as e:  # zlib / CRC errors of a truncated member
      raise PthError(f"{path} is a damaged zip archive ({type(e).__name__}: {e})") from e
  return _materialize(obj, buffers)


def _load_legacy(path: pathlib.Path) -> Any:
  with open(path, "rb") as f:
    try:
      header = [_unpickle(f, legacy=True)[0] for _ in range(3)]
    except PthError as e:
      if "refusing" in str(e):
        raise
      raise PthError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)") from e
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL or not isinstance(header[2], dict):
      raise PthError(f"{path} is not a PyTorch checkpoint (no zip archive and no legacy torch.save header)")
    if not header[2].get("little_endian", True):
      raise PthError(f"{path} was saved on a big-endian machine; that legacy layout is not supported")
    obj, unpickler = _unpickle(f, legacy=True)
    keys, _ = _unpickle(f, legacy=True)
    if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
      raise PthError(f"{path}: the legacy storage key list does not match the tensors of the pickle")
    buffers = {}
    for key in map(str, keys):
      ref = unpickler.storages[key]
      count_bytes = f.read(8)
      if len(count_bytes) != 8:
        raise PthError(f"{path} is truncated: storage {key!r} is missing")
      (count,) = struct.unpack("<q", count_bytes)
      raw = f.read(count * ref.dtype.itemsize)
      if len(raw) != count * ref.dtype.itemsize:
        raise PthError(f"{path} is truncated inside storage {key!r}")
      buffers[key] = np.frombuffer(raw, ref.dtype)
  return _materialize(obj, buffers)


def load_pth(path: str | pathlib.Path) -> dict:
  """The object a `torch.save(obj, path)` wrote, with every tensor as a numpy array.

  `obj` must be a dict (a state dict or a training checkpoint); nested dicts, lists, tuples and
  plain Python values come back as they are, tensors and parameters as numpy arrays of their dtype
  (bfloat16 via ml_dtypes). Both torch's zip format and the legacy pre-1.6 format are read.
  Raises FileNotFoundError, or PthError (a ValueError) with a one-line message for a truncated,
  corrupt or non-checkpoint file and for a pickle that names any global other than the tensor
  rebuild functions, torch.*Storage types and collections.OrderedDict — before calling anything.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no checkpoint file {path}")
  with open(path, "rb") as f:
    starts_as_zip = f.read(4) == b"PK\x03\x04"
  if starts_as_zip and not zipfile.is_zipfile(path):
    raise PthError(f"{path} is a truncated or damaged zip archive (no central directory)")
  obj = _load_zip(path) if starts_as_zip else _load_legacy(path)
  if not isinstance(obj, dict):
    raise PthError(f"{path} holds a {type(obj).__name__}, not a dict (state dict or training checkpoint)")
  return obj
