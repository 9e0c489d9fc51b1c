"""MAE-style random token masking with static shapes (pure functions of arrays).

The number of kept tokens is a Python int, so everything below has static shapes under jit;
no boolean indexing anywhere.
"""
import jax
import jax.numpy as jnp


def num_kept(num_tokens: int, mask_ratio: float) -> int:
  """Tokens the encoder sees: round(N * (1 - ratio)) as MAE, at least 1."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  return max(1, int(num_tokens * (1.0 - mask_ratio)))


def random_masking(key: jax.Array, batch: int, num_tokens: int, keep: int):
  """Independent random masks per example (noise, argsort, keep the first `keep`).

  Returns:
    ids_keep (B, keep) int32: token indices the encoder sees, in shuffled order.
    ids_masked (B, N - keep) int32: the hidden tokens, in shuffled order.
    ids_restore (B, N) int32: position of each original token in concat(kept, masked), so
      `take_along_axis(concat([kept, masked], 1), ids_restore)` is back in grid order.
  """
  noise = jax.random.uniform(key, (batch, num_tokens))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  return ids_shuffle[:, :keep], ids_shuffle[:, keep:], ids_restore


def masked_token_indicator(ids_restore: jax.Array, keep: int) -> jax.Array:
  """(B, N) float32: 1 where the token was hidden from the encoder, 0 where it was kept."""
  return (ids_restore >= keep).astype(jnp.float32)


def gather_tokens(tokens: jax.Array, ids: jax.Array) -> jax.Array:
  """tokens (B, N, D), ids (B, K) -> (B, K, D)."""
  return jnp.take_along_axis(tokens, ids[..., None], axis=1)
