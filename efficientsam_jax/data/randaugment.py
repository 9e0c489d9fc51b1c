"""RandAugment and random erasing as MAE's finetuning uses them (timm's
`rand-m9-mstd0.5-inc1` policy and `RandomErasing(0.25, mode="pixel")`), as pure functions of
an image and an explicit `np.random.Generator`: the pipeline seeds that generator from
(seed, global position) = (seed, step, index in the batch), so an example's augmentation
depends on nothing else.

The policy, as timm defines it: `num_ops` operations drawn with replacement from the 15 below,
each applied with probability 0.5 at magnitude m ~ N(magnitude, magnitude_std) clipped to
[0, 10] (out of 10). Every operation whose strength has a direction picks its sign at random;
the "increasing" variants grow stronger with m (posterize keeps fewer bits, solarize a lower
threshold). Geometric operations fill uncovered pixels with the ImageNet mean colour and
resample bilinearly or bicubically at random.
"""
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0
FILL = (124, 116, 104)  # ImageNet mean colour, 0..255
OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize",
       "solarize_add", "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
       "translate_x", "translate_y")


def _signed(rng, value: float) -> float:
  return value if rng.uniform() < 0.5 else -value


def _affine(image: Image.Image, rng, matrix) -> Image.Image:
  resample = Image.Resampling.BILINEAR if rng.uniform() < 0.5 else Image.Resampling.BICUBIC
  return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample,
                         fillcolor=FILL)


def apply_op(image: Image.Image, name: str, level: float, rng) -> Image.Image:
  """One operation at `level` = magnitude / MAX_MAGNITUDE in [0, 1] on an RGB PIL image."""
  if name == "auto_contrast":
    return ImageOps.autocontrast(image)
  if name == "equalize":
    return ImageOps.equalize(image)
  if name == "invert":
    return ImageOps.invert(image)
  if name == "rotate":
    resample = Image.Resampling.BILINEAR if rng.uniform() < 0.5 else Image.Resampling.BICUBIC
    return image.rotate(_signed(rng, 30.0 * level), resample=resample, fillcolor=FILL)
  if name == "posterize":  # 4 bits kept at level 0, down to 1 (PIL's least) at level 1
    return ImageOps.posterize(image, max(1, 4 - int(4 * level)))
  if name == "solarize":
    return ImageOps.solarize(image, 256 - int(256 * level))
  if name == "solarize_add":
    pixels = np.asarray(image, np.int32)
    added = np.minimum(pixels + int(110 * level), 255)
    return Image.fromarray(np.where(pixels < 128, added, pixels).astype(np.uint8))
  if name in ("color", "contrast", "brightness", "sharpness"):
    enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}[name]
    return enhancer(image).enhance(1.0 + _signed(rng, 0.9 * level))
  if name == "shear_x":
    return _affine(image, rng, (1, _signed(rng, 0.3 * level), 0, 0, 1, 0))
  if name == "shear_y":
    return _affine(image, rng, (1, 0, 0, _signed(rng, 0.3 * level), 1, 0))
  if name == "translate_x":
    return _affine(image, rng, (1, 0, _signed(rng, 0.45 * level) * image.size[0], 0, 1, 0))
  if name == "translate_y":
    return _affine(image, rng, (1, 0, 0, 0, 1, _signed(rng, 0.45 * level) * image.size[1]))
  raise ValueError(f"unknown RandAugment operation {name!r}")


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int = 2,
                 magnitude: float = 9.0, magnitude_std: float = 0.5) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (H, W, 3) after the policy in the module docstring."""
  pil = Image.fromarray(image)
  for _ in range(num_ops):
    name = OPS[int(rng.integers(len(OPS)))]
    applies = rng.uniform() < 0.5
    m = float(np.clip(rng.normal(magnitude, magnitude_std), 0.0, MAX_MAGNITUDE))
    if applies:
      pil = apply_op(pil, name, m / MAX_MAGNITUDE, rng)
  return np.asarray(pil, np.uint8)


def random_erase(image: np.ndarray, rng: np.random.Generator, probability: float = 0.25,
                 min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3) -> np.ndarray:
  """With `probability`, one rectangle of a normalised float (H, W, C) image replaced by
  standard normal noise per pixel and channel: area fraction uniform in [min_area, max_area],
  log aspect ratio uniform in [log min_aspect, -log min_aspect], 10 tries to fit. Returns a
  new array (or the input untouched)."""
  if rng.uniform() >= probability:
    return image
  height, width = image.shape[:2]
  for _ in range(10):
    area = height * width * rng.uniform(min_area, max_area)
    aspect = math.exp(rng.uniform(math.log(min_aspect), -math.log(min_aspect)))
    h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
    if 0 < h < height and 0 < w < width:
      top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
      out = image.copy()
      out[top:top + h, left:left + w] = rng.standard_normal((h, w, image.shape[2]))
      return out
  return image
