"""COCO / SA-1B masks as the finetuning data and the evaluation read them: RLE and polygons
to pycocotools' compressed RLE, decoded masks, tight boxes, and the decoder's low-resolution
targets (half coverage of whole-pixel bins), from a decoded mask or straight from the runs.
"""
import numpy as np
from pycocotools import mask as mask_utils


def to_rle(segmentation, height: int, width: int) -> dict:
  """COCO segmentation (compressed RLE, uncompressed RLE, or polygons) -> compressed RLE."""
  if isinstance(segmentation, list):  # polygons: one RLE per part, merged
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
    return mask_utils.frPyObjects(segmentation, height, width)
  rle = dict(segmentation)
  if isinstance(rle["counts"], str):
    rle["counts"] = rle["counts"].encode("ascii")
  return rle


def decode_mask(segmentation, height: int, width: int) -> np.ndarray:
  """COCO segmentation -> bool (height, width)."""
  return mask_utils.decode(to_rle(segmentation, height, width)).astype(bool)


def tight_box(mask: np.ndarray) -> np.ndarray:
  """bool (H, W) -> float32 (4,) x0, y0, x1, y1: pixel indices of the extreme mask pixels
  (the corners a box prompt clicks on; the prompt encoder adds half a pixel)."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if not len(rows):
    return np.zeros(4, np.float32)
  return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def low_res_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """bool or 0/1 uint8 (H, W) -> uint8 (size, size): a low-res pixel is set when more than half
  of the full-res pixels whose centres fall in it are (area-weighted downsampling, then half
  coverage). Sums whole-pixel bins with np.add.reduceat, in the mask's own memory order
  (pycocotools decodes column-major), with no resampled copy of the full mask."""
  h, w = mask.shape
  if h < size or w < size:  # upsampling: every low-res pixel takes its nearest source
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    return mask[rows][:, cols].astype(np.uint8)
  row_starts, row_sizes = _bins(h, size)
  col_starts, col_sizes = _bins(w, size)
  view = mask.view(np.uint8) if mask.dtype == bool else mask
  # The first sum adds whole lines of the array as stored (pycocotools' column-major masks
  # are summed as their transposes), the second runs on the small result.
  column_major = view.flags.f_contiguous and not view.flags.c_contiguous
  stored, outer, inner = (view.T, col_starts, row_starts) if column_major else (
      view, row_starts, col_starts)
  counts = _bin_sums(_bin_sums(np.ascontiguousarray(stored), outer).T, inner).astype(np.int32)
  if not column_major:
    counts = counts.T
  return (2 * counts > np.outer(row_sizes, col_sizes)).astype(np.uint8)


def _bins(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(first index, length) of each of the `size` whole-pixel bins of n >= size pixels: pixel
  i is in the bin its centre falls in, floor((i + 0.5) * size / n)."""
  first = np.searchsorted(((np.arange(n) + 0.5) * size / n).astype(np.int64), np.arange(size))
  return first, np.diff(np.append(first, n))


def rle_run_lengths(counts: bytes) -> np.ndarray:
  """pycocotools' compressed RLE string -> int64 run lengths (background first), decoded as
  its C reader does: 5 bits per character (offset 48), 0x20 = more characters follow, 0x10 in
  the last = negative, and from the fourth run on each value is a delta to the run two back."""
  c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
  if not len(c):
    return np.zeros(0, np.int64)
  ends = np.flatnonzero((c & 0x20) == 0)
  starts = np.concatenate(([0], ends[:-1] + 1))
  lengths = ends - starts + 1
  shift = 5 * (np.arange(len(c)) - np.repeat(starts, lengths))
  values = np.add.reduceat((c & 0x1f) << shift, starts)
  values -= np.where(c[ends] & 0x10, np.int64(1) << (5 * lengths), 0)
  runs = values.copy()
  runs[1::2] = np.cumsum(values[1::2])  # run 3 = value 3 + run 1, ...
  runs[2::2] = np.cumsum(values[2::2])  # run 4 = value 4 + run 2, ... (run 2 is absolute)
  return runs


