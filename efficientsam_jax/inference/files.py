"""What `python -m efficientsam_jax.predict` does, as functions: inputs read from files, a
Predictor run, results written as .npz (and an overlay PNG), each whole or not at all;
full-resolution logits streamed to the file a chunk at a time (io/npz.py), so any number of
queries fits in memory."""
import json
import os
import shutil

import numpy as np

from efficientsam_jax.errors import UserError, one_line
from efficientsam_jax.inference import automatic, overlay
from efficientsam_jax.inference.predictor import Predictor
from efficientsam_jax.inference.queries import Queries
from efficientsam_jax.io import images, npz, paths


def _object_without_repeated_keys(pairs) -> dict:
  """json's object hook: a key given twice ({"box": A, "box": B}) is ambiguous, not B."""
  keys = [k for k, _ in pairs]
  repeated = sorted({k for k in keys if keys.count(k) > 1})
  if repeated:
    raise ValueError(f"key {repeated[0]!r} appears twice in one object")
  return dict(pairs)


def read_prompts(path: str) -> Queries:
  """A prompts JSON file -> Queries (mask_input paths relative to the file)."""
  data = paths.read_input(path, "prompts file")
  try:
    parsed = json.loads(data, object_pairs_hook=_object_without_repeated_keys)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({one_line(e)})") from None
  except RecursionError:
    raise UserError(f"{path}: not a prompts file (nested too deeply)") from None
  except ValueError as e:  # a repeated key
    raise UserError(f"{path}: {e}") from None
  return Queries.from_json(parsed, paths.dirname(paths.absolute(path)))


def npz_path(output: str) -> str:
  """Where the arrays go: np.savez's rule, `.npz` added unless the name has it."""
  return output if output.endswith(".npz") else output + ".npz"


def check_outputs(checkpoint: str, image_path: str, prompts_path: str | None, output: str,
                  overlay_path: str | None, overwrite: bool) -> None:
  """The outputs are neither an input nor each other, and (without overwrite) new."""
  paths.check_outputs({"--output": npz_path(output), "--overlay": overlay_path},
                      {"--checkpoint": checkpoint, "--image": image_path,
                       "--prompts": prompts_path}, overwrite)


def _save_npz(path: str, arrays: dict) -> None:
  paths.write_with(npz_path(path), lambda f: np.savez(f, **arrays))


def _save_png(path: str, picture) -> None:
  paths.write_with(path, lambda f: picture.save(f, format="PNG"))


# Full-resolution logits are upscaled and written this many bytes at a time.
STREAM_CHUNK_BYTES = 256 << 20


def _check_disk(path: str, needed: int) -> None:
  """UserError when a local output's folder has less free space than the file needs."""
  if "://" in path:
    return
  folder = os.path.dirname(os.path.abspath(path))
  try:
    free = shutil.disk_usage(folder).free
  except OSError:
    return  # a missing folder fails at the write, with its own message
  if free < needed:
    raise UserError(f"{path} would take {needed / 2**30:.1f} GiB but {folder} has "
                    f"{free / 2**30:.1f} GiB free (fewer queries, or another --output)")


def predict_file(checkpoint: str, image_path: str, prompts_path: str, output: str,
                 model: str | None = None, overlay_path: str | None = None,
                 dtype: str = "float32", overwrite: bool = False,
                 image_resize: str | None = None) -> dict:
  """Prompts from a file against an image file; writes OUTPUT.npz (logits, low_res_logits,
  iou, image_embeddings) and the optional overlay, each whole or not at all. An output that
  is an input, or (without overwrite) exists, is refused first. The full-resolution logits
  are upscaled and written a chunk at a time (never all in memory; the free disk space is
  checked first). Returns what was written except the logits, and their shape as
  "logits_shape"."""
  check_outputs(checkpoint, image_path, prompts_path, output, overlay_path, overwrite)
  image = images.read(image_path)
  queries = read_prompts(prompts_path)  # checked before the (slower) model load
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype,
                                        image_resize=image_resize)
  if queries.has_mask_input and not predictor.supports_mask_input:
    raise UserError(f"mask_input needs a SAM or MobileSAM model: {predictor.config.name} has "
                    "no mask-input path")
  # Checked before the (slow) encoder runs:
  queries.mask_arrays(4 * predictor.config.grid)
  predictor.check_queries(queries, image.shape[:2])
  h, w = image.shape[:2]
  q, side, g = len(queries), 4 * predictor.config.grid, predictor.config.grid
  _check_disk(output, npz.npz_bytes({
      "logits": ((q, 3, h, w), np.float32), "low_res_logits": ((q, 3, side, side), np.float32),
      "iou": ((q, 3), np.float32), "image_embeddings": ((256, g, g), np.float32)}))
  predictor.set_image(image)
  out = predictor.predict_queries(queries, full_resolution=False)
  out["image_embeddings"] = predictor.image_embeddings
  canvas = overlay.MaskCanvas(image) if overlay_path else None
  per_chunk = max(1, STREAM_CHUNK_BYTES // (3 * h * w * 4))

  def logits_chunks():
    for start in range(0, q, per_chunk):
      logits = predictor.upscale(out["low_res_logits"][start:start + per_chunk])
      if canvas is not None:
        canvas.add(logits, out["iou"][start:start + per_chunk])
      yield logits

  def write(f):
    with npz.NpzWriter(f) as writer:
      writer.add_chunks("logits", (q, 3, h, w), np.float32, logits_chunks())
      for name in ("low_res_logits", "iou", "image_embeddings"):
        writer.add(name, out[name])

  paths.write_with(npz_path(output), write)
  if overlay_path:
    points, labels = queries.arrays(queries.longest)
    _save_png(overlay_path, canvas.picture(points, labels))
  return {**out, "logits_shape": (q, 3, h, w)}


def everything_file(checkpoint: str, image_path: str, output: str, model: str | None = None,
                    overlay_path: str | None = None, dtype: str = "float32",
                    config: automatic.EverythingConfig = automatic.EverythingConfig(),
                    overwrite: bool = False, image_resize: str | None = None) -> dict:
  """Segments everything in an image file; writes OUTPUT.npz (masks (K, H, W) bool, iou,
  stability, boxes, points, crop_boxes) and the optional overlay (as predict_file). Returns
  the result."""
  check_outputs(checkpoint, image_path, None, output, overlay_path, overwrite)
  image = images.read(image_path)
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype,
                                        image_resize=image_resize)
  result = automatic.generate(predictor, image, config)
  _save_npz(output, result)
  if overlay_path:
    _save_png(overlay_path, overlay.everything_overlay(image, result["masks"], result["iou"],
                                                       result["points"]))
  return result
