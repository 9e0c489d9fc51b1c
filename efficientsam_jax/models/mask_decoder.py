"""The two-way transformer mask decoder of EfficientSAM (SAM's decoder with a few changes).

Parameter names mirror the PyTorch release (`transformer.layers.N.self_attn.q_proj`,
`iou_token`, `mask_tokens`, `final_output_upscaling_layers.N.M`,
`output_hypernetworks_mlps.N.layers.M.0`, `iou_prediction_head.fc`), flax spelling with `_N`.

Where EfficientSAM's decoder differs from SAM's, the difference is an option whose default is
EfficientSAM's, so that SAM's decoder can be built from the same modules:
- `layer0_self_attn_residual`: layer 0's self-attention adds its input back (SAM: replaces it).
- `add_pe_to_queries_in_place`: in later layers the query positional encoding is added to the
  queries themselves before self-attention (SAM: only to q and k, residual without it).
- `activation`: the MLPs' activation, "gelu" (SAM: "relu").
- `upscale_norm`: "group" = GroupNorm(1 group) in the upscaling (SAM: "layer", channel LN).
- `naming`: "efficientsam" or "sam", the parameter names of each release (SAM: MLPs are
  `layers.0..n` / `lin1`, `lin2`; upscaling is `output_upscaling.0/1/3`). Names only.
`SAM_OPTIONS` holds SAM's settings; both are checked against their PyTorch releases
(tests/test_efficientsam_golden.py, tests/test_sam_parity.py).

SAM also adds a dense prompt embedding (mask input, or the learned no-mask vector) to the
image embedding, and its prompts have a variable number of tokens; here queries are padded to
one length and `token_mask` keeps the padding tokens out of every attention, which is exactly
the same as not having them (attention is permutation-invariant over its keys).

Token layouts are (batch, tokens, channels); image tensors are NHWC.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # torch nn.GELU is the exact (erf) form
    "relu": nn.relu,
}


# MaskDecoder keyword arguments that build SAM's (and MobileSAM's) decoder.
SAM_OPTIONS = dict(layer0_self_attn_residual=False, add_pe_to_queries_in_place=False,
                   activation="relu", upscale_norm="layer", naming="sam")


def mlp_names(naming: str, num_linear: int) -> tuple[str, ...]:
  """flax names of an MLP's Linear layers: EfficientSAM `layers_i_0` ... `fc`, SAM `layers_i`."""
  if naming == "efficientsam":
    return tuple(f"layers_{i}_0" for i in range(num_linear - 1)) + ("fc",)
  if naming == "sam":
    return tuple(f"layers_{i}" for i in range(num_linear))
  raise ValueError(f"unknown naming {naming!r}; use 'efficientsam' or 'sam'")


def activation_fn(name: str):
  if name not in _ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


