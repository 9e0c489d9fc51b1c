"""Zero-shot instance segmentation: a detector's boxes prompt the model, the answers are scored
as masks (the EfficientSAM and SAM papers' protocol with ViTDet boxes).

Each detection ({"image_id", "category_id", "bbox": [x, y, w, h], "score"}, a COCO results
file) becomes one box prompt; the candidate with the highest predicted IoU is kept and written
as a COCO RLE result with the detector's image, category and score. A malformed detection is
skipped and counted (`skipped_detections`). The results are scored against the ground truth
by pycocotools (COCO: `ap`, `ap50`, `ap75`, `ap_small`, `ap_medium`, `ap_large`) or by the
LVIS API (LVIS v1, 300 detections per image: the same plus `ap_r`, `ap_c`, `ap_f`). A value of
-1 is those libraries' "no ground truth in this group".

The ground truth they score against is the file's, with the annotations `annotations.py`
skips left out (counted in `skipped_annotations`), so a broken mask never crashes the scorer.
"""
import contextlib
import copy
import io
import json
import math
import os
import tempfile

import numpy as np
from pycocotools import mask as mask_utils

from efficientsam_jax.errors import UserError
from efficientsam_jax.evaluation import annotations, protocols

COCO_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
LVIS_KEYS = {"AP": "ap", "AP50": "ap50", "AP75": "ap75", "APs": "ap_small", "APm": "ap_medium",
             "APl": "ap_large", "APr": "ap_r", "APc": "ap_c", "APf": "ap_f"}
LVIS_FREQUENCIES = ("r", "c", "f")


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
      value)


def load(path: str, image_ids) -> tuple[dict[int, list], int]:
  """A COCO results file -> ({image id: [detection, ...]}, number of malformed detections)."""
  data = annotations.read_json(path, "detections")
  if not isinstance(data, list):
    raise UserError(f"{path}: not a COCO results list ([{{image_id, category_id, bbox, "
                    "score}}, ...])")
  known, by_image, skipped = set(image_ids), {}, 0
  for det in data:
    box = det.get("bbox") if isinstance(det, dict) else None
    if (isinstance(det, dict) and det.get("image_id") in known
        and isinstance(det.get("category_id"), int) and _number(det.get("score"))
        and isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)
        and box[2] >= 0 and box[3] >= 0):
      by_image.setdefault(det["image_id"], []).append(det)
    else:
      skipped += 1
  return by_image, skipped


def segment(predictor, image_id: int, dets: list) -> list[dict]:
  """The COCO results of one image's detections, answered by the predictor (which holds the
  image)."""
  boxes = np.array([d["bbox"] for d in dets], np.float32)
  corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
  points, labels = protocols.box_prompts(corners)
  _, _, masks = protocols.best_masks(predictor, points, labels)
  results = []
  for det, mask in zip(dets, masks):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    results.append({"image_id": image_id, "category_id": det["category_id"],
                    "segmentation": {"size": [int(v) for v in rle["size"]],
                                     "counts": rle["counts"].decode("ascii")},
                    "score": float(det["score"])})
  return results


def ground_truth(record, height: int, width: int, category_ids) -> tuple[list[dict], int]:
  """The scorer's view of one image's annotations (crowd regions included): checked compressed
  RLE at the image's size, area, bbox; (annotations, number skipped)."""
  out, skipped = [], 0
  for ann, crowd in [(a, 0) for a in record.annotations] + [(a, 1) for a in record.crowd]:
    rle = annotations.instance_rle(ann.get("segmentation"), height, width)
    if rle is None or ann.get("category_id") not in category_ids:
      skipped += 1
      continue
    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    area = float(mask_utils.area(coded))
    if area == 0:
      skipped += 1
      continue
    given = ann.get("area")
    out.append({"image_id": record.id, "category_id": ann["category_id"], "segmentation": rle,
                "area": float(given) if _number(given) and given > 0 else area,
                "bbox": [float(v) for v in mask_utils.toBbox(coded)],
                "iscrowd": crowd})
  return out, skipped


def check_scorer(gt) -> None:
  """UserError now, before the model runs, for a file the scorer cannot use."""
  ids = [c.get("id") for c in gt.categories if isinstance(c, dict)]
  if not ids or len(ids) != len(gt.categories) or not all(isinstance(i, int) for i in ids):
    raise UserError(f"{gt.path}: mask AP needs 'categories' with integer ids")
  if gt.kind != annotations.LVIS:
    return
  if any(c.get("frequency") not in LVIS_FREQUENCIES for c in gt.categories):
    raise UserError(f"{gt.path}: LVIS categories need a frequency of r, c or f")
  for image in gt.images:
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
      if not isinstance(image.info.get(key), list):
        raise UserError(f"{gt.path}: LVIS image {image.id} has no {key} list")
  try:
    import lvis  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise UserError("LVIS mask AP needs the lvis package: pip install "
                    "'efficientsam_jax[eval]'") from None


def score(gt, images: list[dict], gt_anns: list[dict], results: list[dict]) -> dict:
  """Mask AP of `results` against `gt_anns` on `images` (the image entries, with their real
  height and width): pycocotools for COCO files, the LVIS API for LVIS files."""
  # Both scorers add fields to what they are given: they get copies.
  dataset = copy.deepcopy({"images": images, "categories": gt.categories,
                           "annotations": [dict(a, id=i + 1) for i, a in enumerate(gt_anns)]})
  results = copy.deepcopy(results)
  if gt.kind == annotations.LVIS:
    return _lvis_ap(dataset, results)
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
    truth = COCO()
    truth.dataset = dataset
    truth.createIndex()
    evaluator = COCOeval(truth, truth.loadRes(results), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return {k: float(v) for k, v in zip(COCO_KEYS, evaluator.stats)}


@contextlib.contextmanager
def _numpy_float_alias():
  """lvis 0.5.3, the last release, calls `np.float` (removed in NumPy 1.24; fixed upstream in
  lvis-api PR #39, never released): the alias exists only while the LVIS API runs."""
  added = "float" not in np.__dict__
  if added:
    np.float = float
  try:
    yield
  finally:
    if added:
      del np.float


def _lvis_ap(dataset: dict, results: list[dict]) -> dict:
  from lvis import LVIS, LVISEval, LVISResults  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:  # the API reads ground truth from a path only
    path = os.path.join(tmp, "ground_truth.json")
    with open(path, "w") as f:
      json.dump(dataset, f)
    truth = LVIS(path)
  evaluator = LVISEval(truth, LVISResults(truth, results, max_dets=300), "segm")
  with _numpy_float_alias():
    evaluator.run()
  return {ours: float(evaluator.get_results()[theirs]) for theirs, ours in LVIS_KEYS.items()}
