r"""Converts EfficientSAM, SAM and MobileSAM weights between PyTorch files and JAX checkpoints.

  python -m efficientsam_jax.convert --input=efficient_sam_vitt.pt --output=/tmp/vitt_jax
  python -m efficientsam_jax.convert --input=/tmp/vitt_jax --output=again.pt
  python -m efficientsam_jax.convert --input=SAMI_WORKDIR --output=vit_tiny.pt --format=timm

The direction comes from the paths: an existing directory as input is a JAX parameter
checkpoint (or a training workdir: its latest checkpoint); an output ending in .pt/.pth is a
PyTorch file. PyTorch -> JAX -> PyTorch gives back identical tensors (names, shapes, dtypes,
bits). Mistakes print one line on stderr and exit with status 1.
"""
import os
import sys

from absl import app, flags, logging

from efficientsam_jax import model_files

FLAGS = flags.FLAGS


def define_flags():
  """Declared at run time, not import time: convert and predict share flag names and
  tests import both into one process."""
  flags.DEFINE_string("input", None, "PyTorch file, JAX parameter checkpoint, or training workdir.")
  flags.DEFINE_string("output", None, "Output: a .pt/.pth file or a new JAX checkpoint directory.")
  flags.DEFINE_string("model", None, "efficientsam_vitt | efficientsam_vits | sam_vit_b | "
                      "sam_vit_l | sam_vit_h | mobile_sam; inferred from the tensors when "
                      "omitted.")
  flags.DEFINE_enum("format", "released", ["released", "state_dict", "timm"],
                    "PyTorch output layout: 'released' = as the model ships ({'model': "
                    "state_dict} for EfficientSAM, a bare state_dict for SAM and MobileSAM); "
                    "'state_dict' = a bare state_dict; 'timm' = the image encoder only, named "
                    "like timm's vit_{tiny,small}_patch16_224 (no cls_token, norm, head: load "
                    "with strict=False), e.g. from a SAMI workdir.")


def convert(input_path: str, output_path: str, model: str | None = None,
            torch_format: str = "released") -> str:
  """Converts one file/directory; returns the model name. Raises ModelFileError."""
  to_torch = model_files.is_torch_path(output_path)
  from_jax = os.path.isdir(input_path)
  if from_jax == (not to_torch):
    want = "a .pt/.pth output" if from_jax else "a directory output (not .pt/.pth)"
    raise model_files.ModelFileError(
        f"cannot convert {input_path} -> {output_path}: a {'JAX directory' if from_jax else 'file'}"
        f" input needs {want}")
  if torch_format == "timm" and not to_torch:
    raise model_files.ModelFileError("--format=timm writes a .pt/.pth file")
  name, params = model_files.load(input_path, model)
  if torch_format == "timm":
    model_files.save_timm(output_path, params)
  elif to_torch:
    model_files.save_torch(output_path, name, params, plain=torch_format == "state_dict")
  else:
    model_files.save_jax(output_path, name, params, source=input_path)
  return name


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO
  if not FLAGS.input or not FLAGS.output:
    _fail("--input and --output are required (see --help)")
  try:
    name = convert(FLAGS.input, FLAGS.output, FLAGS.model, FLAGS.format)
  except model_files.ModelFileError as e:
    _fail(str(e))
  print(f"wrote {name}: {FLAGS.output}")


def _fail(message: str):
  print(f"convert: error: {message}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  # os._exit, not sys.exit: after a failed Orbax read, its background threads print an
  # asyncio traceback while the interpreter shuts down, which would bury the one-line error.
  os._exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