class MLPBlock(nn.Module):
  """`num_layers` Linear+activation layers, then a last Linear: (..., in) -> (..., out).

  `names` are the flax names of the num_layers + 1 Linears; default EfficientSAM's
  `layers_i_0` / `fc` (the release's `layers.i.0`, a Sequential of Linear and activation).
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  activation: str = "gelu"
  names: tuple[str, ...] | None = None

  @nn.compact
  def __call__(self, x):
    act = activation_fn(self.activation)
    names = self.names or mlp_names("efficientsam", self.num_layers + 1)
    for i in range(self.num_layers):
      x = act(nn.Dense(self.hidden_dim, name=names[i])(x))
    return nn.Dense(self.output_dim, name=names[-1])(x)


class Attention(nn.Module):
  """Multi-head attention whose q/k/v projections may shrink the width by `downsample_rate`.

  q: (B, Tq, C), k and v: (B, Tk, C), key_mask: None or (B, Tk) bool (False = ignore that
  key) -> (B, Tq, C).
  """
  num_heads: int
  downsample_rate: int = 1

  @nn.compact
  def __call__(self, q, k, v, key_mask=None):
    b, _, width = q.shape
    internal = width // self.downsample_rate
    head_dim = internal // self.num_heads

    def project(x, name):  # (B, T, C) -> (B, T, heads, head_dim)
      return nn.Dense(internal, name=name)(x).reshape(b, -1, self.num_heads, head_dim)

    out = jax.nn.dot_product_attention(project(q, "q_proj"), project(k, "k_proj"),
                                       project(v, "v_proj"), scale=head_dim**-0.5,
                                       mask=None if key_mask is None else
                                       key_mask[:, None, None, :])
    return nn.Dense(width, name="out_proj")(out.reshape(b, -1, internal))


class TwoWayAttentionBlock(nn.Module):
  """Tokens attend to themselves and to the image; then the image attends to the tokens.

  token_mask: None or (B, Tq) bool, False for padding tokens (never attended to).
  Returns updated (queries (B, Tq, C), keys (B, Tk, C)).
  """
  num_heads: int = 8
  mlp_dim: int = 2048
  downsample_rate: int = 2
  skip_first_layer_pe: bool = False  # True in layer 0
  layer0_self_attn_residual: bool = True
  add_pe_to_queries_in_place: bool = True
  activation: str = "gelu"
  naming: str = "efficientsam"
  ln_eps: float = 1e-5

  @nn.compact
  def __call__(self, queries, keys, query_pe, key_pe, token_mask=None):
    norm = lambda name: nn.LayerNorm(epsilon=self.ln_eps, name=name)
    width = queries.shape[-1]
    self_attn = Attention(self.num_heads, name="self_attn")
    if self.skip_first_layer_pe:
      attn_out = self_attn(queries, queries, queries, token_mask)
      queries = queries + attn_out if self.layer0_self_attn_residual else attn_out
    elif self.add_pe_to_queries_in_place:
      # EfficientSAM: the positional encoding stays in the queries (q, k, v and residual).
      queries = queries + query_pe
      queries = queries + self_attn(queries, queries, queries, token_mask)
    else:
      q = queries + query_pe
      queries = queries + self_attn(q, q, queries, token_mask)
    queries = norm("norm1")(queries)

    attn = Attention(self.num_heads, self.downsample_rate, name="cross_attn_token_to_image")
    queries = norm("norm2")(queries + attn(queries + query_pe, keys + key_pe, keys))

    mlp_names = ("lin1", "lin2") if self.naming == "sam" else None  # SAM's MLPBlock
    mlp = MLPBlock(self.mlp_dim, width, 1, self.activation, mlp_names, name="mlp")
    queries = norm("norm3")(queries + mlp(queries))

    attn = Attention(self.num_heads, self.downsample_rate, name="cross_attn_image_to_token")
    keys = norm("norm4")(keys + attn(keys + key_pe, queries + query_pe, queries, token_mask))
    return queries, keys


class TwoWayTransformer(nn.Module):
  """`depth` two-way blocks, then a final token-to-image attention and LayerNorm.

  image: (B, h*w, C) tokens, image_pe: (B or 1, h*w, C), tokens: (B, T, C) (also their
  positional encoding), token_mask: None or (B, T) bool (False = padding token). Returns
  (tokens (B, T, C), image (B, h*w, C)).
  """
  depth: int = 2
  num_heads: int = 8
  mlp_dim: int = 2048
  downsample_rate: int = 2
  layer0_self_attn_residual: bool = True
  add_pe_to_queries_in_place: bool = True
  activation: str = "gelu"
  naming: str = "efficientsam"
  ln_eps: float = 1e-5

  @nn.compact
  def __call__(self, image, image_pe, tokens, token_mask=None):
    queries, keys = tokens, image
    for i in range(self.depth):
      queries, keys = TwoWayAttentionBlock(
          self.num_heads, self.mlp_dim, self.downsample_rate, skip_first_layer_pe=(i == 0),
          layer0_self_attn_residual=self.layer0_self_attn_residual,
          add_pe_to_queries_in_place=self.add_pe_to_queries_in_place,
          activation=self.activation, naming=self.naming, ln_eps=self.ln_eps,
          name=f"layers_{i}")(queries, keys, tokens, image_pe, token_mask)
    attn = Attention(self.num_heads, self.downsample_rate, name="final_attn_token_to_image")
    queries = queries + attn(queries + tokens, keys + image_pe, keys)
    return nn.LayerNorm(epsilon=self.ln_eps, name="norm_final_attn")(queries), keys


class PatchConvTranspose(nn.Module):
  """torch ConvTranspose2d with kernel_size == stride: (B, H, W, Cin) -> (B, kH, kW, out).

  The patches do not overlap, so each input pixel writes one k x k block:
  out[k*i + a, k*j + b] = x[i, j] @ kernel[a, b] + bias. The kernel is (k, k, Cin, out), the
  torch (Cin, out, k, k) tensor transposed (weights.py's `conv_transpose` layout), with no
  spatial flip: flax's ConvTranspose would need one.
  """
  features: int
  kernel_size: int = 2

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    b, h, w, cin = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    y = jnp.einsum("bhwc,xyco->bhxwyo", x, kernel)
    return y.reshape(b, h * k, w * k, self.features) + bias


class MaskDecoder(nn.Module):
  """Predicts 256x256 mask logits and IoU scores from an image embedding and prompt tokens.

  Attributes:
    transformer_dim: token width (256).
    num_multimask_outputs: 3; one more mask token is the single-mask output.
    upscaling_dims: channels after each 2x transposed-conv upscaling (64, 32).
    iou_head_depth: layers of the IoU MLP counting its `fc` (3).
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
  naming: str = "efficientsam"

  @property
  def num_mask_tokens(self) -> int:
    return self.num_multimask_outputs + 1 if self.num_multimask_outputs > 1 else 1

  @nn.compact
  def __call__(self, image_embeddings, image_pe, sparse_prompt_embeddings,
               multimask_output: bool = True, dense_prompt_embeddings=None, token_mask=None):
    """Decodes every query against its image.

    Args:
      image_embeddings: (B, h, w, C) one embedding per image.
      image_pe: (h, w, C) dense positional encoding of the grid.
      sparse_prompt_embeddings: (B, Q, N, C) prompt tokens of Q queries per image.
      multimask_output: masks 1..3 (True) or mask 0 (False).
      dense_prompt_embeddings: None (EfficientSAM) or (B, Q, h, w, C), added to the image
        embedding of each query (SAM's mask-input / no-mask embedding).
      token_mask: None or (B, Q, N) bool; False marks padding prompt tokens.
    Returns:
      masks (B, Q, M, 4h, 4w) logits and iou (B, Q, M), M = 3 or 1.
    """
    b, q, n, c = sparse_prompt_embeddings.shape
    _, h, w, _ = image_embeddings.shape
    embed_init = nn.initializers.normal(1.0)
    output_tokens = jnp.concatenate([
        nn.Embed(1, c, embedding_init=embed_init, name="iou_token").embedding,
        nn.Embed(self.num_mask_tokens, c, embedding_init=embed_init,
                 name="mask_tokens").embedding])
    tokens = jnp.concatenate([
        jnp.broadcast_to(output_tokens, (b * q,) + output_tokens.shape),
        sparse_prompt_embeddings.reshape(b * q, n, c)], axis=1)
    # The image embedding is repeated once per query: the image-to-token attention updates
    # it differently for each query.
    image = jnp.repeat(image_embeddings.reshape(b, 1, h * w, c), q, axis=1)
    if dense_prompt_embeddings is not None:
      image = image + dense_prompt_embeddings.reshape(b, q, h * w, c)
    if token_mask is not None:  # the iou and mask tokens always take part
      token_mask = jnp.concatenate([jnp.ones((b * q, output_tokens.shape[0]), bool),
                                    token_mask.reshape(b * q, n).astype(bool)], axis=1)
    hs, image = TwoWayTransformer(
        self.depth, self.num_heads, self.mlp_dim,
        layer0_self_attn_residual=self.layer0_self_attn_residual,
        add_pe_to_queries_in_place=self.add_pe_to_queries_in_place,
        activation=self.activation, naming=self.naming, name="transformer")(
            image.reshape(b * q, h * w, c), image_pe.reshape(1, h * w, c), tokens, token_mask)

    masks = jnp.einsum("bmc,bhwc->bmhw", self._hypernetworks(hs),
                       self._upscale(image.reshape(b * q, h, w, c)))
    iou = MLPBlock(self.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth - 1,
                   self.activation, mlp_names(self.naming, self.iou_head_depth),
                   name="iou_prediction_head")(hs[:, 0])
    keep = slice(1, None) if multimask_output and self.num_multimask_outputs > 1 else slice(0, 1)
    masks, iou = masks[:, keep], iou[:, keep]
    return masks.reshape((b, q) + masks.shape[1:]), iou.reshape(b, q, iou.shape[-1])

  def _upscale(self, x):
    """(BQ, h, w, C) -> (BQ, 4h, 4w, upscaling_dims[-1]); called inside __call__."""
    for i, dim in enumerate(self.upscaling_dims):
      conv_name, norm_name = self._upscale_names(i)
      x = PatchConvTranspose(dim, name=conv_name)(x)
      if i < len(self.upscaling_dims) - 1:  # all but the last are normalised
        x = self._upscale_norm(norm_name)(x)
      x = nn.gelu(x, approximate=False)  # GELU after every upscaling in both releases
    return x

  def _upscale_names(self, i: int) -> tuple[str, str]:
    """(conv, norm) names of upscaling step i. EfficientSAM nests a Sequential per step;
    SAM has one flat Sequential (ConvT, LN, GELU, ConvT, GELU): indices 0, 1, then 3."""
    if self.naming == "sam":
      return f"output_upscaling_{3 * i}", f"output_upscaling_{3 * i + 1}"
    return f"final_output_upscaling_layers_{i}_0", f"final_output_upscaling_layers_{i}_1"

  def _upscale_norm(self, name):
    if self.upscale_norm == "group":
      return nn.GroupNorm(num_groups=1, epsilon=1e-5, name=name)
    if self.upscale_norm == "layer":
      return nn.LayerNorm(epsilon=1e-6, name=name)
    raise ValueError(f"unknown upscale_norm {self.upscale_norm!r}; use 'group' or 'layer'")

  def _hypernetworks(self, hs):
    """(BQ, T, C) transformer tokens -> (BQ, num_mask_tokens, upscaling_dims[-1]): one MLP per
    mask token."""
    return jnp.stack([
        MLPBlock(self.transformer_dim, self.upscaling_dims[-1], 2, self.activation,
                 mlp_names(self.naming, 3), name=f"output_hypernetworks_mlps_{i}")(hs[:, 1 + i])
        for i in range(self.num_mask_tokens)], axis=1)
