"""The plain ViT image encoder of EfficientSAM (and SAMI's student), with its neck.

Parameter names mirror the PyTorch release (`patch_embed.proj`, `pos_embed`, `blocks.N.attn.qkv`,
`neck.0` ... `neck.3`), flax spelling `blocks_N` / `neck_N`, so conversion is a table of
transposes. Images are NHWC; the neck output is (B, H/16, W/16, 256). `dtype` everywhere is
the compute dtype of the matrix products (precision.py); activations are float32.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax.models import resize
from efficientsam_jax.models import activations, attention, precision

# Size name -> (width, depth, heads). One table for every encoder of this family.
VIT_SIZES = {
    "vitt": (192, 12, 3),
    "vits": (384, 12, 6),
    "vitb": (768, 12, 12),
}

LN_EPS = 1e-6  # the EfficientSAM encoder's LayerNorm epsilon (blocks and neck)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Shape of an EfficientSAM-family encoder. `pretrain_grid` is the stored pos-table grid."""
  width: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  patch_size: int = 16
  pretrain_grid: int = 14
  neck_channels: int = 256  # 0: no neck (SAMI pretraining uses the block tokens)
  # Stochastic depth for finetuning: block i of n drops its residual branches per example
  # with probability drop_path * i / (n - 1) (MAE's linear rule); 0 = none (the release).
  drop_path: float = 0.0

  @classmethod
  def from_name(cls, name: str, **overrides) -> "ViTConfig":
    if name not in VIT_SIZES:
      raise ValueError(f"unknown ViT size {name!r}; known: {sorted(VIT_SIZES)}")
    width, depth, heads = VIT_SIZES[name]
    return cls(**{"width": width, "depth": depth, "num_heads": heads, **overrides})


