"""`Predictor`: embeds an image once, then answers any number of point / box (/ mask) queries.

    predictor = Predictor.from_checkpoint("efficient_sam_vitt.pt")
    predictor.set_image(image)                       # (H, W, 3) uint8 RGB
    out = predictor.predict(boxes=np.array([[x1, y1, x2, y2], ...]))
    out["logits"]  # (Q, 3, H, W); out["iou"] (Q, 3); out["low_res_logits"] (Q, 3, 256, 256)

It works for every model family alike (models/family.py lists the methods it calls). For
EfficientSAM the outputs are the released PyTorch model's `forward`; for SAM and MobileSAM,
SamPredictor's outputs (masks 1..3, or mask 0 with multimask_output=False; logits by
`postprocess_masks`), from SamPredictor.set_image's preprocessing by default.

Image resizing (`image_resize`): "pil" = SamPredictor.set_image (segment-anything's
`ResizeLongestSide.apply_image`: the uint8 image resized by PIL's bilinear and rounded to whole
grey levels, on the host), the default for SAM and MobileSAM; "torch" = resized inside the
model in float32 (SAM: `set_torch_image`'s antialiased bilinear; EfficientSAM: its release's
bilinear stretch to 1024 x 1024, EfficientSAM's only path).

Compilation: the image is resized to the encoder's input size by its own small jitted
function, so the encoder compiles once for every image size. Queries are padded to a bucket
size (1, 4, 16, 64, then multiples of 64) and decoded in chunks of `query_chunk` inside one
jitted call, so hundreds of queries cost one call and few compilations.

Memory: results are checked against the host's available memory before any work
(`check_result_memory`: full-resolution logits take Q x 3 x H x W x 4 bytes, 77 GB for
10,000 queries at 800 x 800); more than MAX_QUERIES_PER_CALL queries are decoded in several
calls, and masks are upscaled a chunk at a time, so the device holds one call's share.
"""
import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference.queries import Queries
from efficientsam_jax.io import images as images_lib
from efficientsam_jax.io import model_files
from efficientsam_jax.models import precision, registry
from efficientsam_jax.models import prompt_encoder as pe
from efficientsam_jax.models.family import ModelConfig

QUERY_BUCKETS = (1, 4, 16, 64)  # then multiples of the last
UPSCALE_CHUNK = 16  # masks resized to full resolution per call
# Queries decoded per jitted call: bounds the device memory of a call's low-resolution
# logits (805 MB at 1024 px); a 32 x 32 segment-everything grid is one call.
MAX_QUERIES_PER_CALL = 1024
# Queries decoded at once inside a call (a lax.map step). Small chunks keep each step's
# per-query image tensors (4096 x 256 per query at 1024) in the caches (docs/performance.md).
QUERY_CHUNK = 4
IMAGE_RESIZES = ("pil", "torch")


