"""Reading images: encoded bytes or a file -> uint8 (H, W, 3) RGB, as a viewer displays them.

One decoder for every reader of the package (the tools, evaluation, the input pipelines), so
an image means the same pixels everywhere:
- EXIF orientation is applied: the array is the upright picture a viewer shows, and masks,
  boxes and points are in that frame (phones store portraits as rotated landscapes).
- 16-bit images (greyscale `I;16*`, 16-bit PNGs, 48-bit RGB) keep their range: the high byte
  of each sample (`v >> 8`, what Pillow does for 16-bit RGB), never clipped at 255.
- Palette, greyscale and bilevel images become RGB; CMYK by Pillow's conversion
  (R = (255 - C)(255 - K) / 255; no ICC colour management).
- Transparency (RGBA, LA, PA, a palette or greyscale image with a transparent colour) is
  composited over white, as a page shows it, so what hides under a transparent pixel never
  reaches the model.
- Images whose range or colour space has no meaning here (32-bit integer or float samples,
  LAB, HSV) are refused with a UserError naming the mode.
"""
import io

import numpy as np
from PIL import Image, ImageOps

from efficientsam_jax.errors import UserError, one_line
from efficientsam_jax.io import paths

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "PA")
_PLAIN = ("1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK")
_BACKGROUND = (255, 255, 255)  # what transparent pixels are shown over


def _sixteen_bit_to_rgb(pil: Image.Image) -> np.ndarray:
  """A one-channel 16-bit image (mode I;16* or a 16-bit PNG opened as I) -> uint8 RGB."""
  samples = np.asarray(pil).astype(np.uint32)
  return np.repeat((samples >> 8).astype(np.uint8)[..., None], 3, axis=-1)


def _to_rgb(pil: Image.Image, source_format: str | None, name: str) -> np.ndarray:
  """Any supported PIL image -> uint8 (H, W, 3), following the module docstring's rules."""
  mode = pil.mode
  if mode in _SIXTEEN_BIT or (mode == "I" and source_format == "PNG"):
    # PNG holds at most 16 bits per sample; older Pillow opens 16-bit greyscale PNGs as I.
    return _sixteen_bit_to_rgb(pil)
  if mode in _WITH_ALPHA or (mode in ("L", "P", "RGB") and "transparency" in pil.info):
    background = Image.new("RGBA", pil.size, _BACKGROUND + (255,))
    return np.asarray(Image.alpha_composite(background, pil.convert("RGBA")).convert("RGB"))
  if mode in _PLAIN:
    return np.asarray(pil.convert("RGB"))
  if mode in ("I", "F"):
    raise UserError(f"{name}: {'32-bit integer' if mode == 'I' else 'floating-point'} "
                    "samples have no known display range; save it with 8 or 16 bits per "
                    "channel")
  raise UserError(f"{name}: images in mode {mode} are not supported; save it as RGB")


def decode(data: bytes, name: str = "image") -> np.ndarray:
  """Encoded bytes (JPEG, PNG, ...) -> uint8 (H, W, 3) RGB as displayed; UserError if
  unreadable or refused (see the module docstring)."""
  try:
    with Image.open(io.BytesIO(data)) as pil:
      source_format = pil.format
      # exif_transpose returns a decoded copy, so truncation surfaces here and not later.
      upright = ImageOps.exif_transpose(pil)
      image = np.asarray(_to_rgb(upright, source_format, name), np.uint8)
  except UserError:
    raise
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


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (height, width, 3) with PIL's bilinear filter (antialiased when
  shrinking, rounded to whole grey levels): what segment-anything's
  `ResizeLongestSide.apply_image` does (torchvision's resize of a PIL image), so what
  `SamPredictor.set_image` feeds SAM's encoder."""
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
      (width, height), Image.Resampling.BILINEAR), np.uint8)
