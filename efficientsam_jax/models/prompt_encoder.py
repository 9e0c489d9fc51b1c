"""EfficientSAM's prompt encoder: random Fourier features of points plus a learned vector per label.

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

# Point labels of the release. 0 (a negative click) adds no learned vector.
LABEL_PADDING = -1
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


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
