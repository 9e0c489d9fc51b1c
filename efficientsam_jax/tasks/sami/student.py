"""The SAMI student: a ViT encoder on the kept tokens, a decoder that reconstructs every token,
and a linear head to the teacher's feature width.

The encoder is `vit.ImageEncoder` under the name `image_encoder`, the same name and layout the
EfficientSAM checkpoints use, so a pretrained encoder drops into EfficientSAM by copying one
subtree. Decoder names follow MAE (`decoder_embed`, `mask_token`, `decoder_blocks_N`,
`decoder_norm`, `decoder_pred`).

Two decoders:
- "cross" (SAMI): queries are the masked positions only (mask token + position); keys and
  values are the projected kept tokens together with the current masked-token features.
  After the blocks the masked outputs and the projected kept tokens are merged in token order.
- "all" (MAE, ablation): self-attention blocks over the full sequence.

`EncoderStudent` is the third option, decoder kind "none": MobileSAM's decoupled distillation.
No masking and no decoder; the student's own encoder and neck (a ViT as EfficientSAM's, or
MobileSAM's TinyViT) produce the embedding that is compared with the teacher's directly, so
the trained `image_encoder` subtree is, key for key, an EfficientSAM or MobileSAM encoder.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from efficientsam_jax.tasks.sami import masking
from efficientsam_jax.models import attention, precision, tiny_vit, vit

DECODER_KINDS = ("cross", "all")
NO_DECODER = "none"  # decoupled distillation: EncoderStudent
DECODER_LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  kind: str = "cross"
  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_ratio: float = 4.0


class CrossAttention(nn.Module):
  """Queries (B, M, E) attend to context (B, K, E): returns (B, M, E)."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, context):
    b, m, e = queries.shape
    head_dim = e // self.num_heads
    q = precision.Dense(e, self.dtype, name="q")(queries).reshape(b, m, self.num_heads,
                                                                   head_dim)
    kv = precision.Dense(2 * e, self.dtype, name="kv")(context)
    kv = kv.reshape(b, context.shape[1], 2, self.num_heads, head_dim)
    out = attention.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1], head_dim**-0.5,
                                          query_chunk=None, dtype=self.dtype)
    return precision.Dense(e, self.dtype, name="proj")(out.reshape(b, m, e))


class CrossAttentionBlock(nn.Module):
  """Pre-norm block: masked queries (B, M, E) attend to [kept (B, K, E); queries]."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, kept):
    norm = lambda name: nn.LayerNorm(epsilon=DECODER_LN_EPS, name=name)
    q = norm("norm1")(queries)
    context = jnp.concatenate([norm("norm_context")(kept), q], axis=1)
    queries = queries + CrossAttention(self.num_heads, self.dtype, name="attn")(q, context)
    hidden = int(queries.shape[-1] * self.mlp_ratio)
    return queries + vit.Mlp(hidden, self.dtype, name="mlp")(norm("norm2")(queries))


class SAMI(nn.Module):
  """images (B, S, S, 3) + masking ids -> predicted teacher features (B, N, target_dim)."""
  encoder: vit.ViTConfig
  decoder: DecoderConfig
  target_dim: int = 256
  dtype: jnp.dtype = jnp.float32
  remat: bool = False  # recompute encoder and decoder blocks in the backward pass

  def setup(self):
    if self.decoder.kind not in DECODER_KINDS:
      raise ValueError(f"unknown decoder kind {self.decoder.kind!r}; known: {DECODER_KINDS}")
    d = self.decoder
    self.image_encoder = vit.ImageEncoder(dataclasses.replace(self.encoder, neck_channels=0),
                                          self.dtype, remat=self.remat)
    self.decoder_embed = precision.Dense(d.width, self.dtype)
    self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, d.width))
    if d.kind == "cross":
      block = nn.remat(CrossAttentionBlock) if self.remat else CrossAttentionBlock
      self.decoder_blocks = [block(d.num_heads, d.mlp_ratio, self.dtype)
                             for _ in range(d.depth)]
    else:
      block = nn.remat(vit.Block) if self.remat else vit.Block
      self.decoder_blocks = [block(d.num_heads, d.mlp_ratio, DECODER_LN_EPS, self.dtype)
                             for _ in range(d.depth)]
    self.decoder_norm = nn.LayerNorm(epsilon=DECODER_LN_EPS)
    self.decoder_pred = precision.Dense(self.target_dim, self.dtype)

  def __call__(self, images, ids_keep, ids_masked, ids_restore):
    """
    Args:
      images: (B, S, S, 3) normalised.
      ids_keep (B, K), ids_masked (B, M), ids_restore (B, N): from masking.random_masking.
    Returns: (B, N, target_dim) predictions in token (row-major grid) order.
    """
    tokens = self.image_encoder.embed(images)
    b, gh, gw, e = tokens.shape
    tokens = tokens.reshape(b, gh * gw, e)
    kept = self.image_encoder.run_blocks(masking.gather_tokens(tokens, ids_keep))

    # Fixed 2-D sin-cos positions for the decoder, as MAE (not learned).
    grid_pos = jnp.asarray(vit.sincos_pos_table(self.decoder.width, gh)[:, 1:])
    if gh != gw:
      raise ValueError(f"SAMI expects square images, got a {gh}x{gw} token grid")
    grid_pos = jnp.broadcast_to(grid_pos, (b,) + grid_pos.shape[1:])
    kept = self.decoder_embed(kept) + masking.gather_tokens(grid_pos, ids_keep)
    queries = self.mask_token + masking.gather_tokens(grid_pos, ids_masked)

    if self.decoder.kind == "cross":
      if queries.shape[1]:  # mask ratio 0 (plain distillation) has no queries
        for block in self.decoder_blocks:
          queries = block(queries, kept)
      merged = jnp.concatenate([kept, queries], axis=1)
      full = jnp.take_along_axis(merged, ids_restore[..., None], axis=1)
    else:
      merged = jnp.concatenate([kept, queries], axis=1)
      full = vit.apply_sequential(
          self.decoder_blocks, jnp.take_along_axis(merged, ids_restore[..., None], axis=1))
    return self.decoder_pred(self.decoder_norm(full))


class EncoderStudent(nn.Module):
  """images (B, S, S, 3) -> the student's embedding (B, N, C), N = (S/16)^2, token order.

  `encoder` is a ViTConfig with neck_channels = C (EfficientSAM's encoder) or a TinyViTConfig
  with out_channels = C (MobileSAM's). TinyViT computes in float32 whatever `dtype` and
  `remat` say.
  """
  encoder: vit.ViTConfig | tiny_vit.TinyViTConfig
  dtype: jnp.dtype = jnp.float32
  remat: bool = False  # ViT only: recompute each block in the backward pass

  def setup(self):
    if isinstance(self.encoder, tiny_vit.TinyViTConfig):
      self.image_encoder = tiny_vit.TinyViT(self.encoder)
    else:
      self.image_encoder = vit.ImageEncoder(self.encoder, self.dtype, remat=self.remat)

  def __call__(self, images):
    x = self.image_encoder(images)
    return x.reshape(x.shape[0], -1, x.shape[-1])
