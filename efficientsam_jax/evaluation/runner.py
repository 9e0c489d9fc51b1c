"""One evaluation pass over a COCO or LVIS file: the mIoU protocols (protocols.py) and the
detector-box AP (detections.py) in the same pass, image after image, on one or many processes.

Speed: a thread pool reads and decodes the next images while the model runs; `batch_images`
images go through the image encoder in one call; every prompt of an image is decoded in one
call per click. On several processes (a TPU pod, one process per GPU) each takes every
process_count-th image and process 0 gathers the per-image results, so the numbers do not
depend on the process count (sums run in image-id order).

Progress (process 0, stderr): images done, images/s, ETA and the running mIoU, about every
`progress_seconds`.
"""
import collections
import concurrent.futures
import itertools
import json
import sys
import time

import numpy as np

from efficientsam_jax.data import segmentation
from efficientsam_jax.errors import UserError
from efficientsam_jax.evaluation import annotations, detections, protocols
from efficientsam_jax.io import paths


def _read(images_dir: str, record, need_pixels: bool):
  """(image uint8 (H, W, 3) or None, (H, W) or None): None, None when missing/unreadable."""
  path = annotations.find_image(images_dir, record)
  if path is None:
    return None, None
  if not need_pixels and record.height:
    return None, (record.height, record.width)
  try:
    image = segmentation.read_image(paths.read_bytes(path))
  except OSError:
    image = None
  return (image, image.shape[:2]) if image is not None else (None, None)


class Progress:
  """`NAME: 120/5000 images | 35.1 images/s | ETA 0:02:19 | box mIoU 0.7512` lines."""

  def __init__(self, name: str, total: int, enabled: bool, every_seconds: float = 5.0):
    self.name, self.total, self.enabled, self.every = name, total, enabled, every_seconds
    self.start = self.last = time.perf_counter()

  def update(self, done: int, message: str = "") -> None:
    now = time.perf_counter()
    if not self.enabled or (done < self.total and now - self.last < self.every):
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = time.strftime("%H:%M:%S", time.gmtime((self.total - done) / rate)) if rate else "?"
    print(f"{self.name}: {done}/{self.total} images | {rate:.3g} images/s | ETA {eta}"
          + (f" | {message}" if message else ""), file=sys.stderr, flush=True)


def prefetched(load, items: list, threads: int):
  """load(item) for every item, in order, computed up to 2 x threads items ahead by a thread
  pool (decoding overlaps the model; memory stays bounded)."""
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    window = collections.deque()
    ahead = iter(items)
    for item in itertools.islice(ahead, 2 * max(1, threads)):
      window.append(pool.submit(load, item))
    while window:
      result = window.popleft().result()
      for item in itertools.islice(ahead, 1):
        window.append(pool.submit(load, item))
      yield result


