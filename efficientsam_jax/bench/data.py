"""Input-pipeline benchmark: images per second per host CPU core for a recipe's transform.

The per-record work of the config's pipeline, on one core, over generated SA-1B-like inputs
(1500 x 2250 JPEGs with texture, ~100 RLE masks each, as SA-1B's files are):
- SAMI (`data.crop=random_resized`): JPEG decode, random resized crop to data.image_size,
  flip, normalise (transforms.preprocess).
- distillation (`data.crop=longest_side`): decode, longest side to data.image_size, pad.
- EfficientSAM finetuning: decode, resize to data.image_size, RLE decode of up to
  data.max_masks masks to data.mask_size, boxes (segmentation.segmentation_example; prompts
  are simulated inside the jitted step, not here).
Records: `images_per_second_per_core` (median of --repeats passes over the inputs, in this
process's CPU seconds: the transform is single-threaded, and CPU time stays a per-core rate
on a shared, loaded machine where wall time would not), and with
`--report=FILE` (a `compile_for` JSON report) `cores_needed_40pct_mfu`: the host's images/s at
40% MFU over that, against the host's cores (`feeds`).
"""
import io
import json
import time

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from efficientsam_jax.data import segmentation, transforms

SA1B_HW = (1500, 2250)
MASKS_PER_IMAGE = 100  # SA-1B averages ~100 masks per image


def textured_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 (H, W, 3): smooth colour fields, edges and fine noise, so the JPEG carries about
  as much detail per pixel as a photograph."""
  coarse = rng.uniform(0, 255, (height // 64 + 2, width // 64 + 2, 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC),
                     np.float32)
  draw_on = Image.fromarray(image.astype(np.uint8))
  draw = ImageDraw.Draw(draw_on)
  for _ in range(60):
    x, y = rng.integers(0, width), rng.integers(0, height)
    r = int(rng.integers(20, 300))
    draw.ellipse((x - r, y - r, x + r, y + r // 2), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
  image = np.asarray(draw_on, np.float32) + rng.normal(0, 12, (height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def random_masks(rng: np.random.Generator, height: int, width: int, count: int) -> list:
  """`count` SA-1B-style annotations (compressed RLE) of blobs of many sizes."""
  anns = []
  for i in range(count):
    canvas = Image.new("L", (width, height))
    cx, cy = rng.integers(0, width), rng.integers(0, height)
    r = float(np.exp(rng.uniform(np.log(8), np.log(min(height, width) / 2))))
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radii = r * rng.uniform(0.5, 1.0, 12)
    ImageDraw.Draw(canvas).polygon(
        [(float(cx + a * np.cos(t)), float(cy + a * np.sin(t))) for a, t in zip(radii, angles)],
        fill=1)
    rle = mask_utils.encode(np.asfortranarray(np.asarray(canvas, np.uint8)))
    anns.append({"id": i, "segmentation": {"size": rle["size"],
                                           "counts": rle["counts"].decode("ascii")},
                 "area": float(mask_utils.area(rle)),
                 "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
  return anns


def sa1b_like_records(count: int, seed: int = 0, hw=SA1B_HW, masks=MASKS_PER_IMAGE) -> list:
  """`count` records {"image": JPEG bytes, "annotations": SA-1B JSON bytes}."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    buffer = io.BytesIO()
    Image.fromarray(textured_image(rng, *hw)).save(buffer, format="JPEG", quality=90)
    anns = random_masks(rng, *hw, masks)
    info = {"image_id": i, "height": hw[0], "width": hw[1], "file_name": f"sa_{i}.jpg"}
    out.append({"image": buffer.getvalue(),
                "annotations": json.dumps({"image": info, "annotations": anns}).encode()})
  return out


def transform_for(config):
  """(name, record -> example) of the config's per-record pipeline work."""
  d = config.data
  if config.trainer == "efficientsam":
    return "segmentation_example", lambda record, rng: segmentation.segmentation_example(
        record, rng, image_size=d.image_size, mask_size=d.mask_size, max_masks=d.max_masks,
        max_area_fraction=d.max_area_fraction)
  return f"preprocess_{d.crop}", lambda record, rng: transforms.preprocess(
      record["image"], rng, image_size=d.image_size, crop=d.crop, min_scale=d.min_scale,
      flip=d.flip)


def run(emitter, config, repeats: int, images: int, report_path: str | None) -> None:
  start = time.process_time()
  records = sa1b_like_records(images)
  emitter.emit("generate_cpu_seconds", time.process_time() - start, "s", images=images)
  name, transform = transform_for(config)
  jpeg_kb = np.mean([len(r["image"]) for r in records]) / 1024
  rng = np.random.default_rng(0)
  transform(records[0], rng)  # warm
  passes = []
  for _ in range(repeats):
    start = time.process_time()
    for record in records:
      transform(record, rng)
    passes.append(time.process_time() - start)
  rate = len(records) / float(np.median(passes))
  emitter.emit("images_per_second_per_core", rate, "images/s", transform=name,
               input_hw=list(SA1B_HW), jpeg_kb=round(float(jpeg_kb), 1), images=images,
               repeats=repeats, best=len(records) / min(passes))
  if report_path:
    with open(report_path) as f:
      report = json.loads(f.read().strip().splitlines()[-1])
    need = report["host_images_per_second_40pct_mfu"]
    cores = need / rate
    emitter.emit("cores_needed_40pct_mfu", cores, "cores", target=report["target"],
                 host_images_per_second=need, host_cores=report["host_cores"],
                 feeds=bool(cores <= report["host_cores"]))
