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
the same as not having them (attention is permutation-invariant over its keys). EfficientSAM's
padding tokens do take part; a float `token_mask` counts one token as several identical ones
(efficient_sam.EfficientSam.prompt_tokens).

How it is computed (the same function as the releases, rearranged for speed; equal to float32
rounding). The decoder runs once per query against that query's own copy of the h*w image
tokens, so per-query work over the image is what costs (docs/performance.md):
- Layer 0 sees the same image for every query (EfficientSAM has no dense prompt; SAM's is the
  constant no-mask vector unless a mask is given). Its image-side projections (keys and values
  of the token-to-image attention, queries of the image-to-token attention) are computed once
  per image (`MaskDecoder.image_context`), not once per query.
- Attention between a few tokens and the image folds the image-side projection into the
  token side: token-to-image logits are (q W_k^T) . x (the key bias cancels in the softmax)
  and its output is W_v^T (sum_n p_n x_n) + b_v; image-to-token logits are x . (W_q k) and its
  output sum_t p_t (v_t W_o) + b_o. No (queries, h*w, width) projection is materialised.
- The transposed-conv upscaling keeps the sub-pixel layout (h, w, 2, 2, 2, 2, C): GroupNorm /
  LayerNorm / GELU do not care about pixel order, and only the final (few-channel) mask
  logits are interleaved into (4h, 4w).
- `dtype` is the compute dtype of the matrix products over image tokens and of the Linear
  layers (float32 or bfloat16, precision.py); parameters and activations stay float32, and
  the small products that fold a weight into a few tokens are float32 (XLA's CPU runtime has no
  bf16 kernel for some of their layouts, and they cost nothing).

Token layouts are (batch, queries, tokens, channels); image tensors are NHWC.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from efficientsam_jax.models import activations, precision

_ACTIVATIONS = {
    "gelu": activations.gelu,  # torch nn.GELU: the exact (erf) form
    "relu": nn.relu,
}
F32 = jnp.float32
_ein = precision.einsum


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


def _softmax(logits, axis=-1):
  """float32 softmax; masked entries hold a large negative number, never -inf."""
  logits = logits.astype(F32)
  weights = jnp.exp(logits - jnp.max(logits, axis=axis, keepdims=True))
  return weights / jnp.sum(weights, axis=axis, keepdims=True)


def _mask_logits(logits, token_mask):
  """Logits over tokens for a softmax. token_mask: None, bool (False: a padding token that
  takes no part) or float, how many identical tokens each one stands for (0: none), which
  multiplies its softmax weight: its logit gains log(count)."""
  if token_mask is None:
    return logits
  if token_mask.dtype == jnp.bool_:
    return jnp.where(token_mask, logits, jnp.finfo(F32).min)
  count = token_mask.astype(F32)
  return jnp.where(count > 0, logits.astype(F32) + jnp.log(jnp.maximum(count, 1e-30)),
                   jnp.finfo(F32).min)


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
  dtype: Any = F32

  @nn.compact
  def __call__(self, x):
    act = activation_fn(self.activation)
    names = self.names or mlp_names("efficientsam", self.num_layers + 1)
    for i in range(self.num_layers):
      x = act(precision.Dense(self.hidden_dim, self.dtype, name=names[i])(x))
    return precision.Dense(self.output_dim, self.dtype, name=names[-1])(x)


class Projection(nn.Module):
  """A Linear layer (flax Dense names, layout and initialisers: kernel (in, out), bias (out,))
  whose weights the attention may also read directly, to fold them into another product."""
  in_features: int
  features: int
  dtype: Any = F32

  def setup(self):
    self.kernel = self.param("kernel", nn.initializers.lecun_normal(),
                             (self.in_features, self.features))
    self.bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))

  def __call__(self, x):
    return precision.matmul(x, self.kernel, self.dtype) + self.bias


