r"""Promptable segmentation from the command line, with any model the package knows.

  python -m efficientsam_jax.predict --checkpoint=efficient_sam_vitt.pt --image=dogs.png \
      --prompts=prompts.json --output=out.npz [--model=NAME] [--overlay=out.png] \
      [--dtype=bfloat16]
  python -m efficientsam_jax.predict --checkpoint=... --image=dogs.png --everything \
      --output=masks.npz [--overlay=masks.png]

prompts.json is a list of queries, each {"points": [[x, y], ...], "labels": [1, ...]},
{"box": [x1, y1, x2, y2]} or both, in original-image pixels; SAM and MobileSAM queries may add
"mask_input" (inference/queries.py). out.npz holds `logits` (Q, 3, H, W), `low_res_logits`
(Q, 3, 256, 256), `iou` (Q, 3) and `image_embeddings` (256, 64, 64): for EfficientSAM the
released PyTorch model's `forward` outputs, for SAM and MobileSAM SamPredictor's multimask
outputs (SamPredictor.set_image's preprocessing; `--image_resize=torch` for
set_torch_image's). --everything writes the masks of a 32x32 point grid instead
(inference/automatic.py).
`--dtype=bfloat16` computes in bfloat16 with float32 parameters: faster on CPUs with bf16
instructions and on accelerators, logits differ by ~1e-2 (docs/performance.md).
Outputs are written whole or not at all; an output that is one of the inputs is refused, and
an existing one is replaced only with --overwrite. Every path may be gs://BUCKET/....
Mistakes print one line and exit with status 2.
"""
from absl import flags

from efficientsam_jax import cli

flags.DEFINE_string("checkpoint", None, "Released .pt, JAX parameter checkpoint, or workdir.")
flags.DEFINE_string("image", None, "Input image (any format PIL reads; converted to RGB).")
flags.DEFINE_string("prompts", None, "JSON list of queries: {'points','labels'}, {'box'} or "
                    "both; SAM/MobileSAM queries may add 'mask_input' (256x256 logits: a "
                    "nested list or a .npy path).")
flags.DEFINE_string("output", None, "Output .npz: logits, low_res_logits, iou, "
                    "image_embeddings (with --everything: masks, iou, stability, boxes, points).")
flags.DEFINE_string("model", None, "efficientsam_vitt | efficientsam_vits | sam_vit_b | "
                    "sam_vit_l | sam_vit_h | mobile_sam; inferred when omitted.")
flags.DEFINE_string("overlay", None, "Optional PNG: the masks drawn over the image.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype "
                  "(parameters stay float32; bfloat16 is faster on CPUs with bf16 "
                  "instructions, logits differ by ~1e-2).")
flags.DEFINE_bool("overwrite", False, "Replace --output and --overlay if they exist (an "
                  "output that is one of the inputs is refused regardless).")
flags.DEFINE_enum("image_resize", None, ["pil", "torch"], "SAM / MobileSAM: how the image is "
                  "resized to 1024: 'pil' (default) = SamPredictor.set_image (PIL bilinear on "
                  "the uint8 image), 'torch' = set_torch_image's antialiased float resize.")
flags.DEFINE_bool("everything", False, "Segment everything (a 32x32 point grid) instead of "
                  "--prompts.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from efficientsam_jax.errors import UserError
  from efficientsam_jax.inference import files  # after flag parsing: --help stays fast

  required = ("checkpoint", "image", "output") + (() if FLAGS.everything else ("prompts",))
  missing = [n for n in required if not FLAGS[n].value]
  if missing:
    raise UserError(f"missing --{', --'.join(missing)} (see --help)")
  if FLAGS.everything:
    found = files.everything_file(FLAGS.checkpoint, FLAGS.image, FLAGS.output, FLAGS.model,
                                  FLAGS.overlay, FLAGS.dtype, overwrite=FLAGS.overwrite,
                                  image_resize=FLAGS.image_resize)
    print(f"wrote {FLAGS.output}: {len(found['iou'])} masks")
    return
  out = files.predict_file(FLAGS.checkpoint, FLAGS.image, FLAGS.prompts, FLAGS.output,
                           FLAGS.model, FLAGS.overlay, FLAGS.dtype, overwrite=FLAGS.overwrite,
                           image_resize=FLAGS.image_resize)
  print(f"wrote {FLAGS.output}: {out['iou'].shape[0]} queries, logits {out['logits_shape']}")


if __name__ == "__main__":
  cli.run(main, "predict")
