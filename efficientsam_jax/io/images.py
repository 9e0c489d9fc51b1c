"""Reading images: encoded bytes or a file -> uint8 (H, W, 3) RGB.

One decoder for every reader of the package (the tools, evaluation, the input pipelines).
"""
import io

import numpy as np
from PIL import Image

from efficientsam_jax.errors import UserError, one_line
from efficientsam_jax.io import paths


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
  """An image file (local or gs://) -> uint8 (H, W, 3) RGB; UserError naming the path if it
  cannot be read."""
  data = paths.read_input(path, "image")
  return decode(data, path)
