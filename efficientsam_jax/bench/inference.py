"""Inference benchmarks of an EfficientSAM model through the `Predictor` API.

Records (seconds unless said): compile_seconds (part=encoder|decoder), encoder_seconds,
decoder_seconds_per_query (queries=1 and 64, low-res output), end_to_end_seconds (uint8
image -> full-resolution logits of one box: preprocessing, encoder, decoder, resize, host
copy), everything_seconds (automatic masks from an n x n grid; upscaled_fraction says how
many grid points had a mask above the IoU threshold, the only ones whose masks the decoder
upscales), everything_all_upscaled_seconds (every mask upscaled), their ratios to end to end
and the speed-up over decoding the grid one prompt per call (all timed in the same
interleaved rounds).
"""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax.bench import records
from efficientsam_jax.inference import automatic
from efficientsam_jax.inference.predictor import Predictor
from efficientsam_jax.models import prompt_encoder as pe
from efficientsam_jax.models import registry


def make_predictor(model_name: str, image_size: int, checkpoint: str | None,
                   dtype: str = "float32", query_chunk: int | None = None):
  """The Predictor of a checkpoint, or of random weights (the model's own initialisers)."""
  if checkpoint:
    return Predictor.from_checkpoint(checkpoint, model_name, dtype=dtype,
                                     query_chunk=query_chunk, image_size=image_size)
  config = registry.config(model_name, image_size=image_size)
  params = registry.family_of(model_name).init_params(config)
  return Predictor(params, config, dtype=dtype, query_chunk=query_chunk)


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  """(H, W, 3) uint8: smooth random blobs, so the masks have some structure."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((8, 8, 3))
  rows = np.linspace(0, 7, height).round().astype(int)
  cols = np.linspace(0, 7, width).round().astype(int)
  return (coarse[rows][:, cols] * 255).astype(np.uint8)


def single_point_queries(xy: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
  """(Q, 2) points -> padded points (Q, max_points, 2), labels (Q, max_points)."""
  points = np.full((len(xy), max_points, 2), -1.0, np.float32)
  labels = np.full((len(xy), max_points), pe.LABEL_PADDING, np.float32)
  points[:, 0], labels[:, 0] = xy, pe.LABEL_POSITIVE
  return points, labels


def run(emitter: records.Emitter, model_name: str, image_size: int, checkpoint: str | None,
        repeats: int, points_per_side: int, input_hw: tuple[int, int], dtype: str = "float32",
        query_chunk: int | None = None) -> None:
  predictor = make_predictor(model_name, image_size, checkpoint, dtype, query_chunk)
  height, width = input_hw
  image = test_image(height, width)
  model = predictor.model
  emit = lambda *a, **kw: emitter.emit(*a, **kw, repeats=repeats,
                                       query_chunk=predictor.query_chunk)

  # --- Encoder: compile (ahead of time, from the same function) and steady state --------
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
  x = jnp.asarray(model.preprocess(jnp.asarray(image[None], jnp.float32)))
  seconds, encode_compiled = records.time_compile(encode, predictor.params, x)
  emit("compile_seconds", seconds, "s", part="encoder", batch=1)
  t = records.time_call(lambda: encode_compiled(predictor.params, x), repeats)
  emit("encoder_seconds", t["median"], "s", batch=1, min_seconds=t["min"])

  # --- Decoder through the Predictor: 1 and 64 queries per call --------------------------
  predictor.set_image(image)
  rng = np.random.default_rng(0)
  for queries in (1, 64):
    xy = rng.uniform(0, 1, (queries, 2)).astype(np.float32) * np.asarray([width, height])
    points, labels = single_point_queries(xy, 1)  # the model pads (prompt_length)
    start = time.perf_counter()
    records.block(predictor.predict_arrays(points, labels, full_resolution=False))
    emit("compile_seconds", time.perf_counter() - start, "s", part="decoder", batch=queries,
         note="first call (compile + one run)")
    t = records.time_call(lambda: predictor.predict_arrays(points, labels,
                                                           full_resolution=False), repeats)
    emit("decoder_seconds_per_query", t["median"] / queries, "s", batch=queries,
         queries=queries, min_seconds=t["min"] / queries)

  # --- End to end: uint8 image + one box -> full-resolution logits on the host ----------
  box = np.asarray([[width * 0.25, height * 0.25, width * 0.75, height * 0.75]], np.float32)

  def end_to_end():
    predictor.set_image(image)
    return predictor.predict(boxes=box)["logits"]

  t = records.time_call(end_to_end, repeats)
  emit("end_to_end_seconds", t["median"], "s", batch=1, input_hw=[height, width],
       min_seconds=t["min"])

  # --- Segment everything (points_per_side=0 skips it) -------------------------------------
  if not points_per_side:
    return
  everything_config = automatic.EverythingConfig(points_per_side=points_per_side)
  all_upscaled = dataclasses.replace(everything_config, skip_low_iou_upscaling=False)
  run_all = lambda: automatic.generate(predictor, image, everything_config)["masks"]
  run_full = lambda: automatic.generate(predictor, image, all_upscaled)["masks"]
  grid = points_per_side**2
  grid_points, grid_labels = single_point_queries(
      automatic.point_grid(points_per_side, height, width), 1)
  # The same grid decoded one prompt per call (low-res only; no filtering, no resize): timed
  # on a sample of prompts and scaled to the grid.
  sample = min(grid, 16)
  points, labels = grid_points[:sample], grid_labels[:sample]
  one = lambda: [predictor.predict_arrays(points[i:i + 1], labels[i:i + 1], False)
                 for i in range(sample)]
  # Warm-up (compiles the grid's query bucket), and how many grid points have a mask above
  # the IoU threshold, i.e. are upscaled by default (random weights: typically none).
  thresh = everything_config.pred_iou_thresh
  warm = predictor.predict_arrays(grid_points, grid_labels, False, min_iou=thresh)
  upscaled = float(np.mean(warm["iou"].max(axis=1) > thresh))
  for fn in (run_full, one):
    records.block(fn())
  # Interleaved rounds (end to end, everything, everything with every mask upscaled, one
  # prompt per call), so that the ratios compare runs made under the same load; each ratio
  # is per round, then the median.
  runs = {"e2e": [], "all": [], "full": [], "one": []}
  for _ in range(max(1, repeats // 2)):
    for name, fn in (("e2e", end_to_end), ("all", run_all), ("full", run_full), ("one", one)):
      start = time.perf_counter()
      records.block(fn())
      runs[name].append(time.perf_counter() - start)
  ratio = lambda a, b: float(np.median(np.divide(runs[a], runs[b])))
  for name, key, note in (
      ("everything_seconds", "all", "default: masks failing pred_iou_thresh not upscaled"),
      ("everything_all_upscaled_seconds", "full", "skip_low_iou_upscaling=False")):
    emit(name, float(np.median(runs[key])), "s", batch=1, points=grid,
         input_hw=[height, width], min_seconds=float(np.min(runs[key])), note=note,
         upscaled_fraction=upscaled)
  emit("everything_over_end_to_end", ratio("all", "e2e"), "x", batch=1, points=grid,
       upscaled_fraction=upscaled, note="per interleaved round, median")
  emit("everything_all_upscaled_over_end_to_end", ratio("full", "e2e"), "x", batch=1,
       points=grid, note="per interleaved round, median")
  one_at_a_time = float(np.median(runs["one"])) * grid / sample
  emit("everything_one_prompt_per_call_seconds", one_at_a_time, "s", batch=1, points=grid,
       note=f"{sample} single-prompt decoder calls, scaled to the grid")
  emit("everything_speedup_vs_one_prompt_per_call", ratio("one", "all") * grid / sample, "x",
       batch=1, points=grid, upscaled_fraction=upscaled)
