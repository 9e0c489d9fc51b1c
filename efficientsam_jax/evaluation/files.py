"""What `python -m efficientsam_jax.evaluate` does, as a function: paths checked, ground truth
read, the model loaded, one evaluation pass (runner.py), the metrics and the RLE results
written by process 0 (each file through a temporary name and a rename, so no half-written
file is left behind)."""
import json
import os

from efficientsam_jax.errors import UserError
from efficientsam_jax.evaluation import annotations, protocols, runner


def _same_file(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs: dict, inputs: dict) -> None:
  """UserError when an output path names an input, another output or a directory."""
  named = {flag: path for flag, path in outputs.items() if path}
  for flag, path in named.items():
    for other, source in inputs.items():
      if source and os.path.exists(source) and _same_file(path, source):
        raise UserError(f"--{flag}={path} is the --{other} input; choose another path")
    if os.path.isdir(path):
      raise UserError(f"--{flag}={path} is a directory")
  if len(named) == 2 and _same_file(*named.values()):
    raise UserError("--output and --results name the same file")


def write_json(path: str, value) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(value, f)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def run(checkpoint: str, images: str, annotations_path: str, prompt: str | None = "box",
        detections: str | None = None, *, output: str | None = None,
        results: str | None = None, model: str | None = None, box_source: str = "annotation",
        first_click: str = "center", seed: int = 0, batch_images: int = 1,
        read_threads: int = 4, dtype: str | None = None) -> dict:
  """The tool's work; UserError (one line) on any bad input. prompt: comma-separated
  protocols (`box`, `pointN`) or None/"" for detections only."""
  import jax  # pylint: disable=import-outside-toplevel
  from efficientsam_jax.inference import Predictor  # pylint: disable=import-outside-toplevel

  names = protocols.parse_protocols(prompt) if prompt else []
  if results and not detections:
    raise UserError("--results writes the masks of --detections; give --detections")
  check_outputs({"output": output, "results": results},
                {"annotations": annotations_path, "detections": detections,
                 "checkpoint": checkpoint})
  if not os.path.isdir(images):
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
      write_json(results, masks)
    if output:
      write_json(output, result)
  return result
