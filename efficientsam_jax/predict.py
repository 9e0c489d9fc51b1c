r"""Promptable segmentation with EfficientSAM, SAM and MobileSAM: a `Predictor` API and a CLI.

  python -m efficientsam_jax.predict --checkpoint=efficient_sam_vitt.pt --image=dogs.png \
      --prompts=prompts.json --output=out.npz [--model=NAME] [--overlay=out.png] \
      [--dtype=bfloat16]

prompts.json is a list of queries, each {"points": [[x, y], ...], "labels": [1, ...]},
{"box": [x1, y1, x2, y2]} or both (the points, then the box's two corners), in original-image
pixels. SAM and MobileSAM queries may add "mask_input": low-resolution mask logits (256 x 256,
or 1 x 256 x 256) from a previous prediction, as a nested list or the path of a .npy file
(relative to prompts.json). out.npz holds `logits` (Q, 3, H, W),
`low_res_logits` (Q, 3, 256, 256), `iou` (Q, 3) and `image_embeddings` (256, 64, 64): the
released PyTorch model's `forward` outputs for the same image and prompts (for SAM and
MobileSAM: SamPredictor's multimask outputs, masks 1..3, logits by `postprocess_masks`).

SAM prompts: a query's points, or its box; label -1 means "no point" and is dropped (SAM's own
padding token is added by the model). Queries are not cut to 6 points as EfficientSAM's are.

`--dtype=bfloat16` (Predictor(dtype="bfloat16")) computes in bfloat16 with float32 parameters
(bfloat16 operands of the matrix products, float32 everywhere else, models/precision.py):
faster on CPUs with bf16 instructions and on accelerators, at the cost of ~1e-2 in the logits
(docs/performance.md); float32 is the default and what the release parity above refers to.

Compilation: the image is resized to the encoder's input size by its own small jitted
function, so the encoder compiles once for every image size. Queries are padded to a bucket
size (1, 4, 16, 64, then multiples of 64) and decoded in chunks inside one jitted call, so
hundreds of queries cost one call and few compilations.
"""
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from efficientsam_jax import model_files, runtime
from efficientsam_jax.models import efficient_sam as es
from efficientsam_jax.models import precision
from efficientsam_jax.models import prompt_encoder as pe
from efficientsam_jax.models import sam

QUERY_BUCKETS = (1, 4, 16, 64)  # then multiples of the last
UPSCALE_CHUNK = 16  # masks resized to full resolution per call
# Queries decoded at once inside a call (a lax.map step). Small chunks keep each step's
# per-query image tensors (4096 x 256 per query at 1024) in the caches; measured in
# docs/performance.md.
QUERY_CHUNK = 4


class PromptError(ValueError):
  """Bad prompts or image: one-line reason."""


