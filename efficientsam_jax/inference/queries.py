"""Prompts: the JSON query format of `predict` and the arrays the models take.

A query is `{"points": [[x, y], ...], "labels": [l, ...]}`, `{"box": [x1, y1, x2, y2]}` or
both (its points, then the box's two corners labelled 2 and 3, as SAM orders its tokens), in
original-image pixels; labels are 1 positive, 0 negative, 2/3 box corners, -1 padding. A
SAM / MobileSAM query may add `"mask_input"`: low-resolution logits (4g x 4g, or 1 x 4g x
4g) from a previous prediction, as a nested list or the path of a .npy file (relative to the
prompts file). Every problem is a UserError naming the query: values that are not JSON
numbers (booleans, strings), non-finite coordinates, unknown keys, an inverted box
(x2 < x1: often x, y, width, height given for corners), and, against the image
(`check_fits`), clicks outside it, boxes that miss it, more points than the model reads.
"""
import dataclasses

import numpy as np

from efficientsam_jax.errors import UserError, one_line
from efficientsam_jax.io import paths
from efficientsam_jax.models import prompt_encoder as pe

LABELS = (pe.LABEL_PADDING, pe.LABEL_NEGATIVE, pe.LABEL_POSITIVE, pe.LABEL_BOX_TOP_LEFT,
          pe.LABEL_BOX_BOTTOM_RIGHT)
BOX_LABELS = np.array([pe.LABEL_BOX_TOP_LEFT, pe.LABEL_BOX_BOTTOM_RIGHT], np.float32)


