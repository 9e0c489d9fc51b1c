"""SAMI augmentation as pure numpy functions: decode, crop box, crop+resize, flip, normalise.

Nothing here knows about grain: randomness arrives as an explicit `np.random.Generator`, so each
function is tested with plain arrays and the pipeline stays a pure function of (seed, position).
Images are HWC, RGB. Boxes are `(top, left, height, width)` in integer pixels, as torchvision's.
"""
import io
import math
from typing import Union

import numpy as np
from PIL import Image

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import images

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# normalize() as one multiply-add per pixel: x * (1 / (255 std)) - mean / std.
_NORM_SCALE = (1.0 / (255.0 * IMAGENET_STD.astype(np.float64))).astype(np.float32)
_NORM_OFFSET = (IMAGENET_MEAN.astype(np.float64) / IMAGENET_STD).astype(np.float32)
DEFAULT_SCALE = (0.2, 1.0)  # SAMI/MAE random-resized-crop area range
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_MODES = ("random_resized", "center", "longest_side")

Box = tuple[int, int, int, int]  # (top, left, height, width)


def decode_image(record: Union[bytes, np.ndarray]) -> Union[np.ndarray, None]:
  """Encoded bytes (JPEG/PNG/...) or an array -> uint8 (H, W, 3) RGB, or None if unreadable.

  An array record (the demo source) passes through: uint8 (H, W, 3) is returned as is, (H, W)
  is broadcast to 3 channels. Corrupt or truncated bytes return None rather than raising,
  because one bad file must not end a week-long run; the caller marks the example invalid.
  """
  if isinstance(record, np.ndarray):
    image = record if record.ndim == 3 else np.repeat(record[..., None], 3, axis=-1)
    return np.asarray(image, np.uint8)
  try:
    return images.decode(record)
  except UserError:
    return None


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> Box:
  """torchvision's RandomResizedCrop box for an image of (height, width).

  Ten tries to draw an area fraction in `scale` and a log-uniform aspect ratio in `ratio` that
  fit inside the image; otherwise the largest centred box whose aspect ratio is clamped to
  `ratio`. Returns (top, left, crop_height, crop_width), always inside the image.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return top, left, crop_h, crop_w
  # Fallback: whole image, with its aspect ratio clamped into `ratio`, centred.
  in_ratio = width / height
  if in_ratio < min(ratio):
    crop_w = width
    crop_h = int(round(crop_w / min(ratio)))
  elif in_ratio > max(ratio):
    crop_h = height
    crop_w = int(round(crop_h * max(ratio)))
  else:
    crop_w, crop_h = width, height
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def center_crop_box(height: int, width: int) -> Box:
  """The largest centred square: the same view as `Resize(S)` then `CenterCrop(S)`."""
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side


def crop_and_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
  """Crops `box` from uint8 (H, W, 3) and resizes to uint8 (size, size, 3), PIL bicubic.

  Crop first, then resize (not PIL's `resize(box=...)`), as torchvision does, so the filter
  never reads pixels outside the box.
  """
  top, left, crop_h, crop_w = box
  crop = image[top:top + crop_h, left:left + crop_w]
  if crop.shape[:2] == (size, size):
    return np.ascontiguousarray(crop)
  resized = Image.fromarray(np.ascontiguousarray(crop)).resize(
      (size, size), Image.Resampling.BICUBIC)
  return np.asarray(resized, np.uint8)


def longest_side_hw(height: int, width: int, size: int) -> tuple[int, int]:
  """(H', W') with the longest side `size`, rounded as SAM's ResizeLongestSide rounds."""
  scale = size * 1.0 / max(height, width)
  return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (H', W', 3) with max(H', W') = size: the view
  SamPredictor.set_image gives SAM's encoder before normalising and padding (its
  ResizeLongestSide.apply_image: torchvision's default resize of a PIL image, i.e. PIL
  bilinear, antialiased)."""
  return images.resize_bilinear(image, *longest_side_hw(image.shape[0], image.shape[1], size))


def pad_bottom_right(image: np.ndarray, size: int) -> np.ndarray:
  """(H', W', C) -> (size, size, C) with zeros below and to the right (after normalising,
  zero is the mean colour, as SAM pads)."""
  h, w = image.shape[:2]
  return np.pad(image, ((0, size - h), (0, size - w), (0, 0)))


def horizontal_flip(image: np.ndarray) -> np.ndarray:
  """Mirrors (H, W, C) left-right."""
  return image[:, ::-1]


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) -> float32 (H, W, 3): pixels to [0, 1], then ImageNet mean/std."""
  return normalize_in_place(image.astype(np.float32))


def normalize_in_place(image: np.ndarray) -> np.ndarray:
  """`normalize` of a float32 (H, W, 3) array on 0..255, overwriting it."""
  image *= _NORM_SCALE
  image -= _NORM_OFFSET
  return image


def _open_encoded(data: bytes):
  """A lazily decoded PIL image of encoded bytes (header read, pixels not yet), or None."""
  try:
    return Image.open(io.BytesIO(data))
  except Exception:  # pylint: disable=broad-except  (any unreadable header)
    return None