class Attention(nn.Module):
  """Multi-head attention whose q/k/v projections may shrink the width by `downsample_rate`.

  `__call__` is plain attention between short sequences (the prompt tokens). The other
  methods attend between the tokens and the h*w image tokens without projecting the image
  per query (see the module docstring); "shared" variants take the image-side projections
  computed once per image (`image_keys_values`, `image_queries`).
  """
  embedding_dim: int
  num_heads: int
  downsample_rate: int = 1
  dtype: Any = F32

  def setup(self):
    c, i = self.embedding_dim, self.embedding_dim // self.downsample_rate
    self.q_proj = Projection(c, i, self.dtype)
    self.k_proj = Projection(c, i, self.dtype)
    self.v_proj = Projection(c, i, self.dtype)
    self.out_proj = Projection(i, c, self.dtype)

  @property
  def head_dim(self) -> int:
    return self.embedding_dim // self.downsample_rate // self.num_heads

  @property
  def scale(self) -> float:
    return self.head_dim**-0.5

  def _heads(self, x):  # (..., internal) -> (..., heads, head_dim)
    return x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))

  def _kernel(self, proj):  # an input projection's kernel as (C, heads, head_dim)
    return self._heads(proj.kernel)

  def _out(self, heads_out):  # (..., heads, head_dim) -> out_proj -> (..., C)
    return self.out_proj(heads_out.reshape(heads_out.shape[:-2] + (-1,)))

  def __call__(self, q, k, v, key_mask=None):
    """q (..., Tq, C), k and v (..., Tk, C), key_mask None or (..., Tk) bool (False = ignore
    that key) -> (..., Tq, C)."""
    qh = self._heads(self.q_proj(q)) * self.scale
    kh, vh = self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
    logits = _ein("...qhd,...khd->...hqk", qh, kh, dtype=self.dtype)
    mask = None if key_mask is None else key_mask[..., None, None, :]
    p = _softmax(_mask_logits(logits, mask))
    return self._out(_ein("...hqk,...khd->...qhd", p, vh, dtype=self.dtype))

  # --- image-side projections, once per image -------------------------------------------
  def image_keys_values(self, image, image_pe):
    """Keys and values of a token-to-image attention over a query-independent image.

    image (B, N, C), image_pe (N, C) -> k, v (B, heads, N, head_dim)."""
    heads_first = lambda x: self._heads(x).transpose(0, 2, 1, 3).astype(self.dtype)
    return heads_first(self.k_proj(image + image_pe)), heads_first(self.v_proj(image))

  def image_queries(self, image, image_pe):
    """Scaled queries of an image-to-token attention: (B, N, C) -> (B, heads, N, head_dim)."""
    q = self._heads(self.q_proj(image + image_pe)) * self.scale
    return q.transpose(0, 2, 1, 3).astype(self.dtype)

  # --- tokens attend to the image --------------------------------------------------------
  def token_to_image_shared(self, tokens, k, v):
    """tokens (B, Q, T, C) attend to one image per batch entry, k and v (B, heads, N, d)
    from `image_keys_values` -> (B, Q, T, C)."""
    b, q, t, _ = tokens.shape
    h = self.num_heads
    qh = self._heads(self.q_proj(tokens)) * self.scale
    qh = qh.reshape(b, q * t, h, self.head_dim).transpose(0, 2, 1, 3)  # (B, heads, QT, d)
    p = _softmax(_ein("bhjd,bhnd->bhjn", qh, k, dtype=self.dtype))
    out = _ein("bhjn,bhnd->bhjd", p, v, dtype=self.dtype)
    return self._out(out.transpose(0, 2, 1, 3).reshape(b, q, t, h, self.head_dim))

  def token_to_image(self, tokens, image, image_pe):
    """tokens (B, Q, T, C) attend to their own image, (B, Q, N, C) (keys image + image_pe,
    values image) -> (B, Q, T, C)."""
    b, q, t, c = tokens.shape
    h = self.num_heads
    qh = self._heads(self.q_proj(tokens)) * self.scale
    # logits = (W_k q) . x per head; k_proj's bias adds a constant per (token, head): cancels.
    a = jnp.einsum("bqthd,chd->bqthc", qh, self._kernel(self.k_proj))
    p = _softmax(_ein("bqjc,bqnc->bqjn", a.reshape(b, q, t * h, c), image + image_pe,
                      dtype=self.dtype))
    pooled = _ein("bqjn,bqnc->bqjc", p, image, dtype=self.dtype)  # sum_n p_n x_n
    out = jnp.einsum("bqthc,chd->bqthd", pooled.reshape(b, q, t, h, c),
                     self._kernel(self.v_proj))
    return self._out(out + self._heads(self.v_proj.bias))  # sum_n p_n = 1

  # --- the image attends to the tokens ---------------------------------------------------
  def _image_output(self, logits, tokens_v, token_mask):
    """Logits (B, Q, heads, T, N) of each image token over the tokens, values from tokens_v
    (B, Q, T, C), token_mask None or (B, Q, T) -> (B, Q, N, C): sum over (head, token) of
    softmax * (v W_o). The token axis is not the minor one, so the softmax over it is
    elementwise work along the N image tokens (vectorises; T is 7-11)."""
    b, q, h, t, n = logits.shape
    mask = None if token_mask is None else token_mask[:, :, None, :, None]
    p = _softmax(_mask_logits(logits, mask), axis=3)
    vh = self._heads(self.v_proj(tokens_v))  # (B, Q, T, heads, d)
    w_o = self.out_proj.kernel.reshape(h, self.head_dim, -1)
    u = jnp.einsum("bqthd,hdc->bqhtc", vh, w_o).reshape(b, q, h * t, -1)
    out = _ein("bqjn,bqjc->bqnc", p.reshape(b, q, h * t, n), u, dtype=self.dtype)
    return out + self.out_proj.bias

  def image_to_token_shared(self, image_q, tokens_k, tokens_v, token_mask=None):
    """One image per batch entry (queries image_q (B, heads, N, d) from `image_queries`)
    attends to each query's tokens (keys tokens_k, values tokens_v, (B, Q, T, C));
    token_mask None or (B, Q, T) -> (B, Q, N, C)."""
    kh = self._heads(self.k_proj(tokens_k))  # (B, Q, T, heads, d)
    logits = _ein("bqthd,bhnd->bqhtn", kh, image_q, dtype=self.dtype)
    return self._image_output(logits, tokens_v, token_mask)

  def image_to_token(self, image, image_pe, tokens_k, tokens_v, token_mask=None):
    """Each query's own image (B, Q, N, C) (queries image + image_pe) attends to its tokens
    (keys tokens_k, values tokens_v, (B, Q, T, C)) -> (B, Q, N, C)."""
    b, q, t, c = tokens_k.shape
    h = self.num_heads
    kh = self._heads(self.k_proj(tokens_k)) * self.scale
    # logits = (W_q k) . x + b_q . k
    m = jnp.einsum("chd,bqthd->bqhtc", self._kernel(self.q_proj), kh)
    bias = jnp.einsum("hd,bqthd->bqht", self._heads(self.q_proj.bias), kh)
    logits = _ein("bqjc,bqnc->bqjn", m.reshape(b, q, h * t, c), image + image_pe,
                  dtype=self.dtype)
    logits = logits.reshape(b, q, h, t, -1) + bias[..., None]
    return self._image_output(logits, tokens_v, token_mask)


