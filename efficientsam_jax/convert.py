r"""Converts EfficientSAM, SAM and MobileSAM weights between PyTorch files and JAX checkpoints.

  python -m efficientsam_jax.convert --input=efficient_sam_vitt.pt --output=/tmp/vitt_jax
  python -m efficientsam_jax.convert --input=/tmp/vitt_jax --output=again.pt
  python -m efficientsam_jax.convert --input=SAMI_WORKDIR --output=vit_tiny.pt --format=timm
  python -m efficientsam_jax.convert --input=efficient_sam_vitt.pt --output=onnx_dir --format=onnx
  python -m efficientsam_jax.convert --input=WORKDIR --output=model.safetensors --format=safetensors

The direction comes from the paths: an existing directory as input is a JAX parameter
checkpoint (or a training workdir: its latest checkpoint); an output ending in .pt/.pth is a
PyTorch file. PyTorch -> JAX -> PyTorch gives back identical tensors (names, shapes, dtypes,
bits). `--format=onnx` writes NAME_encoder.onnx and NAME_decoder.onnx into the --output folder
(EfficientSAM with the official release's ONNX interface, SAM and MobileSAM with
segment-anything's; efficientsam_jax/export/onnx_export.py), `--format=safetensors` the
released state_dict as a .safetensors file; both take any input. Nothing existing is
overwritten. Mistakes print one line and exit with status 2.
"""
from absl import flags

from efficientsam_jax import cli

flags.DEFINE_string("input", None, "PyTorch file, JAX parameter checkpoint, or training workdir.")
flags.DEFINE_string("output", None, "Output: a .pt/.pth file or a new JAX checkpoint directory.")
flags.DEFINE_string("model", None, "efficientsam_vitt | efficientsam_vits | sam_vit_b | "
                    "sam_vit_l | sam_vit_h | mobile_sam; inferred from the tensors when "
                    "omitted.")
flags.DEFINE_enum("format", "released",
                  ["released", "state_dict", "timm", "onnx", "safetensors"],
                  "Output layout: 'released' = as the model ships ({'model': "
                  "state_dict} for EfficientSAM, a bare state_dict for SAM and MobileSAM); "
                  "'state_dict' = a bare state_dict; 'timm' = the image encoder only, named "
                  "like timm's vit_{tiny,small}_patch16_224 (no cls_token, norm, head: load "
                  "with strict=False), e.g. from a SAMI workdir; 'onnx' = NAME_encoder.onnx "
                  "and NAME_decoder.onnx in the --output folder (needs the onnx extra); "
                  "'safetensors' = the released state_dict as a .safetensors file.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from efficientsam_jax.errors import UserError
  from efficientsam_jax.io import model_files  # after flag parsing: --help stays fast

  if not FLAGS.input or not FLAGS.output:
    raise UserError("--input and --output are required (see --help)")
  name = model_files.convert(FLAGS.input, FLAGS.output, FLAGS.model, FLAGS.format)
  if FLAGS.format == "onnx":
    print(f"wrote {name}: {FLAGS.output}/{name}_encoder.onnx, {FLAGS.output}/{name}_decoder.onnx")
  else:
    print(f"wrote {name}: {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main, "convert")
