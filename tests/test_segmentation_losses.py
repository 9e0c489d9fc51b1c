"""Finetuning losses against values worked out by hand."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from efficientsam_jax.tasks.finetune import loss as seg


def test_focal_loss_hand_computed():
  # logit 0 -> p = 0.5: positive 0.25 * 0.5^2 * log 2, negative 0.75 * 0.5^2 * log 2.
  # logit log 3 -> p = 0.75 on a positive: 0.25 * 0.25^2 * -log 0.75.
  logits = jnp.array([[[0.0, 0.0, math.log(3.0)]]])
  targets = jnp.array([[[1.0, 0.0, 1.0]]])
  expected = (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)
              + 0.25 * 0.0625 * -math.log(0.75)) / 3
  assert float(seg.sigmoid_focal_loss(logits, targets)[0]) == pytest.approx(expected, rel=1e-6)


def test_dice_loss_hand_computed():
  # p = (0.5, 0.75), t = (1, 0): 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1).
  logits = jnp.array([[[0.0, math.log(3.0)]]])
  targets = jnp.array([[[1.0, 0.0]]])
  assert float(seg.dice_loss(logits, targets)[0]) == pytest.approx(1 - 2 / 3.25, rel=1e-6)


def test_mask_iou_thresholds_at_zero():
  logits = jnp.array([[[1.0, -1.0, 1.0, -2.0]]])
  targets = jnp.array([[[1, 1, 0, 0]]])
  assert float(seg.mask_iou(logits, targets)[0]) == pytest.approx(1 / 3)
  assert float(seg.mask_iou(-jnp.ones((1, 2)), jnp.zeros((1, 2)))) == 1.0  # both empty


def test_multimask_loss_picks_lowest_segmentation_loss_and_trains_iou_on_all():
  targets = jnp.array([[[1.0, 0.0]]])  # one query, 1x2 mask
  good = jnp.array([[5.0, -5.0]])
  bad = jnp.array([[-5.0, 5.0]])
  logits = jnp.stack([bad, good, bad])[None]  # (1, 3, 1, 2)
  iou_pred = jnp.array([[0.5, 0.5, 0.5]])
  loss, parts, best = seg.multimask_loss(logits, iou_pred, targets, jnp.ones((1,)))
  assert int(best[0]) == 1
  focal = seg.sigmoid_focal_loss(good[None], targets)[0]
  dice = seg.dice_loss(good[None], targets)[0]
  # actual IoUs: 0 (bad), 1 (good), 0 (bad); MSE vs 0.5 everywhere = 0.25.
  assert float(parts["iou_mse"]) == pytest.approx(0.25)
  assert float(loss) == pytest.approx(float(20 * focal + dice + 0.25), rel=1e-6)
  assert float(parts["miou"]) == 1.0


def test_multimask_loss_ignores_padding_masks():
  targets = jnp.zeros((2, 4, 4)).at[0, :2].set(1.0)
  logits = jnp.zeros((2, 3, 4, 4)).at[1].set(3.0)
  iou_pred = jnp.zeros((2, 3))
  loss, _, _ = seg.multimask_loss(logits, iou_pred, targets, jnp.array([1.0, 0.0]))
  single, _, _ = seg.multimask_loss(logits[:1], iou_pred[:1], targets[:1], jnp.ones((1,)))
  assert float(loss) == pytest.approx(float(single), rel=1e-6)