def bucket_size(num_queries: int) -> int:
  for size in QUERY_BUCKETS:
    if num_queries <= size:
      return size
  step = QUERY_BUCKETS[-1]
  return -(-num_queries // step) * step


def queries_to_arrays(queries: list, max_points: int) -> tuple[np.ndarray, np.ndarray]:
  """JSON-style queries -> points (Q, max_points, 2) float32, labels (Q, max_points) float32.

  A box is its two corners labelled 2 and 3, after the query's points when it has both (SAM
  orders its tokens so). Shorter queries are padded with (-1, -1) and label -1, longer ones
  cut, exactly as the model would.
  """
  if not isinstance(queries, list) or not queries:
    raise PromptError("prompts must be a non-empty JSON list of queries")
  points = np.full((len(queries), max_points, 2), -1.0, np.float32)
  labels = np.full((len(queries), max_points), pe.LABEL_PADDING, np.float32)
  for i, query in enumerate(queries):
    q_points, q_labels = _parse_query(query, i)
    n = min(len(q_points), max_points)
    points[i, :n], labels[i, :n] = q_points[:n], q_labels[:n]
  return points, labels


def _parse_query(query, index: int) -> tuple[np.ndarray, np.ndarray]:
  """One JSON query -> points (n, 2), labels (n,): its points, then its box's corners."""
  where = f"query {index}"
  if not isinstance(query, dict):
    raise PromptError(f"{where}: expected an object with 'points'/'labels' and/or 'box'")
  has_points = "points" in query or "labels" in query
  if not has_points and "box" not in query:
    raise PromptError(f"{where}: needs 'points' and 'labels', or 'box'")
  q_points = np.zeros((0, 2), np.float32)
  q_labels = np.zeros((0,), np.float32)
  try:
    if has_points:
      if "points" not in query or "labels" not in query:
        raise PromptError(f"{where}: needs 'points' and 'labels', or 'box'")
      q_points = np.asarray(query["points"], np.float64)
      q_labels = np.asarray(query["labels"], np.float64)
      if q_points.ndim != 2 or q_points.shape[1] != 2 or len(q_points) == 0:
        raise PromptError(f"{where}: 'points' must be a non-empty list of [x, y]")
      if q_labels.shape != (len(q_points),):
        raise PromptError(f"{where}: {len(q_points)} points but {q_labels.size} labels")
      if not np.isin(q_labels, (-1, 0, 1, 2, 3)).all():
        raise PromptError(f"{where}: labels must be -1, 0, 1, 2 or 3")
    if "box" in query:
      box = np.asarray(query["box"], np.float64)
      if box.shape != (4,):
        raise PromptError(f"{where}: 'box' must be [x1, y1, x2, y2]")
      q_points = np.concatenate([q_points, box.reshape(2, 2)])
      q_labels = np.concatenate([q_labels, [pe.LABEL_BOX_TOP_LEFT,
                                            pe.LABEL_BOX_BOTTOM_RIGHT]])
  except (TypeError, ValueError) as e:
    if isinstance(e, PromptError):
      raise
    raise PromptError(f"{where}: coordinates and labels must be numbers") from None
  return q_points.astype(np.float32), q_labels.astype(np.float32)


def queries_mask_inputs(queries: list, size: int, base_dir: str = "."):
  """The queries' "mask_input" entries -> (masks (Q, size, size) float32, has_mask (Q,) bool),
  zeros/False where a query has none; (None, None) when no query has one.

  An entry is size x size (or 1 x size x size) logits: a nested list, an array, or the path
  of a .npy file (relative paths from base_dir).
  """
  if not any(isinstance(q, dict) and "mask_input" in q for q in queries):
    return None, None
  masks = np.zeros((len(queries), size, size), np.float32)
  has_mask = np.zeros((len(queries),), bool)
  for i, query in enumerate(queries):
    if not isinstance(query, dict) or "mask_input" not in query:
      continue
    value = query["mask_input"]
    try:
      if isinstance(value, str):
        value = np.load(os.path.join(base_dir, value), allow_pickle=False)
      mask = np.asarray(value, np.float32)
    except (OSError, ValueError, TypeError) as e:
      raise PromptError(f"query {i}: cannot read 'mask_input' "
                        f"({' '.join(str(e).split())[:200]})") from None
    if mask.shape not in ((size, size), (1, size, size)):
      raise PromptError(f"query {i}: 'mask_input' must be {size}x{size} low-resolution logits,"
                        f" got shape {mask.shape}")
    masks[i], has_mask[i] = mask.reshape(size, size), True
  return masks, has_mask


class Predictor:
  """Embeds an image once, then answers any number of point/box queries against it.

    predictor = Predictor.from_checkpoint("efficient_sam_vitt.pt")
    predictor.set_image(image)                       # (H, W, 3) uint8 RGB
    out = predictor.predict(boxes=np.array([[x1, y1, x2, y2], ...]))
    out["logits"]  # (Q, 3, H, W); out["iou"] (Q, 3); out["low_res_logits"] (Q, 3, 256, 256)

  dtype: None keeps the config's compute dtype (float32 unless set), or "float32" /
  "bfloat16". query_chunk: queries per decoder step inside a call (default QUERY_CHUNK).
  set_image also computes the query-independent part of the decoder once per image.
  """

  def __init__(self, params, config: es.EfficientSamConfig | sam.SamConfig,
               dtype: str | None = None, query_chunk: int | None = None):
    if dtype is not None:
      precision.compute_dtype(dtype)  # ValueError for an unknown name
      config = dataclasses.replace(config, dtype=str(dtype))
    self.config = config
    self.query_chunk = int(query_chunk or QUERY_CHUNK)
    self.params = jax.device_put(params)
    self.is_sam = isinstance(config, sam.SamConfig)
    size = config.image_size
    if self.is_sam:
      model, cls = sam.Sam(config), sam.Sam
      # Per image size (cheap): uint8 -> longest side resized, normalised, padded.
      preprocess = lambda image: sam.preprocess(image[None].astype(jnp.float32), size)
      # With a mask input the dense prompt differs per query: the whole decoder runs from the
      # embeddings; without one, from the once-per-image context.
      predict_masks = lambda p, e, ctx, pts, lbl, masks, has_mask, hw, resized: model.apply(
          {"params": p}, e, pts, lbl, hw, resized, masks, has_mask,
          context=None if masks is not None else ctx, method=cls.predict_masks)
      predict_tokens = lambda p, ctx, pts, lbl, hw, resized: model.apply(
          {"params": p}, ctx, pts, lbl, hw, resized, method=cls.predict_tokens)
    else:
      model, cls = es.EfficientSam(config), es.EfficientSam
      # Per image size (cheap): uint8 -> [0, 1] -> resized to the encoder input, normalised.
      preprocess = lambda image: es.preprocess(image[None].astype(jnp.float32) / 255.0, size)
      # No mask-input path in EfficientSAM: predict_arrays refuses masks before this.
      predict_masks = lambda p, e, ctx, pts, lbl, masks, has_mask, hw, resized: model.apply(
          {"params": p}, None, pts, lbl, hw, context=ctx, method=cls.predict_masks)
      predict_tokens = lambda p, ctx, pts, lbl, hw, resized: model.apply(
          {"params": p}, ctx, pts, lbl, hw, method=cls.predict_tokens)
    mask_logits = lambda p, state: model.apply({"params": p}, state, method=cls.mask_logits)
    self._preprocess = jax.jit(preprocess)
    # One shape, (1, size, size, 3): compiled once for all images.
    self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=cls.encode))
    # What every query shares (the decoder's layer-0 image projections): once per image.
    self._context = jax.jit(lambda p, e: model.apply({"params": p}, e,
                                                     method=cls.decoder_context))
    query_chunk = self.query_chunk

    def decode(p, embeddings, context, points, labels, masks, has_mask, input_hw, resized,
               min_iou=None):
      """(1, g, g, C), its decoder context, (Qb, n, 2), (Qb, n), masks (Qb, 4g, 4g) and
      has_mask (Qb,) or both None, (2,), (2,) -> low-res (Qb, 3, 4g, 4g), iou (Qb, 3).
      Without masks the mask-input path is not even traced (None is an empty pytree: its own
      compilation).

      min_iou (a traced scalar, only without masks) or None: a chunk whose every IoU
      prediction is <= min_iou skips the mask upscaling; its logits are NaN."""
      chunk = min(points.shape[0], query_chunk)

      def one_chunk(xs):
        xs = jax.tree.map(lambda x: x[None], xs)
        if min_iou is None:
          low, iou = predict_masks(p, embeddings, context, *xs, input_hw, resized)
          return low[0], iou[0]
        state, iou = predict_tokens(p, context, xs[0], xs[1], input_hw, resized)
        shape = jax.eval_shape(mask_logits, p, state)
        low = jax.lax.cond(jnp.any(iou > min_iou), lambda: mask_logits(p, state),
                           lambda: jnp.full(shape.shape, jnp.nan, shape.dtype))
        return low[0], iou[0]

      shaped = lambda x: x.reshape((-1, chunk) + x.shape[1:])
      low, iou = jax.lax.map(one_chunk,
                             jax.tree.map(shaped, (points, labels, masks, has_mask)))
      return low.reshape((-1,) + low.shape[2:]), iou.reshape((-1,) + iou.shape[2:])

    self._decode = jax.jit(decode)
    if self.is_sam:
      self._upscale = jax.jit(lambda low, h, w: sam.postprocess_masks(
          low, sam.resized_hw(h, w, size), (h, w), size), static_argnums=(1, 2))
    else:
      self._upscale = jax.jit(es.upscale_logits, static_argnums=(1, 2))
    self._embeddings = None
    self._decoder_context = None
    self._image_hw = None

  @classmethod
  def from_checkpoint(cls, path: str, model: str | None = None, dtype: str | None = None,
                      query_chunk: int | None = None, **config_overrides):
    """A released .pt, a JAX parameter checkpoint or a training workdir (model_files.load;
    a finetuning workdir brings its own input size and encoder depth)."""
    config_overrides = {**model_files.workdir_model_overrides(path), **config_overrides}
    name, params = model_files.load(path, model)
    return cls(params, model_files.config_for(name, **config_overrides), dtype=dtype,
               query_chunk=query_chunk)

  def max_points(self, queries: list) -> int:
    """Prompt length for these queries. EfficientSAM: 2 when every query is one box or at
    most 2 points, else 6 (the model pads to 6 itself, computing the padding as one token:
    shorter arrays are cheaper, two lengths keep compilations few). SAM: every point and box
    corner (at least 6, so that most prompt sets share one compiled shape)."""
    length = lambda q: len(q.get("points", ())) + 2 * ("box" in q) if isinstance(q, dict) else 0
    longest = max(map(length, queries), default=0)
    if not self.is_sam:
      return 2 if longest <= 2 else self.config.max_num_points
    return max(self.config.max_num_points, longest)

  def set_image(self, image: np.ndarray) -> None:
    """Computes and keeps the embedding of an (H, W, 3) uint8 RGB image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise PromptError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} "
                        f"{image.shape}")
    self._image_hw = image.shape[:2]
    self._embeddings = self._encode(self.params, self._preprocess(image))
    self._decoder_context = self._context(self.params, self._embeddings)

  @property
  def image_embeddings(self) -> np.ndarray:
    """(256, g, g) float32: the release's channels-first layout."""
    self._require_image()
    return np.asarray(self._embeddings[0], np.float32).transpose(2, 0, 1)

  def predict(self, points=None, labels=None, boxes=None, full_resolution: bool = True, *,
              mask_input=None) -> dict:
    """Decodes queries against the current image (all in one jitted call).

    Args:
      points: (Q, N, 2) (x, y) original-image pixels, with labels (Q, N) in {-1, 0, 1, 2, 3}.
      boxes: (Q', 4) x1, y1, x2, y2; appended after the point queries.
      mask_input: SAM and MobileSAM only: (Q + Q', 4g, 4g) low-resolution logits (e.g. a
        previous prediction's best `low_res_logits`), one per query in that order.
      full_resolution: also return `logits` resized to the image (bicubic).
    Returns:
      {"low_res_logits": (Q, 3, 4g, 4g), "iou": (Q, 3), "logits": (Q, 3, H, W)} numpy.
    """
    queries = []
    if points is not None:
      points, labels = np.asarray(points), np.asarray(labels)
      queries += [{"points": p.tolist(), "labels": l.tolist()} for p, l in zip(points, labels)]
    if boxes is not None:
      queries += [{"box": b} for b in np.asarray(boxes, np.float32).tolist()]
    if mask_input is not None:
      mask_input = np.asarray(mask_input, np.float32)
      if len(mask_input) != len(queries):
        raise PromptError(f"{len(mask_input)} mask inputs for {len(queries)} queries")
      queries = [{**q, "mask_input": m} for q, m in zip(queries, mask_input)]
    return self.predict_queries(queries, full_resolution)

  def predict_queries(self, queries: list, full_resolution: bool = True,
                      base_dir: str = ".") -> dict:
    """Decodes JSON-style queries (points/labels, box, or both; mask_input for SAM) as
    predict does; base_dir resolves relative mask_input paths."""
    self._require_image()
    points, labels = queries_to_arrays(queries, self.max_points(queries))
    masks, has_mask = queries_mask_inputs(queries, 4 * self.config.grid, base_dir)
    return self.predict_arrays(points, labels, full_resolution, masks, has_mask)

  def predict_arrays(self, points: np.ndarray, labels: np.ndarray,
                     full_resolution: bool = True, mask_input: np.ndarray | None = None,
                     has_mask: np.ndarray | None = None, min_iou: float | None = None) -> dict:
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
    if mask_input is not None and not self.is_sam:
      raise PromptError("mask_input needs a SAM or MobileSAM model: EfficientSAM has no "
                        "mask-input path")
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
            np.asarray(sam.resized_hw(h, w, self.config.image_size), np.int32))
    if min_iou is None:
      low, iou = self._decode(*args)
    else:
      low, iou = self._decode(*args, np.float32(min_iou))
    out = {"low_res_logits": np.asarray(low[:q]), "iou": np.asarray(iou[:q])}
    if full_resolution:
      out["logits"] = self.upscale(low[:q])
    return out

  def upscale(self, low_res_logits) -> np.ndarray:
    """(Q, M, 4g, 4g) -> (Q, M, H, W) float32 numpy, in chunks to bound device memory."""
    h, w = self._image_hw
    low_res_logits = jnp.asarray(low_res_logits)
    q = low_res_logits.shape[0]
    out = np.empty((q,) + low_res_logits.shape[1:2] + (h, w), np.float32)
    chunk = min(bucket_size(q), UPSCALE_CHUNK)
    for start in range(0, q, chunk):
      part = low_res_logits[start:start + chunk]
      n = part.shape[0]
      if n < chunk:  # same shape every time: one compilation per image size
        part = jnp.pad(part, ((0, chunk - n),) + ((0, 0),) * (part.ndim - 1))
      out[start:start + n] = np.asarray(self._upscale(part, h, w))[:n]
    return out

  def _require_image(self):
    if self._embeddings is None:
      raise PromptError("call set_image before predict")


