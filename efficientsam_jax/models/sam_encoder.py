"""Segment Anything's image encoder (ViTDet-style ViT with windows and relative positions).

This is SAMI's frozen teacher and SAM's image encoder. Parameter names mirror the
`image_encoder.` keys of the SAM releases in flax spelling (`patch_embed/proj`, `pos_embed`,
`blocks_N/attn/rel_pos_h`, `neck_0` ... `neck_3`), except the MLPs, which share
EfficientSAM's ViT MLP (`fc1`, `fc2`; SAM's `lin1`, `lin2` are renamed by ENCODER_RENAMES). Images are NHWC, already normalised; any H, W
that are multiples of 16 (SAMI runs the teacher on 224 crops).
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from efficientsam_jax.models import attention, precision, resize, state_dict
from efficientsam_jax.models.vit import Mlp, PatchEmbed, apply_sequential, make_neck

# Size name -> (width, depth, heads, global-attention block indices). `tiny` is for tests
# and demos only; it has no release.
SAM_SIZES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "tiny": (64, 4, 4, (1, 3)),
}

# SAM's encoder key names -> ours (module paths under the encoder).
ENCODER_RENAMES = state_dict.KeyRenames([("blocks.{i}.mlp.lin1", "blocks.{i}.mlp.fc1"),
                                         ("blocks.{i}.mlp.lin2", "blocks.{i}.mlp.fc2")])

LN_EPS = 1e-6  # SAM builds its encoder with LayerNorm(eps=1e-6); LayerNorm2d in the neck too
TORCH_PREFIX = "image_encoder."


@dataclasses.dataclass(frozen=True)
class SamEncoderConfig:
  """Shape of a SAM image encoder. `pretrain_size` fixes the stored pos_embed and the
  global blocks' rel-pos tables (1024 / 16 = 64 tokens a side)."""
  width: int = 1280
  depth: int = 32
  num_heads: int = 16
  global_blocks: tuple[int, ...] = (7, 15, 23, 31)
  window_size: int = 14
  patch_size: int = 16
  pretrain_size: int = 1024
  out_channels: int = 256
  mlp_ratio: float = 4.0

  @classmethod
  def from_name(cls, name: str, **overrides) -> "SamEncoderConfig":
    if name not in SAM_SIZES:
      raise ValueError(f"unknown SAM encoder size {name!r}; known: {sorted(SAM_SIZES)}")
    width, depth, heads, global_blocks = SAM_SIZES[name]
    return cls(**{"width": width, "depth": depth, "num_heads": heads,
                  "global_blocks": global_blocks, **overrides})

  @property
  def pretrain_grid(self) -> int:
    return self.pretrain_size // self.patch_size


@functools.lru_cache(maxsize=None)
def _rel_index(q_size: int, k_size: int) -> np.ndarray:
  """(q_size, k_size) int rows of the resampled table for each (query, key) pair.

  SAM's rule: q_i*max(k/q,1) - k_j*max(q/k,1) + (k-1)*max(q/k,1), truncated; torch computes
  the coordinates in float32, so we do too.
  """
  f32 = np.float32
  q_scale, k_scale = f32(max(k_size / q_size, 1.0)), f32(max(q_size / k_size, 1.0))
  coords = (np.arange(q_size, dtype=f32)[:, None] * q_scale
            - np.arange(k_size, dtype=f32)[None, :] * k_scale) + f32(k_size - 1) * k_scale
  return coords.astype(np.int64)


def rel_pos_embeddings(table: jnp.ndarray, q_size: int, k_size: int) -> jnp.ndarray:
  """Relative-position embeddings along one axis, as SAM's `get_rel_pos`.

  Args:
    table: (L, C) learned offsets; linearly resampled (torch `F.interpolate(mode="linear")`)
      to 2*max(q_size, k_size)-1 rows when L differs, e.g. a 1024-trained global block
      (L=127) run on a 14-token grid.
    q_size, k_size: query and key lengths along the axis.
  Returns: (q_size, k_size, C).
  """
  table = resize.resize_axes(table, {0: 2 * max(q_size, k_size) - 1}, "linear")
  return table[_rel_index(q_size, k_size)]


def window_partition(x: jnp.ndarray, window: int) -> jnp.ndarray:
  """(B, H, W, C) -> (B * nH * nW, window, window, C), zero-padding bottom/right first.

  The padding tokens are not masked: SAM lets them take part as keys, so must we.
  """
  b, h, w, c = x.shape
  hp, wp = -(-h // window) * window, -(-w // window) * window
  x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window, window, c)


