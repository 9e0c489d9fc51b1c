r"""Evaluates a promptable segmenter the way the EfficientSAM paper does.

  python -m efficientsam_jax.evaluate --checkpoint=PATH --images=DIR --annotations=COCO.json \
      --prompt={box,point1,point3} [--output=RESULT.json]
  python -m efficientsam_jax.evaluate --checkpoint=PATH --images=DIR --annotations=COCO.json \
      --detections=DETS.json [--output=RESULT.json]

Protocols and outputs: efficientsam_jax/evaluation/coco.py. Every path may be gs://. The
result file is written whole or not at all; an --output that is an input is refused, an
existing one is replaced only with --overwrite. Mistakes print one line and exit with status 2.
"""
import json

from absl import flags

from efficientsam_jax import cli

flags.DEFINE_string("checkpoint", None, "Released .pt, JAX parameter checkpoint, or workdir.")
flags.DEFINE_string("images", None, "Folder the COCO file_name entries are relative to.")
flags.DEFINE_string("annotations", None, "COCO instances JSON (RLE or polygon masks).")
flags.DEFINE_string("prompt", "box", "box | point1 | point3 (single-prompt mIoU).")
flags.DEFINE_string("detections", None, "COCO results JSON of a detector: its boxes prompt "
                    "the model and the output is mask AP (COCOeval segm).")
flags.DEFINE_string("output", None, "Optional: write the result JSON here.")
flags.DEFINE_string("model", None, "A model name (see convert --help); inferred when omitted.")
flags.DEFINE_integer("seed", 0, "Seed of the click sampling (point1, point3).")
flags.DEFINE_bool("overwrite", False, "Replace --output if it exists (an output that is one of "
                  "the inputs is refused regardless).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from efficientsam_jax.errors import UserError
  from efficientsam_jax.evaluation import coco  # after flag parsing: --help stays fast
  from efficientsam_jax.io import paths

  missing = [n for n in ("checkpoint", "images", "annotations") if not FLAGS[n].value]
  if missing:
    raise UserError(f"missing --{', --'.join(missing)} (see --help)")
  paths.check_outputs({"--output": FLAGS.output},
                      {f"--{n}": FLAGS[n].value for n in ("checkpoint", "images", "annotations",
                                                          "detections")}, FLAGS.overwrite)
  result = coco.run(FLAGS.checkpoint, FLAGS.images, FLAGS.annotations, FLAGS.prompt,
                    FLAGS.detections, FLAGS.model, FLAGS.seed)
  if FLAGS.output:
    paths.write(FLAGS.output, json.dumps(result))
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main, "evaluate")
