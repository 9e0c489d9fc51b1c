"""What `python -m efficientsam_jax.evaluate` does, as a function: paths checked, ground truth
read, the model loaded, one evaluation pass (runner.py), the metrics and the RLE results
written by process 0, each whole or not at all (io/paths.py: local or gs://)."""
import json

from efficientsam_jax.errors import UserError
from efficientsam_jax.evaluation import annotations, protocols, runner
from efficientsam_jax.io import paths


def run(checkpoint: str, images: str, annotations_path: str, prompt: str | None = "box",
        detections: str | None = None, *, output: str | None = None,
        results: str | None = None, model: str | None = None, box_source: str = "annotation",
        first_click: str = "center", seed: int = 0, batch_images: int = 1,
        read_threads: int = 4, dtype: str | None = None, overwrite: bool = False) -> dict:
  """The tool's work; UserError (one line) on any bad input. prompt: comma-separated
  protocols (`box`, `pointN`) or None/"" for detections only."""
  import jax  # pylint: disable=import-outside-toplevel
  from efficientsam_jax.inference import Predictor  # pylint: disable=import-outside-toplevel

  names = protocols.parse_protocols(prompt) if prompt else []
  if results and not detections:
    raise UserError("--results writes the masks of --detections; give --detections")
  paths.check_outputs({"--output": output, "--results": results},
                      {"--annotations": annotations_path, "--detections": detections,
                       "--checkpoint": checkpoint, "--images": images}, overwrite)
  if not paths.is_dir(images):
    paths.check_bucket(images, "--images")
    raise UserError(f"{images}: no such images folder")
  if batch_images < 1 or read_threads < 1:
    raise UserError("--batch_size and --read_threads must be at least 1")
  gt = annotations.load(annotations_path)
  predictor = Predictor.from_checkpoint(checkpoint, model, dtype=dtype)
  result, masks = runner.evaluate(
      predictor, gt, images, names, detections, box_source=box_source,
      first_click=first_click, seed=seed, batch_images=batch_images, read_threads=read_threads,
      process_index=jax.process_index(), process_count=jax.process_count())
  if jax.process_index() == 0:
    if results:
      paths.write(results, json.dumps(masks))
    if output:
      paths.write(output, json.dumps(result))
  return result
