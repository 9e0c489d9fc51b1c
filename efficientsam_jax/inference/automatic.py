"""Segment everything: masks for a grid of single-point prompts, filtered and de-duplicated.

    predictor = Predictor.from_checkpoint("efficient_sam_vitt.pt")
    result = automatic.generate(predictor, image)          # (H, W, 3) uint8
    result["masks"]  # (K, H, W) bool, best first; also "iou", "stability", "boxes", "points"

The recipe is SAM's automatic mask generator (point grid, predicted-IoU threshold, stability
score, box NMS) with one change that makes it cheap: every score and the NMS are computed on
the decoder's low-resolution logits (256 x 256 at 1024 px), and only the masks that survive
are resized to the image. SAM upscales all 3 x 1024 candidates to full resolution first;
that resize, not the decoder, would dominate on a CPU. All grid points go through the
Predictor in a single jitted call (query buckets, see predictor.py). The first filter is SAM's
predicted-IoU threshold, so the decoder skips the mask upscaling (about half its work) for
queries none of whose masks pass it (`skip_low_iou_upscaling`; the result is the same).

Optional crops (`crop_layers=1`): the image is also cut into 2 x 2 overlapping crops, each
embedded and segmented on its own; masks from all crops are merged by box NMS, with full-image
masks preferred as SAM does.
"""
import dataclasses

import numpy as np

from efficientsam_jax.models import prompt_encoder as pe


@dataclasses.dataclass(frozen=True)
class EverythingConfig:
  """SAM's AMG defaults, except that scores are computed on low-resolution logits."""
  points_per_side: int = 32
  pred_iou_thresh: float = 0.88
  stability_score_thresh: float = 0.95
  stability_score_offset: float = 1.0  # logit offset: stability = IoU(l > +off, l > -off)
  mask_threshold: float = 0.0
  box_nms_thresh: float = 0.7
  min_mask_region_area: int = 0  # in original-image pixels; 0 keeps every mask
  crop_layers: int = 0  # 0: the whole image only; 1: also 2 x 2 crops
  crop_overlap_ratio: float = 512 / 1500
  # Queries whose every mask fails pred_iou_thresh are not upscaled by the decoder (they are
  # dropped by that threshold anyway; exact). False decodes every mask.
  skip_low_iou_upscaling: bool = True


