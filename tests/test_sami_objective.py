"""Masking, SAMI losses, optimiser and sharding rules: pure functions on plain arrays."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from efficientsam_jax.tasks.sami import loss as sami_losses
from efficientsam_jax.tasks.sami import masking
from efficientsam_jax.train import optim, sharding


def test_random_masking_partitions_tokens_and_restores_order():
  keep = masking.num_kept(196, 0.75)
  assert keep == 49
  ids_keep, ids_masked, ids_restore = masking.random_masking(jax.random.key(0), 4, 196, keep)
  assert ids_keep.shape == (4, 49) and ids_masked.shape == (4, 147)
  for b in range(4):
    assert sorted(np.concatenate([ids_keep[b], ids_masked[b]]).tolist()) == list(range(196))
  # Examples are masked independently.
  assert not np.array_equal(np.sort(ids_keep[0]), np.sort(ids_keep[1]))
  tokens = jnp.arange(4 * 196, dtype=jnp.float32).reshape(4, 196, 1)
  shuffled = jnp.concatenate([masking.gather_tokens(tokens, ids_keep),
                              masking.gather_tokens(tokens, ids_masked)], axis=1)
  np.testing.assert_array_equal(jnp.take_along_axis(shuffled, ids_restore[..., None], 1), tokens)
  masked = masking.masked_token_indicator(ids_restore, keep)
  assert masked.sum() == 4 * 147
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(masked), np.asarray(ids_keep), 1),
                                0)


def test_mask_ratio_bounds():
  assert masking.num_kept(196, 0.0) == 196
  with pytest.raises(ValueError):
    masking.num_kept(196, 1.0)


def test_mse_over_all_tokens_matches_hand_computation():
  pred = np.zeros((2, 3, 2), np.float32)
  target = np.array([[[1, 1], [2, 0], [0, 0]], [[3, 1], [0, 0], [1, 1]]], np.float32)
  masked = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
  valid = np.array([1, 1])
  # per-token mean of squares: [1, 2, 0], [5, 0, 1] -> mean 9/6
  assert float(sami_losses.reconstruction_loss(pred, target, masked, valid)) == pytest.approx(1.5)
  # masked only: tokens (0,0), (1,1), (1,2) -> (1 + 0 + 1) / 3
  assert float(sami_losses.reconstruction_loss(pred, target, masked, valid, masked_only=True)
               ) == pytest.approx(2 / 3)
  # an invalid image is weighted out: only example 0 -> 3/3
  assert float(sami_losses.reconstruction_loss(pred, target, masked, np.array([1, 0]))
               ) == pytest.approx(1.0)


def test_cosine_and_normalised_targets():
  target = np.array([[[1.0, 0.0], [0.0, 2.0]]], np.float32)
  pred = np.array([[[2.0, 0.0], [1.0, 0.0]]], np.float32)
  loss = sami_losses.reconstruction_loss(pred, target, np.ones((1, 2)), np.ones(1), kind="cosine")
  assert float(loss) == pytest.approx((0.0 + 1.0) / 2)
  normed = sami_losses.normalise_per_token(jnp.asarray([[3.0, 1.0]]))
  np.testing.assert_allclose(normed, [[1.0, -1.0]], atol=1e-5)
  with pytest.raises(ValueError):
    sami_losses.per_token_loss(pred, target, "l1")


def _opt_config(**kw):
  c = ml_collections.ConfigDict(dict(
      batch_size=512, total_steps=100,
      optimizer=dict(base_lr=1.5e-4, lr=None, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                     warmup_steps=10, decay="cosine", end_lr=0.0, grad_clip_norm=None,
                     no_decay=(r".*/bias", r".*/scale", r".*pos_embed", r".*mask_token"),
                     frozen=())))
  c.optimizer.update(kw)
  return c


def test_schedule_scales_lr_linearly_with_warmup_and_cosine_to_zero():
  config = _opt_config()
  assert optim.learning_rate(config) == pytest.approx(1.5e-4 * 2)
  schedule = optim.make_schedule(config)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(1.5e-4)
  assert float(schedule(10)) == pytest.approx(3e-4)
  assert float(schedule(55)) == pytest.approx(1.5e-4, rel=1e-3)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_skips_biases_norms_positions_and_frozen_params_do_not_move():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "norm": {"scale": jnp.ones(2)}, "pos_embed": jnp.ones((1, 3, 2)),
            "head": {"kernel": jnp.ones((2, 2))}}
  config = _opt_config(lr=0.1, warmup_steps=0, frozen=(r"head/.*",))
  # The frozen regexes come from the task (its buffers plus `optimizer.frozen`).
  tx, _ = optim.make_optimizer(config, params, frozen=tuple(config.optimizer.frozen))
  state = tx.init(params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, state, params)
  # With zero gradients only weight decay moves a parameter: lr * wd * value.
  assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-0.1 * 0.05)
  for leaf in (updates["dense"]["bias"], updates["norm"]["scale"], updates["pos_embed"],
               updates["head"]["kernel"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_fsdp_rules_split_large_leaves_and_replicate_small_ones():
  mesh = sharding.make_mesh(4, 2)
  tree = {"big": jax.ShapeDtypeStruct((512, 300), jnp.float32),
          "odd": jax.ShapeDtypeStruct((301, 301), jnp.float32),
          "small": jax.ShapeDtypeStruct((16,), jnp.float32),
          "forced": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
  out = sharding.tree_shardings(mesh, tree, rules=[(r"forced", "fsdp")], min_size=1000)
  assert out["big"].spec == jax.sharding.PartitionSpec("fsdp", None)
  assert out["odd"].spec == jax.sharding.PartitionSpec()
  assert out["small"].spec == jax.sharding.PartitionSpec()
  assert out["forced"].spec == jax.sharding.PartitionSpec("fsdp", None)
  with pytest.raises(ValueError):
    sharding.make_mesh(3, 2)
  assert dict(sharding.make_mesh(-1, 2).shape) == {"data": 4, "fsdp": 2}
