"""TinyViT-5M as MobileSAM's image encoder: (B, 1024, 1024, 3) -> (B, 64, 64, 256).

Four stages of widths (64, 128, 160, 320), depths (2, 2, 6, 2), heads (-, 4, 5, 10), windows
(-, 7, 14, 7). A two-conv stem takes 1024 px to a 256x256 grid; stage 0 is convolutional
(MBConv inverted residuals); every stage but the last ends in a patch merging that halves the
grid, except the last merging, which keeps it (stride 1): 256 -> 128 -> 64 -> 64. Stages 1-3
are windowed attention blocks with a learned bias per (|dy|, |dx|) offset, a depthwise 3x3
conv between attention and MLP, and the LayerNorms inside the attention and MLP modules. The
SAM neck (conv1x1 -> LN -> conv3x3 -> LN, 256 channels) follows.

Parameter names mirror MobileSAM's `image_encoder.` state_dict keys in flax spelling
(`patch_embed/seq_0/c`, `layers_1/blocks_0/attn/attention_biases`, `layers_0/downsample/conv2/bn`,
`neck_0`...). The release also keeps TinyViT's unused ImageNet classifier (`norm_head`, `head`);
those parameters exist here so that checkpoints convert key for key, and are never applied.

BatchNorm (after every conv, `Conv2d_BN`) runs with inference semantics only: the stored
running mean/variance normalise, as PyTorch's `eval()` mode does. The running statistics and
`num_batches_tracked` are kept in `params` (like the EfficientSAM Fourier buffer) so that a
checkpoint round trips bit for bit; they are buffers, never trained (`NON_TRAINABLE`).
"""
import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax.models import activations
from efficientsam_jax.models.sam_encoder import window_partition, window_unpartition
from efficientsam_jax.models.vit import apply_sequential, make_neck

BN_EPS = 1e-5  # torch BatchNorm2d default
LN_EPS = 1e-5  # TinyViT's nn.LayerNorm default (the neck uses 1e-6, as SAM's)

# Parameter paths that are buffers in the release: never optimised.
NON_TRAINABLE = (r"/bn/(running_mean|running_var|num_batches_tracked)$",)


gelu = activations.gelu  # torch nn.GELU: the exact (erf) form


@dataclasses.dataclass(frozen=True)
class TinyViTConfig:
  """Shape of a TinyViT encoder; defaults are MobileSAM's (TinyViT-5M, 1024 input)."""
  embed_dims: tuple[int, ...] = (64, 128, 160, 320)
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (2, 4, 5, 10)
  window_sizes: tuple[int, ...] = (7, 7, 14, 7)
  mlp_ratio: float = 4.0
  mbconv_expand_ratio: float = 4.0
  out_channels: int = 256
  num_classes: int = 1000  # the unused classifier head the release carries


