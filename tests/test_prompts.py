"""Prompt simulation: statistics of the samplers and static shapes under jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientsam_jax.tasks.finetune import prompts

S, M = 128, 32


def _random_masks(n, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:M, :M]
  cy, cx = rng.uniform(4, 28, (2, n, 1, 1))
  r = rng.uniform(1, 10, (n, 1, 1))
  return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2)


def test_points_always_inside_the_mask_and_uniform_over_it():
  masks = jnp.asarray(_random_masks(64))
  sample = jax.jit(lambda k: prompts.sample_points(k, masks, S))
  for seed in range(20):
    points, found = sample(jax.random.key(seed))
    assert points.shape == (64, 2) and bool(found.all())
    cell = np.floor(np.asarray(points) * M / S).astype(int)
    assert np.asarray(masks)[np.arange(64), cell[:, 1], cell[:, 0]].all()
  # Uniform over a two-pixel mask: each pixel about half of the time.
  two = jnp.zeros((M, M), bool).at[3, 4].set(True).at[20, 7].set(True)
  keys = jax.random.split(jax.random.key(1), 2000)
  pts, _ = jax.vmap(lambda k: prompts.sample_points(k, two, S))(keys)
  assert 0.45 < float(jnp.mean(pts[:, 1] < S / 2)) < 0.55


def test_box_jitter_is_ten_percent_of_the_side_and_at_most_20_pixels():
  boxes = jnp.tile(jnp.array([[30.0, 40.0, 80.0, 70.0]]), (20000, 1))  # 50 wide, 30 high
  out = prompts.jitter_boxes(jax.random.key(0), boxes, 1024)
  noise = np.asarray(out - boxes)
  assert np.abs(noise).max() <= 20.0 + 1e-4
  std = noise.std(0)
  np.testing.assert_allclose(std, [5.0, 3.0, 5.0, 3.0], rtol=0.05)
  big = jnp.tile(jnp.array([[100.0, 100.0, 900.0, 900.0]]), (5000, 1))  # std 80 -> clipped
  noise = np.asarray(prompts.jitter_boxes(jax.random.key(1), big, 1024) - big)
  assert np.abs(noise).max() <= 20.0 + 1e-4 and (np.abs(noise) == 20.0).mean() > 0.5


def test_initial_prompts_and_corrections_have_static_shapes_under_jit():
  masks = jnp.asarray(_random_masks(6).reshape(2, 3, M, M))
  boxes = jnp.zeros((2, 3, 4)) + jnp.array([10.0, 10.0, 50.0, 60.0])

  @jax.jit
  def simulate(key):
    points, labels, slot = prompts.initial_prompts(key, boxes, masks, S, 6, 0.5)
    prediction = jnp.zeros_like(masks)
    for i in range(5):
      p, l = prompts.correction_point(jax.random.fold_in(key, i), prediction, masks, S)
      points, labels, slot = prompts.add_point(points, labels, slot, p, l)
    return points, labels, slot

  points, labels, slot = simulate(jax.random.key(0))
  assert points.shape == (2, 3, 6, 2) and labels.shape == (2, 3, 6)
  labels = np.asarray(labels)
  for q in labels.reshape(-1, 6):
    if q[0] == 2:  # box: corners then 4 positive corrections (the 5th does not fit)
      assert list(q) == [2, 3, 1, 1, 1, 1]
    else:  # point: then 5 corrections
      assert list(q) == [1] * 6
  assert int(np.asarray(slot).max()) <= 7


def test_correction_point_comes_from_the_error_region_with_the_right_label():
  target = jnp.zeros((M, M), bool).at[:, :16].set(True)
  prediction = jnp.zeros((M, M), bool).at[:, 8:24].set(True)  # missed x<8, spilled 16..23
  keys = jax.random.split(jax.random.key(0), 500)
  pos, lab = jax.vmap(lambda k: prompts.correction_point(k, prediction, target, S))(keys)
  assert (np.asarray(lab) == 1).all() and (np.asarray(pos[:, 0]) < 8 * S / M).all()
  pos, lab = jax.vmap(lambda k: prompts.correction_point(k, prediction, target, S, True))(keys)
  x_cell = np.floor(np.asarray(pos[:, 0]) * M / S)
  lab = np.asarray(lab)
  assert ((x_cell < 8) == (lab == 1)).all() and ((x_cell >= 16) == (lab == 0)).all()
  assert 0.3 < (lab == 0).mean() < 0.7
  # Nothing to correct: a padding point.
  _, lab = prompts.correction_point(jax.random.key(0), target, target, S)
  assert int(lab) == -1
