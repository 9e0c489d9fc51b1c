"""Prompts made from ground truth, as the SAM and EfficientSAM papers evaluate, and the IoU of
the answer: every function takes a Predictor that holds the current image.

- box: the annotation's box ([x, y, w, h] -> corners x, y, x + w, y + h; the mask's bbox when
  the annotation has none); `box_source="mask"` takes the extreme mask pixels instead.
- pointN: N clicks by SAM's protocol (clicks.py): the first where the object is farthest from
  its boundary, each next one at the centre of the largest error of the previous answer. The
  previous answer's low-resolution logits are fed back as the mask prompt where the model takes
  one (SAM, MobileSAM); EfficientSAM has no mask input, so its next answer sees the clicks
  only. `first_click="random"` draws the first click uniformly inside the mask instead (SAM's
  harder variant). Running N clicks gives the mIoU after every click: the clicks-vs-mIoU curve.

Every answer is the candidate with the highest predicted IoU, compared with the ground truth
at the image's full resolution.
"""
import re

import numpy as np

from efficientsam_jax.data import masks as mask_ops
from efficientsam_jax.errors import UserError
from efficientsam_jax.evaluation import annotations, clicks

BOX_LABELS = (2, 3)  # the prompt encoders' box corner labels
BOX_SOURCES = ("annotation", "mask")
FIRST_CLICKS = ("center", "random")
UPSCALE_CHUNK = 16  # best masks resized to full resolution at once: bounds host memory


def parse_protocols(text: str) -> list[str]:
  """'box,point1,point3' -> ['box', 'point1', 'point3'] (order kept, duplicates dropped)."""
  names = []
  for word in str(text).split(","):
    word = word.strip()
    if not (word == "box" or re.fullmatch(r"point[1-9][0-9]*", word)):
      raise UserError(f"--prompt: {word!r} is not box or pointN (point1, point3, ...)")
    if word not in names:
      names.append(word)
  return names


def num_clicks(protocols) -> int:
  return max([int(p[len("point"):]) for p in protocols if p.startswith("point")], default=0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
  union = np.count_nonzero(a | b)
  return float(np.count_nonzero(a & b) / union) if union else 1.0


def best_masks(predictor, points, labels, mask_input=None):
  """Decodes the queries (points (Q, n, 2), labels (Q, n), optional mask_input (Q, 4g, 4g))
  -> (best candidates' low-res logits (Q, 4g, 4g), their IoU predictions (Q,), bool (Q, H, W)
  full-resolution masks), upscaling only the best candidate of each query."""
  if mask_input is None:
    out = predictor.predict_arrays(points, labels, full_resolution=False)
  else:
    out = predictor.predict_arrays(points, labels, False, mask_input)
  best = np.argmax(out["iou"], axis=1)
  rows = np.arange(len(best))
  low = np.asarray(out["low_res_logits"])[rows, best]
  masks = [predictor.upscale(low[start:start + UPSCALE_CHUNK, None])[:, 0] > 0
           for start in range(0, len(best), UPSCALE_CHUNK)]
  return low, np.asarray(out["iou"])[rows, best], np.concatenate(masks)


def box_prompts(boxes: np.ndarray):
  """(Q, 4) x0, y0, x1, y1 -> points (Q, 2, 2), labels (Q, 2)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 2, 2)
  return boxes, np.tile(np.array([BOX_LABELS], np.float32), (len(boxes), 1))


def box_ious(predictor, masks: list[np.ndarray], boxes: np.ndarray) -> list[float]:
  """IoU of the box-prompted answer with each bool (H, W) mask; boxes (Q, 4)."""
  points, labels = box_prompts(boxes)
  _, _, predicted = best_masks(predictor, points, labels)
  return [iou(p, m) for p, m in zip(predicted, masks)]


def click_ious(predictor, masks: list[np.ndarray], num: int, first_click: str = "center",
               rng: np.random.Generator | None = None) -> np.ndarray:
  """(Q, num) IoU with each bool (H, W) mask after clicks 1..num of SAM's protocol (module
  docstring); all masks of the image are clicked and decoded together, click by click."""
  q = len(masks)
  points = np.zeros((q, num, 2), np.float32)
  labels = np.zeros((q, num), np.float32)
  clicked = [[] for _ in range(q)]
  predicted = [np.zeros_like(m) for m in masks]
  feed_back = bool(getattr(predictor, "supports_mask_input", False))
  low, out = None, np.zeros((q, num))
  for k in range(num):
    for i, mask in enumerate(masks):
      if k == 0 and first_click == "random":
        ys, xs = np.nonzero(mask)
        pick = rng.integers(len(ys))
        x, y, label = int(xs[pick]), int(ys[pick]), clicks.POSITIVE
      else:
        x, y, label = clicks.next_click(mask, predicted[i], clicked[i])
      clicked[i].append((y, x))
      points[i, k], labels[i, k] = (x, y), label
    low, _, predicted = best_masks(predictor, points[:, :k + 1], labels[:, :k + 1],
                                   low if feed_back and k else None)
    out[:, k] = [iou(p, m) for p, m in zip(predicted, masks)]
  return out


def instances(record, height: int, width: int, box_source: str = "annotation"):
  """The usable non-crowd annotations of an image at its real size: (bool (H, W) masks,
  float32 (Q, 4) boxes, number skipped), see annotations.py for what is skipped."""
  masks, boxes, skipped = [], [], 0
  for ann in record.annotations:
    rle = annotations.instance_rle(ann.get("segmentation"), height, width)
    box = annotations.annotation_box(ann, rle) if rle is not None else None
    mask = annotations.decode(rle) if box is not None else None
    if mask is None or not mask.any():
      skipped += 1
      continue
    masks.append(mask)
    boxes.append(box if box_source == "annotation" else mask_ops.tight_box(mask))
  return masks, np.array(boxes, np.float32).reshape(-1, 4), skipped