class BatchNorm(nn.Module):
  """Inference-mode BatchNorm over the last axis: (x - running_mean) / sqrt(running_var + eps)
  * scale + bias. The leaf names are torch's (scale <-> weight)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (c,))
    bias = self.param("bias", nn.initializers.zeros_init(), (c,))
    mean = self.param("running_mean", nn.initializers.zeros_init(), (c,))
    var = self.param("running_var", nn.initializers.ones_init(), (c,))
    # Present only so checkpoints round trip; torch stores it as int64.
    self.param("num_batches_tracked", nn.initializers.zeros_init(), (), jnp.int32)
    stats = jax.lax.stop_gradient((mean, var))  # buffers: never trained
    return (x - stats[0]) * jax.lax.rsqrt(stats[1] + BN_EPS) * scale + bias


class Conv2dBN(nn.Module):
  """Conv (no bias, 'same' padding k//2, optional groups) then BatchNorm: NHWC -> NHWC."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1

  @nn.compact
  def __call__(self, x):
    k, p = self.kernel_size, self.kernel_size // 2
    x = nn.Conv(self.features, (k, k), strides=(self.stride, self.stride),
                padding=((p, p), (p, p)), feature_group_count=self.groups, use_bias=False,
                name="c")(x)
    return BatchNorm(name="bn")(x)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, + input, GELU.
  (B, H, W, C) -> (B, H, W, C)."""
  expand_ratio: float = 4.0

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    hidden = int(c * self.expand_ratio)
    y = gelu(Conv2dBN(hidden, 1, name="conv1")(x))
    y = gelu(Conv2dBN(hidden, 3, groups=hidden, name="conv2")(y))
    return gelu(x + Conv2dBN(c, 1, name="conv3")(y))


class PatchMerging(nn.Module):
  """1x1 conv to out_dim, depthwise 3x3 with `stride`, 1x1 conv:
  (B, H, W, C) -> (B, H/stride, W/stride, out_dim)."""
  out_dim: int
  stride: int = 2

  @nn.compact
  def __call__(self, x):
    x = gelu(Conv2dBN(self.out_dim, 1, name="conv1")(x))
    x = gelu(Conv2dBN(self.out_dim, 3, self.stride, groups=self.out_dim, name="conv2")(x))
    return Conv2dBN(self.out_dim, 1, name="conv3")(x)


@functools.lru_cache(maxsize=None)
def attention_bias_index(window: int) -> np.ndarray:
  """(window^2, window^2) int: for each (query, key) pair of a window, the column of the
  learned bias table for their offset (|dy|, |dx|); columns numbered in order of first
  appearance when pairs are enumerated row-major, as the release numbers them."""
  points = list(itertools.product(range(window), range(window)))
  offsets: dict[tuple[int, int], int] = {}
  index = np.empty((len(points), len(points)), np.int32)
  for i, (y1, x1) in enumerate(points):
    for j, (y2, x2) in enumerate(points):
      index[i, j] = offsets.setdefault((abs(y1 - y2), abs(x1 - x2)), len(offsets))
  return index


class WindowAttention(nn.Module):
  """LayerNorm then multi-head attention inside one window with offset biases:
  (B, window^2, C) -> (B, window^2, C). qkv is laid out per head as [q | k | v]."""
  num_heads: int
  window: int

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    heads, head_dim = self.num_heads, c // self.num_heads
    index = attention_bias_index(self.window)
    biases = self.param("attention_biases", nn.initializers.zeros_init(),
                        (heads, int(index.max()) + 1))
    x = nn.LayerNorm(epsilon=LN_EPS, name="norm")(x)
    qkv = nn.Dense(3 * c, name="qkv")(x).reshape(b, n, heads, 3 * head_dim)
    q, k, v = jnp.split(qkv, 3, axis=-1)  # each (B, N, heads, head_dim)
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) * head_dim**-0.5 + biases[:, index]
    out = jnp.einsum("bhqk,bkhc->bqhc", jax.nn.softmax(logits, axis=-1), v)
    return nn.Dense(c, name="proj")(out.reshape(b, n, c))


class Mlp(nn.Module):
  """LayerNorm, Linear, GELU, Linear: (..., C) -> (..., C)."""
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = nn.LayerNorm(epsilon=LN_EPS, name="norm")(x)
    return nn.Dense(c, name="fc2")(gelu(nn.Dense(int(c * self.mlp_ratio), name="fc1")(x)))


class TinyViTBlock(nn.Module):
  """Windowed attention (+ residual), depthwise 3x3 conv+BN, MLP (+ residual):
  (B, H, W, C) -> (B, H, W, C). The grid is zero-padded bottom/right to whole windows; the
  padding tokens take part in attention (LayerNorm'd inside it), as in the release."""
  num_heads: int
  window: int
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = window_partition(x, self.window).reshape(-1, self.window * self.window, c)
    y = WindowAttention(self.num_heads, self.window, name="attn")(y)
    x = x + window_unpartition(y.reshape(-1, self.window, self.window, c), self.window, h, w)
    x = Conv2dBN(c, 3, groups=c, name="local_conv")(x)
    return x + Mlp(self.mlp_ratio, name="mlp")(x)


class Stage(nn.Module):
  """`depth` blocks (MBConv in stage 0, TinyViTBlock after), then an optional PatchMerging
  to `out_dim` with `stride`: (B, H, W, C) -> (B, H/stride, W/stride, out_dim)."""
  depth: int
  num_heads: int = 0  # 0: convolutional stage
  window: int = 7
  mlp_ratio: float = 4.0
  expand_ratio: float = 4.0
  out_dim: int = 0  # 0: no downsampling
  stride: int = 2

  @nn.compact
  def __call__(self, x):
    for j in range(self.depth):
      if self.num_heads:
        x = TinyViTBlock(self.num_heads, self.window, self.mlp_ratio, name=f"blocks_{j}")(x)
      else:
        x = MBConv(self.expand_ratio, name=f"blocks_{j}")(x)
    if self.out_dim:
      x = PatchMerging(self.out_dim, self.stride, name="downsample")(x)
    return x


class PatchEmbed(nn.Module):
  """Two 3x3 stride-2 Conv2dBN with a GELU between: (B, H, W, 3) -> (B, H/4, W/4, width)."""
  width: int

  @nn.compact
  def __call__(self, x):
    x = gelu(Conv2dBN(self.width // 2, 3, 2, name="seq_0")(x))
    return Conv2dBN(self.width, 3, 2, name="seq_2")(x)  # seq_1 is the GELU


class TinyViT(nn.Module):
  """MobileSAM's image encoder: (B, H, W, 3) normalised, H = W = 1024 -> (B, H/16, W/16, 256)."""
  config: TinyViTConfig = TinyViTConfig()

  def setup(self):
    c = self.config
    dims, last = c.embed_dims, len(c.depths) - 1
    self.patch_embed = PatchEmbed(dims[0])
    # Every stage but the last ends in a merging; MobileSAM keeps the last merging at stride
    # 1 so the grid stays 64x64 (1024 / 16) for SAM's decoder.
    self.layers = [
        Stage(depth, c.num_heads[i] if i else 0, c.window_sizes[i], c.mlp_ratio,
              c.mbconv_expand_ratio, dims[i + 1] if i < last else 0,
              1 if i == last - 1 else 2)
        for i, depth in enumerate(c.depths)]
    self.norm_head = nn.LayerNorm(epsilon=LN_EPS)
    self.head = nn.Dense(c.num_classes)
    self.neck = make_neck(c.out_channels, 1e-6)

  def __call__(self, images):
    x = apply_sequential(self.layers, self.patch_embed(images))
    if self.is_initializing():  # the release's unused classifier: parameters only
      self.head(self.norm_head(x[:, 0, 0]))
    return apply_sequential(self.neck, x)
