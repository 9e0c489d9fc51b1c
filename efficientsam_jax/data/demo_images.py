"""Synthetic demo images, a pure function of (seed, index): no files, no downloads.

The `demo` configs pretrain on these, so they must carry structure a ViT can learn from and a
frozen teacher can describe: a smooth colour gradient background, then a handful of filled
ellipses, rotated rectangles, stripe patches and blurred-noise texture patches, each with its
own colour. Everything is drawn with numpy on a coordinate grid.
"""
import numpy as np

DEMO_IMAGE_SIZE = 128  # side of every demo image, pixels


def _random_colour(rng: np.random.Generator) -> np.ndarray:
  """(3,) float32 colour in [0, 1]."""
  return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


def _gradient_background(rng, yy, xx) -> np.ndarray:
  """(H, W, 3) float32: a linear blend of two colours along a random direction, plus a soft wave."""
  angle = rng.uniform(0, 2 * np.pi)
  t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.0) / 2.0  # roughly in [0, 1]
  start, end = _random_colour(rng), _random_colour(rng)
  image = start + (end - start) * t[..., None]
  # A low-frequency wave keeps the background from being a pure plane.
  freq = rng.uniform(0.5, 2.0)
  phase = rng.uniform(0, 2 * np.pi)
  wave = 0.1 * np.sin(freq * np.pi * (xx - yy) + phase)
  return image + wave[..., None]


def _rotated_coords(rng, yy, xx):
  """Coordinates relative to a random centre, rotated by a random angle: two (H, W) arrays."""
  cy, cx = rng.uniform(-0.8, 0.8, size=2)
  angle = rng.uniform(0, np.pi)
  dy, dx = yy - cy, xx - cx
  u = np.cos(angle) * dx + np.sin(angle) * dy
  v = -np.sin(angle) * dx + np.cos(angle) * dy
  return u, v


def _ellipse_mask(rng, yy, xx) -> np.ndarray:
  u, v = _rotated_coords(rng, yy, xx)
  a, b = rng.uniform(0.1, 0.5, size=2)
  return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _rectangle_mask(rng, yy, xx) -> np.ndarray:
  u, v = _rotated_coords(rng, yy, xx)
  a, b = rng.uniform(0.08, 0.45, size=2)
  return (np.abs(u) <= a) & (np.abs(v) <= b)


def _stripes(rng, yy, xx):
  """Stripes inside an ellipse: (mask (H, W) bool, per-pixel blend weight (H, W))."""
  mask = _ellipse_mask(rng, yy, xx)
  u, _ = _rotated_coords(rng, yy, xx)
  period = rng.uniform(0.05, 0.2)
  weight = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
  return mask, weight


def _texture(rng, yy, xx):
  """Blurred noise inside a rectangle: (mask (H, W) bool, per-pixel blend weight (H, W))."""
  mask = _rectangle_mask(rng, yy, xx)
  size = yy.shape[0]
  coarse = rng.uniform(0, 1, size=(size // 8, size // 8)).astype(np.float32)
  # Upsampling a coarse grid by repetition, then a box blur, gives blobs of a few pixels.
  weight = np.kron(coarse, np.ones((8, 8), np.float32))
  for axis in (0, 1):
    weight = (np.roll(weight, 2, axis) + np.roll(weight, -2, axis) + weight) / 3.0
  return mask, weight


def demo_image(seed: int, index: int, size: int = DEMO_IMAGE_SIZE) -> np.ndarray:
  """Demo image number `index` of the set drawn with `seed`: uint8 (size, size, 3), RGB.

  Args:
    seed: non-negative int choosing the whole set.
    index: non-negative int, position in the set.
    size: side in pixels; a multiple of 8.
  """
  rng = np.random.default_rng([seed, index])
  coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
  yy, xx = np.meshgrid(coords, coords, indexing="ij")
  image = _gradient_background(rng, yy, xx)
  for _ in range(rng.integers(3, 9)):
    kind = rng.integers(4)
    colour = _random_colour(rng)
    if kind == 0:
      image[_ellipse_mask(rng, yy, xx)] = colour
    elif kind == 1:
      image[_rectangle_mask(rng, yy, xx)] = colour
    else:
      mask, weight = (_stripes if kind == 2 else _texture)(rng, yy, xx)
      other = _random_colour(rng)
      blended = colour + (other - colour) * weight[..., None]
      image[mask] = blended[mask]
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
