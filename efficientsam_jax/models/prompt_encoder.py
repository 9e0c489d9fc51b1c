"""Prompt encoders: random Fourier features of points plus a learned vector per label.

`PromptEncoder` is EfficientSAM's; `SamPromptEncoder` is Segment Anything's (and MobileSAM's).
They share `FourierFeatures`. SAM's is a second class rather than options on the first because
the logic differs in shape, not in detail: its label table is one `point_embeddings` list
indexed by label (label 0 adds a vector), padding tokens are zeroed and get
`not_a_point_embed`, its token count depends on the prompt, and it also encodes an optional
mask input into a dense embedding.

Parameter names mirror the PyTorch release (`pe_layer.positional_encoding_gaussian_matrix`,
`invalid_points`, `point_embeddings`, `bbox_top_left_embeddings`,
`bbox_bottom_right_embeddings`).

The Fourier matrix is a torch buffer, not a parameter. Here it lives in `params` so that a
checkpoint converts key for key, but it is never trained: its use is wrapped in
`stop_gradient` (its gradient is exactly zero) and trainers exclude it from the optimiser by
name, see `efficient_sam.NON_TRAINABLE`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax.models import activations

# Point labels of the release. 0 (a negative click) adds no learned vector.
LABEL_PADDING = -1
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3
LABEL_NEGATIVE = 0


class FourierFeatures(nn.Module):
  """Random Fourier features of 2-D positions in [0, 1]: (..., 2) -> (..., 2 * num_feats).

  u -> c = 2u - 1 -> z = 2 pi (c @ G) -> [sin z, cos z], G the stored (2, num_feats) matrix.
  """
  num_feats: int = 128

  @nn.compact
  def __call__(self, unit_coords):
    matrix = self.param("positional_encoding_gaussian_matrix", nn.initializers.normal(1.0),
                        (2, self.num_feats))
    matrix = jax.lax.stop_gradient(matrix)  # a buffer in the release: never trained
    c = 2.0 * unit_coords.astype(jnp.float32) - 1.0
    # HIGHEST: the phases reach ~100 rad, so a bf16 matmul would scramble sin/cos.
    z = jnp.matmul(c, matrix, precision="highest") * np.float32(2 * np.pi)
    return jnp.concatenate([jnp.sin(z), jnp.cos(z)], axis=-1)

  def dense(self, height: int, width: int):
    """Features of every cell centre of a height x width grid: (height, width, 2 * num_feats)."""
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
    grid = jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)  # (h, w, [x, y])
    return self(grid)


class PromptEncoder(nn.Module):
  """Embeds point prompts (boxes are two points labelled 2 and 3).

  Attributes:
    embed_dim: token width (256).
    input_size: the encoder's square input size in pixels (1024 released); points arrive
      already rescaled to it.
    embedding_size: side of the image embedding grid (input_size / 16).
  """
  embed_dim: int = 256
  input_size: int = 1024
  embedding_size: int = 64

  def setup(self):
    self.pe_layer = FourierFeatures(self.embed_dim // 2)
    init = nn.initializers.normal(1.0)
    self.invalid_points = nn.Embed(1, self.embed_dim, embedding_init=init)
    self.point_embeddings = nn.Embed(1, self.embed_dim, embedding_init=init)
    self.bbox_top_left_embeddings = nn.Embed(1, self.embed_dim, embedding_init=init)
    self.bbox_bottom_right_embeddings = nn.Embed(1, self.embed_dim, embedding_init=init)

  def __call__(self, points, labels):
    """Sparse prompt tokens.

    Args:
      points: (..., N, 2) float (x, y) in input_size pixels; padding points are (-1, -1).
      labels: (..., N) int or float labels in {-1, 0, 1, 2, 3}.
    Returns:
      (..., N, embed_dim) float32. Padding points keep their Fourier features (unlike SAM).
    """
    # +0.5: a pixel index refers to the centre of that pixel.
    features = self.pe_layer((points.astype(jnp.float32) + 0.5) / self.input_size)
    labels = labels[..., None]
    for label, table in ((LABEL_PADDING, self.invalid_points),
                         (LABEL_POSITIVE, self.point_embeddings),
                         (LABEL_BOX_TOP_LEFT, self.bbox_top_left_embeddings),
                         (LABEL_BOX_BOTTOM_RIGHT, self.bbox_bottom_right_embeddings)):
      features = features + jnp.where(labels == label, table.embedding[0], 0.0)
    return features

  def dense_pe(self):
    """Positional encoding of the image embedding grid: (embedding_size, embedding_size, C)."""
    return self.pe_layer.dense(self.embedding_size, self.embedding_size)


class SamPromptEncoder(nn.Module):
  """Segment Anything's prompt encoder (MobileSAM uses it unchanged).

  Parameter names mirror segment_anything: `pe_layer.positional_encoding_gaussian_matrix`,
  `point_embeddings_0..3` (negative, positive, box top-left, box bottom-right),
  `not_a_point_embed`, `mask_downscaling_0/1/3/4/6`, `no_mask_embed`.

  Prompts arrive padded to a common length N; SAM itself builds a variable number of tokens:
  the points, then either the two box corners or, when there is no box, one "not a point"
  token (zero features + not_a_point_embed). Here label -1 marks padding that is not a token
  (`token_mask` False); the not-a-point token is an extra last token, present only for
  queries with points and no box.
  """
  embed_dim: int = 256
  input_size: int = 1024
  embedding_size: int = 64
  mask_in_chans: int = 16

  def setup(self):
    self.pe_layer = FourierFeatures(self.embed_dim // 2)
    init = nn.initializers.normal(1.0)
    self.point_embeddings = [nn.Embed(1, self.embed_dim, embedding_init=init) for _ in range(4)]
    self.not_a_point_embed = nn.Embed(1, self.embed_dim, embedding_init=init)
    self.no_mask_embed = nn.Embed(1, self.embed_dim, embedding_init=init)
    c = self.mask_in_chans
    # torch Sequential indices 0..6; 2 and 5 are GELUs (no parameters).
    self.mask_downscaling_0 = nn.Conv(c // 4, (2, 2), strides=(2, 2), padding="VALID")
    self.mask_downscaling_1 = nn.LayerNorm(epsilon=1e-6)
    self.mask_downscaling_3 = nn.Conv(c, (2, 2), strides=(2, 2), padding="VALID")
    self.mask_downscaling_4 = nn.LayerNorm(epsilon=1e-6)
    self.mask_downscaling_6 = nn.Conv(self.embed_dim, (1, 1))

  def __call__(self, points, labels):
    """Sparse prompt tokens and which of them exist.

    Args:
      points: (..., N, 2) float (x, y) in input_size pixels.
      labels: (..., N) in {-1 padding, 0 negative, 1 positive, 2/3 box corners}; box corners
        are expected after the points, as SAM orders them.
    Returns:
      tokens (..., N + 1, embed_dim) float32 and token_mask (..., N + 1) bool.
    """
    labels = labels.astype(jnp.int32)
    features = self.pe_layer((points.astype(jnp.float32) + 0.5) / self.input_size)
    for label, table in enumerate(self.point_embeddings):
      features = features + jnp.where(labels[..., None] == label, table.embedding[0], 0.0)
    present = labels >= 0
    has_box = jnp.any(labels >= LABEL_BOX_TOP_LEFT, axis=-1, keepdims=True)
    has_point = jnp.any((labels == LABEL_NEGATIVE) | (labels == LABEL_POSITIVE), axis=-1,
                        keepdims=True)
    # SAM zeroes the padding point's Fourier features, so only not_a_point_embed remains.
    not_a_point = jnp.broadcast_to(self.not_a_point_embed.embedding[0],
                                   features.shape[:-2] + (1, self.embed_dim))
    tokens = jnp.concatenate([features, not_a_point], axis=-2)
    token_mask = jnp.concatenate([present, has_point & ~has_box], axis=-1)
    return tokens, token_mask

  def embed_masks(self, masks, has_mask):
    """Dense prompt embeddings.

    Args:
      masks: (..., 4g, 4g) mask logits (g = embedding_size), or None for no mask at all.
      has_mask: (...) bool, which queries use their mask (the others get no_mask_embed).
    Returns:
      (..., g, g, embed_dim).
    """
    g = self.embedding_size
    no_mask = self.no_mask_embed.embedding[0]
    if masks is None:
      return jnp.broadcast_to(no_mask, (g, g, self.embed_dim))
    lead = masks.shape[:-2]
    x = masks.reshape((-1,) + masks.shape[-2:] + (1,)).astype(jnp.float32)
    x = activations.gelu(self.mask_downscaling_1(self.mask_downscaling_0(x)))
    x = activations.gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
    x = self.mask_downscaling_6(x).reshape(lead + (g, g, self.embed_dim))
    return jnp.where(has_mask[..., None, None, None], x, no_mask)

  def dense_pe(self):
    """Positional encoding of the image embedding grid: (embedding_size, embedding_size, C)."""
    return self.pe_layer.dense(self.embedding_size, self.embedding_size)