def sincos_pos_table(width: int, grid: int) -> np.ndarray:
  """(1, 1 + grid*grid, width) 2-D sin-cos table with a zero class slot, as MAE initialises."""
  def one_axis(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  gy, gx = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                       indexing="ij")
  table = np.concatenate([one_axis(width // 2, gy), one_axis(width // 2, gx)], axis=1)
  table = np.concatenate([np.zeros((1, width)), table], axis=0)
  return table[None].astype(np.float32)


class PatchEmbed(nn.Module):
  """16x16 stride-16 conv with bias: (B, H, W, 3) -> (B, H/16, W/16, D)."""
  width: int
  patch_size: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    return precision.conv(self.width, (p, p), self.dtype, strides=(p, p), padding="VALID",
                          name="proj")(x)


class Attention(nn.Module):
  """Global multi-head self-attention with fused qkv: (B, T, D) -> (B, T, D)."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    head_dim = d // self.num_heads
    # (B, T, 3, heads, head_dim): the torch layout of the fused projection.
    qkv = precision.Dense(3 * d, self.dtype, name="qkv")(x).reshape(b, t, 3, self.num_heads,
                                                                     head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = attention.dot_product_attention(q, k, v, head_dim**-0.5, dtype=self.dtype)
    return precision.Dense(d, self.dtype, name="proj")(out.reshape(b, t, d))


class Mlp(nn.Module):
  """D -> hidden -> D with exact (erf) GELU: `fc1`, `fc2` (SAM's `lin1`, `lin2` are renamed to
  these at conversion, sam_encoder.ENCODER_RENAMES)."""
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = activations.gelu(precision.Dense(self.hidden, self.dtype, name="fc1")(x))
    return precision.Dense(d, self.dtype, name="fc2")(x)


def drop_path(module: nn.Module, branch, rate: float, deterministic: bool):
  """Stochastic depth: each example's residual branch (B, ...) is zeroed with probability
  `rate` and the kept ones scaled by 1 / (1 - rate); the identity when deterministic. Draws
  from `module`'s "dropout" RNG stream."""
  if deterministic or rate == 0.0:
    return branch
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate,
                              (branch.shape[0],) + (1,) * (branch.ndim - 1))
  return jnp.where(keep, branch / (1.0 - rate), 0.0)


class Block(nn.Module):
  """Pre-norm transformer block: (B, T, D) -> (B, T, D). `drop_path` > 0 drops each
  residual branch per example unless `deterministic` (ViTConfig.drop_path)."""
  num_heads: int
  mlp_ratio: float = 4.0
  ln_eps: float = LN_EPS
  dtype: jnp.dtype = jnp.float32
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    d = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.ln_eps, name=name)
    branch = Attention(self.num_heads, self.dtype, name="attn")(norm("norm1")(x))
    x = x + drop_path(self, branch, self.drop_path, deterministic)
    branch = Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(norm("norm2")(x))
    return x + drop_path(self, branch, self.drop_path, deterministic)


def make_neck(channels: int = 256, ln_eps: float = LN_EPS, dtype=jnp.float32) -> list:
  """conv1x1 (no bias) -> channel LN -> conv3x3 (no bias) -> channel LN, as a list of modules.

  Assigned to `self.neck` in a `setup`, flax names them neck_0 .. neck_3: the torch
  `nn.Sequential` indices of the releases (EfficientSAM and SAM share this neck).
  """
  return [
      precision.conv(channels, (1, 1), dtype, use_bias=False),
      nn.LayerNorm(epsilon=ln_eps),
      precision.conv(channels, (3, 3), dtype, padding=((1, 1), (1, 1)), use_bias=False),
      nn.LayerNorm(epsilon=ln_eps),
  ]


def apply_sequential(layers: list, x):
  for layer in layers:
    x = layer(x)
  return x


class ImageEncoder(nn.Module):
  """EfficientSAM / SAMI ViT encoder (no class token, global attention everywhere).

  `__call__` runs the whole encoder; `embed` and `run_blocks` are its two halves, which SAMI
  calls separately so the blocks see only the kept tokens. `remat`: each block is recomputed
  in the backward pass (jax.checkpoint) instead of storing its activations.
  """
  config: ViTConfig
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def setup(self):
    c = self.config
    self.patch_embed = PatchEmbed(c.width, c.patch_size, self.dtype)
    grid_tokens = c.pretrain_grid * c.pretrain_grid
    self.pos_embed = self.param(
        "pos_embed", lambda *_: jnp.asarray(sincos_pos_table(c.width, c.pretrain_grid)),
        (1, 1 + grid_tokens, c.width))
    # `deterministic` (argument 2, counting self) is a Python bool: static under remat.
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    rates = np.linspace(0.0, c.drop_path, c.depth) if c.depth > 1 else [0.0] * c.depth
    self.blocks = [block(c.num_heads, c.mlp_ratio, dtype=self.dtype, drop_path=float(rate))
                   for rate in rates]
    if c.neck_channels:
      self.neck = make_neck(c.neck_channels, dtype=self.dtype)

  def grid_pos_embed(self, grid_h: int, grid_w: int) -> jnp.ndarray:
    """Position table for a grid_h x grid_w token grid: (1, grid_h, grid_w, D).

    Slot 0 of the stored table is an unused class slot; the rest is resized with torch-style
    bicubic on every call, as the release does.
    """
    g = self.config.pretrain_grid
    table = self.pos_embed[:, 1:].reshape(1, g, g, self.config.width)
    return resize.resize_hw(table, grid_h, grid_w, "cubic")

  def embed(self, images):
    """(B, H, W, 3) normalised images -> (B, H/16, W/16, D) patch tokens plus positions."""
    x = self.patch_embed(images)
    return x + self.grid_pos_embed(x.shape[1], x.shape[2])

  def run_blocks(self, tokens, deterministic: bool = True):
    """(B, T, D) -> (B, T, D) through every block (stochastic depth unless deterministic)."""
    for block in self.blocks:
      tokens = block(tokens, deterministic)
    return tokens

  def __call__(self, images, deterministic: bool = True):
    """(B, H, W, 3) -> neck output (B, H/16, W/16, C), or block tokens if there is no neck."""
    x = self.embed(images)
    b, h, w, d = x.shape
    x = self.run_blocks(x.reshape(b, h * w, d), deterministic).reshape(b, h, w, d)
    return apply_sequential(self.neck, x) if self.config.neck_channels else x