def low_res_mask_from_rle(rle: dict, size: int) -> np.ndarray:
  """Compressed RLE -> uint8 (size, size), equal to low_res_mask(decode(rle), size) without
  decoding the full-resolution mask. The runs are column-major: each foreground run is a row
  interval in its first column, one in its last, and whole columns between. A bin's count is
  P(end) - P(start), P(r) = the interval rows above row r in the bin's columns; P is
  piecewise linear, so each interval end is a slope change (+1 at its first row, -1 past its
  last) and P at the bin edges follows from two sums per bin (of the slope changes, and of
  them times their row). Work scales with the runs plus size^2, not with the mask's pixels."""
  h, w = (int(v) for v in rle["size"])
  if h < size or w < size:
    return low_res_mask(mask_utils.decode(rle), size)
  row_first, row_sizes = _bins(h, size)
  col_first, col_sizes = _bins(w, size)
  col_bin = np.repeat(np.arange(size), col_sizes)
  row_bin = np.append(np.repeat(np.arange(size), row_sizes), size)  # row h: past the last bin
  runs = rle_run_lengths(rle["counts"])
  ends = np.cumsum(runs)
  first, last = (ends - runs)[1::2], ends[1::2] - 1  # foreground runs, inclusive
  nonempty = last >= first
  c0, r0 = np.divmod(first[nonempty], h)
  c1, r1 = np.divmod(last[nonempty], h)
  r1 += 1
  many = c0 != c1
  whole = np.zeros(w + 1, np.int64)  # columns between a run's first and last: all rows
  np.add.at(whole, c0[many] + 1, 1)
  np.add.at(whole, c1[many], -1)
  whole_per_bin = np.add.reduceat(np.cumsum(whole[:w]), col_first)
  bins = np.arange(size)
  column = np.concatenate([col_bin[c0], col_bin[c0], col_bin[c1[many]], col_bin[c1[many]],
                           bins, bins])
  row = np.concatenate([r0, np.where(many, h, r1), np.zeros(many.sum(), np.int64), r1[many],
                        np.zeros(size, np.int64), np.full(size, h)])
  slope = np.concatenate([np.ones(len(r0)), -np.ones(len(r0)), np.ones(many.sum()),
                          -np.ones(many.sum()), whole_per_bin, -whole_per_bin])
  cell = column * (size + 1) + row_bin[row]
  n = size * (size + 1)
  s0 = np.bincount(cell, slope, n).reshape(size, size + 1)[:, :size]
  s1 = np.bincount(cell, slope * row, n).reshape(size, size + 1)[:, :size]
  # P at the bin edges 0 .. h: the slope changes in the bins before each edge.
  edges = np.append(row_first, h)
  zero = np.zeros((size, 1))
  p = (edges * np.concatenate([zero, np.cumsum(s0, 1)], 1)
       - np.concatenate([zero, np.cumsum(s1, 1)], 1))
  counts = np.rint(np.diff(p, axis=1)).T  # (row bin, column bin)
  return (2 * counts > np.outer(row_sizes, col_sizes)).astype(np.uint8)


def _bin_sums(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """np.add.reduceat(a, starts, axis=0) of a 2-D array of small non-negative integers.
  When every sum fits a byte, 8 (or 4, 2) byte lanes are added as one machine word: no lane
  can carry into the next, and numpy then adds whole words (2-4x faster than byte sums)."""
  a = np.ascontiguousarray(a)
  bins = np.diff(np.append(starts, a.shape[0]))
  if a.dtype != np.uint8 or bins.max() * int(a.max(initial=0)) > 255:
    return np.add.reduceat(a, starts, axis=0, dtype=np.int32)
  lanes = next(n for n in (8, 4, 2, 1) if a.shape[1] % n == 0)
  packed = a.view(f"u{lanes}")
  return np.add.reduceat(packed, starts, axis=0, dtype=packed.dtype).view(np.uint8)


def rle_box(rle) -> np.ndarray:
  """Compressed RLE -> float32 (4,) x0, y0, x1, y1: `tight_box` of the decoded mask, read
  from the runs (pycocotools' toBbox) without decoding."""
  x, y, w, h = mask_utils.toBbox(rle)
  return np.array([x, y, x + w - 1, y + h - 1], np.float32)
