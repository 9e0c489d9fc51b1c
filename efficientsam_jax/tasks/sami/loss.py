"""SAMI reconstruction losses: pure functions of arrays."""
import jax.numpy as jnp

LOSS_KINDS = ("mse", "cosine")


def normalise_per_token(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """(..., C): zero mean, unit variance over channels (MAE's norm_pix_loss, on features)."""
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps)


def per_token_loss(pred: jnp.ndarray, target: jnp.ndarray, kind: str = "mse") -> jnp.ndarray:
  """pred, target (B, N, C) -> (B, N): mean squared error over channels, or 1 - cosine."""
  if kind == "mse":
    return jnp.mean(jnp.square(pred - target), axis=-1)
  if kind == "cosine":
    dot = jnp.sum(pred * target, -1)
    norms = jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(target, axis=-1)
    return 1.0 - dot / jnp.maximum(norms, 1e-8)
  raise ValueError(f"unknown loss kind {kind!r}; known: {LOSS_KINDS}")


def reconstruction_loss(pred, target, masked, valid, *, kind="mse", masked_only=False,
                        normalise_target=False):
  """Scalar SAMI loss.

  Args:
    pred: (B, N, C) head outputs in token order.
    target: (B, N, C) teacher features (float32).
    masked: (B, N) 1 where the token was hidden from the encoder.
    valid: (B,) 1 for real images, 0 for records that failed to decode (weighted out).
    kind: "mse" (the paper's loss over all tokens) or "cosine" (ablation).
    masked_only: average over hidden tokens only (ablation).
    normalise_target: per-token normalised targets (ablation).
  Returns: the mean per-token loss over the tokens that count.
  """
  if normalise_target:
    target = normalise_per_token(target)
  weights = valid.astype(jnp.float32)[:, None] * jnp.ones(pred.shape[:2], jnp.float32)
  if masked_only:
    weights = weights * masked
  losses = per_token_loss(pred.astype(jnp.float32), target.astype(jnp.float32), kind)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
