"""What `python -m efficientsam_jax.predict` does, as functions: inputs read from files, a
Predictor run, results written as .npz (and an overlay PNG)."""
import json
import os

import numpy as np

from efficientsam_jax.errors import UserError, one_line
from efficientsam_jax.inference import automatic, overlay
from efficientsam_jax.inference.predictor import Predictor
from efficientsam_jax.inference.queries import Queries
from efficientsam_jax.io import images


def read_prompts(path: str) -> Queries:
  """A prompts JSON file -> Queries (mask_input paths relative to the file)."""
  try:
    with open(path) as f:
      parsed = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path}: no such prompts file") from None
  except IsADirectoryError:
    raise UserError(f"{path}: is a directory, not a prompts file") from None
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({one_line(e)})") from None
  return Queries.from_json(parsed, os.path.dirname(os.path.abspath(path)))


def _write(path: str, write) -> None:
  try:
    write(path)
  except OSError as e:
    raise UserError(f"cannot write {path} ({e.strerror or e})") from None


def predict_file(checkpoint: str, image_path: str, prompts_path: str, output: str,
                 model: str | None = None, overlay_path: str | None = None,
                 dtype: str = "float32", image_resize: str | None = None) -> dict:
  """Prompts from a file against an image file; writes OUTPUT.npz (logits, low_res_logits,
  iou, image_embeddings) and the optional overlay. Returns the arrays written."""
  image = images.read(image_path)
  queries = read_prompts(prompts_path)  # checked before the (slower) model load
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype,
                                        image_resize=image_resize)
  if queries.has_mask_input and not predictor.supports_mask_input:
    raise UserError(f"mask_input needs a SAM or MobileSAM model: {predictor.config.name} has "
                    "no mask-input path")
  queries.mask_arrays(4 * predictor.config.grid)  # checked before the (slow) encoder runs
  predictor.set_image(image)
  out = predictor.predict_queries(queries)
  out["image_embeddings"] = predictor.image_embeddings
  _write(output, lambda p: np.savez(p, **out))
  if overlay_path:
    points, labels = queries.arrays(queries.longest)
    picture = overlay.overlay_image(image, out["logits"], out["iou"], points, labels)
    _write(overlay_path, lambda p: picture.save(p, format="PNG"))
  return out


def everything_file(checkpoint: str, image_path: str, output: str, model: str | None = None,
                    overlay_path: str | None = None, dtype: str = "float32",
                    config: automatic.EverythingConfig = automatic.EverythingConfig(),
                    image_resize: str | None = None) -> dict:
  """Segments everything in an image file; writes OUTPUT.npz (masks (K, H, W) bool, iou,
  stability, boxes, points, crop_boxes) and the optional overlay. Returns the result."""
  image = images.read(image_path)
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype,
                                        image_resize=image_resize)
  result = automatic.generate(predictor, image, config)
  _write(output, lambda p: np.savez(p, **result))
  if overlay_path:
    picture = overlay.everything_overlay(image, result["masks"], result["iou"], result["points"])
    _write(overlay_path, lambda p: picture.save(p, format="PNG"))
  return result
