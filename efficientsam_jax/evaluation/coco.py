r"""Evaluating a promptable segmenter on COCO-format annotations (`python -m
efficientsam_jax.evaluate`).

Single-prompt protocol (training.md): for every non-crowd ground-truth mask, a prompt made
from the mask itself (box: its tightest box; point1: one point drawn uniformly inside it;
point3: three such points), the candidate with the highest predicted IoU, and its IoU with the
ground truth at the original image resolution; the result is the mean over all masks:
{"miou": ..., "count": ...}. All prompts of an image go to the model in one batched call.
Points are drawn with --seed, so a run is repeatable.

Zero-shot instance segmentation (--detections): the boxes of a detector's COCO results file
(`[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`) are the prompts; the best
mask of each becomes a detection with the detector's score, and pycocotools' COCOeval (segm)
gives mask AP: {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "count"}.

PATH: a released .pt, a JAX parameter checkpoint, or a training workdir (latest parameters;
a finetuning workdir's own input size and depth).
"""
import contextlib
import io
import sys

import numpy as np
from absl import logging

from efficientsam_jax.data import segmentation
from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import Predictor
from efficientsam_jax.io import paths

PROMPTS = ("box", "point1", "point3")
UPSCALE_CHUNK = 16  # queries upscaled to full resolution at once: bounds host memory


def mask_prompts(masks: list[np.ndarray], prompt: str, rng: np.random.Generator):
  """Prompts for ground-truth masks (each bool (H, W)): points (Q, n, 2), labels (Q, n).

  box: corners of the tightest box (pixel indices of the extreme pixels) labelled 2 and 3.
  pointN: N pixels drawn uniformly (with replacement) from the mask, labelled 1.
  """
  if prompt == "box":
    boxes = np.stack([segmentation.tight_box(m) for m in masks])
    return boxes.reshape(-1, 2, 2), np.tile(np.array([[2, 3]], np.float32), (len(masks), 1))
  n = int(prompt[len("point"):])
  points = np.zeros((len(masks), n, 2), np.float32)
  for i, mask in enumerate(masks):
    ys, xs = np.nonzero(mask)
    pick = rng.integers(len(ys), size=n)
    points[i] = np.stack([xs[pick], ys[pick]], -1)
  return points, np.ones((len(masks), n), np.float32)


def best_masks(predictor, points, labels):
  """Yields (query index, bool (H, W) full-resolution best mask) for every query, decoding
  all queries in one call and upscaling only the best candidate, chunk by chunk."""
  out = predictor.predict_arrays(points, labels, full_resolution=False)
  best = np.argmax(out["iou"], axis=1)
  low = out["low_res_logits"][np.arange(len(best)), best][:, None]  # (Q, 1, 4g, 4g)
  for start in range(0, len(best), UPSCALE_CHUNK):
    logits = predictor.upscale(low[start:start + UPSCALE_CHUNK])
    for j, mask_logits in enumerate(logits):
      yield start + j, mask_logits[0] > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
  union = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _images_with_annotations(coco: dict, use_detections: bool = False, detections=None):
  by_image = {}
  for ann in (detections if use_detections else coco["annotations"]):
    if not ann.get("iscrowd", 0):
      by_image.setdefault(ann["image_id"], []).append(ann)
  return [(img, by_image[img["id"]]) for img in sorted(coco["images"], key=lambda i: i["id"])
          if img["id"] in by_image]


def _read_image(images_dir: str, info: dict):
  try:
    return segmentation.read_image(paths.read_bytes(paths.join(images_dir, info["file_name"])))
  except OSError:
    return None


