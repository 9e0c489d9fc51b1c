"""`SamAutomaticMaskGenerator` with segment-anything's signature, algorithm and output.

    generator = SamAutomaticMaskGenerator(sam, points_per_side=32)
    records = generator.generate(image)   # (H, W, 3) uint8 RGB
    records[0]  # {"segmentation", "area", "bbox" (XYWH), "predicted_iou", "point_coords",
                #  "stability_score", "crop_box" (XYWH)}

The steps are segment-anything's: a point grid per crop layer, crops (`crop_n_layers`), for each
batch of `points_per_batch` points three masks upscaled to the crop, the predicted-IoU filter,
the stability score on the full-resolution logits, masks whose box touches a crop edge (not the
image's) dropped, box NMS per crop, then across crops (smaller crops lose), then optionally small
holes and islands removed (`min_mask_region_area`) and NMS again. So its records are
segment-anything's for the same weights (tests/test_sam_compat.py). `inference/automatic.py`
is the package's faster recipe (scores on the low-resolution logits), used by `predict
--everything` and the demo.
"""
import itertools
import math

import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import automatic
from efficientsam_jax.models import prompt_encoder as pe
from efficientsam_jax.sam_compat.predictor import SamPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_NEAR_EDGE_PIXELS = 20.0


def point_grids(points_per_side: int, crop_n_layers: int, scale_per_layer: int) -> list:
  """Per crop layer, an (n^2, 2) grid in [0, 1] (x fastest), n = points_per_side / scale^layer."""
  grids = []
  for layer in range(crop_n_layers + 1):
    n = int(points_per_side / (scale_per_layer**layer))
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    grids.append(np.stack([np.tile(side[None, :], (n, 1)), np.tile(side[:, None], (1, n))],
                          axis=-1).reshape(-1, 2))
  return grids


def crop_boxes(height: int, width: int, n_layers: int, overlap_ratio: float):
  """[x0, y0, x1, y1] crops and their layer: the whole image, then per layer l 2^l x 2^l
  crops overlapping by overlap_ratio of the short side (scaled per layer)."""
  boxes, layers = [[0, 0, width, height]], [0]
  short = min(height, width)
  for layer in range(1, n_layers + 1):
    per_side = 2**layer
    overlap = int(overlap_ratio * short * (2 / per_side))
    crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
    crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
    xs = [int((crop_w - overlap) * i) for i in range(per_side)]
    ys = [int((crop_h - overlap) * i) for i in range(per_side)]
    for x0, y0 in itertools.product(xs, ys):
      boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
      layers.append(layer)
  return boxes, layers


def remove_small_regions(mask: np.ndarray, area: float, mode: str) -> tuple[np.ndarray, bool]:
  """Fills holes ("holes") or drops islands ("islands") smaller than `area` pixels
  (8-connected); an island mask keeps its largest region when all are small. Returns
  (mask, changed)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top  (jax depends on scipy)
  holes = mode == "holes"
  regions, count = ndimage.label(holes ^ mask, structure=np.ones((3, 3), int))
  sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
  small = [i + 1 for i, s in enumerate(sizes) if s < area]
  if not small:
    return mask, False
  fill = [0] + small
  if not holes:
    fill = [i for i in range(count + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
  return np.isin(regions, fill), True


def _xywh(box) -> list:
  x0, y0, x1, y1 = (int(v) for v in box)
  return [x0, y0, x1 - x0, y1 - y0]


def uncompressed_rle(mask: np.ndarray) -> dict:
  """segment-anything's uncompressed RLE: column-major run lengths, starting with zeros."""
  flat = mask.T.ravel()
  change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  edges = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(edges).tolist()
  if flat.size and flat[0]:
    counts = [0] + counts
  return {"size": list(mask.shape), "counts": counts}


