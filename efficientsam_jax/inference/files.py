"""What `python -m efficientsam_jax.predict` does, as functions: inputs read from files, a
Predictor run, results written as .npz (and an overlay PNG)."""
import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import automatic, overlay
from efficientsam_jax.inference.predictor import Predictor
from efficientsam_jax.inference.queries import Queries
from efficientsam_jax.io import images, paths


def read_prompts(path: str) -> Queries:
  """A prompts JSON file -> Queries (mask_input paths relative to the file)."""
  parsed = paths.read_json(path, "prompts file")
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


def predict_file(checkpoint: str, image_path: str, prompts_path: str, output: str,
                 model: str | None = None, overlay_path: str | None = None,
                 dtype: str = "float32", overwrite: bool = False) -> dict:
  """Prompts from a file against an image file; writes OUTPUT.npz (logits, low_res_logits,
  iou, image_embeddings) and the optional overlay, each whole or not at all. An output that
  is an input, or (without overwrite) exists, is refused first. Returns the arrays."""
  check_outputs(checkpoint, image_path, prompts_path, output, overlay_path, overwrite)
  image = images.read(image_path)
  queries = read_prompts(prompts_path)  # checked before the (slower) model load
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype)
  if queries.has_mask_input and not predictor.supports_mask_input:
    raise UserError(f"mask_input needs a SAM or MobileSAM model: {predictor.config.name} has "
                    "no mask-input path")
  queries.mask_arrays(4 * predictor.config.grid)  # checked before the (slow) encoder runs
  predictor.set_image(image)
  out = predictor.predict_queries(queries)
  out["image_embeddings"] = predictor.image_embeddings
  _save_npz(output, out)
  if overlay_path:
    points, labels = queries.arrays(queries.longest)
    _save_png(overlay_path,
              overlay.overlay_image(image, out["logits"], out["iou"], points, labels))
  return out


def everything_file(checkpoint: str, image_path: str, output: str, model: str | None = None,
                    overlay_path: str | None = None, dtype: str = "float32",
                    config: automatic.EverythingConfig = automatic.EverythingConfig(),
                    overwrite: bool = False) -> dict:
  """Segments everything in an image file; writes OUTPUT.npz (masks (K, H, W) bool, iou,
  stability, boxes, points, crop_boxes) and the optional overlay (as predict_file). Returns
  the result."""
  check_outputs(checkpoint, image_path, None, output, overlay_path, overwrite)
  image = images.read(image_path)
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype)
  result = automatic.generate(predictor, image, config)
  _save_npz(output, result)
  if overlay_path:
    _save_png(overlay_path, overlay.everything_overlay(image, result["masks"], result["iou"],
                                                       result["points"]))
  return result