def point_grid(points_per_side: int, height: int, width: int) -> np.ndarray:
  """(n*n, 2) (x, y) pixel centres of an n x n grid over an height x width image."""
  offset = 0.5 / points_per_side
  side = np.linspace(offset, 1 - offset, points_per_side)
  xs, ys = np.meshgrid(side * width, side * height)
  return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def stability_score(logits: np.ndarray, threshold: float, offset: float) -> np.ndarray:
  """(..., h, w) logits -> (...,) IoU of the masks at threshold+offset and threshold-offset.

  The high mask is inside the low one, so the IoU is a ratio of areas.
  """
  high = (logits > threshold + offset).sum(axis=(-2, -1), dtype=np.int64)
  low = (logits > threshold - offset).sum(axis=(-2, -1), dtype=np.int64)
  return np.where(low > 0, high / np.maximum(low, 1), 0.0)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
  """(K, h, w) bool -> (K, 4) x1, y1, x2, y2 in mask pixels (inclusive); zeros if empty."""
  if len(masks) == 0:
    return np.zeros((0, 4), np.float32)
  rows, cols = masks.any(axis=2), masks.any(axis=1)  # (K, h), (K, w)
  h, w = masks.shape[1:]

  def first_last(flags, size):
    first = np.argmax(flags, axis=1)
    last = size - 1 - np.argmax(flags[:, ::-1], axis=1)
    return first, last

  y1, y2 = first_last(rows, h)
  x1, x2 = first_last(cols, w)
  boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
  return np.where(rows.any(axis=1, keepdims=True), boxes, 0.0)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Greedy NMS. (K, 4) xyxy boxes, (K,) scores -> indices kept, best score first."""
  order = np.argsort(-scores, kind="stable")
  boxes = boxes[order]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
  rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)
  suppressed = np.zeros(len(boxes), bool)
  keep = []
  for i in range(len(boxes)):
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= iou[i] > iou_threshold
  return order[np.asarray(keep, np.int64)]


def crop_boxes(height: int, width: int, layers: int, overlap_ratio: float) -> list:
  """[(x0, y0, x1, y1), ...]: the whole image, then 2^l x 2^l overlapping crops per layer."""
  boxes = [(0, 0, width, height)]
  for layer in range(1, layers + 1):
    per_side = 2**layer
    overlap = int(overlap_ratio * max(height, width) * (2 / per_side))
    crop_w = int(np.ceil((overlap * (per_side - 1) + width) / per_side))
    crop_h = int(np.ceil((overlap * (per_side - 1) + height) / per_side))
    for i in range(per_side):
      for j in range(per_side):
        x0, y0 = (crop_w - overlap) * j, (crop_h - overlap) * i
        boxes.append((x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)))
  return boxes


def _candidates(predictor, image: np.ndarray, config: EverythingConfig) -> dict:
  """Low-resolution candidates for one image (or crop) that pass the IoU/stability filters.

  Returns {"low_res": (K, h, w) float32 logits, "iou", "stability": (K,), "boxes": (K, 4)
  xyxy in this image's pixels, "points": (K, 2)}.
  """
  height, width = image.shape[:2]
  predictor.set_image(image)
  grid = point_grid(config.points_per_side, height, width)
  # One point per query: the model pads it as it needs (EfficientSAM computes its 5 padding
  # tokens as one, so the shortest array is the cheapest).
  points, labels = grid[:, None], np.full((len(grid), 1), pe.LABEL_POSITIVE, np.float32)
  min_iou = config.pred_iou_thresh if config.skip_low_iou_upscaling else None
  out = predictor.predict_arrays(points, labels, full_resolution=False, min_iou=min_iou)
  low, iou = out["low_res_logits"], out["iou"]  # (P, 3, h, w), (P, 3)
  m = low.shape[1]
  low, iou = low.reshape((-1,) + low.shape[2:]), iou.reshape(-1)
  point_of = np.repeat(grid, m, axis=0)
  keep = iou > config.pred_iou_thresh
  low, iou, point_of = low[keep], iou[keep], point_of[keep]
  stability = stability_score(low, config.mask_threshold, config.stability_score_offset)
  keep = stability >= config.stability_score_thresh
  low, iou, stability, point_of = low[keep], iou[keep], stability[keep], point_of[keep]
  # Low-res pixel (i, j) covers image pixels [j * W / w, (j + 1) * W / w) (aspect not kept).
  h, w = low.shape[1:] if len(low) else (1, 1)
  boxes = mask_boxes(low > config.mask_threshold)
  scale = np.asarray([width / w, height / h] * 2, np.float32)
  boxes = (boxes + np.asarray([0, 0, 1, 1], np.float32)) * scale
  keep = box_nms(boxes, iou, config.box_nms_thresh)
  return {"low_res": low[keep], "iou": iou[keep], "stability": stability[keep],
          "boxes": boxes[keep], "points": point_of[keep]}


def generate(predictor, image: np.ndarray, config: EverythingConfig = EverythingConfig()
             ) -> dict:
  """Every mask the grid finds in an (H, W, 3) uint8 image.

  Returns {"masks": (K, H, W) bool, "iou": (K,), "stability": (K,), "boxes": (K, 4) xyxy,
  "points": (K, 2) the prompt of each mask, "crop_boxes": (K, 4)}, best predicted IoU first.
  The predictor keeps the embedding of the last image or crop it saw.
  """
  height, width = image.shape[:2]
  parts = []
  for crop in crop_boxes(height, width, config.crop_layers, config.crop_overlap_ratio):
    x0, y0, x1, y1 = crop
    found = _candidates(predictor, np.ascontiguousarray(image[y0:y1, x0:x1]), config)
    if len(found["iou"]):
      # Full-resolution masks, only for the survivors; pasted into the whole image.
      logits = predictor.upscale(found["low_res"][:, None])[:, 0]
      masks = np.zeros((len(logits), height, width), bool)
      masks[:, y0:y1, x0:x1] = logits > config.mask_threshold
      shift = np.asarray([x0, y0, x0, y0], np.float32)
      parts.append({"masks": masks, "iou": found["iou"], "stability": found["stability"],
                    "boxes": found["boxes"] + shift, "points": found["points"] + shift[:2],
                    "crop_boxes": np.tile(np.asarray(crop, np.float32), (len(logits), 1))})
  if not parts:
    return {"masks": np.zeros((0, height, width), bool), "iou": np.zeros(0, np.float32),
            "stability": np.zeros(0), "boxes": np.zeros((0, 4), np.float32),
            "points": np.zeros((0, 2), np.float32), "crop_boxes": np.zeros((0, 4), np.float32)}
  merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if len(parts) > 1:
    # Across crops: the whole image's masks win ties (SAM scores them by crop area).
    whole = np.all(merged["crop_boxes"] == np.asarray([0, 0, width, height]), axis=1)
    keep = box_nms(merged["boxes"], merged["iou"] + 10.0 * whole, config.box_nms_thresh)
    merged = {k: v[keep] for k, v in merged.items()}
  if config.min_mask_region_area:
    keep = merged["masks"].sum(axis=(1, 2)) >= config.min_mask_region_area
    merged = {k: v[keep] for k, v in merged.items()}
  order = np.argsort(-merged["iou"], kind="stable")
  return {k: v[order] for k, v in merged.items()}
