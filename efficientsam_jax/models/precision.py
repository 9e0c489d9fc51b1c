"""The compute-dtype switch ("float32" | "bfloat16") shared by every model in this package.

What "bfloat16 compute" means here: the operands of matrix products and convolutions are cast
to bfloat16 at use, products accumulate in and return float32, and everything between them
(the residual stream, LayerNorm / GroupNorm, softmax, GELU, biases) stays float32. Parameters
are float32 whatever the compute dtype (stored, optimised and checkpointed so).

Why not bfloat16 activations throughout: on a CPU with bf16 dot instructions (AVX-512 BF16,
AMX) the products are what bf16 speeds up, while elementwise work in bf16 is emulated with
converts around every operation (measured slower, docs/performance.md); on accelerators
float32 activations between bf16 products are the conservative mixed-precision recipe.
With dtype float32 every product is the plain float32 one, so float32 results are unchanged.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32
DTYPES = ("float32", "bfloat16")


def compute_dtype(name) -> jnp.dtype:
  """"float32" | "bfloat16" (or the dtype itself) -> the jnp dtype; ValueError otherwise."""
  name = jnp.dtype(name).name if not isinstance(name, str) else name
  if name not in DTYPES:
    raise ValueError(f"unknown compute dtype {name!r}; use one of {', '.join(DTYPES)}")
  return jnp.dtype(name)


def matmul(x, w, dtype=F32):
  """x (..., K) @ w (K, N) with operands in `dtype`, accumulated and returned in float32."""
  return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=F32)


def einsum(spec: str, *operands, dtype=F32):
  """jnp.einsum with every operand in `dtype` and a float32 result."""
  return jnp.einsum(spec, *(x.astype(dtype) for x in operands), preferred_element_type=F32)


class Dense(nn.Module):
  """flax `nn.Dense` (same parameter names, shapes and initialisers) computing in `dtype`
  with a float32 result and a float32 bias."""
  features: int
  dtype: Any = F32
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    y = matmul(x, kernel, self.dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return y


def conv(features: int, kernel_size, dtype=F32, **kwargs) -> nn.Conv:
  """flax `nn.Conv` whose operands are in `dtype` and whose result is float32."""
  return nn.Conv(features, kernel_size, dtype=dtype,
                 conv_general_dilated=functools.partial(lax.conv_general_dilated,
                                                        preferred_element_type=F32),
                 **kwargs)
