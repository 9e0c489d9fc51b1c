"""Multi-head dot-product attention written for CPU speed at thousands of tokens.

EfficientSAM's encoder attends globally over 64x64 = 4096 tokens at 1024 px; SAM's global
blocks do the same. `jax.nn.dot_product_attention` (XLA implementation) materialises the whole
(B, heads, T, T) probability tensor (200 MB per ViT-Tiny block) and normalises it before the
value matmul. Here, for long sequences:
- heads first, keys transposed once, outside the loop;
- queries go through in chunks (`jax.lax.map`), so one chunk's logits stay in the caches
  instead of streaming through memory three times;
- the softmax is normalised after the value matmul (divide a (T, head_dim) result, not the
  (T, T) probabilities);
- the two products take their operands in the compute dtype (`dtype`) and accumulate in
  float32; max, exp, sum and the result are float32 whatever the compute dtype.
The result equals the plain formula to float32 rounding (~1e-7).
"""
import jax
import jax.numpy as jnp

# Query chunks are sized so that one chunk's float32 logits (heads x chunk x keys) stay within
# about this many bytes: the 32 MB L3 of the measured 2-core AVX-512 CPU, with room for the
# operands. 512 queries for EfficientSAM-Ti's 3 heads over 4096 keys, 128 for SAM ViT-B's 12
# heads (docs/performance.md). On a CPU, batch entries (SAM's windows) are grouped the same way.
LOGITS_CHUNK_BYTES = 26 * 2**20
MAX_QUERY_CHUNK = 512
AUTO = "auto"


def auto_query_chunk(tq: int, heads: int, tk: int, budget: int | None = None):
  """The largest power-of-two chunk (<= MAX_QUERY_CHUNK, dividing tq) whose logits fit the
  budget (default LOGITS_CHUNK_BYTES); None when the whole sequence fits (or nothing divides)."""
  budget = budget or LOGITS_CHUNK_BYTES
  per_query = heads * tk * 4
  if tq * per_query <= budget:
    return None
  chunk = MAX_QUERY_CHUNK
  while chunk > 8 and (tq % chunk or chunk * per_query > budget):
    chunk //= 2
  return chunk if tq % chunk == 0 and chunk < tq else None


def target_platform() -> str:
  """The platform the code being traced is compiled for: that of the mesh's devices under
  `jax.set_mesh` (the train step, also when it is compiled for a TPU topology from a CPU
  host), else the default backend (inference outside a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def auto_batch_chunk(b: int, tq: int, heads: int, tk: int, budget: int | None = None):
  """Batch entries per step when a whole sequence fits the budget but the batch does not:
  the largest divisor of b that fits; None = all at once. CPU targets only (a cache effect;
  on accelerators a loop over the batch only serialises the work and, measured on TPU, keeps
  every group's buffers alive: docs/tpu.md). Decided by the compile target, not the host."""
  budget = budget or LOGITS_CHUNK_BYTES
  per_item = tq * heads * tk * 4
  if target_platform() != "cpu" or b * per_item <= budget or per_item > budget:
    return None
  group = max(d for d in range(1, b + 1) if b % d == 0 and d * per_item <= budget)
  return group if group < b else None


def _attend(q, k_t, v, bias_h=None, bias_w=None, key_hw=None):
  """One chunk, heads first. q (B, N, c, H) already scaled, k_t (B, N, H, Tk) (keys
  transposed), v (B, N, Tk, H), all three in the compute dtype -> (B, N, c, H) float32.

  bias_h (B, N, c, kh), bias_w (B, N, c, kw): decomposed additive logit terms over a
  kh x kw key grid (kh * kw = Tk), added as bias_h[..., y] + bias_w[..., x] for key (y, x).
  """
  logits = jnp.einsum("bnqh,bnhk->bnqk", q, k_t, preferred_element_type=jnp.float32)
  if bias_h is not None:
    b, n, c, tk = logits.shape
    kh, kw = key_hw
    logits = (logits.reshape(b, n, c, kh, kw) + bias_h[..., :, None].astype(jnp.float32)
              + bias_w[..., None, :].astype(jnp.float32)).reshape(b, n, c, tk)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  total = jnp.sum(weights, axis=-1, keepdims=True)  # (B, N, c, 1)
  out = jnp.einsum("bnqk,bnkh->bnqh", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out / total


def dot_product_attention(q, k, v, scale: float, bias_h=None, bias_w=None,
                          key_hw: tuple[int, int] | None = None,
                          query_chunk: int | str | None = AUTO, dtype=None):
  """softmax(q k^T * scale + bias) v per head.

  Args:
    q: (B, Tq, N, H); k, v: (B, Tk, N, H) (N heads of width H).
    scale: multiplies q before the logits (head_dim ** -0.5).
    bias_h, bias_w: optional decomposed relative-position terms (B, N, Tq, kh) and
      (B, N, Tq, kw) over a key grid key_hw = (kh, kw) with kh * kw = Tk (SAM's rel-pos).
    query_chunk: queries per chunk when Tq is a larger multiple of it; None: no chunking;
      "auto": sized to LOGITS_CHUNK_BYTES (`auto_query_chunk`, and on a CPU batch groups,
      `auto_batch_chunk`).
    dtype: compute dtype of the two products (default: q's dtype).
  Returns: (B, Tq, N, H) float32.
  """
  dtype = dtype or q.dtype
  b, tq, n, h = q.shape
  tk = k.shape[1]
  batch_chunk = None
  if query_chunk == AUTO:
    query_chunk = auto_query_chunk(tq, n, tk)
    if query_chunk is None:
      batch_chunk = auto_batch_chunk(b, tq, n, tk)
  # Heads first, keys transposed, once: inside the chunk loop both matmuls then read
  # contiguous operands (transposing per chunk cost more than the chunking saved).
  q = (q * jnp.asarray(scale, q.dtype)).astype(dtype).transpose(0, 2, 1, 3)  # (B, N, Tq, H)
  k_t = k.astype(dtype).transpose(0, 2, 3, 1)  # (B, N, H, Tk)
  v = v.astype(dtype).transpose(0, 2, 1, 3)  # (B, N, Tk, H)
  if batch_chunk:
    # (B, ...) -> (B / g, g, ...): groups of whole sequences, one lax.map step each.
    group = lambda x: None if x is None else x.reshape((b // batch_chunk, batch_chunk)
                                                       + x.shape[1:])
    out = jax.lax.map(lambda xs: _attend(*xs[:3], xs[3], xs[4], key_hw),
                      (group(q), group(k_t), group(v), group(bias_h), group(bias_w)))
    out = out.reshape(b, n, tq, h)
  elif not query_chunk or tq <= query_chunk or tq % query_chunk:
    out = _attend(q, k_t, v, bias_h, bias_w, key_hw)
  else:
    n_chunks = tq // query_chunk
    # (B, N, Tq, X) -> (n_chunks, B, N, c, X): the chunk axis first for lax.map.
    split = lambda x: jnp.moveaxis(
        x.reshape(b, n, n_chunks, query_chunk, x.shape[-1]), 2, 0)
    if bias_h is None:
      out = jax.lax.map(lambda qc: _attend(qc, k_t, v), split(q))
    else:
      out = jax.lax.map(lambda xs: _attend(xs[0], k_t, v, xs[1], xs[2], key_hw),
                        (split(q), split(bias_h), split(bias_w)))
    out = jnp.moveaxis(out, 0, 2).reshape(b, n, tq, h)
  return out.transpose(0, 2, 1, 3)