class TwoWayAttentionBlock(nn.Module):
  """Tokens attend to themselves and to the image; then the image attends to the tokens.

  queries (B, Q, T, C); keys: each query's image (B, Q, N, C), or with `context` (layer 0)
  the query-independent image (B, N, C); token_mask None or (B, Q, T) bool, False for
  padding tokens (never attended to). Returns updated (queries, keys (B, Q, N, C)).
  """
  embedding_dim: int = 256
  num_heads: int = 8
  mlp_dim: int = 2048
  downsample_rate: int = 2
  skip_first_layer_pe: bool = False  # True in layer 0
  layer0_self_attn_residual: bool = True
  add_pe_to_queries_in_place: bool = True
  activation: str = "gelu"
  naming: str = "efficientsam"
  ln_eps: float = 1e-5
  dtype: Any = F32

  def setup(self):
    c, h, dt = self.embedding_dim, self.num_heads, self.dtype
    self.self_attn = Attention(c, h, 1, dt)
    self.norm1 = nn.LayerNorm(epsilon=self.ln_eps)
    self.cross_attn_token_to_image = Attention(c, h, self.downsample_rate, dt)
    self.norm2 = nn.LayerNorm(epsilon=self.ln_eps)
    names = ("lin1", "lin2") if self.naming == "sam" else None  # SAM's MLPBlock
    self.mlp = MLPBlock(self.mlp_dim, c, 1, self.activation, names, dt)
    self.norm3 = nn.LayerNorm(epsilon=self.ln_eps)
    self.norm4 = nn.LayerNorm(epsilon=self.ln_eps)
    self.cross_attn_image_to_token = Attention(c, h, self.downsample_rate, dt)

  def image_context(self, image, image_pe) -> dict:
    """The query-independent image projections of this block (used for layer 0)."""
    k, v = self.cross_attn_token_to_image.image_keys_values(image, image_pe)
    return {"k0": k, "v0": v, "q0": self.cross_attn_image_to_token.image_queries(image,
                                                                                  image_pe)}

  def __call__(self, queries, keys, query_pe, key_pe, token_mask=None, context=None):
    if self.skip_first_layer_pe:
      attn_out = self.self_attn(queries, queries, queries, token_mask)
      queries = queries + attn_out if self.layer0_self_attn_residual else attn_out
    elif self.add_pe_to_queries_in_place:
      # EfficientSAM: the positional encoding stays in the queries (q, k, v and residual).
      queries = queries + query_pe
      queries = queries + self.self_attn(queries, queries, queries, token_mask)
    else:
      q = queries + query_pe
      queries = queries + self.self_attn(q, q, queries, token_mask)
    queries = self.norm1(queries)

    t2i = self.cross_attn_token_to_image
    if context is not None:
      attn_out = t2i.token_to_image_shared(queries + query_pe, context["k0"], context["v0"])
    else:
      attn_out = t2i.token_to_image(queries + query_pe, keys, key_pe)
    queries = self.norm2(queries + attn_out)
    queries = self.norm3(queries + self.mlp(queries))

    i2t = self.cross_attn_image_to_token
    if context is not None:
      attn_out = i2t.image_to_token_shared(context["q0"], queries + query_pe, queries,
                                           token_mask)
      keys = keys[:, None]
    else:
      attn_out = i2t.image_to_token(keys, key_pe, queries + query_pe, queries, token_mask)
    return queries, self.norm4(keys + attn_out)


