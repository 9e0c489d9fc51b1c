"""The two-way transformer of SAM's mask decoder (EfficientSAM uses it with a few changes).

Parameter names mirror the EfficientSAM release (`transformer.layers.N.self_attn.q_proj`,
`mlp.layers.0.0` / `mlp.fc`), flax spelling with `_N`; SAM's names (`mlp.lin1` / `lin2`) are
mapped to these at conversion (models/sam.py's rename table), so the modules carry only real
semantic options. Where EfficientSAM's transformer differs from SAM's, the difference is an
option whose default is EfficientSAM's:
- `layer0_self_attn_residual`: layer 0's self-attention adds its input back (SAM: replaces it).
- `add_pe_to_queries_in_place`: in later layers the query positional encoding is added to the
  queries themselves before self-attention (SAM: only to q and k, residual without it).
- `activation`: the MLPs' activation, "gelu" (SAM: "relu").

SAM's prompts have a variable number of tokens; here queries are padded to one length and
`token_mask` keeps the padding tokens out of every attention, which is exactly the same as not
having them (attention is permutation-invariant over its keys). EfficientSAM's padding tokens
do take part; a float `token_mask` counts one token as several identical ones
(efficient_sam.EfficientSam.prompt_tokens).

How it is computed (the same function as the releases, rearranged for speed; equal to float32
rounding). The decoder runs once per query against that query's own copy of the h*w image
tokens, so per-query work over the image is what costs:
- Layer 0 sees the same image for every query (EfficientSAM has no dense prompt; SAM's is the
  constant no-mask vector unless a mask is given). Its image-side projections (keys and values
  of the token-to-image attention, queries of the image-to-token attention) are computed once
  per image (`TwoWayTransformer.image_context`), not once per query.
- Attention between a few tokens and the image folds the image-side projection into the
  token side: token-to-image logits are (q W_k^T) . x (the key bias cancels in the softmax)
  and its output is W_v^T (sum_n p_n x_n) + b_v; image-to-token logits are x . (W_q k) and its
  output sum_t p_t (v_t W_o) + b_o. No (queries, h*w, width) projection is materialised.
- `dtype` is the compute dtype of the matrix products over image tokens and of the Linear
  layers (float32 or bfloat16, precision.py); parameters and activations stay float32, and
  the small products that fold a weight into a few tokens are float32 (XLA's CPU runtime has no
  bf16 kernel for some of their layouts, and they cost nothing).

Token layouts are (batch, queries, tokens, channels); image tensors are (batch, pixels, C).
This module is long because `Attention` holds every folded variant next to the plain one:
they share one set of projection parameters and must stay the same function.
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

  The Linears are named as the EfficientSAM release names its MLPs: `layers_i_0` (a torch
  Sequential of Linear and activation) for the hidden ones, `fc` for the last.
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  activation: str = "gelu"
  dtype: Any = F32

  @nn.compact
  def __call__(self, x):
    act = activation_fn(self.activation)
    for i in range(self.num_layers):
      x = act(precision.Dense(self.hidden_dim, self.dtype, name=f"layers_{i}_0")(x))
    return precision.Dense(self.output_dim, self.dtype, name="fc")(x)


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
  ln_eps: float = 1e-5
  dtype: Any = F32

  def setup(self):
    c, h, dt = self.embedding_dim, self.num_heads, self.dtype
    self.self_attn = Attention(c, h, 1, dt)
    self.norm1 = nn.LayerNorm(epsilon=self.ln_eps)
    self.cross_attn_token_to_image = Attention(c, h, self.downsample_rate, dt)
    self.norm2 = nn.LayerNorm(epsilon=self.ln_eps)
    self.mlp = MLPBlock(self.mlp_dim, c, 1, self.activation, dt)
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
            activation=self.activation, ln_eps=self.ln_eps,
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
