"""Resizing that reproduces torch's `F.interpolate` (align_corners=False, no antialias).

`jax.image.resize` uses a different cubic kernel and antialiases when shrinking, so weights
trained in PyTorch would see different inputs. Here every resize is a pair of separable 1-D
interpolation matrices built exactly the way torch computes its source indices and weights;
applying them is two matmuls, which XLA runs fast on every backend.
"""
import functools

import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75  # torch's bicubic coefficient (Keys kernel with a=-0.75)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t, shape (n, 4)."""
  a = np.float32(_CUBIC_A)

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=None)
def interpolation_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
  """(out_size, in_size) float32 matrix M with `resized = M @ signal` along one axis.

  mode: "linear" or "cubic", as torch's bilinear/bicubic/linear with align_corners=False;
  "linear_aa" = bilinear with `antialias=True` (SAM's `apply_image_torch`), which equals
  "linear" when enlarging and widens the triangle filter to the scale when shrinking.
  """
  if mode not in ("linear", "cubic", "linear_aa"):
    raise ValueError(f"unknown interpolation mode {mode!r}")
  matrix = np.zeros((out_size, in_size), np.float64)
  if in_size == out_size:
    return np.eye(in_size, dtype=np.float32)
  if mode == "linear_aa":
    if out_size > in_size:
      return interpolation_matrix(in_size, out_size, "linear")
    return _antialiased_linear(in_size, out_size)
  # torch computes source positions and weights in float32; doing the same makes the matrix
  # agree with its kernels to the last bit or two instead of ~1e-4 on large upsamplings.
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  dst = np.arange(out_size, dtype=f32)
  src = scale * (dst + f32(0.5)) - f32(0.5)
  rows = np.arange(out_size)
  if mode == "linear":
    src = np.maximum(src, f32(0.0))  # torch clamps the source index for linear modes only
    lo = np.floor(src).astype(np.int64)
    lam = src - lo.astype(f32)
    hi = np.minimum(lo + 1, in_size - 1)
    np.add.at(matrix, (rows, lo), f32(1.0) - lam)
    np.add.at(matrix, (rows, hi), lam)
  else:
    base = np.floor(src).astype(np.int64)
    weights = _cubic_weights(src - base.astype(f32))
    for tap in range(4):
      idx = np.clip(base - 1 + tap, 0, in_size - 1)  # torch clamps taps at the border
      np.add.at(matrix, (rows, idx), weights[:, tap])
  return matrix.astype(np.float32)


def _antialiased_linear(in_size: int, out_size: int) -> np.ndarray:
  """Shrinking with a triangle filter of half-width `scale` input pixels, each row normalised
  to sum 1: torch's (and PIL's) antialiased bilinear, same window bounds and rounding."""
  scale = in_size / out_size
  matrix = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - scale + 0.5), 0)
    hi = min(int(center + scale + 0.5), in_size)
    taps = np.arange(lo, hi)
    w = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) / scale))
    matrix[i, lo:hi] = w / w.sum()
  return matrix.astype(np.float32)


def resize_axes(x: jnp.ndarray, sizes: dict[int, int], mode: str) -> jnp.ndarray:
  """Resizes the axes named in `sizes` ({axis: new_size}) of x, torch-style.

  Computed in float32 at HIGHEST precision so bf16 defaults on accelerators do not leak in.
  """
  dtype = x.dtype
  x = x.astype(jnp.float32)
  for axis, size in sizes.items():
    axis = axis % x.ndim
    if x.shape[axis] == size:
      continue
    matrix = jnp.asarray(interpolation_matrix(x.shape[axis], size, mode))
    x = jnp.moveaxis(
        jnp.tensordot(matrix, jnp.moveaxis(x, axis, 0), axes=1, precision="highest"), 0, axis)
  return x.astype(dtype)


def resize_hw(x: jnp.ndarray, height: int, width: int, mode: str, channels_last: bool = True):
  """Resizes images (..., H, W, C) (or (..., H, W) with channels_last=False) to (height, width)."""
  h_axis, w_axis = (-3, -2) if channels_last else (-2, -1)
  return resize_axes(x, {h_axis: height, w_axis: width}, mode)
