"""A small generated dataset in the released SA-1B layout, for the finetuning demo and the
miniature experiment.

Each image is a scene of shapes (data/scenes.py: the "varied" style by default, "heldout" for
measuring transfer, or "plain", the demo's earlier generator, kept here unchanged); each
shape's VISIBLE part (later shapes occlude earlier ones) is one annotation, stored as real COCO
RLE made by pycocotools, with bbox/area/point_coords like SA-1B. Everything is a pure function
of (seed, index, style), so the files are identical wherever they are written.
"""
import json

import numpy as np
from pycocotools import mask as mask_utils

from efficientsam_jax.data import demo_images
from efficientsam_jax.data import scenes
from efficientsam_jax.data import segmentation
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths

STYLES = scenes.STYLES + ("plain",)

# The "plain" style. Shapes are few and large: at the demo's 96 px a ViT sees 6 x 6 tokens, and
# a mask should cover several of them, as an SA-1B mask covers hundreds of a 64 x 64 grid at
# 1024 px.
MIN_SHAPES, MAX_SHAPES = 2, 4
SCALE_RANGE = (0.4, 0.8)  # half-extent of a shape, as a fraction of half the image side
MIN_AREA_FRACTION = 0.02  # visible parts smaller than this are not annotated


def _frame(rng, yy, xx, scale: float):
  """Coordinates of a random frame (centre, rotation) in units of `scale`: two (H, W) arrays."""
  cy, cx = rng.uniform(-0.6, 0.6, size=2)
  angle = rng.uniform(0, np.pi)
  dy, dx = yy - cy, xx - cx
  u = np.cos(angle) * dx + np.sin(angle) * dy
  v = -np.sin(angle) * dx + np.cos(angle) * dy
  return u / scale, v / scale


def _shape_mask(rng, yy, xx, kind: int) -> np.ndarray:
  """An ellipse (0), rectangle (1) or star-shaped polygon (2, 5-9 vertices): bool (H, W)."""
  u, v = _frame(rng, yy, xx, rng.uniform(*SCALE_RANGE))
  if kind == 0:
    a, b = rng.uniform(0.5, 1.0, size=2)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0
  if kind == 1:
    a, b = rng.uniform(0.4, 0.9, size=2)
    return (np.abs(u) <= a) & (np.abs(v) <= b)
  n = int(rng.integers(5, 10))
  vertex_angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
  vertex_radii = rng.uniform(0.45, 1.0, size=n)
  # The boundary radius at each pixel's angle, linear between the vertices' radii (periodic).
  angle = np.arctan2(v, u) % (2 * np.pi)
  radius = np.interp(angle, vertex_angles, vertex_radii, period=2 * np.pi)
  return np.hypot(u, v) <= radius


def _textured_background(rng, yy, xx, size: int) -> np.ndarray:
  """(size, size, 3) float: a gradient plus blurred noise, so edges are not the only signal."""
  image = demo_images._gradient_background(rng, yy, xx)  # pylint: disable=protected-access
  _, noise = demo_images._texture(rng, yy, xx)  # pylint: disable=protected-access
  return image + 0.25 * (noise[..., None] - 0.5) * rng.uniform(0.3, 1.0, size=3)


def demo_sample(seed: int, index: int, size: int,
                style: str = "varied") -> tuple[np.ndarray, list[np.ndarray]]:
  """Image uint8 (size, size, 3) and the visible masks (each bool (size, size)) of one sample.

  size: a multiple of 8. style: one of STYLES.
  """
  if style != "plain":
    image, masks, _ = scenes.scene(seed, index, size, style)
    return image, masks
  rng = np.random.default_rng([seed, index, 7])
  coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
  yy, xx = np.meshgrid(coords, coords, indexing="ij")
  image = _textured_background(rng, yy, xx, size)
  shapes = []
  for _ in range(int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))):
    mask = _shape_mask(rng, yy, xx, int(rng.integers(3)))
    colour = rng.uniform(0, 1, size=3)
    # A mild shading inside the shape keeps colour alone from giving the mask away.
    shade = 0.15 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
    image[mask] = (colour + shade[..., None])[mask]
    shapes.append(mask)
  visible, covered = [], np.zeros((size, size), bool)
  for mask in reversed(shapes):  # the last drawn shape is on top
    part = mask & ~covered
    covered |= mask
    if part.sum() >= MIN_AREA_FRACTION * size * size:
      visible.append(part)
  image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
  return image, visible[::-1]


