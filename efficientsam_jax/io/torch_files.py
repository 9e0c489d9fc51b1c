"""Reading PyTorch checkpoint files without torch; writing them with torch.

`torch.save` (since torch 1.6) writes a zip archive:
  <name>/data.pkl    the pickled object; each tensor is a call of
                     `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
                     whose storage is a persistent id ('storage', type, key, location, numel)
  <name>/data/<key>  the raw little-endian bytes of each storage
  <name>/byteorder   "little" or "big" (absent in old files: little)
`load` replays the pickle with an unpickler that knows only these few globals (tensors,
storage types, OrderedDict) and refuses everything else, so a checkpoint cannot run code.
Tensors come back as numpy arrays with their exact bits; strides and offsets are honoured.
A tensor larger than its storage (zero strides) is bounded: MAX_EXPANSION_BYTES per file.
"""
import collections
import functools
import math
import io
import pickle
import zipfile
from typing import Any

import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths


def _bfloat16():
  import ml_dtypes  # ships with jax
  return np.dtype(ml_dtypes.bfloat16)


# torch storage class -> numpy dtype (a callable for dtypes numpy lacks).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,  # raw bytes
}


class _StorageType:
  """Stands for a torch storage class inside the pickle."""

  def __init__(self, name: str):
    dtype = _STORAGE_DTYPES[name]
    self.dtype = _bfloat16() if dtype is _bfloat16 else np.dtype(dtype)


# What all the tensors of one file may take beyond their storages. A tensor is a strided view
# of its storage; only zero or overlapping strides (torch's `expand`) make it larger, and a
# stride-0 tensor of a few bytes could ask for any allocation. Released checkpoints have none.
MAX_EXPANSION_BYTES = 1 << 30


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_unused,
                    budget: list[int] | None = None) -> np.ndarray:
  """`torch._utils._rebuild_tensor_v2` in numpy: a strided view of the storage, copied.
  budget: [bytes the file's tensors may still take beyond their storages]; spent here."""
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise UserError(f"bad tensor layout (size {size}, stride {stride}, offset {offset})")
  if 0 not in size:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise UserError(f"tensor of size {size} runs past its storage ({storage.size} items)")
  item = storage.itemsize
  copy_bytes = math.prod(size) * item
  beyond = max(0, copy_bytes - storage.size * item)
  if budget is not None and beyond:
    if beyond > budget[0]:
      raise UserError(
          f"tensor of size {size} with stride {stride} would take {copy_bytes / 2**30:.3g} GiB "
          f"from a storage of {storage.size * item} bytes; refusing more than "
          f"{MAX_EXPANSION_BYTES / 2**30:g} GiB of expanded (stride-0) tensors per file")
    budget[0] -= beyond
  view = np.lib.stride_tricks.as_strided(storage[offset:] if storage.size else storage,
                                         size, tuple(s * item for s in stride), writeable=False)
  return np.array(view)  # own, C-contiguous memory


def _rebuild_parameter(data, requires_grad, backward_hooks, *_unused):
  """`torch._utils._rebuild_parameter`: an nn.Parameter is just its tensor here."""
  return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
  """Knows tensors, storages and OrderedDict; refuses any other global."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._storages: dict[str, np.ndarray] = {}
    self._expansion_budget = [MAX_EXPANSION_BYTES]

  def find_class(self, module, name):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return functools.partial(_rebuild_tensor, budget=self._expansion_budget)
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UserError(f"refusing to load {module}.{name} (only tensors and dicts are read)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise UserError(f"unknown persistent id {pid!r:.80}")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise UserError(f"unknown storage type {storage_type!r:.80}")
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}/data/{key}")
      except KeyError:
        raise UserError(f"storage {key} is missing from the archive") from None
      dtype = storage_type.dtype
      if self._byteorder == "big":
        dtype = dtype.newbyteorder(">")
      if len(raw) % dtype.itemsize:
        raise UserError(f"storage {key} has {len(raw)} bytes, not whole {dtype} items")
      array = np.frombuffer(raw, dtype)
      self._storages[key] = array.astype(array.dtype.newbyteorder("=")) if (
          self._byteorder == "big") else array
    return self._storages[key]


def load(path: str) -> Any:
  """Reads a `torch.save` zip file into nested dicts/lists of np.ndarray, without torch.

  Raises UserError (one line) for anything that is not such a file, a truncated or
  corrupted one, or one that pickles objects other than tensors and containers.
  """
  try:
    with paths.open_read(path) as f, zipfile.ZipFile(f) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
      if len(pickles) != 1:
        raise UserError(f"{path}: not a PyTorch checkpoint (no <name>/data.pkl in the zip)")
      prefix = pickles[0].rsplit("/", 1)[0]
      byteorder = "little"
      if f"{prefix}/byteorder" in archive.namelist():
        byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
      with archive.open(pickles[0]) as f:
        return _Unpickler(f, archive, prefix, byteorder).load()
  except UserError as e:
    message = str(e)
    raise UserError(message if message.startswith(str(path)) else f"{path}: {message}") \
        from None
  except FileNotFoundError as e:
    error = paths.storage_error(e, path)
    raise (error if "bucket" in str(error) else UserError(f"{path}: no such file")) from None
  except IsADirectoryError:
    raise UserError(f"{path}: is a directory, not a PyTorch file") from None
  except zipfile.BadZipFile as e:
    hint = " (legacy pre-1.6 torch format is not supported)" if _is_legacy(path) else ""
    raise UserError(
        f"{path}: not a PyTorch zip checkpoint, or truncated or corrupted ({e}){hint}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
          AttributeError, UnicodeDecodeError, zipfile.LargeZipFile, OSError) as e:
    # zlib/CRC errors, truncated pickles and malformed opcodes all end up here.
    raise UserError(f"{path}: corrupted PyTorch checkpoint ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def _is_legacy(path: str) -> bool:
  """Legacy torch files start with a pickled magic number (protocol 2 header)."""
  try:
    with paths.open_read(path) as f:
      return f.read(2) == b"\x80\x02"
  except OSError:
    return False


def save(obj: Any, path: str) -> None:
  """Writes nested dicts of arrays with `torch.save` (e.g. {"model": state_dict}), whole or
  not at all (io/paths.py; local or gs://).

  Needs torch; arrays become CPU tensors with the same dtype, shape and bits.
  """
  try:
    import torch
  except ImportError:
    raise UserError(f"writing {path} needs torch (pip install torch); it is not installed") \
        from None
  # Serialised in memory first: torch's zip writer turns a failed file write (a full disk)
  # into a RuntimeError about positions; the bytes then go out in one atomic write.
  buffer = io.BytesIO()
  torch.save(_to_torch(obj, torch), buffer)
  paths.write(path, buffer.getbuffer())


def _to_torch(obj, torch):
  if isinstance(obj, dict):
    return type(obj)((k, _to_torch(v, torch)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_torch(v, torch) for v in obj)
  if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
    array = np.asarray(obj)
    if array.dtype == _bfloat16():
      return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, order="C", copy=True))
  return obj
