"""Prompt simulation for finetuning: pure, jit-able functions with static shapes.

Coordinates are (x, y) in encoder-input pixels (S x S). Masks are bool/0-1 arrays of side M
(the decoder's low-res output, M = S / 4): mask pixel (i, j) covers input pixels
[j*S/M, (j+1)*S/M) x [i*S/M, (i+1)*S/M), so a point drawn inside that square lies inside the
mask at the resolution the loss sees.

Point labels are the release's (prompt_encoder.LABEL_*): 1 positive, 2/3 box corners,
-1 padding. 0 (negative) is only produced with `negative_points=True`: the released prompt
encoder gives label 0 no learned vector (the token carries only its position), so such points
load and run with released weights but the released model was never trained on them.
"""
import jax
import jax.numpy as jnp

from efficientsam_jax.models import prompt_encoder as pe


def jitter_boxes(rng, boxes, image_size: int, noise_std: float = 0.1, max_noise: float = 20.0):
  """Box prompts as SAM trains them: every coordinate moved by N(0, (noise_std * side)^2),
  the shift clipped to +-max_noise pixels, the result kept inside the image.

  boxes: (..., 4) x0, y0, x1, y1 (tightest boxes). Returns (..., 4) float32.
  """
  boxes = boxes.astype(jnp.float32)
  side = jnp.concatenate([boxes[..., 2:] - boxes[..., :2]] * 2, axis=-1)  # (w, h, w, h)
  noise = jax.random.normal(rng, boxes.shape) * noise_std * side
  noise = jnp.clip(noise, -max_noise, max_noise)
  return jnp.clip(boxes + noise, 0.0, image_size - 1.0)


def sample_points(rng, region, image_size: int):
  """One point drawn uniformly inside each region.

  region: (..., M, M) bool. Returns points (..., 2) float32 (x, y) in input pixels and
  found (...,) bool (False where the region is empty; the point is then meaningless).
  Uniform over region pixels by the Gumbel-max trick (argmax of uniform noise where the
  region is set), then uniform within the pixel's square: static shapes, no boolean indexing.
  """
  m = region.shape[-1]
  key_pick, key_offset = jax.random.split(rng)
  flat = region.reshape(region.shape[:-2] + (m * m,))
  scores = jnp.where(flat, jax.random.uniform(key_pick, flat.shape), -1.0)
  index = jnp.argmax(scores, axis=-1)
  cell = jnp.stack([index % m, index // m], axis=-1).astype(jnp.float32)  # (x, y) cell
  scale = image_size / m
  # Offsets in [0, 1) of a cell, kept a little off the far edge so x < (j+1)*scale exactly.
  offset = jax.random.uniform(key_offset, cell.shape, maxval=1.0 - 1e-3)
  points = (cell + offset) * scale
  return points, jnp.any(flat, axis=-1)


def initial_prompts(rng, boxes, masks, image_size: int, num_points: int, box_probability: float,
                    box_noise_std: float = 0.1, box_max_noise: float = 20.0):
  """First prompt of every mask: a jittered box (with probability box_probability) or one
  positive point inside the mask.

  boxes: (..., 4) tightest boxes; masks: (..., M, M) bool.
  Returns points (..., num_points, 2), labels (..., num_points) int32 (unused slots are
  padding) and next_slot (...,) int32: where the first correction point goes (2 or 1).
  """
  key_box, key_point, key_choice = jax.random.split(rng, 3)
  batch_shape = boxes.shape[:-1]
  use_box = jax.random.uniform(key_choice, batch_shape) < box_probability
  box = jitter_boxes(key_box, boxes, image_size, box_noise_std, box_max_noise)
  point, _ = sample_points(key_point, masks, image_size)
  points = jnp.full(batch_shape + (num_points, 2), -1.0, jnp.float32)
  labels = jnp.full(batch_shape + (num_points,), pe.LABEL_PADDING, jnp.int32)
  first = jnp.where(use_box[..., None], box[..., :2], point)
  points = points.at[..., 0, :].set(first)
  points = points.at[..., 1, :].set(jnp.where(use_box[..., None], box[..., 2:], -1.0))
  labels = labels.at[..., 0].set(jnp.where(use_box, pe.LABEL_BOX_TOP_LEFT, pe.LABEL_POSITIVE))
  labels = labels.at[..., 1].set(jnp.where(use_box, pe.LABEL_BOX_BOTTOM_RIGHT,
                                           pe.LABEL_PADDING))
  return points, labels, jnp.where(use_box, 2, 1).astype(jnp.int32)


def correction_point(rng, prediction, target, image_size: int, negative_points: bool = False):
  """A point from the error region of a prediction, as SAM's interactive training does.

  prediction, target: (..., M, M) bool. By default the point comes from the missed region
  (target & ~prediction) and is positive; with negative_points it comes from the whole error
  region and is negative (label 0) where it falls on spilled pixels.
  Returns points (..., 2), labels (..., ) int32: padding (-1) when there is nothing to correct.
  """
  missed = target & ~prediction
  region = (missed | (prediction & ~target)) if negative_points else missed
  points, found = sample_points(rng, region, image_size)
  m = target.shape[-1]
  cell = jnp.clip((points * m / image_size).astype(jnp.int32), 0, m - 1)
  flat = missed.reshape(missed.shape[:-2] + (m * m,))
  on_missed = jnp.take_along_axis(flat, (cell[..., 1] * m + cell[..., 0])[..., None],
                                  axis=-1)[..., 0]
  label = jnp.where(on_missed, pe.LABEL_POSITIVE, 0)
  label = jnp.where(found, label, pe.LABEL_PADDING)
  return jnp.where(found[..., None], points, -1.0), label.astype(jnp.int32)


def add_point(points, labels, slot, new_point, new_label):
  """Writes one point per query into slot `slot` (dropped when slot >= num_points).

  points (..., N, 2), labels (..., N), slot (...,) int, new_point (..., 2), new_label (...,).
  Returns the updated points, labels and slot + 1 (a padding point does not advance it).
  """
  n = labels.shape[-1]
  here = (jnp.arange(n) == slot[..., None]) & (new_label != pe.LABEL_PADDING)[..., None]
  points = jnp.where(here[..., None], new_point[..., None, :], points)
  labels = jnp.where(here, new_label[..., None], labels)
  return points, labels, slot + (new_label != pe.LABEL_PADDING).astype(slot.dtype)
