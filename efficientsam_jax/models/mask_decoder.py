"""The mask decoder of EfficientSAM and SAM: output tokens through the two-way transformer
(two_way.py), then the mask upscaling, the hypernetwork MLPs and the IoU head.

Parameter names mirror the EfficientSAM release (`iou_token`, `mask_tokens`,
`final_output_upscaling_layers.N.M`, `output_hypernetworks_mlps.N.layers.M.0` / `.fc`,
`iou_prediction_head.fc`), flax spelling with `_N`; SAM's names (`output_upscaling.0/1/3`,
`layers.N`) are mapped to these at conversion (models/sam.py). The one semantic difference in
this part: `upscale_norm`, "group" = GroupNorm(1 group) in the upscaling (EfficientSAM) or
"layer" = channel LayerNorm (SAM). `SAM_OPTIONS` holds SAM's settings of this decoder and of
its transformer; both are checked against their PyTorch releases
(tests/test_efficientsam_golden.py, tests/test_sam_parity.py).

SAM also adds a dense prompt embedding (mask input, or the learned no-mask vector) to the
image embedding. The transposed-conv upscaling keeps the sub-pixel layout
(h, w, 2, 2, 2, 2, C): GroupNorm / LayerNorm / GELU do not care about pixel order, and only the
final (few-channel) mask logits are interleaved into (4h, 4w).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from efficientsam_jax.models import activations, precision
from efficientsam_jax.models.two_way import MLPBlock, TwoWayTransformer

F32 = jnp.float32
_ein = precision.einsum

# MaskDecoder keyword arguments that build SAM's (and MobileSAM's) decoder.
SAM_OPTIONS = dict(layer0_self_attn_residual=False, add_pe_to_queries_in_place=False,
                   activation="relu", upscale_norm="layer")


class PatchConvTranspose(nn.Module):
  """torch ConvTranspose2d with kernel_size == stride, in sub-pixel layout:
  (..., Cin) -> (..., k, k, out).

  The patches do not overlap, so each input pixel writes one k x k block:
  out[..., a, b, :] = x[...] @ kernel[a, b] + bias is output pixel (k*i + a, k*j + b) of input
  pixel (i, j). The kernel is (k, k, Cin, out), the torch (Cin, out, k, k) tensor transposed
  (weights.py's `conv_transpose` layout), with no spatial flip: flax's ConvTranspose would
  need one. `interleave_subpixels` puts the pixels in image order.
  """
  features: int
  kernel_size: int = 2
  dtype: Any = F32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    flat = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * self.features)
    y = precision.matmul(x, flat, self.dtype).reshape(x.shape[:-1] + (k, k, self.features))
    return y + bias


def interleave_subpixels(x, steps: int):
  """(B, h, w, [k, k] * steps) -> (B, h * k^steps, w * k^steps): sub-pixel layout from
  `steps` PatchConvTransposes (applied to a channel-free map) in image order."""
  b, h, w = x.shape[:3]
  k = x.shape[3]
  x = x.reshape((b, h, w) + (k, k) * steps)
  rows = [3 + 2 * s for s in range(steps)]
  cols = [4 + 2 * s for s in range(steps)]
  x = x.transpose([0, 1] + rows + [2] + cols)
  return x.reshape(b, h * k**steps, w * k**steps)


class MaskDecoder(nn.Module):
  """Predicts 256x256 mask logits and IoU scores from an image embedding and prompt tokens.

  Attributes:
    transformer_dim: token width (256).
    num_multimask_outputs: 3; one more mask token is the single-mask output.
    upscaling_dims: channels after each 2x transposed-conv upscaling (64, 32).
    iou_head_depth: layers of the IoU MLP counting its `fc` (3).
    dtype: compute dtype (parameters stay float32; outputs are float32).
    remat: recompute the transformer blocks and the mask upscaling in the backward pass
      instead of storing their per-query activations (training memory; same values).

  Two ways in: `__call__` (everything), or `image_context` once per image and `decode` for
  any number of query batches against it (the Predictor does that).
  """
  transformer_dim: int = 256
  num_multimask_outputs: int = 3
  depth: int = 2
  num_heads: int = 8
  mlp_dim: int = 2048
  upscaling_dims: tuple[int, ...] = (64, 32)
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256
  layer0_self_attn_residual: bool = True
  add_pe_to_queries_in_place: bool = True
  activation: str = "gelu"
  upscale_norm: str = "group"
  dtype: Any = F32
  remat: bool = False

  @property
  def num_mask_tokens(self) -> int:
    return self.num_multimask_outputs + 1 if self.num_multimask_outputs > 1 else 1

  def setup(self):
    c, dt = self.transformer_dim, self.dtype
    embed_init = nn.initializers.normal(1.0)
    self.iou_token = nn.Embed(1, c, embedding_init=embed_init)
    self.mask_tokens = nn.Embed(self.num_mask_tokens, c, embedding_init=embed_init)
    self.transformer = TwoWayTransformer(
        c, self.depth, self.num_heads, self.mlp_dim,
        layer0_self_attn_residual=self.layer0_self_attn_residual,
        add_pe_to_queries_in_place=self.add_pe_to_queries_in_place,
        activation=self.activation, dtype=dt, remat=self.remat)
    # One [conv, norm] (the last: [conv]) per 2x upscaling step, as the EfficientSAM release
    # nests them: final_output_upscaling_layers_i_0 / _i_1.
    self.final_output_upscaling_layers = [
        [PatchConvTranspose(dim, dtype=dt)]
        + ([self._upscale_norm()] if i < len(self.upscaling_dims) - 1 else [])
        for i, dim in enumerate(self.upscaling_dims)]
    self.output_hypernetworks_mlps = [
        MLPBlock(c, self.upscaling_dims[-1], 2, self.activation, dt)
        for _ in range(self.num_mask_tokens)]
    self.iou_prediction_head = MLPBlock(
        self.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth - 1,
        self.activation, dt)

  def _upscale_norm(self):
    if self.upscale_norm == "group":
      return nn.GroupNorm(num_groups=1, epsilon=1e-5)
    if self.upscale_norm == "layer":
      return nn.LayerNorm(epsilon=1e-6)
    raise ValueError(f"unknown upscale_norm {self.upscale_norm!r}; use 'group' or 'layer'")

  def image_context(self, image_embeddings, image_pe, dense_prompt_embeddings=None) -> dict:
    """What every query against these images shares: (B, h, w, C) embeddings, (h, w, C)
    positional encoding and an optional query-independent dense prompt (h, w, C) -> a dict
    of arrays for `decode`."""
    b, h, w, c = image_embeddings.shape
    image = image_embeddings.reshape(b, h * w, c).astype(F32)
    if dense_prompt_embeddings is not None:
      image = image + dense_prompt_embeddings.reshape(1, h * w, c)
    return self.transformer.image_context(image, image_pe)

  def __call__(self, image_embeddings, image_pe, sparse_prompt_embeddings,
               multimask_output: bool = True, dense_prompt_embeddings=None, token_mask=None):
    """Decodes every query against its image.

    Args:
      image_embeddings: (B, h, w, C) one embedding per image.
      image_pe: (h, w, C) dense positional encoding of the grid.
      sparse_prompt_embeddings: (B, Q, N, C) prompt tokens of Q queries per image.
      multimask_output: masks 1..3 (True) or mask 0 (False).
      dense_prompt_embeddings: None (EfficientSAM), (h, w, C) the same for every query (SAM's
        no-mask embedding) or (B, Q, h, w, C) per query (a mask input), added to the image
        embedding (SAM).
      token_mask: None or (B, Q, N): bool, False marks padding prompt tokens; or float, how
        many identical prompt tokens each stands for (`_mask_logits`).
    Returns:
      masks (B, Q, M, 4h, 4w) float32 logits and iou (B, Q, M), M = 3 or 1.
    """
    dense = dense_prompt_embeddings
    if dense is None or dense.ndim == 3:
      context = self.image_context(image_embeddings, image_pe, dense)
      return self.decode(context, sparse_prompt_embeddings, multimask_output, token_mask)
    # A dense prompt per query (SAM's mask input): every query has its own image, decoded as
    # B * Q images of one query each.
    b, h, w, c = image_embeddings.shape
    q, n = sparse_prompt_embeddings.shape[1:3]
    image = (image_embeddings.reshape(b, 1, h * w, c).astype(F32)
             + dense.reshape(b, q, h * w, c)).reshape(b * q, h * w, c)
    context = self.transformer.image_context(image, image_pe)
    masks, iou = self.decode(context, sparse_prompt_embeddings.reshape(b * q, 1, n, c),
                             multimask_output,
                             None if token_mask is None else token_mask.reshape(b * q, 1, n))
    return masks.reshape((b, q) + masks.shape[2:]), iou.reshape(b, q, -1)

  def decode(self, context: dict, sparse_prompt_embeddings, multimask_output: bool = True,
             token_mask=None):
    """Queries (B, Q, N, C) against a context from `image_context` -> as `__call__`."""
    image, hyper, iou = self.decode_tokens(context, sparse_prompt_embeddings,
                                           multimask_output, token_mask)
    h, w = context["image_pe"].shape[:2]
    mask_logits = lambda mdl, image, hyper: mdl.mask_logits(image, hyper, (h, w))
    if self.remat:  # recomputed in the backward pass: its per-query tensors are the largest
      mask_logits = nn.remat(mask_logits)
    return mask_logits(self, image, hyper), iou

  def decode_tokens(self, context: dict, sparse_prompt_embeddings,
                    multimask_output: bool = True, token_mask=None):
    """The two-way transformer and the heads on its tokens, without the mask upscaling.

    Returns each query's image tokens (B, Q, N, C), the hypernetwork outputs (B, Q, M, C')
    of the returned masks and their IoU predictions (B, Q, M); `mask_logits` finishes.
    """
    b, q, n, c = sparse_prompt_embeddings.shape
    output_tokens = jnp.concatenate([self.iou_token.embedding, self.mask_tokens.embedding])
    tokens = jnp.concatenate([
        jnp.broadcast_to(output_tokens, (b, q) + output_tokens.shape),
        sparse_prompt_embeddings], axis=2)
    if token_mask is not None:  # the iou and mask tokens always take part, once
      dtype = bool if token_mask.dtype == jnp.bool_ else F32
      token_mask = jnp.concatenate([jnp.ones((b, q, output_tokens.shape[0]), dtype),
                                    token_mask.astype(dtype)], axis=2)
    multi = multimask_output and self.num_multimask_outputs > 1
    keep = range(1, self.num_mask_tokens) if multi else range(1)
    # Only the mask tokens that are returned are decoded (all of them while initialising, so
    # that every parameter exists): the IoU token and those leave the transformer.
    hyper_ids = range(self.num_mask_tokens) if self.is_initializing() else keep
    hs, image = self.transformer(context, tokens, token_mask,
                                 outputs=(0,) + tuple(1 + i for i in hyper_ids))
    hyper = jnp.stack([self.output_hypernetworks_mlps[i](hs[:, :, 1 + j])
                       for j, i in enumerate(hyper_ids)], axis=2)  # (B, Q, M, C')
    if self.is_initializing():
      hyper = hyper[:, :, keep.start:keep.stop]
    iou = self.iou_prediction_head(hs[:, :, 0])[:, :, keep.start:keep.stop]
    return image, hyper, iou

  def mask_logits(self, image, hyper, grid_hw: tuple[int, int]):
    """Each query's image tokens (B, Q, h*w, C) upscaled and projected on its hypernetwork
    outputs (B, Q, M, C') -> mask logits (B, Q, M, 4h, 4w) float32."""
    b, q, _, c = image.shape
    h, w = grid_hw
    upscaled = self._upscale(image.reshape(b * q, h, w, c))  # (BQ, h, w, [2, 2] * steps, C')
    # (BQ, pixels, C') @ (BQ, C', M): the few mask channels are the minor axis of the result,
    # so only those (not the C' upscaled channels) are moved into image order.
    masks = _ein("n...c,nmc->n...m", upscaled, hyper.reshape(b * q, -1, hyper.shape[-1]),
                 dtype=self.dtype)  # (BQ, h, w, [2, 2] * steps, M)
    m = masks.shape[-1]
    masks = jnp.moveaxis(masks, -1, 1)
    masks = interleave_subpixels(masks.reshape((b * q * m,) + masks.shape[2:]),
                                 len(self.upscaling_dims))
    return masks.reshape((b, q, m) + masks.shape[1:])

  def _upscale(self, x):
    """(BQ, h, w, C) -> (BQ, h, w, [2, 2] * steps, upscaling_dims[-1]) in sub-pixel layout."""
    for layers in self.final_output_upscaling_layers:
      for layer in layers:  # the conv, then (all but the last step) the norm
        x = layer(x)
      x = activations.gelu(x)  # GELU after every upscaling in both releases
    return x