def annotation_record(image_id: int, file_name: str, masks: list[np.ndarray],
                      rng: np.random.Generator) -> dict:
  """The SA-1B per-image JSON for `masks` (bool (H, W) each)."""
  height, width = masks[0].shape if masks else (0, 0)
  anns = []
  for i, mask in enumerate(masks):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    pick = int(rng.integers(len(ys)))
    anns.append({"id": image_id * 1000 + i,
                 "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                 "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                 "area": int(mask_utils.area(rle)), "predicted_iou": 1.0,
                 "stability_score": 1.0, "crop_box": [0.0, 0.0, float(width), float(height)],
                 "point_coords": [[float(xs[pick]), float(ys[pick])]]})
  return {"image": {"image_id": image_id, "width": width, "height": height,
                    "file_name": file_name}, "annotations": anns}


def write_split(directory: str, seed: int, first: int, count: int, size: int,
                style: str = "varied") -> None:
  """Writes samples first .. first+count-1 as sa_N.jpg + sa_N.json into `directory`."""
  paths.makedirs(directory)
  for index in range(first, first + count):
    image, masks = demo_sample(seed, index, size, style)
    name = f"sa_{index}"
    record = annotation_record(index, name + ".jpg", masks, np.random.default_rng(index))
    paths.write(paths.join(directory, name + ".jpg"), segmentation.encode_jpeg(image))
    paths.write(paths.join(directory, name + ".json"), json.dumps(record))


def stand_in_detections(coco: dict, seed: int = 0, jitter: float = 0.1) -> list[dict]:
  """A stand-in detector for the demo's held-out images (no detector is trained here): every
  ground-truth box with each side moved by noise of std `jitter` x the box's side, scored by
  its IoU with the true box (a detector's confidence tracks its box quality). COCO results
  format: [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]."""
  rng = np.random.default_rng([seed, 18])
  out = []
  for ann in coco["annotations"]:
    x, y, w, h = ann["bbox"]
    x0, y0, x1, y1 = np.array([x, y, x + w, y + h]) + rng.normal(0, jitter, 4) * [w, h, w, h]
    x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    inter = (max(0.0, min(x1, x + w) - max(x0, x)) * max(0.0, min(y1, y + h) - max(y0, y)))
    union = w * h + (x1 - x0) * (y1 - y0) - inter
    out.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "score": round(float(inter / union), 4) if union > 0 else 0.0})
  return out


def ensure_demo_dataset(root: str, num_train: int, num_val: int, size: int,
                        seed: int = 0, style: str = "varied") -> tuple[str, str, str]:
  """Writes (once) root/train, root/val in the SA-1B layout, root/val/instances.json (COCO,
  for `evaluate`) and root/val/detections.json (`stand_in_detections`, for `evaluate
  --detections`). Returns (train dir, val dir, val COCO json). A `done` marker written last
  means a run killed mid-write rewrites the set instead of training on half of it. Every
  file is replaced atomically: the processes of one job all write the same bytes here, and
  one may read a file while another rewrites it."""
  train, val = paths.join(root, "train"), paths.join(root, "val")
  coco_json = paths.join(val, "instances.json")
  marker = paths.join(root, "done")
  if style not in STYLES:
    raise UserError(f"data.demo.style must be one of {', '.join(STYLES)}, got {style!r}")
  expected = f"{seed} {num_train} {num_val} {size} {style}"
  detections = paths.join(val, "detections.json")
  if paths.exists(marker) and paths.read_text(marker).strip() == expected:
    if not paths.exists(detections):  # a set written before detections existed
      paths.write(detections, json.dumps(
          stand_in_detections(json.loads(paths.read_text(coco_json)), seed)))
    return train, val, coco_json
  write_split(train, seed, 0, num_train, size, style)
  # Held-out images: indices after the training ones, never trained on.
  write_split(val, seed, num_train, num_val, size, style)
  coco = segmentation.sa1b_to_coco(val)
  paths.write(coco_json, json.dumps(coco))
  paths.write(detections, json.dumps(stand_in_detections(coco, seed)))
  paths.write(marker, expected + "\n")
  return train, val, coco_json
