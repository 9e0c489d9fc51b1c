"""What the demo page asks of a model, as plain methods: one image at a time, its embedding
computed once, then clicks and boxes answered by the Predictor, segment everything, and the
results as a mask PNG and COCO JSON. server.py puts these behind HTTP.
"""
import base64
import io
import json
import threading
import time

import numpy as np
from PIL import Image, ImageDraw

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import automatic
from efficientsam_jax.inference.predictor import Predictor
from efficientsam_jax.io import images
from efficientsam_jax.models import prompt_encoder as pe

OVERLAY_RGBA = (30, 144, 255, 130)  # the selected mask's tint on the page
BUILTIN_SIZE = (480, 360)


def builtin_images() -> dict[str, np.ndarray]:
  """Pictures with clear objects to click on, drawn here (no files, no downloads)."""
  w, h = BUILTIN_SIZE
  scenes = {}
  picture = Image.new("RGB", (w, h))
  draw = ImageDraw.Draw(picture)
  for y in range(h):  # a sky-to-ground gradient
    t = y / (h - 1)
    draw.line([(0, y), (w, y)], fill=(int(120 + 90 * t), int(170 + 40 * t), int(230 - 150 * t)))
  draw.ellipse([40, 60, 180, 200], fill=(220, 60, 50))
  draw.rectangle([230, 150, 420, 300], fill=(40, 120, 60))
  draw.polygon([(300, 40), (380, 140), (220, 140)], fill=(250, 200, 40))
  draw.ellipse([90, 250, 200, 330], fill=(90, 60, 160))
  scenes["shapes"] = np.asarray(picture)
  rng = np.random.default_rng(0)
  picture = Image.new("RGB", (w, h), (235, 230, 220))
  draw = ImageDraw.Draw(picture)
  for _ in range(9):  # overlapping discs of random colours
    x, y, r = rng.uniform(40, w - 40), rng.uniform(40, h - 40), rng.uniform(20, 60)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
  scenes["discs"] = np.asarray(picture)
  return scenes


def png_bytes(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def data_url(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class DemoSession:
  """One model and the current image; every method is safe to call from server threads."""

  def __init__(self, predictor: Predictor, model_name: str):
    self.predictor, self.model_name = predictor, model_name
    self.builtins = builtin_images()
    self.lock = threading.Lock()
    self.image = self.image_name = None
    self.masks = np.zeros((0, 0, 0), bool)  # the last result: one mask per object
    self.scores = np.zeros((0,), np.float32)

  def set_image(self, image: np.ndarray, name: str) -> dict:
    """Embeds the image and compiles what clicks will need (so the first click is fast)."""
    with self.lock:
      start = time.perf_counter()
      self.predictor.set_image(image)
      embed_seconds = time.perf_counter() - start
      self.image, self.image_name = image, name
      self.masks, self.scores = np.zeros((0,) + image.shape[:2], bool), np.zeros((0,))
      x, y = image.shape[1] / 2, image.shape[0] / 2
      self.predictor.predict(points=[[[x, y]]], labels=[[1]])  # one or two points
      self.predictor.predict(points=[[[x, y]] * 3], labels=[[1, 0, 1]])  # more points
      self.predictor.predict(boxes=[[0, 0, x, y]])
      return {"width": image.shape[1], "height": image.shape[0], "name": name,
              "embed_seconds": round(embed_seconds, 3),
              "ready_seconds": round(time.perf_counter() - start, 3),
              "image": data_url(png_bytes(image))}

  def set_builtin(self, name: str) -> dict:
    if name not in self.builtins:
      raise UserError(f"no built-in image {name!r}; have {', '.join(self.builtins)}")
    return self.set_image(self.builtins[name], name)

  def set_upload(self, data: bytes, name: str) -> dict:
    return self.set_image(images.decode(data, name or "upload"), name or "upload")

  def segment(self, points, labels, box) -> dict:
    """Clicks (x, y) with labels 1 / 0 and an optional box x1, y1, x2, y2, in image pixels ->
    the best of the model's masks (highest predicted IoU) as the result."""
    self._require_image()
    pts = np.asarray(points or [], np.float32).reshape(-1, 2)
    lbl = np.asarray(labels or [], np.float32).reshape(-1)
    if len(pts) != len(lbl) or not np.isin(lbl, (pe.LABEL_NEGATIVE, pe.LABEL_POSITIVE)).all():
      raise UserError("points need one label each, 1 (positive) or 0 (negative)")
    if box is not None:
      pts = np.concatenate([pts, np.asarray(box, np.float32).reshape(2, 2)])
      lbl = np.concatenate([lbl, [pe.LABEL_BOX_TOP_LEFT, pe.LABEL_BOX_BOTTOM_RIGHT]])
    if not len(pts):
      raise UserError("click a point or drag a box first")
    with self.lock:
      start = time.perf_counter()
      out = self.predictor.predict(points=pts[None], labels=lbl[None])
      best = int(np.argmax(out["iou"][0]))
      mask = out["logits"][0, best] > 0
      seconds = time.perf_counter() - start
      self.masks, self.scores = mask[None], out["iou"][0, best:best + 1]
    return {"overlay": data_url(png_bytes(self._overlay(self.masks))),
            "iou": float(self.scores[0]), "area": int(mask.sum()), "seconds": round(seconds, 3),
            "points": pts.tolist(), "labels": lbl.tolist()}

  def everything(self, points_per_side: int = 16) -> dict:
    self._require_image()
    with self.lock:
      start = time.perf_counter()
      found = automatic.generate(self.predictor, self.image,
                                 automatic.EverythingConfig(points_per_side=points_per_side))
      self.masks, self.scores = found["masks"], found["iou"]
      seconds = time.perf_counter() - start
    return {"overlay": data_url(png_bytes(self._overlay(self.masks, many=True))),
            "count": len(self.masks), "seconds": round(seconds, 3)}

  def mask_png(self) -> bytes:
    """The result as one PNG: 255 where any of its masks is, 0 elsewhere."""
    self._require_image()
    return png_bytes(np.any(self.masks, axis=0).astype(np.uint8) * 255 if len(self.masks)
                     else np.zeros(self.image.shape[:2], np.uint8))

  def coco_json(self) -> str:
    """The result as a COCO dataset: the image, one category, an annotation per mask (RLE)."""
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
    self._require_image()
    h, w = self.image.shape[:2]
    annotations = []
    for i, (mask, score) in enumerate(zip(self.masks, self.scores)):
      rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
      x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
      annotations.append({"id": i + 1, "image_id": 1, "category_id": 1,
                          "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                          "area": int(mask.sum()), "bbox": [x, y, bw, bh], "iscrowd": 0,
                          "score": float(score)})
    return json.dumps({"images": [{"id": 1, "file_name": self.image_name, "height": h,
                                   "width": w}],
                       "categories": [{"id": 1, "name": "object"}],
                       "annotations": annotations, "info": {"model": self.model_name}})

  def _overlay(self, masks: np.ndarray, many: bool = False) -> np.ndarray:
    """(K, H, W) masks -> an (H, W, 4) RGBA picture to lay over the image."""
    out = np.zeros(masks.shape[1:] + (4,), np.uint8)
    rng = np.random.default_rng(0)
    for mask in masks[::-1]:  # the best mask drawn last, on top
      out[mask] = (tuple(rng.integers(40, 255, 3)) + (150,)) if many else OVERLAY_RGBA
    return out

  def _require_image(self):
    if self.image is None:
      raise UserError("open an image first")