# ----------------------------------------------------------------------------------------
# Overlay

# Distinct, saturated colours (RGB); cycled when there are more queries.
_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
            (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
            (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 225, 25), (128, 128, 128))


def overlay_image(image: np.ndarray, logits: np.ndarray, iou: np.ndarray, points: np.ndarray,
                  labels: np.ndarray, alpha: float = 0.45):
  """Best mask (highest IoU) of each query over the image, prompts marked. Returns a PIL image.

  image (H, W, 3) uint8, logits (Q, M, H, W), iou (Q, M), points (Q, n, 2), labels (Q, n).
  """
  from PIL import Image, ImageDraw

  canvas = image.astype(np.float32)
  best = np.argmax(iou, axis=1)
  for i in range(len(logits)):
    mask = logits[i, best[i]] > 0
    colour = np.asarray(_PALETTE[i % len(_PALETTE)], np.float32)
    canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    canvas[_boundary(mask)] = colour  # an opaque outline keeps overlapping masks apart
  result = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(result)
  radius = max(3, round(max(image.shape[:2]) / 150))
  for i in range(len(logits)):
    colour = _PALETTE[i % len(_PALETTE)]
    valid = labels[i] != pe.LABEL_PADDING
    pts, lbl = points[i][valid], labels[i][valid]
    corners = pts[(lbl == pe.LABEL_BOX_TOP_LEFT) | (lbl == pe.LABEL_BOX_BOTTOM_RIGHT)]
    if len(corners) == 2:
      (x1, y1), (x2, y2) = corners
      draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=colour,
                     width=max(2, radius // 2))
    for (x, y), label in zip(pts, lbl):
      if label in (pe.LABEL_BOX_TOP_LEFT, pe.LABEL_BOX_BOTTOM_RIGHT):
        continue
      # Positive clicks filled with the query colour, negative ones black; white rim.
      fill = colour if label == pe.LABEL_POSITIVE else (0, 0, 0)
      draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill,
                   outline=(255, 255, 255), width=max(1, radius // 3))
  return result


def _boundary(mask: np.ndarray) -> np.ndarray:
  """(H, W) bool -> pixels of the mask with a 4-neighbour outside it (or the image edge)."""
  inner = np.zeros_like(mask)
  inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2]
                       & mask[1:-1, 2:])
  return mask & ~inner