def gather(records: list) -> list:
  """Every process's list of JSON-able records, concatenated in process order, on every
  process (one allgather of the encoded bytes)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return records
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  payload = np.frombuffer(json.dumps(records).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([payload.size], np.int64)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:payload.size] = payload
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [r for p, size in enumerate(sizes.reshape(-1))
          for r in json.loads(gathered[p, :int(size)].tobytes())]


def _check_clicks(predictor, num: int) -> None:
  length = getattr(getattr(predictor, "model", None), "prompt_length", None)
  if num and length is not None and length(num) < num:
    raise UserError(f"{num} clicks: {predictor.config.name} takes at most {length(num)} points "
                    "per prompt")


def _running_miou(records: list, names: list[str]) -> str:
  parts = []
  for name in names:
    values = _protocol_ious(records, name)
    if values:
      parts.append(f"{name} mIoU {np.mean(values):.4f}")
  return " | ".join(parts)


def _protocol_ious(records: list, name: str) -> list[float]:
  if name == "box":
    return [v for r in records for v in r.get("box", ())]
  k = int(name[len("point"):]) - 1
  return [row[k] for r in records for row in r.get("clicks", ())]


def evaluate(predictor, gt, images_dir: str, names=("box",), detections_path=None, *,
             box_source: str = "annotation", first_click: str = "center", seed: int = 0,
             batch_images: int = 1, read_threads: int = 4, show_progress: bool = True,
             progress_seconds: float = 5.0, program: str = "evaluate",
             process_index: int = 0, process_count: int = 1) -> tuple[dict, list | None]:
  """Runs the mIoU protocols `names` and, with `detections_path`, detector-box AP.

  Returns (result, results): result is the metrics dict (see evaluate.py for its shape), the
  same on every process but for the timings (each process's own); results the COCO RLE
  results of the detections (None without).
  """
  names = list(names)
  if box_source not in protocols.BOX_SOURCES:
    raise UserError(f"box source must be one of {protocols.BOX_SOURCES}, got {box_source!r}")
  if first_click not in protocols.FIRST_CLICKS:
    raise UserError(f"first click must be one of {protocols.FIRST_CLICKS}, got "
                    f"{first_click!r}")
  if not names and not detections_path:
    raise UserError("nothing to evaluate: give a prompt protocol or detections")
  clicks = protocols.num_clicks(names)
  _check_clicks(predictor, clicks)
  dets, skipped_dets = {}, 0
  if detections_path:
    detections.check_scorer(gt)
    dets, skipped_dets = detections.load(detections_path, [r.id for r in gt.images])
    if not dets:
      raise UserError(f"{detections_path}: no usable detection of an image in {gt.path}")
  category_ids = {c["id"] for c in gt.categories if isinstance(c, dict)}
  work = [r for r in gt.images
          if (names and r.annotations) or (detections_path and (r.annotations or r.crowd
                                                                 or r.id in dets))]
  if not work:
    raise UserError(f"{gt.path}: no image has a (non-crowd) annotation")
  mine = work[process_index::process_count]
  progress = Progress(program, len(mine), show_progress and process_index == 0,
                      progress_seconds)
  needs_model = lambda r: bool((names and r.annotations) or r.id in dets)
  records = []
  loaded = prefetched(lambda r: _read(images_dir, r, needs_model(r)), mine, read_threads)
  pending = []  # (record, image, size) waiting for a full encoder batch
  for index, (record, (image, size)) in enumerate(zip(mine, loaded)):
    pending.append((record, image, size))
    if len(pending) < batch_images and index < len(mine) - 1:
      continue
    to_embed = [image for _, image, _ in pending if image is not None]
    if to_embed:  # a constant batch size: one compilation
      to_embed += [to_embed[-1]] * (batch_images - len(to_embed))
      states = iter(predictor.embed_images(to_embed))
    for record, image, size in pending:
      out = {"id": record.id}
      if size is None:
        out["skipped_image"] = 1
      else:
        if image is not None:
          predictor.use_embedding(next(states))
        out.update(_one_image(predictor, record, size, names, clicks, dets, category_ids,
                              box_source, first_click, seed, bool(detections_path)))
      records.append(out)
    pending = []
    progress.update(len(records), _running_miou(records, names))
  elapsed = time.perf_counter() - progress.start
  records = sorted(gather(records), key=lambda r: r["id"])
  return _summary(gt, records, names, clicks, detections_path, skipped_dets, len(work),
                  elapsed)


def _one_image(predictor, record, size, names, clicks, dets, category_ids, box_source,
               first_click, seed, with_ap) -> dict:
  height, width = size
  out = {}
  if names and record.annotations:
    masks, boxes, skipped = protocols.instances(record, height, width, box_source)
    out["skipped_annotations"] = skipped
    if masks and "box" in names:
      out["box"] = protocols.box_ious(predictor, masks, boxes)
    if masks and clicks:
      rng = np.random.default_rng([seed, record.id])
      out["clicks"] = protocols.click_ious(predictor, masks, clicks, first_click, rng).tolist()
  if with_ap:
    out["gt"], out["gt_skipped"] = detections.ground_truth(record, height, width, category_ids)
    out["image"] = dict(record.info, height=height, width=width)
    if record.id in dets:
      out["results"] = detections.segment(predictor, record.id, dets[record.id])
  return out


def _summary(gt, records, names, clicks, detections_path, skipped_dets, num_images, elapsed):
  skipped_images = sum(r.get("skipped_image", 0) for r in records)
  skipped = gt.skipped_annotations + sum(r.get("skipped_annotations", 0) for r in records)
  sections = {}
  for name in names:
    values = _protocol_ious(records, name)
    if not values:
      raise UserError(f"{gt.path}: no annotation could be evaluated ({skipped} skipped, "
                      f"{skipped_images} images unreadable)")
    sections[name] = {"miou": float(np.mean(values)), "count": len(values),
                      "skipped_annotations": skipped}
    if name != "box":  # the curve: mIoU after each click (its last value is the miou)
      sections[name]["miou_per_click"] = [
          float(np.mean(_protocol_ious(records, f"point{k}")))
          for k in range(1, int(name[len("point"):]) + 1)]
  results = None
  if detections_path:
    results = [res for r in records for res in r.get("results", ())]
    if not results:
      raise UserError(f"{detections_path}: no detection could be evaluated")
    images = [r["image"] for r in records if "image" in r]
    shown = {r["id"] for r in records if "image" in r}
    # Images with neither annotations nor detections take part as they are.
    images += [dict(i.info) for i in gt.images if i.id not in shown and not (
        i.annotations or i.crowd)]
    gt_anns = [a for r in records for a in r.get("gt", ())]
    ap = detections.score(gt, images, gt_anns, results)
    sections["detections"] = {**ap, "count": len(results), "skipped_detections": skipped_dets,
                              "skipped_annotations": gt.skipped_annotations + sum(
                                  r.get("gt_skipped", 0) for r in records)}
  common = {"images": num_images, "skipped_images": skipped_images,
            "seconds": round(elapsed, 3),
            "images_per_sec": round(num_images / elapsed, 3) if elapsed > 0 else None}
  if len(sections) == 1:
    return {**next(iter(sections.values())), **common}, results
  return {**sections, **common}, results
