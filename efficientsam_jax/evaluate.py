r"""Evaluates a promptable segmenter the way the SAM and EfficientSAM papers do.

  python -m efficientsam_jax.evaluate --checkpoint=PATH --images=DIR --annotations=COCO.json \
      --prompt=box,point1,point3 [--output=RESULT.json]
  python -m efficientsam_jax.evaluate --checkpoint=PATH --images=DIR --annotations=LVIS.json \
      --detections=DETS.json [--results=MASKS.json] [--output=RESULT.json]

--prompt: `box` (the annotation's box), `pointN` (N clicks of SAM's protocol; the result has
the mIoU after each click, `miou_per_click`), several separated by commas. --detections: a
detector's COCO results; each box prompts the model and the best mask is scored as mask AP
(pycocotools for COCO, the LVIS API for LVIS v1), written as COCO RLE results with
--results. Protocols: efficientsam_jax/evaluation/protocols.py and detections.py.

Output: one protocol -> {"miou", "count", "skipped_annotations", ...} (or the AP keys);
several -> {"box": {...}, "point3": {...}, "detections": {...}} with, in both cases,
"images", "skipped_images", "seconds", "images_per_sec".

Several processes (TPU pods, Slurm, or JAX_COORDINATOR_ADDRESS with --num_processes and
--process_id) share the images; process 0 prints and writes. Every path may be gs://. Result
files are written whole or not at all; an output that is an input is refused, an existing one
is replaced only with --overwrite. Mistakes print one line and exit with status 2.
"""
import json

from absl import flags

from efficientsam_jax import cli

flags.DEFINE_string("checkpoint", None, "Released .pt, JAX parameter checkpoint, or workdir.")
flags.DEFINE_string("images", None, "Folder of the images (COCO file_name, or the file name "
                    "of LVIS's coco_url).")
flags.DEFINE_string("annotations", None, "COCO or LVIS v1 instances JSON (RLE or polygons).")
flags.DEFINE_string("prompt", "box", "box | pointN (point1, point3, ...), or several "
                    "separated by commas. With --detections and no --prompt: AP only.")
flags.DEFINE_string("detections", None, "COCO results JSON of a detector: its boxes prompt "
                    "the model; prints mask AP.")
flags.DEFINE_string("results", None, "Optional, with --detections: write the masks as COCO "
                    "RLE results here.")
flags.DEFINE_string("output", None, "Optional: write the result JSON here.")
flags.DEFINE_string("model", None, "A model name (see convert --help); inferred when omitted.")
flags.DEFINE_enum("box", "annotation", ["annotation", "mask"], "Box prompts from the "
                  "annotation's bbox (the papers) or the extreme pixels of its mask.")
flags.DEFINE_enum("first_click", "center", ["center", "random"], "First click at the point "
                  "farthest from the boundary (SAM's default) or uniform inside the mask.")
flags.DEFINE_integer("seed", 0, "Seed of --first_click=random.")
flags.DEFINE_integer("batch_size", 1, "Images per image-encoder call.")
flags.DEFINE_integer("read_threads", 4, "Threads reading and decoding images ahead.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the "
                  "model's).")
flags.DEFINE_integer("num_processes", None, "Processes in the job, where the cluster does not "
                     "say (with JAX_COORDINATOR_ADDRESS); default $JAX_NUM_PROCESSES.")
flags.DEFINE_integer("process_id", None, "This process's index, where the cluster does not say;"
                     " default $JAX_PROCESS_ID.")
flags.DEFINE_bool("overwrite", False, "Replace --output / --results if they exist (an output "
                  "that is one of the inputs is refused regardless).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax  # after flag parsing: --help stays fast

  from efficientsam_jax.errors import UserError
  from efficientsam_jax.evaluation import files
  from efficientsam_jax.train import runtime

  missing = [n for n in ("checkpoint", "images", "annotations") if not FLAGS[n].value]
  if missing:
    raise UserError(f"missing --{', --'.join(missing)} (see --help)")
  runtime.initialize_distributed(FLAGS.num_processes, FLAGS.process_id)
  prompt = FLAGS.prompt if FLAGS["prompt"].present or not FLAGS.detections else None
  result = files.run(FLAGS.checkpoint, FLAGS.images, FLAGS.annotations, prompt,
                     FLAGS.detections, output=FLAGS.output, results=FLAGS.results,
                     model=FLAGS.model, box_source=FLAGS.box, first_click=FLAGS.first_click,
                     seed=FLAGS.seed, batch_images=FLAGS.batch_size,
                     read_threads=FLAGS.read_threads, dtype=FLAGS.dtype,
                     overwrite=FLAGS.overwrite)
  if jax.process_index() == 0:
    print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main, "evaluate")
