"""Where each SA-1B image and annotation file lies inside a .tar shard, found once and stored.

A released SA-1B shard is an uncompressed tar of about 11,000 `sa_N.jpg` + `sa_N.json`
pairs (~11 GB); the whole set is 1,000 shards and 22M members. Finding the members means
reading every member header, i.e. seeking through the whole shard: minutes per shard on a
bucket, hours for the set. So the member table of each shard is stored once, as a small
.npz in an index folder (the finetuning trainer uses WORKDIR/sa1b_index), and every later
run and every host reads those (seconds), never the shards' headers again.

An index file is named by the shard's path and size, so a replaced shard is indexed again
and a stale table is never used. Index files are written whole (io/paths.py), by process 0
only; the other processes build what they miss in memory.
"""
import concurrent.futures
import hashlib
import io
import os
import tarfile

import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths

FORMAT = 1
# Threads reading or building shard tables at once (I/O bound: bucket requests).
THREADS = 16


def scan(tar_path: str) -> np.ndarray:
  """int64 (N, 4): jpg offset, jpg size, json offset, json size of every complete sa_N pair
  of a shard, in member-name order. Reads every member header (the slow part)."""
  members = {}
  try:
    with paths.open_read(tar_path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for info in tar:  # uncompressed: members are byte ranges of the shard
        if info.isfile():
          members[os.path.basename(info.name)] = (info.offset_data, info.size)
  except (tarfile.TarError, OSError) as e:
    raise UserError(f"{tar_path}: not a readable tar shard ({paths.cause(e)})") from None
  rows = []
  for name in sorted(members):
    stem, ext = os.path.splitext(name)
    if ext.lower() == ".jpg" and stem + ".json" in members:
      rows.append(members[name] + members[stem + ".json"])
  return np.asarray(rows, np.int64).reshape(-1, 4)


def _size(tar_path: str) -> int:
  if paths.is_remote(tar_path):
    from etils import epath
    return int(epath.Path(tar_path).stat().length)
  return os.path.getsize(tar_path)


def index_name(tar_path: str, size: int) -> str:
  key = hashlib.sha1(f"{paths.absolute(tar_path)}\n{size}".encode()).hexdigest()[:16]
  return f"{paths.basename(tar_path)}.{key}.npz"


def _load(path: str, size: int):
  """A stored table, or None when absent or not this shard's."""
  try:
    with np.load(io.BytesIO(paths.read_bytes(path))) as stored:
      if int(stored["format"]) == FORMAT and int(stored["size"]) == size:
        return np.asarray(stored["rows"], np.int64)
  except (OSError, ValueError, KeyError):
    pass
  return None


def _store(path: str, rows: np.ndarray, size: int) -> None:
  paths.write_with(path, lambda f: np.savez(f, rows=rows, size=np.int64(size),
                                            format=np.int64(FORMAT)))


def member_tables(tar_paths: list[str], index_dir: str | None = None,
                  write: bool = True) -> list[np.ndarray]:
  """The member table (see `scan`) of each shard: read from `index_dir` when stored there,
  else scanned (and stored there when `write`). No index_dir: always scanned."""

  def one(tar_path: str) -> np.ndarray:
    if not index_dir:
      return scan(tar_path)
    try:
      size = _size(tar_path)
    except FileNotFoundError:
      raise UserError(f"{tar_path}: no such tar shard") from None
    except OSError as e:
      raise paths.storage_error(e, tar_path) from None
    stored_path = paths.join(index_dir, index_name(tar_path, size))
    rows = _load(stored_path, size)
    if rows is None:
      rows = scan(tar_path)
      if write:
        paths.makedirs(index_dir)
        _store(stored_path, rows, size)
    return rows

  if len(tar_paths) <= 1:
    return [one(p) for p in tar_paths]
  with concurrent.futures.ThreadPoolExecutor(min(THREADS, len(tar_paths))) as pool:
    return list(pool.map(one, tar_paths))
