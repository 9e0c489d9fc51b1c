"""Writing .npz files one array at a time, an array in chunks: results larger than memory
(the predict tool's full-resolution logits, Q x 3 x H x W float32) go to disk as they are
computed. `np.load` reads the file exactly as one written by `np.savez`: an uncompressed
zip of `.npy` members, ZIP64 so members may exceed 4 GiB.

    with NpzWriter(path) as npz:
      npz.add("iou", iou)
      npz.add_chunks("logits", (q, 3, h, w), np.float32, (upscale(c) for c in chunks))
"""
import zipfile
from typing import Iterable

import numpy as np


def npz_bytes(arrays: dict) -> int:
  """About the size of the .npz of {name: (shape, dtype)}: data plus headers."""
  return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize + 512
             for shape, dtype in arrays.values())


class NpzWriter:
  """An .npz being written (a path or a binary file object); a context manager."""

  def __init__(self, file):
    self._zip = zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

  def add(self, name: str, array) -> None:
    """One whole array as member NAME.npy."""
    with self._zip.open(name + ".npy", "w", force_zip64=True) as member:
      np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

  def add_chunks(self, name: str, shape: tuple, dtype, chunks: Iterable[np.ndarray]) -> None:
    """An array of `shape` written from `chunks`, consecutive slices along its first axis
    (each (n, *shape[1:])), without ever holding more than one chunk."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    rows = 0
    with self._zip.open(name + ".npy", "w", force_zip64=True) as member:
      np.lib.format.write_array_header_1_0(member, header)
      for chunk in chunks:
        chunk = np.ascontiguousarray(chunk, dtype)
        if chunk.shape[1:] != tuple(shape[1:]):
          raise ValueError(f"{name}: chunk of shape {chunk.shape} for an array of {shape}")
        member.write(chunk.reshape(-1).view(np.uint8))  # the bytes, not a copy
        rows += len(chunk)
    if rows != shape[0]:
      raise ValueError(f"{name}: {rows} rows written for an array of {shape}")

  def close(self) -> None:
    self._zip.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