def decode_at_least(pil: Image.Image, box: Box, out_hw: tuple[int, int]):
  """Decodes `pil` at the smallest JPEG scale (1, 1/2, 1/4, 1/8: libjpeg's DCT scaling,
  PIL's draft mode) at which `box` still has at least `out_hw` pixels, so a 2250 px photo
  cropped to 224 is never decoded in full. -> (uint8-RGB PIL image, box in its pixels), or
  None when the data is unreadable. Other formats decode at full size."""
  top, left, crop_h, crop_w = box
  width, height = pil.size
  need = (math.ceil(width * out_hw[1] / crop_w), math.ceil(height * out_hw[0] / crop_h))
  try:
    pil.draft("RGB", need)  # a no-op for formats without scaled decoding
    image = pil.convert("RGB")  # forces the decode: truncation surfaces here
  except Exception:  # pylint: disable=broad-except
    return None
  sy, sx = image.size[1] / height, image.size[0] / width
  if (sy, sx) == (1.0, 1.0):
    return image, box
  t, l = int(round(top * sy)), int(round(left * sx))
  h = max(out_hw[0], min(image.size[1] - t, int(round(crop_h * sy))))
  w = max(out_hw[1], min(image.size[0] - l, int(round(crop_w * sx))))
  return image, (min(t, image.size[1] - h), min(l, image.size[0] - w), h, w)


def _crop_resize_pil(image: Image.Image, box: Box, size: int) -> np.ndarray:
  """crop_and_resize on a PIL image: the same crop and filter, without numpy copies."""
  top, left, crop_h, crop_w = box
  crop = image.crop((left, top, left + crop_w, top + crop_h))
  if crop.size != (size, size):
    crop = crop.resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(crop, np.uint8)


def _view_from_encoded(data: bytes, rng, image_size: int, crop: str, min_scale: float):
  """preprocess's crop of encoded bytes, decoded at the scale the view needs; None if
  unreadable. Draws from `rng` exactly what the decoded-array path draws."""
  pil = _open_encoded(data)
  if pil is None:
    return None
  width, height = pil.size
  if crop == "random_resized":
    box = random_resized_crop_box(height, width, rng, scale=(min_scale, 1.0))
    out_hw = (image_size, image_size)
  elif crop == "center":
    box = center_crop_box(height, width)
    out_hw = (image_size, image_size)
  else:
    box, out_hw = (0, 0, height, width), longest_side_hw(height, width, image_size)
  decoded = decode_at_least(pil, box, out_hw)
  if decoded is None:
    return None
  image, box = decoded
  if crop != "longest_side":
    return _crop_resize_pil(image, box, image_size)
  if image.size != (out_hw[1], out_hw[0]):
    image = image.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8)


def preprocess(
    record: Union[bytes, np.ndarray],
    rng: np.random.Generator,
    *,
    image_size: int,
    crop: str = "random_resized",
    min_scale: float = DEFAULT_SCALE[0],
    flip: bool = True,
) -> dict[str, np.ndarray]:
  """One record -> {"image": float32 (image_size, image_size, 3), "valid": int32 ()}.

  crop: one of CROP_MODES. "random_resized" (SAMI training); "center" (largest centred square,
  deterministic); "longest_side" (the whole image, longest side resized to image_size, padded
  bottom/right: SAM's own preprocessing, what MobileSAM distils on; deterministic). Pair a
  deterministic crop with flip=False for the view a teacher-feature cache reproduces. An
  unreadable record gives an all-zero image and valid=0, so batches keep static shapes and
  the trainer can weight it out. Encoded bytes are decoded only at the resolution the view
  needs (`decode_at_least`): the same crop, drawn from `rng` as for a decoded array, with
  libjpeg's scaled decode standing in for the first factors of 2 of the downscaling.
  """
  if crop not in CROP_MODES:
    raise ValueError(f"unknown crop mode {crop!r}; expected one of {CROP_MODES}")
  if isinstance(record, (bytes, bytearray)):
    image = _view_from_encoded(bytes(record), rng, image_size, crop, min_scale)
  else:
    image = _view_from_array(decode_image(record), rng, image_size, crop, min_scale)
  if image is None:
    return {"image": np.zeros((image_size, image_size, 3), np.float32),
            "valid": np.int32(0)}
  if flip and rng.uniform() < 0.5:
    image = horizontal_flip(image)
  out = normalize(image)
  if crop == "longest_side":
    out = pad_bottom_right(out, image_size)
  return {"image": out, "valid": np.int32(1)}


def _view_from_array(image, rng, image_size: int, crop: str, min_scale: float):
  """preprocess's crop of a decoded uint8 (H, W, 3) array (or None)."""
  if image is None:
    return None
  height, width = image.shape[:2]
  if crop == "random_resized":
    image = crop_and_resize(
        image, random_resized_crop_box(height, width, rng, scale=(min_scale, 1.0)), image_size)
  elif crop == "center":
    image = crop_and_resize(image, center_crop_box(height, width), image_size)
  else:
    image = resize_longest_side(image, image_size)
  return image