@dataclasses.dataclass
class Queries:
  """Q queries, ragged: each its points (n, 2) and labels (n,) float32, and an optional mask
  input (a float32 array, any shape until `mask_arrays` checks it)."""
  points: list[np.ndarray]
  labels: list[np.ndarray]
  mask_input: list[np.ndarray | None]

  def __len__(self) -> int:
    return len(self.points)

  @property
  def longest(self) -> int:
    return max((len(p) for p in self.points), default=0)

  @property
  def has_mask_input(self) -> bool:
    return any(m is not None for m in self.mask_input)

  def arrays(self, length: int) -> tuple[np.ndarray, np.ndarray]:
    """points (Q, length, 2), labels (Q, length): padded with (-1, -1) / label -1, or cut,
    exactly as the models pad and cut."""
    points = np.full((len(self), length, 2), -1.0, np.float32)
    labels = np.full((len(self), length), pe.LABEL_PADDING, np.float32)
    for i, (p, l) in enumerate(zip(self.points, self.labels)):
      n = min(len(p), length)
      points[i, :n], labels[i, :n] = p[:n], l[:n]
    return points, labels

  def mask_arrays(self, size: int):
    """(masks (Q, size, size) float32, has_mask (Q,) bool), zeros/False where a query has no
    mask input; (None, None) when none has one."""
    if not self.has_mask_input:
      return None, None
    masks = np.zeros((len(self), size, size), np.float32)
    has_mask = np.zeros((len(self),), bool)
    for i, mask in enumerate(self.mask_input):
      if mask is None:
        continue
      if mask.shape not in ((size, size), (1, size, size)):
        raise UserError(f"query {i}: 'mask_input' must be {size}x{size} low-resolution "
                        f"logits, got shape {mask.shape}")
      masks[i], has_mask[i] = mask.reshape(size, size), True
    return masks, has_mask

  @property
  def most_prompts(self) -> int:
    """The most points and box corners of any query, padding not counted."""
    return max((int((l != pe.LABEL_PADDING).sum()) for l in self.labels), default=0)

  def check_fits(self, height: int, width: int, max_points: int | None = None) -> None:
    """UserError naming the first query that cannot mean what it says on an image of this
    size: a click outside the image, a box that misses it entirely (prompts for another
    image, or another scale), or more than `max_points` points and box corners (a model
    that would drop the rest, as EfficientSAM does)."""
    for i, (p, l) in enumerate(zip(self.points, self.labels)):
      used = int((l != pe.LABEL_PADDING).sum())
      if max_points is not None and used > max_points:
        raise UserError(f"query {i}: {used} points and box corners; this model reads at most "
                        f"{max_points}")
      clicks = p[(l == pe.LABEL_POSITIVE) | (l == pe.LABEL_NEGATIVE)]
      outside = ((clicks < 0) | (clicks > [width, height])).any(axis=1)
      if outside.any():
        x, y = clicks[outside][0]
        raise UserError(f"query {i}: point [{x:g}, {y:g}] lies outside the {width}x{height} "
                        "image (coordinates are pixels of the original image)")
      corners = p[(l == pe.LABEL_BOX_TOP_LEFT) | (l == pe.LABEL_BOX_BOTTOM_RIGHT)]
      if len(corners) == 2:
        (x1, y1), (x2, y2) = corners
        if x2 < 0 or y2 < 0 or x1 > width or y1 > height:
          raise UserError(f"query {i}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the "
                          f"{width}x{height} image")

  @classmethod
  def from_json(cls, queries, base_dir: str = ".") -> "Queries":
    """A parsed prompts file (a list of query objects) -> Queries; base_dir resolves relative
    mask_input paths."""
    if not isinstance(queries, list) or not queries:
      raise UserError("prompts must be a non-empty JSON list of queries")
    out = cls([], [], [])
    for i, query in enumerate(queries):
      points, labels = _parse_query(query, i)
      out.points.append(points)
      out.labels.append(labels)
      out.mask_input.append(_read_mask_input(query["mask_input"], i, base_dir)
                            if "mask_input" in query else None)
    return out

  @classmethod
  def from_arrays(cls, points=None, labels=None, boxes=None, mask_input=None) -> "Queries":
    """Point queries (points (Q, N, 2) with labels (Q, N)), then box queries (boxes (Q', 4));
    mask_input (Q + Q', 4g, 4g) one per query in that order, or None."""
    out = cls([], [], [])
    if points is not None:
      points = np.asarray(points, np.float32)
      labels = np.asarray(labels, np.float32)
      if points.ndim != 3 or points.shape[-1] != 2 or labels.shape != points.shape[:2]:
        raise UserError(f"points must be (Q, N, 2) with labels (Q, N), got {points.shape} and "
                        f"{labels.shape}")
      out.points += list(points)
      out.labels += list(labels)
    if boxes is not None:
      boxes = np.asarray(boxes, np.float32)
      if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise UserError(f"boxes must be (Q, 4) x1, y1, x2, y2, got {boxes.shape}")
      out.points += list(boxes.reshape(-1, 2, 2))
      out.labels += [BOX_LABELS] * len(boxes)
    if not len(out):
      raise UserError("no queries: give points with labels, or boxes")
    if mask_input is not None:
      mask_input = np.asarray(mask_input, np.float32)
      if len(mask_input) != len(out):
        raise UserError(f"{len(mask_input)} mask inputs for {len(out)} queries")
      out.mask_input = list(mask_input)
    else:
      out.mask_input = [None] * len(out)
    for i, (p, l) in enumerate(zip(out.points, out.labels)):
      _check_values(p, l, f"query {i}")
    return out


def _check_values(points: np.ndarray, labels: np.ndarray, where: str) -> None:
  """Finite coordinates, known labels, and a box (corners labelled 2 and 3) not inverted."""
  if not np.isfinite(points).all():
    raise UserError(f"{where}: coordinates must be finite numbers")
  if not np.isin(labels, LABELS).all():
    raise UserError(f"{where}: labels must be -1, 0, 1, 2 or 3")
  top_left = points[labels == pe.LABEL_BOX_TOP_LEFT]
  bottom_right = points[labels == pe.LABEL_BOX_BOTTOM_RIGHT]
  if len(top_left) == 1 and len(bottom_right) == 1:
    (x1, y1), (x2, y2) = top_left[0], bottom_right[0]
    if x2 < x1 or y2 < y1:
      raise UserError(f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has x2 < x1 or y2 < y1 "
                      "(a box is two corners, x1, y1, x2, y2, not x, y, width, height)")