class SamAutomaticMaskGenerator:
  """segment-anything's SamAutomaticMaskGenerator (module docstring); same arguments."""

  def __init__(self, model, points_per_side: int | None = 32, points_per_batch: int = 64,
               pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
               stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7,
               crop_n_layers: int = 0, crop_nms_thresh: float = 0.7,
               crop_overlap_ratio: float = 512 / 1500, crop_n_points_downscale_factor: int = 1,
               point_grids=None, min_mask_region_area: int = 0,
               output_mode: str = "binary_mask"):
    if (points_per_side is None) == (point_grids is None):
      raise UserError("give exactly one of points_per_side and point_grids")
    if output_mode not in OUTPUT_MODES:
      raise UserError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, got "
                      f"{output_mode!r}")
    self.predictor = SamPredictor(model)
    self.point_grids = ([np.asarray(g, np.float64) for g in point_grids]
                        if point_grids is not None else
                        globals()["point_grids"](points_per_side, crop_n_layers,
                                                 crop_n_points_downscale_factor))
    if len(self.point_grids) != crop_n_layers + 1:
      raise UserError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1})")
    self.points_per_batch = int(points_per_batch)
    self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
    self.stability_score_offset, self.box_nms_thresh = stability_score_offset, box_nms_thresh
    self.crop_n_layers, self.crop_nms_thresh = crop_n_layers, crop_nms_thresh
    self.crop_overlap_ratio = crop_overlap_ratio
    self.min_mask_region_area, self.output_mode = min_mask_region_area, output_mode

  def generate(self, image: np.ndarray) -> list[dict]:
    """Every mask found in an (H, W, 3) uint8 RGB image, as segment-anything's records."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise UserError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} "
                      f"{image.shape}")
    height, width = image.shape[:2]
    found = []
    boxes, layers = crop_boxes(height, width, self.crop_n_layers, self.crop_overlap_ratio)
    for box, layer in zip(boxes, layers):
      found += self._crop(image, box, layer)
    if len(boxes) > 1 and found:  # across crops: the smaller crop's duplicate goes
      crop_area = np.asarray([(r["crop"][2] - r["crop"][0]) * (r["crop"][3] - r["crop"][1])
                              for r in found], np.float64)
      keep = automatic.box_nms(np.asarray([r["box"] for r in found], np.float32),
                               1.0 / crop_area, self.crop_nms_thresh)
      found = [found[i] for i in keep]
    if self.min_mask_region_area > 0:
      found = self._remove_small_regions(found, (height, width))
    return [self._record(r, (height, width)) for r in found]

  def _crop(self, image, box, layer) -> list[dict]:
    x0, y0, x1, y1 = box
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    self.predictor.set_image(crop)
    h, w = crop.shape[:2]
    points = self.point_grids[layer] * np.asarray([[w, h]])
    found = []
    for start in range(0, len(points), self.points_per_batch):
      found += self._batch(points[start:start + self.points_per_batch], box, image.shape[:2])
    self.predictor.reset_image()
    if not found:
      return []
    keep = automatic.box_nms(np.asarray([r["box"] for r in found], np.float32),
                             np.asarray([r["iou"] for r in found], np.float32),
                             self.box_nms_thresh)
    return [found[i] for i in keep]

  def _batch(self, points, crop, image_hw) -> list[dict]:
    x0, y0, x1, y1 = crop
    transformed = self.predictor.transform.apply_coords(points, (y1 - y0, x1 - x0))
    labels = np.full((len(points), 1), pe.LABEL_POSITIVE, np.float32)
    logits, iou, _ = self.predictor.predict_torch(transformed[:, None], labels,
                                                  multimask_output=True, return_logits=True)
    m = iou.shape[1]
    logits, iou = logits.reshape((-1,) + logits.shape[2:]), iou.reshape(-1)
    point_of = np.repeat(points, m, axis=0)
    # segment-anything applies each threshold only when it is positive.
    keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else np.ones(len(iou), bool)
    logits, iou, point_of = logits[keep], iou[keep], point_of[keep]
    threshold = self.predictor.model.mask_threshold
    stability = automatic.stability_score(logits, threshold, self.stability_score_offset)
    keep = (stability >= self.stability_score_thresh if self.stability_score_thresh > 0
            else np.ones(len(stability), bool))
    masks = logits[keep] > threshold
    iou, stability, point_of = iou[keep], stability[keep], point_of[keep]
    shift = np.asarray([x0, y0, x0, y0])
    boxes = automatic.mask_boxes(masks).astype(np.int64) + shift
    height, width = image_hw
    # Boxes touching a crop edge that is not the image's edge are cut by the crop: dropped.
    near_crop = np.abs(boxes - np.asarray(crop)) <= _NEAR_EDGE_PIXELS
    near_image = np.abs(boxes - np.asarray([0, 0, width, height])) <= _NEAR_EDGE_PIXELS
    keep = ~np.any(near_crop & ~near_image, axis=1)
    return [{"mask": np.packbits(masks[i]), "mask_hw": masks.shape[1:], "box": boxes[i],
             "iou": float(iou[i]), "stability": float(stability[i]),
             "point": (point_of[i] + shift[:2]).tolist(), "crop": list(crop)}
            for i in np.flatnonzero(keep)]

  @staticmethod
  def _full_mask(found: dict, image_hw) -> np.ndarray:
    """The record's mask pasted into the whole image."""
    h, w = found["mask_hw"]
    mask = np.unpackbits(found["mask"], count=h * w).reshape(h, w).astype(bool)
    if mask.shape == tuple(image_hw):
      return mask
    full = np.zeros(image_hw, bool)
    x0, y0 = found["crop"][:2]
    full[y0:y0 + h, x0:x0 + w] = mask
    return full

  def _remove_small_regions(self, found: list[dict], image_hw) -> list[dict]:
    """segment-anything's postprocess_small_regions: clean each mask, then NMS preferring the
    masks that did not change."""
    masks, unchanged = [], []
    for r in found:
      mask, holes = remove_small_regions(self._full_mask(r, image_hw), self.min_mask_region_area,
                                         "holes")
      mask, islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
      masks.append(mask)
      unchanged.append(float(not (holes or islands)))
    boxes = automatic.mask_boxes(np.stack(masks)).astype(np.int64)
    keep = automatic.box_nms(boxes.astype(np.float32), np.asarray(unchanged, np.float32),
                             self.box_nms_thresh)
    out = []
    for i in keep:
      r = dict(found[i])
      if not unchanged[i]:
        r.update(mask=np.packbits(masks[i]), mask_hw=masks[i].shape, crop=r["crop"],
                 box=boxes[i], pasted=True)
      out.append(r)
    return out

  def _record(self, found: dict, image_hw) -> dict:
    mask = (np.unpackbits(found["mask"], count=int(np.prod(image_hw))).reshape(image_hw)
            .astype(bool) if found.get("pasted") else self._full_mask(found, image_hw))
    if self.output_mode == "binary_mask":
      segmentation = mask
    elif self.output_mode == "uncompressed_rle":
      segmentation = uncompressed_rle(mask)
    else:
      from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
      segmentation = mask_utils.encode(np.asfortranarray(mask))
      segmentation["counts"] = segmentation["counts"].decode("utf-8")
    return {"segmentation": segmentation, "area": int(mask.sum()), "bbox": _xywh(found["box"]),
            "predicted_iou": found["iou"], "point_coords": [found["point"]],
            "stability_score": found["stability"], "crop_box": _xywh(found["crop"])}
