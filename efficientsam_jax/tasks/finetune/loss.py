"""Mask losses of SAM/EfficientSAM finetuning, as pure functions of arrays.

Per mask: 20 * focal(alpha 0.25, gamma 2) + 1 * dice on the mask logits, plus the MSE between
the predicted IoU and the IoU of the thresholded prediction (logits > 0) with the target.
With several candidate masks only the candidate with the lowest segmentation loss gets the
mask gradient; the IoU head is trained on every candidate.
"""
import jax
import jax.numpy as jnp

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
  """(..., H, W) logits and 0/1 targets -> (...,) focal loss averaged over pixels.

  FL = -alpha_t (1 - p_t)^gamma log(p_t), alpha_t = alpha on positives, 1 - alpha on negatives.
  """
  logits, targets = logits.astype(jnp.float32), targets.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  # Cross-entropy from logits (stable): log(1 + e^x) - t x.
  ce = jnp.logaddexp(0.0, logits) - targets * logits
  p_t = p * targets + (1 - p) * (1 - targets)
  alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
  return jnp.mean(alpha_t * (1 - p_t) ** gamma * ce, axis=(-2, -1))


def dice_loss(logits, targets, smooth: float = 1.0):
  """(..., H, W) -> (...,) 1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s), p = sigmoid(logits)."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  targets = targets.astype(jnp.float32)
  inter = jnp.sum(p * targets, axis=(-2, -1))
  return 1.0 - (2.0 * inter + smooth) / (
      jnp.sum(p, axis=(-2, -1)) + jnp.sum(targets, axis=(-2, -1)) + smooth)


def mask_iou(logits, targets):
  """(..., H, W) -> (...,) IoU of (logits > 0) with the 0/1 targets; 1 when both are empty."""
  pred = logits > 0
  targets = targets.astype(bool)
  inter = jnp.sum(pred & targets, axis=(-2, -1)).astype(jnp.float32)
  union = jnp.sum(pred | targets, axis=(-2, -1)).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def multimask_loss(logits, iou_pred, targets, weights, focal_weight: float = FOCAL_WEIGHT,
                   dice_weight: float = DICE_WEIGHT, iou_weight: float = 1.0):
  """Loss of a batch of queries with C candidate masks each.

  Args:
    logits: (..., C, H, W) mask logits; iou_pred: (..., C) predicted IoUs.
    targets: (..., H, W) 0/1 ground truth; weights: (...,) 1 for real masks, 0 for padding.
  Returns:
    (scalar loss averaged over weighted masks, dict of scalar parts, best (...,) int index of
    the candidate that got the mask gradient).
  """
  targets_c = jnp.broadcast_to(targets[..., None, :, :], logits.shape)
  focal = sigmoid_focal_loss(logits, targets_c)
  dice = dice_loss(logits, targets_c)
  seg = focal_weight * focal + dice_weight * dice  # (..., C)
  best = jnp.argmin(jax.lax.stop_gradient(seg), axis=-1)
  take = lambda x: jnp.take_along_axis(x, best[..., None], axis=-1)[..., 0]
  actual_iou = jax.lax.stop_gradient(mask_iou(logits, targets_c))
  iou_mse = jnp.mean((iou_pred.astype(jnp.float32) - actual_iou) ** 2, axis=-1)
  weights = weights.astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(weights), 1.0)
  mean = lambda x: jnp.sum(x * weights) / denom
  loss = mean(take(seg)) + iou_weight * mean(iou_mse)
  parts = {"focal": mean(take(focal)), "dice": mean(take(dice)), "iou_mse": mean(iou_mse),
           "miou": mean(take(actual_iou))}
  return loss, parts, best