def window_unpartition(windows: jnp.ndarray, window: int, h: int, w: int) -> jnp.ndarray:
  """(B * nH * nW, window, window, C) -> (B, h, w, C): inverse of window_partition, cropped."""
  nh, nw = -(-h // window), -(-w // window)
  c = windows.shape[-1]
  x = windows.reshape(-1, nh, nw, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, nh * window, nw * window, c)[:, :h, :w]


class RelPosAttention(nn.Module):
  """Multi-head self-attention over a token grid with decomposed relative positions.

  (B, h, w, D) -> (B, h, w, D). `rel_pos_size` S sizes the tables (2S-1, head_dim): the window
  for windowed blocks, the pretrain grid for global ones.
  """
  num_heads: int
  rel_pos_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, d = x.shape
    heads, head_dim = self.num_heads, d // self.num_heads
    qkv = precision.Dense(3 * d, self.dtype, name="qkv")(x).reshape(b, h * w, 3, heads,
                                                                     head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, heads, head_dim)
    # SAM zero-initialises these; small noise keeps a randomly initialised teacher positional.
    init = nn.initializers.truncated_normal(0.02)
    rel_h = self.param("rel_pos_h", init, (2 * self.rel_pos_size - 1, head_dim))
    rel_w = self.param("rel_pos_w", init, (2 * self.rel_pos_size - 1, head_dim))

    # The positional terms use the UNSCALED queries, as in SAM (and MViTv2).
    grid_q = q.reshape(b, h, w, heads, head_dim)
    bias_h = precision.einsum("byxnc,ykc->bnyxk", grid_q, rel_pos_embeddings(rel_h, h, h),
                              dtype=self.dtype)
    bias_w = precision.einsum("byxnc,xkc->bnyxk", grid_q, rel_pos_embeddings(rel_w, w, w),
                              dtype=self.dtype)
    out = attention.dot_product_attention(
        q, k, v, head_dim**-0.5, bias_h.reshape(b, heads, h * w, h),
        bias_w.reshape(b, heads, h * w, w), key_hw=(h, w), dtype=self.dtype)
    return precision.Dense(d, self.dtype, name="proj")(out.reshape(b, h, w, d))


class SamBlock(nn.Module):
  """Pre-norm block, windowed (window_size > 0) or global: (B, h, w, D) -> (B, h, w, D)."""
  num_heads: int
  window_size: int
  rel_pos_size: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, d = x.shape
    norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, name=name)
    y = norm("norm1")(x)
    if self.window_size:
      # Windows go into the batch axis: one attention call, no loop over windows.
      y = window_partition(y, self.window_size)
    y = RelPosAttention(self.num_heads, self.rel_pos_size, self.dtype, name="attn")(y)
    if self.window_size:
      y = window_unpartition(y, self.window_size, h, w)
    x = x + y
    mlp = Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")
    return x + mlp(norm("norm2")(x))


class SamImageEncoder(nn.Module):
  """SAM's ImageEncoderViT: (B, H, W, 3) -> (B, H/16, W/16, 256) neck output.

  `output="blocks"` returns the last block's tokens (B, H/16, W/16, D) instead (SAMI's
  optional target layer) and takes the same full parameter tree (the neck's params are then
  unused). Build params with `init_sam_encoder_params` or `sam_encoder_params_from_torch`;
  `SamImageEncoder(cfg, output="blocks").init` would leave the neck out.
  """
  config: SamEncoderConfig
  output: str = "neck"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    c = self.config
    if self.output not in ("neck", "blocks"):
      raise ValueError(f"output must be 'neck' or 'blocks', got {self.output!r}")
    self.patch_embed = PatchEmbed(c.width, c.patch_size, self.dtype)
    g = c.pretrain_grid
    self.pos_embed = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                                (1, g, g, c.width))
    self.blocks = [
        SamBlock(c.num_heads, 0 if i in c.global_blocks else c.window_size,
                 g if i in c.global_blocks else c.window_size, c.mlp_ratio, self.dtype)
        for i in range(c.depth)
    ]
    self.neck = make_neck(c.out_channels, LN_EPS, self.dtype)

  def __call__(self, images):
    """images: (B, H, W, 3), H and W multiples of 16. Returns (B, h, w, 256) or (B, h, w, D)."""
    x = self.patch_embed(images)
    # Stored for 64x64 tokens; another grid gets the torch-style bicubic resize.
    pos = resize.resize_hw(self.pos_embed, x.shape[1], x.shape[2], "cubic")
    x = apply_sequential(self.blocks, x + pos.astype(x.dtype))
    return x if self.output == "blocks" else apply_sequential(self.neck, x)


def abstract_params(config: SamEncoderConfig):
  """ShapeDtypeStruct tree of the full encoder (neck included); no compute."""
  model = SamImageEncoder(config)
  image = jax.ShapeDtypeStruct((1, config.patch_size, config.patch_size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), image)["params"]


def init_sam_encoder_params(config: SamEncoderConfig, seed: int = 0) -> dict:
  """Deterministic random teacher params (float32 numpy) for demos and tests without a checkpoint.

  Filled on the host from the abstract tree rather than by a jitted `model.init`: XLA's CPU
  compile time of the init graph grows by seconds per block (over a minute for vit_h), and a
  numpy generator gives the same teacher on every backend. Kernels ~ N(0, 1/fan_in), biases 0,
  LayerNorm scales 1, pos_embed and rel-pos tables ~ N(0, 0.02^2).
  """
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(abstract_params(config))
  out = {}
  for path in sorted(flat):
    shape, leaf = flat[path].shape, path[-1]
    if leaf == "kernel":
      value = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
    elif leaf == "scale":
      value = np.ones(shape, np.float32)
    elif leaf == "bias":
      value = np.zeros(shape, np.float32)
    else:  # pos_embed, rel_pos_h, rel_pos_w
      value = 0.02 * rng.standard_normal(shape, np.float32)
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out)


def sam_encoder_params_from_torch(state_dict_, config: SamEncoderConfig,
                                  prefix: str = TORCH_PREFIX) -> dict:
  """Encoder params from a SAM state_dict (torch key -> array), as float32 numpy arrays.

  A released file (`sam_vit_h_4b8939.pth`) holds `prompt_encoder.`, `mask_decoder.` and
  pixel_mean/std too; only keys under `prefix` are read. Pass prefix="" for a bare
  `ImageEncoderViT.state_dict()`. Raises UserError naming the first missing, unexpected or
  mis-shaped tensor.
  """
  params = state_dict.torch_to_flax(state_dict_, abstract_params(config), prefix=prefix,
                                    renames=ENCODER_RENAMES.under(prefix))
  return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def count_params(config: SamEncoderConfig) -> int:
  """Number of encoder parameters, from shapes alone."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract_params(config)))