class TwoWayTransformer(nn.Module):
  """`depth` two-way blocks, then a final token-to-image attention and LayerNorm.

  Called with a context from `image_context` (the image shared by the Q queries of each batch
  entry), tokens (B, Q, T, C) (also their positional encoding) and token_mask None or
  (B, Q, T) bool. Returns (tokens (B, Q, T, C), image (B, Q, N, C)).
  """
  embedding_dim: int = 256
  depth: int = 2
  num_heads: int = 8
  mlp_dim: int = 2048
  downsample_rate: int = 2
  layer0_self_attn_residual: bool = True
  add_pe_to_queries_in_place: bool = True
  activation: str = "gelu"
  naming: str = "efficientsam"
  ln_eps: float = 1e-5
  dtype: Any = F32
  remat: bool = False  # recompute each block in the backward pass

  def setup(self):
    block = nn.remat(TwoWayAttentionBlock) if self.remat else TwoWayAttentionBlock
    self.layers = [
        block(
            self.embedding_dim, self.num_heads, self.mlp_dim, self.downsample_rate,
            skip_first_layer_pe=(i == 0),
            layer0_self_attn_residual=self.layer0_self_attn_residual,
            add_pe_to_queries_in_place=self.add_pe_to_queries_in_place,
            activation=self.activation, naming=self.naming, ln_eps=self.ln_eps,
            dtype=self.dtype)
        for i in range(self.depth)]
    self.final_attn_token_to_image = Attention(self.embedding_dim, self.num_heads,
                                               self.downsample_rate, self.dtype)
    self.norm_final_attn = nn.LayerNorm(epsilon=self.ln_eps)

  def image_context(self, image, image_pe) -> dict:
    """image (B, N, C) shared by all queries of an image, image_pe (h, w, C)."""
    pe = image_pe.reshape(-1, image_pe.shape[-1]).astype(F32)
    image = image.astype(F32)
    return {"image": image, "image_pe": image_pe,
            **self.layers[0].image_context(image, pe)}

  def __call__(self, context, tokens, token_mask=None, outputs: tuple[int, ...] | None = None):
    """`outputs`: indices of the tokens to return (default all). The final attention treats
    every token on its own, so it runs for those only (the decoder needs the IoU token and the
    mask tokens it returns, not the prompt tokens)."""
    tokens = tokens.astype(F32)
    image_pe = context["image_pe"]
    pe = image_pe.reshape(-1, image_pe.shape[-1]).astype(F32)
    queries, keys = tokens, context["image"]
    for i, layer in enumerate(self.layers):
      queries, keys = layer(queries, keys, tokens, pe, token_mask, context if i == 0 else None)
    if outputs is not None:
      ids = jnp.asarray(outputs)
      queries, tokens = queries[:, :, ids], tokens[:, :, ids]
    queries = queries + self.final_attn_token_to_image.token_to_image(queries + tokens, keys,
                                                                      pe)
    return self.norm_final_attn(queries), keys


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
  naming: str = "efficientsam"
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
        activation=self.activation, naming=self.naming, dtype=dt, remat=self.remat)
    steps = []  # (conv, norm or None) per upscaling step
    for i, dim in enumerate(self.upscaling_dims):
      norm = self._upscale_norm() if i < len(self.upscaling_dims) - 1 else None
      steps.append((PatchConvTranspose(dim, dtype=dt), norm))
    # Names of the releases: EfficientSAM nests a Sequential per step
    # (final_output_upscaling_layers_i_0 / _i_1); SAM has one flat Sequential (ConvT, LN,
    # GELU, ConvT, GELU): output_upscaling_0, _1, then _3.
    if self.naming == "sam":
      layers = {}
      for i, (conv, norm) in enumerate(steps):
        layers[str(3 * i)] = conv
        if norm is not None:
          layers[str(3 * i + 1)] = norm
      self.output_upscaling = layers
    else:
      self.final_output_upscaling_layers = [[conv] + ([norm] if norm is not None else [])
                                            for conv, norm in steps]
    self.output_hypernetworks_mlps = [
        MLPBlock(c, self.upscaling_dims[-1], 2, self.activation, mlp_names(self.naming, 3),
                 dt) for _ in range(self.num_mask_tokens)]
    self.iou_prediction_head = MLPBlock(
        self.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth - 1,
        self.activation, mlp_names(self.naming, self.iou_head_depth), dt)

  def _upscale_norm(self):
    if self.upscale_norm == "group":
      return nn.GroupNorm(num_groups=1, epsilon=1e-5)
    if self.upscale_norm == "layer":
      return nn.LayerNorm(epsilon=1e-6)
    raise ValueError(f"unknown upscale_norm {self.upscale_norm!r}; use 'group' or 'layer'")

  def _upscale_step(self, i: int):
    if self.naming == "sam":
      return self.output_upscaling[str(3 * i)], self.output_upscaling.get(str(3 * i + 1))
    layers = self.final_output_upscaling_layers[i]
    return layers[0], (layers[1] if len(layers) > 1 else None)

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
    for i in range(len(self.upscaling_dims)):
      conv, norm = self._upscale_step(i)
      x = conv(x)
      if norm is not None:  # all but the last are normalised
        x = norm(x)
      x = activations.gelu(x)  # GELU after every upscaling in both releases
    return x
