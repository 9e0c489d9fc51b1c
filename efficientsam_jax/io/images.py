"""Reading images: encoded bytes or a file -> uint8 (H, W, 3) RGB.

One decoder for every reader of the package (the tools, evaluation, the input pipelines).
"""
import io

import numpy as np
from PIL import Image

from efficientsam_jax.errors import UserError, one_line


def decode(data: bytes, name: str = "image") -> np.ndarray:
  """Encoded bytes (JPEG, PNG, ...) -> uint8 (H, W, 3) RGB; UserError if unreadable."""
  try:
    with Image.open(io.BytesIO(data)) as pil:
      # convert() forces the full decode, so truncation surfaces here and not later.
      image = np.asarray(pil.convert("RGB"), np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError... for bad input;
    # all of them mean "this file has no usable image".
    raise UserError(f"{name}: cannot read image ({one_line(e)[:200]})") from None
  if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
    raise UserError(f"{name}: empty image")
  return image


def read(path: str) -> np.ndarray:
  """An image file -> uint8 (H, W, 3) RGB; UserError naming the path if it cannot be read."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise UserError(f"{path}: no such image") from None
  except IsADirectoryError:
    raise UserError(f"{path}: is a directory, not an image") from None
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
  return decode(data, path)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (height, width, 3) with PIL's bilinear filter (antialiased when
  shrinking, rounded to whole grey levels): what segment-anything's
  `ResizeLongestSide.apply_image` does (torchvision's resize of a PIL image), so what
  `SamPredictor.set_image` feeds SAM's encoder."""
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
      (width, height), Image.Resampling.BILINEAR), np.uint8)