# ----------------------------------------------------------------------------------------
# CLI

FLAGS = flags.FLAGS


def define_flags():
  """Declared at run time, not import time: convert and predict share flag names and
  tests import both into one process."""
  flags.DEFINE_string("checkpoint", None, "Released .pt, JAX parameter checkpoint, or workdir.")
  flags.DEFINE_string("image", None, "Input image (any format PIL reads; converted to RGB).")
  flags.DEFINE_string("prompts", None, "JSON list of queries: {'points','labels'}, {'box'} or "
                      "both; SAM/MobileSAM queries may add 'mask_input' (256x256 logits: a "
                      "nested list or a .npy path).")
  flags.DEFINE_string("output", None, "Output .npz: logits, low_res_logits, iou, "
                      "image_embeddings.")
  flags.DEFINE_string("model", None, "efficientsam_vitt | efficientsam_vits | sam_vit_b | "
                      "sam_vit_l | sam_vit_h | mobile_sam; inferred when omitted.")
  flags.DEFINE_string("overlay", None, "Optional PNG: best mask of each query over the image.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype "
                    "(parameters stay float32; bfloat16 is faster on CPUs with bf16 "
                    "instructions, logits differ by ~1e-2).")
  flags.DEFINE_bool("everything", False, "Segment everything (automatic.py: 32x32 point grid) "
                    "instead of --prompts; OUT.npz gets masks, iou, stability, boxes, points.")