def _progress(done: int, total: int, message: str) -> None:
  if done == total or done % max(1, total // 20) == 0:
    print(f"evaluate: {done}/{total} images, {message}", file=sys.stderr, flush=True)


def evaluate_miou(predictor, images_dir: str, coco: dict, prompt: str, seed: int = 0) -> dict:
  """mIoU over every non-crowd annotation (see the module docstring)."""
  if prompt not in PROMPTS:
    raise UserError(f"--prompt must be one of {PROMPTS}, got {prompt!r}")
  rng = np.random.default_rng(seed)
  items = _images_with_annotations(coco)
  if not items:
    raise UserError("no image in the annotations file has a (non-crowd) annotation")
  ious, skipped = [], 0
  for done, (info, anns) in enumerate(items, 1):
    image = _read_image(images_dir, info)
    if image is None:
      skipped += 1
      logging.warning("skipping unreadable image %s", info["file_name"])
      continue
    h, w = image.shape[:2]
    masks = []
    for ann in anns:
      try:
        mask = segmentation.decode_mask(ann["segmentation"], h, w)
      except (KeyError, TypeError, ValueError):
        mask = None
      if mask is not None and mask.shape == (h, w) and mask.any():
        masks.append(mask)
    if masks:
      predictor.set_image(image)
      points, labels = mask_prompts(masks, prompt, rng)
      for q, predicted in best_masks(predictor, points, labels):
        ious.append(iou(predicted, masks[q]))
    _progress(done, len(items), f"mIoU so far {np.mean(ious) if ious else float('nan'):.4f}")
  if not ious:
    raise UserError("no annotation could be evaluated (unreadable images or masks)")
  result = {"miou": float(np.mean(ious)), "count": len(ious)}
  if skipped:
    result["skipped_images"] = skipped
  return result


def evaluate_detections(predictor, images_dir: str, annotations_path: str, coco: dict,
                        detections_path: str) -> dict:
  """COCO mask AP of the masks prompted by a detector's boxes (COCOeval, segm)."""
  from pycocotools import mask as mask_utils
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  detections = paths.read_json(detections_path, "detections file")
  if not isinstance(detections, list) or not all(
      isinstance(d, dict) and {"image_id", "bbox"} <= set(d) for d in detections):
    raise UserError(f"{detections_path}: expected a COCO results list with image_id and bbox")
  results = []
  items = _images_with_annotations(coco, True, detections)
  for done, (info, dets) in enumerate(items, 1):
    image = _read_image(images_dir, info)
    if image is None:
      logging.warning("skipping unreadable image %s", info["file_name"])
      continue
    predictor.set_image(image)
    boxes = np.array([d["bbox"] for d in dets], np.float32)
    corners = np.stack([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    labels = np.tile(np.array([[2, 3]], np.float32), (len(dets), 1))
    for q, predicted in best_masks(predictor, corners, labels):
      rle = mask_utils.encode(np.asfortranarray(predicted.astype(np.uint8)))
      rle["counts"] = rle["counts"].decode("ascii")
      results.append({"image_id": info["id"], "category_id": dets[q].get("category_id", 1),
                      "segmentation": rle, "score": float(dets[q].get("score", 1.0))})
    _progress(done, len(items), f"{len(results)} masks")
  if not results:
    raise UserError("no detection could be evaluated")
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
    gt = COCO()  # from the dict already read: pycocotools opens only local paths
    gt.dataset = coco
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(results), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  names = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
  return {**{n: float(v) for n, v in zip(names, evaluator.stats)}, "count": len(results)}


def run(checkpoint, images, annotations, prompt="box", detections=None, model=None,
        seed=0) -> dict:
  """The CLI's work; raises UserError / ModelFileError / PromptError on bad input."""
  if prompt not in PROMPTS:
    raise UserError(f"--prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
  if not paths.is_dir(images):
    paths.check_bucket(images, "--images")
    raise UserError(f"{images}: no such images folder")
  coco = segmentation.load_coco_json(annotations)
  if detections is not None and not paths.is_file(detections):
    paths.check_bucket(detections, "--detections")
    raise UserError(f"{detections}: no such detections file")
  predictor = Predictor.from_checkpoint(checkpoint, model)
  if detections:
    return evaluate_detections(predictor, images, annotations, coco, detections)
  return evaluate_miou(predictor, images, coco, prompt, seed)