def available_memory() -> int | None:
  """Bytes of host memory available to new allocations (Linux MemAvailable), or None."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def bucket_size(num_queries: int) -> int:
  for size in QUERY_BUCKETS:
    if num_queries <= size:
      return size
  step = QUERY_BUCKETS[-1]
  return -(-num_queries // step) * step


class Predictor:
  """The model of any family, one image at a time, queries in batches (module docstring).

  dtype: None keeps the config's compute dtype (float32 unless set), or "float32" /
  "bfloat16". query_chunk: queries per decoder step inside a call (default QUERY_CHUNK).
  image_resize: "pil" or "torch" (module docstring); None = the model's own default.
  set_image also computes the query-independent part of the decoder once per image.
  """

  def __init__(self, params, config: ModelConfig, dtype: str | None = None,
               query_chunk: int | None = None, image_resize: str | None = None):
    if dtype is not None:
      try:
        precision.compute_dtype(dtype)
      except ValueError as e:
        raise UserError(str(e)) from None
      config = config.replace(dtype=str(dtype))
    self.config = config
    self.model = model = registry.build(config)
    self.query_chunk = int(query_chunk or QUERY_CHUNK)
    if self.query_chunk < 1:
      raise UserError(f"query_chunk must be at least 1, got {query_chunk}")
    self.image_resize = image_resize or model.default_image_resize
    if self.image_resize not in model.image_resizes:
      raise UserError(f"image_resize={self.image_resize!r} is not a resize of {config.name}; "
                      f"use one of {', '.join(model.image_resizes)}")
    self.params = jax.device_put(params)
    apply = lambda p, *args, method, **kw: model.apply({"params": p}, *args, method=method, **kw)
    # Per image size (cheap): uint8 -> the encoder input.
    self._preprocess = jax.jit(lambda image: model.preprocess(image[None].astype(jnp.float32)))
    # One shape, (1, size, size, 3): compiled once for all images.
    self._encode = jax.jit(lambda p, x: apply(p, x, method=model.encode))
    # What every query shares (the decoder's layer-0 image projections): once per image.
    self._context = jax.jit(lambda p, e: apply(p, e, method=model.decoder_context))
    query_chunk = self.query_chunk

    def decode(p, embeddings, context, points, labels, masks, has_mask, input_hw, resized_hw,
               min_iou=None, multimask_output=True):
      """(1, g, g, C), its decoder context, (Qb, n, 2), (Qb, n), masks (Qb, 4g, 4g) and
      has_mask (Qb,) or both None, (2,), (2,) -> low-res (Qb, M, 4g, 4g), iou (Qb, M);
      M = 3, or 1 without multimask_output.
      Without masks the mask-input path is not even traced (None is an empty pytree: its own
      compilation); with masks the dense prompt differs per query, so the whole decoder runs
      from the embeddings instead of the once-per-image context.

      min_iou (a traced scalar, only without masks) or None: a chunk whose every IoU
      prediction is <= min_iou skips the mask upscaling; its logits are NaN."""
      chunk = min(points.shape[0], query_chunk)

      def one_chunk(xs):
        pts, lbl, m, hm = jax.tree.map(lambda x: x[None], xs)
        if min_iou is None:
          low, iou = apply(p, embeddings, pts, lbl, input_hw, resized_hw, mask_input=m,
                           has_mask=hm, context=None if m is not None else context,
                           multimask_output=multimask_output, method=model.predict_masks)
          return low[0], iou[0]
        state, iou = apply(p, context, pts, lbl, input_hw, resized_hw,
                           multimask_output=multimask_output, method=model.predict_tokens)
        logits = lambda: apply(p, state, method=model.mask_logits)
        shape = jax.eval_shape(logits)
        low = jax.lax.cond(jnp.any(iou > min_iou), logits,
                           lambda: jnp.full(shape.shape, jnp.nan, shape.dtype))
        return low[0], iou[0]

      shaped = lambda x: x.reshape((-1, chunk) + x.shape[1:])
      low, iou = jax.lax.map(one_chunk,
                             jax.tree.map(shaped, (points, labels, masks, has_mask)))
      return low.reshape((-1,) + low.shape[2:]), iou.reshape((-1,) + iou.shape[2:])

    self._decode = jax.jit(decode, static_argnames=("multimask_output",))
    self._upscale = jax.jit(lambda low, hw, resized: model.postprocess(low, hw, resized),
                            static_argnums=(1, 2))
    self._embeddings = None
    self._decoder_context = None
    self._image_hw = None

  @classmethod
  def from_checkpoint(cls, path: str, model: str | None = None, dtype: str | None = None,
                      query_chunk: int | None = None, image_resize: str | None = None,
                      **config_overrides):
    """A released .pt, a JAX parameter checkpoint or a training workdir (io.model_files;
    a finetuning workdir brings its own input size and encoder depth)."""
    loaded = model_files.load(path, model)
    config = loaded.config.replace(**config_overrides) if config_overrides else loaded.config
    return cls(loaded.params, config, dtype=dtype, query_chunk=query_chunk,
               image_resize=image_resize)

  @property
  def supports_mask_input(self) -> bool:
    return self.model.supports_mask_input

  def set_image(self, image: np.ndarray) -> None:
    """Computes and keeps the embedding of an (H, W, 3) uint8 RGB image; returns when it is
    done (JAX dispatch is asynchronous: without the wait, a timer around set_image, as the
    bench and the demo keep, would charge the encoder to the first predict)."""
    self.use_embedding(self.embed_images([image])[0])

  def embed_images(self, images) -> list:
    """Embeds (H, W, 3) uint8 RGB images (any sizes) in one encoder call; returns one opaque
    state per image for `use_embedding`. The encoder compiles once per number of images."""
    batch, sizes = [], []
    for image in images:
      image = np.asarray(image)
      if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise UserError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} "
                        f"{image.shape}")
      sizes.append(image.shape[:2])
      if self.image_resize == "pil":  # then the model's own resize finds nothing to do
        image = images_lib.resize_bilinear(image, *self.model.resized_hw(*image.shape[:2]))
      batch.append(self._preprocess(image))
    embeddings = self._encode(self.params, jnp.concatenate(batch))
    return [(hw, embeddings[i:i + 1]) for i, hw in enumerate(sizes)]

  def use_embedding(self, state) -> None:
    """Makes an image embedded by `embed_images` the current one (as set_image would), once
    its embedding and decoder context are computed."""
    self._image_hw, self._embeddings = state
    self._decoder_context = self._context(self.params, self._embeddings)
    jax.block_until_ready((self._embeddings, self._decoder_context))

  @property
  def image_embeddings(self) -> np.ndarray:
    """(256, g, g) float32: the release's channels-first layout."""
    self._require_image()
    return np.asarray(self._embeddings[0], np.float32).transpose(2, 0, 1)

  def predict(self, points=None, labels=None, boxes=None, full_resolution: bool = True, *,
              mask_input=None, multimask_output: bool = True) -> dict:
    """Decodes queries against the current image (all in one jitted call).

    Args:
      points: (Q, N, 2) (x, y) original-image pixels, with labels (Q, N) in {-1, 0, 1, 2, 3}.
      boxes: (Q', 4) x1, y1, x2, y2; appended after the point queries.
      mask_input: SAM and MobileSAM only: (Q + Q', 4g, 4g) low-resolution logits (e.g. a
        previous prediction's best `low_res_logits`), one per query in that order.
      full_resolution: also return `logits` resized to the image.
      multimask_output: 3 masks per query (True) or the single-mask output (mask 0).
    Returns:
      {"low_res_logits": (Q, M, 4g, 4g), "iou": (Q, M), "logits": (Q, M, H, W)} numpy,
      M = 3 or 1.
    """
    queries = Queries.from_arrays(points, labels, boxes, mask_input)
    # Point arrays keep their length (the model pads EfficientSAM's itself); boxes need 2.
    length = max(np.shape(points)[1] if points is not None else 0, 2 if boxes is not None else 0)
    return self.predict_queries(queries, full_resolution, length,
                                multimask_output=multimask_output)

  def predict_queries(self, queries: Queries, full_resolution: bool = True,
                      length: int | None = None, multimask_output: bool = True) -> dict:
    """Decodes `Queries` (e.g. a prompts file's, `Queries.from_json`) as predict does, after
    `Queries.check_fits` (clicks inside the image, boxes on it, no point the model drops).
    length: prompt array length; default the model's `prompt_length` for these queries."""
    self._require_image()
    self.check_queries(queries)
    points, labels = queries.arrays(length or self.model.prompt_length(queries.longest))
    masks, has_mask = queries.mask_arrays(4 * self.config.grid)
    return self.predict_arrays(points, labels, full_resolution, masks, has_mask,
                               multimask_output=multimask_output)

  def check_queries(self, queries: Queries, image_hw: tuple[int, int] | None = None) -> None:
    """`Queries.check_fits` for this model on an image of image_hw (default: the current
    image): clicks inside it, boxes on it, no more points than the model reads."""
    most = queries.most_prompts
    cut = self.model.prompt_length(most)  # below `most`: the model would drop the rest
    queries.check_fits(*(image_hw or self._image_hw), max_points=cut if cut < most else None)

  def predict_arrays(self, points: np.ndarray, labels: np.ndarray,
                     full_resolution: bool = True, mask_input: np.ndarray | None = None,
                     has_mask: np.ndarray | None = None, min_iou: float | None = None,
                     multimask_output: bool = True) -> dict:
    """Like predict, from already padded arrays: points (Q, n, 2), labels (Q, n), and for SAM
    optionally mask_input (Q, 4g, 4g) with has_mask (Q,) bool (default: every query).

    min_iou: queries whose IoU predictions are all <= min_iou (checked per decoder chunk of
    `query_chunk` queries) skip the mask upscaling, about half the decoder's work, and get NaN
    low-res logits; for callers that drop such masks anyway (segment everything's
    pred_iou_thresh). None decodes everything. Not with mask_input.
    """
    self._require_image()
    q = points.shape[0]
    if mask_input is not None and min_iou is not None:
      raise ValueError("min_iou skips upscaling on the no-mask path only; not with mask_input")
    if mask_input is not None and not self.supports_mask_input:
      raise UserError(f"mask_input needs a SAM or MobileSAM model: {self.config.name} has no "
                      "mask-input path")
    self.check_result_memory(q, full_resolution)
    lows, ious = [], []
    for start in range(0, q, MAX_QUERIES_PER_CALL):
      part = slice(start, start + MAX_QUERIES_PER_CALL)
      low, iou = self._decode_call(
          points[part], labels[part], None if mask_input is None else mask_input[part],
          None if has_mask is None else np.asarray(has_mask)[part], min_iou, multimask_output)
      lows.append(low)
      ious.append(iou)
    out = {"low_res_logits": np.concatenate(lows), "iou": np.concatenate(ious)}
    if full_resolution:
      out["logits"] = self.upscale(out["low_res_logits"])
    return out

  def result_bytes(self, num_queries: int, full_resolution: bool = True) -> dict:
    """Host bytes of `num_queries` queries' results: {"low_res_logits", "logits" (full
    resolution: Q x 3 x H x W x 4; 0 without full_resolution), "total"}."""
    h, w = self._image_hw
    low = num_queries * 3 * (4 * self.config.grid) ** 2 * 4
    full = num_queries * 3 * h * w * 4 if full_resolution else 0
    return {"low_res_logits": low, "logits": full, "total": low + full + num_queries * 12}

  def check_result_memory(self, num_queries: int, full_resolution: bool = True) -> None:
    """UserError, before any work, when the results would not fit in the available memory."""
    need, available = self.result_bytes(num_queries, full_resolution), available_memory()
    if available is None or need["total"] <= available:
      return
    h, w = self._image_hw
    gib = lambda n: f"{n / 2**30:.1f} GiB"
    detail = (f"full-resolution logits {num_queries} x 3 x {h} x {w} x 4 bytes = "
              f"{gib(need['logits'])}, low-resolution {gib(need['low_res_logits'])}")
    hint = ("ask for fewer queries per call, or full_resolution=False" if full_resolution
            else "ask for fewer queries per call")
    raise UserError(f"{num_queries} queries on a {w}x{h} image need {gib(need['total'])} for "
                    f"their results ({detail}), but {gib(available)} of memory is available: "
                    f"{hint}")

  def _decode_call(self, points, labels, mask_input, has_mask, min_iou, multimask_output):
    """One jitted decoder call for at most MAX_QUERIES_PER_CALL queries, padded to a bucket:
    -> low-res logits (q, 3, 4g, 4g) and iou (q, 3), numpy."""
    q = points.shape[0]
    padded = bucket_size(q)
    if padded > self.query_chunk:  # whole chunks inside the call
      padded = -(-padded // self.query_chunk) * self.query_chunk
    pad = ((0, padded - q),) + ((0, 0),) * (points.ndim - 1)
    points = np.pad(points.astype(np.float32), pad, constant_values=-1.0)
    labels = np.pad(labels.astype(np.float32), pad[:2], constant_values=pe.LABEL_PADDING)
    if mask_input is not None:
      has_mask = np.ones((q,), bool) if has_mask is None else np.asarray(has_mask, bool)
      mask_input = np.pad(np.asarray(mask_input, np.float32), pad[:1] + ((0, 0), (0, 0)))
      has_mask = np.pad(has_mask, pad[:1])
    h, w = self._image_hw
    args = (self.params, self._embeddings, self._decoder_context, points, labels,
            mask_input, has_mask, np.asarray((h, w), np.int32),
            np.asarray(self.model.resized_hw(h, w), np.int32))
    min_iou = None if min_iou is None else np.float32(min_iou)
    low, iou = self._decode(*args, min_iou, multimask_output=multimask_output)
    return np.asarray(low[:q]), np.asarray(iou[:q])

  def upscale(self, low_res_logits) -> np.ndarray:
    """(Q, M, 4g, 4g) -> (Q, M, H, W) float32 numpy, in chunks to bound device memory (only
    a chunk at a time is on the device)."""
    h, w = self._image_hw
    resized = tuple(int(v) for v in self.model.resized_hw(h, w))
    q = low_res_logits.shape[0]
    out = np.empty((q,) + low_res_logits.shape[1:2] + (h, w), np.float32)
    chunk = min(bucket_size(q), UPSCALE_CHUNK)
    for start in range(0, q, chunk):
      part = jnp.asarray(low_res_logits[start:start + chunk])
      n = part.shape[0]
      if n < chunk:  # same shape every time: one compilation per image size
        part = jnp.pad(part, ((0, chunk - n),) + ((0, 0),) * (part.ndim - 1))
      out[start:start + n] = np.asarray(self._upscale(part, (h, w), resized))[:n]
    return out

  def _require_image(self):
    if self._embeddings is None:
      raise UserError("call set_image before predict")