def _read_image(path: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise PromptError(f"{path}: no such image") from None
  except (UnidentifiedImageError, OSError) as e:
    raise PromptError(f"{path}: cannot read image ({' '.join(str(e).split())})") from None


def _read_prompts(path: str) -> list:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise PromptError(f"{path}: no such prompts file") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PromptError(f"{path}: not valid JSON ({e})") from None


def run(checkpoint: str, image_path: str, prompts_path: str, output: str,
        model: str | None = None, overlay: str | None = None, dtype: str = "float32") -> dict:
  """The CLI's work; returns the arrays written. Raises PromptError / ModelFileError."""
  image = _read_image(image_path)
  # Prompts are checked before the (slower) model load.
  queries = _read_prompts(prompts_path)
  queries_to_arrays(queries, es.EfficientSamConfig().max_num_points)
  base_dir = os.path.dirname(os.path.abspath(prompts_path))
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype)
  # Mask inputs are checked before the (slow) encoder runs.
  masks, _ = queries_mask_inputs(queries, 4 * predictor.config.grid, base_dir)
  if masks is not None and not predictor.is_sam:
    raise PromptError("mask_input needs a SAM or MobileSAM model: EfficientSAM has no "
                      "mask-input path")
  points, labels = queries_to_arrays(queries, predictor.max_points(queries))
  predictor.set_image(image)
  out = predictor.predict_queries(queries, base_dir=base_dir)
  out["image_embeddings"] = predictor.image_embeddings
  try:
    np.savez(output, **out)
    if overlay:
      overlay_image(image, out["logits"], out["iou"], points, labels).save(overlay,
                                                                             format="PNG")
  except OSError as e:
    raise PromptError(f"cannot write output ({' '.join(str(e).split())})") from None
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a restore at INFO
  required = ("checkpoint", "image", "output") + (() if FLAGS.everything else ("prompts",))
  missing = [n for n in required if not FLAGS[n].value]
  if missing:
    _fail(f"missing --{', --'.join(missing)} (see --help)")
  runtime.keep_freed_host_memory()
  if FLAGS.everything:
    from efficientsam_jax import automatic
    try:
      found = automatic.run_cli(FLAGS.checkpoint, _read_image(FLAGS.image), FLAGS.output,
                                FLAGS.model, FLAGS.overlay, dtype=FLAGS.dtype)
    except (PromptError, model_files.ModelFileError) as e:
      _fail(str(e))
    print(f"wrote {FLAGS.output}: {len(found['iou'])} masks")
    return
  try:
    out = run(FLAGS.checkpoint, FLAGS.image, FLAGS.prompts, FLAGS.output, FLAGS.model,
              FLAGS.overlay, FLAGS.dtype)
  except (PromptError, model_files.ModelFileError) as e:
    _fail(str(e))
  print(f"wrote {FLAGS.output}: {out['iou'].shape[0]} queries, logits "
        f"{tuple(out['logits'].shape)}")


def _fail(message: str):
  print(f"predict: error: {message}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # see convert._fail: keeps Orbax's shutdown noise from burying the message


if __name__ == "__main__":
  define_flags()
  app.run(main)
