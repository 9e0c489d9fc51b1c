"""SAM's click protocol: where the next simulated click goes.

The SAM paper (appendix D.1) evaluates point prompts "following standard practice in
interactive segmentation": the first click at the point of the object farthest from its
boundary, each next click at the point farthest from the boundary of the error region between
the ground truth and the previous prediction, positive where the prediction missed the object
and negative where it spilled over. That practice is RITM's evaluation clicker (Sofiiuk et al.,
2022, the paper SAM cites); this module reproduces its choices, including the corner cases:

- distances are exact Euclidean distances to the nearest pixel outside the region, with the
  image border counting as outside (the region is padded by one background pixel);
- a pixel clicked before is never chosen again (its distance counts as 0);
- the missed region wins only when its largest distance is strictly larger than the spilled
  region's: a tie gives a negative click;
- among equally distant pixels the first in row-major order (smallest y, then x) is taken;
- when no error is left (both largest distances 0) the click is negative at pixel (0, 0).

The first click is the same rule applied to an empty prediction. Distances are computed on the
bounding box of each region plus one pixel, which gives exactly the whole-image values (the
nearest outside pixel of a region pixel is never farther than that frame).
"""
import numpy as np
from scipy import ndimage

POSITIVE, NEGATIVE = 1, 0  # the prompt encoders' point labels


def _farthest_pixel(region: np.ndarray, clicked: list[tuple[int, int]]):
  """(largest distance, (y, x) of its first pixel in row-major order) of a bool (H, W) region;
  (0.0, None) when the region is empty or all of it was clicked."""
  rows = np.flatnonzero(region.any(1))
  if not len(rows):
    return 0.0, None
  cols = np.flatnonzero(region.any(0))
  y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
  # One background pixel around the region's box: the image border counts as boundary too.
  distance = ndimage.distance_transform_edt(np.pad(region[y0:y1, x0:x1], 1))[1:-1, 1:-1]
  for y, x in clicked:
    if y0 <= y < y1 and x0 <= x < x1:
      distance[y - y0, x - x0] = 0.0
  flat = int(np.argmax(distance))  # the first maximum in row-major order
  best = float(distance.flat[flat])
  if best == 0.0:
    return 0.0, None
  dy, dx = divmod(flat, distance.shape[1])
  return best, (int(y0 + dy), int(x0 + dx))


def next_click(target: np.ndarray, prediction: np.ndarray,
               clicked: list[tuple[int, int]] = ()) -> tuple[int, int, int]:
  """The next click on bool (H, W) `target` given bool (H, W) `prediction` (all False before
  the first click) and the (y, x) pixels clicked so far: (x, y, label), label 1 or 0."""
  missed, missed_at = _farthest_pixel(target & ~prediction, clicked)
  spilled, spilled_at = _farthest_pixel(~target & prediction, clicked)
  if missed > spilled:
    (y, x), label = missed_at, POSITIVE
  else:
    (y, x), label = spilled_at or (0, 0), NEGATIVE
  return x, y, label