QUERY_KEYS = ("points", "labels", "box", "mask_input")


def _plain_numbers(value, max_depth: int = 3) -> bool:
  """True if `value` is a number or (nested, at most max_depth) lists of numbers; booleans,
  strings and None are not numbers here, though numpy would turn them into some."""
  stack = [(value, 0)]
  while stack:
    item, depth = stack.pop()
    if isinstance(item, (list, tuple)):
      if depth == max_depth:
        return False
      stack.extend((x, depth + 1) for x in item)
    elif isinstance(item, bool) or not isinstance(item, (int, float, np.integer, np.floating)):
      return False
  return True


def _numbers(value, where: str, what: str) -> np.ndarray:
  """JSON numbers (nested lists) or a numeric numpy array -> float64 array; UserError for
  anything else (booleans, strings, nulls, ragged lists), so nothing is read as a number it
  does not say."""
  if isinstance(value, np.ndarray):
    plain = value.dtype.kind in "iuf"
  else:
    plain = _plain_numbers(value)
  try:
    if plain:
      return np.asarray(value, np.float64)
  except OverflowError:
    raise UserError(f"{where}: {what} must be finite numbers") from None
  except (TypeError, ValueError):  # ragged lists
    pass
  raise UserError(f"{where}: {what} must be numbers (in lists of the right shape)")


def _parse_query(query, index: int) -> tuple[np.ndarray, np.ndarray]:
  """One JSON query -> points (n, 2), labels (n,): its points, then its box's corners."""
  where = f"query {index}"
  if not isinstance(query, dict):
    raise UserError(f"{where}: expected an object with 'points'/'labels' and/or 'box'")
  has_points = "points" in query or "labels" in query
  if not has_points and "box" not in query:
    raise UserError(f"{where}: needs 'points' and 'labels', or 'box'")
  unknown = sorted(str(k) for k in query if k not in QUERY_KEYS)
  if unknown:
    raise UserError(f"{where}: unknown key {unknown[0]!r} (a query has "
                    f"{', '.join(QUERY_KEYS)})")
  points = np.zeros((0, 2), np.float64)
  labels = np.zeros((0,), np.float64)
  if has_points:
    if "points" not in query or "labels" not in query:
      raise UserError(f"{where}: needs 'points' and 'labels', or 'box'")
    points = _numbers(query["points"], where, "coordinates and labels")
    labels = _numbers(query["labels"], where, "coordinates and labels")
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
      raise UserError(f"{where}: 'points' must be a non-empty list of [x, y]")
    if labels.shape != (len(points),):
      raise UserError(f"{where}: {len(points)} points but {labels.size} labels")
  if "box" in query:
    box = _numbers(query["box"], where, "coordinates and labels")
    if box.shape != (4,):
      raise UserError(f"{where}: 'box' must be [x1, y1, x2, y2]")
    points = np.concatenate([points, box.reshape(2, 2)])
    labels = np.concatenate([labels, BOX_LABELS])
  # Checked as the model gets them: 1e300 is finite, but not in float32.
  with np.errstate(over="ignore"):
    points, labels = points.astype(np.float32), labels.astype(np.float32)
  _check_values(points, labels, where)
  return points, labels


def _read_mask_input(value, index: int, base_dir: str) -> np.ndarray:
  where = f"query {index}"
  if isinstance(value, str):
    try:
      with paths.open_read(paths.join(base_dir, value)) as f:
        value = np.load(f, allow_pickle=False)
    except (OSError, ValueError, TypeError, EOFError) as e:
      raise UserError(f"{where}: cannot read 'mask_input' ({one_line(e)[:200]})") from None
  with np.errstate(over="ignore"):
    mask = _numbers(value, where, "'mask_input' values").astype(np.float32)
  if not np.isfinite(mask).all():
    raise UserError(f"{where}: 'mask_input' must hold finite numbers")
  return mask
