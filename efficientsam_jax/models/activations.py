"""Activations shared by the models.

`gelu` is torch's exact `nn.GELU()`: x * (1 + erf(x / sqrt(2))) / 2, written with erf as torch
writes it. `flax.linen.gelu(approximate=False)` computes the same function through erfc, which
XLA's CPU backend evaluates ~2.5x slower (it is an exp plus a rational approximation per
element); the two agree to 1e-6 in float32 (docs/performance.md). It runs over every MLP
hidden activation and the decoder's upscaled masks, so the cheaper form matters.
"""
import jax.numpy as jnp
import numpy as np
from jax import lax

_SQRT_HALF = np.float32(np.sqrt(0.5))


def gelu(x):
  """Exact (erf) GELU, elementwise, in x's dtype."""
  return x * (0.5 * (1 + lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype))))
