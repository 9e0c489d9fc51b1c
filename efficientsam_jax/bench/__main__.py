r"""Benchmarks; one JSON object per line on stdout (name, value, unit and the settings).

  python -m efficientsam_jax.bench --suite=inference --model=efficientsam_vitt \
      [--checkpoint=PATH] [--image-size=1024] [--repeats=5] [--compare-torch] \
      [--dtype=float32|bfloat16] [--query-chunk=N]
  python -m efficientsam_jax.bench --suite=onnx --model=efficientsam_vitt [--checkpoint=PATH] \
      [--input-height=H --input-width=W] [--threads=N]
  python -m efficientsam_jax.bench --suite=train --config=configs/sami_vitt.py:teacher=vit_b \
      --config.batch_size=32 --config.teacher.random_init=True --config.data.source=demo
  python -m efficientsam_jax.bench --suite=data --config=configs/efficientsam_vitt.py \
      [--data-images=8] [--report=COMPILE_FOR_REPORT.json]

--dtype is the compute dtype of the inference suite and of the torch comparison (parameters
stay float32; bfloat16 = bf16 matrix products, models/precision.py); the train suite takes its
dtypes from the config (--config.student.dtype, --config.teacher.dtype).
--suite=onnx exports the model to ONNX (convert --format=onnx) and times onnxruntime's CPU
encoder and decoder next to ours on the same image and box (bench/onnx_compare.py).
Compile time is its own record (`compile_seconds`); every time is a median of `--repeats`
runs after a warm-up, with the min and the machine's 1-minute load average next to it.
Flags may be spelled with dashes or underscores (--image-size = --image_size).
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

from efficientsam_jax import cli

SUITES = ("inference", "onnx", "train", "data")

flags.DEFINE_enum("suite", "inference", SUITES, "What to measure.")
flags.DEFINE_string("model", "efficientsam_vitt", "A model name (inference suite; "
                    "efficientsam_vitt, sam_vit_b, mobile_sam, ...).")
flags.DEFINE_string("checkpoint", None, "Weights (released .pt, JAX checkpoint, workdir); "
                    "random weights when omitted.")
flags.DEFINE_integer("image_size", 1024, "Encoder input size (a multiple of 16).")
flags.DEFINE_integer("input_height", None, "Height of the test image; default image_size.")
flags.DEFINE_integer("input_width", None, "Width of the test image; default image_size.")
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (after warm-up); the median is "
                     "reported.")
flags.DEFINE_integer("points_per_side", 32, "Segment-everything grid (n x n points); 0 "
                     "skips segment everything.")
flags.DEFINE_bool("compare_torch", False, "Also time segment-anything's PyTorch ViT-B encoder "
                  "against ours on the same weights and image.")
flags.DEFINE_integer("torch_image_size", None, "Image size of the torch comparison; default "
                     "image_size.")
flags.DEFINE_integer("threads", None, "Threads for PyTorch (--compare-torch) or onnxruntime "
                     "(--suite=onnx); default: the "
                     "host's cores (what XLA's CPU client uses).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of the "
                  "inference suite and the torch comparison.")
flags.DEFINE_integer("query_chunk", None, "Queries per decoder step (Predictor query_chunk); "
                     "default inference.predictor.QUERY_CHUNK.")
flags.DEFINE_integer("data_batches", 5, "Batches drawn to time the input pipeline (train).")
flags.DEFINE_integer("matmul_size", 2048, "Side of the float32 matmul that measures the peak.")
flags.DEFINE_integer("data_images", 8, "Generated 1500x2250 SA-1B-like images the data suite "
                     "times its transform on.")
flags.DEFINE_string("report", None, "A --config.compile_for JSON report: the data suite says "
                    "how many host cores feed that slice at 40% MFU.")
config_flags.DEFINE_config_file("config", None, "Config file[:variant] (train, data suites).",
                                lock_config=True)
flags.DEFINE_bool("keep_host_memory", True, "Keep freed host memory for reuse (cli."
                  "keep_freed_host_memory, as every entry point does); --nokeep_host_memory "
                  "measures glibc's defaults.")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  # Imported after flag parsing, so --help stays fast.
  from efficientsam_jax.bench import records
  from efficientsam_jax.errors import UserError
  from efficientsam_jax.models import registry

  kept = FLAGS.keep_host_memory and cli.keep_freed_host_memory()
  if FLAGS.image_size <= 0 or FLAGS.image_size % 16:
    raise UserError(f"--image-size must be a positive multiple of 16, got {FLAGS.image_size}")
  if FLAGS.repeats < 1:
    raise UserError("--repeats must be at least 1")
  if FLAGS.suite == "inference":
    from efficientsam_jax.bench import inference
    registry.family_of(FLAGS.model)  # an unknown name fails here
    if FLAGS.query_chunk is not None and FLAGS.query_chunk < 1:
      raise UserError("--query-chunk must be at least 1")
    emitter = records.Emitter(suite="inference", model=FLAGS.model,
                              image_size=FLAGS.image_size, batch=1, dtype=FLAGS.dtype,
                              host_memory_kept=kept)
    hw = (FLAGS.input_height or FLAGS.image_size, FLAGS.input_width or FLAGS.image_size)
    inference.run(emitter, FLAGS.model, FLAGS.image_size, FLAGS.checkpoint, FLAGS.repeats,
                  FLAGS.points_per_side, hw, dtype=FLAGS.dtype, query_chunk=FLAGS.query_chunk)
    if FLAGS.compare_torch:
      from efficientsam_jax.bench import torch_compare, torch_reference
      try:
        torch_reference.sam_image_encoder_class()
      except ImportError as e:
        raise UserError(f"--compare-torch needs torch and segment_anything ({e})") from None
      torch_compare.run(records.Emitter(suite="compare_torch", host_memory_kept=kept),
                        FLAGS.torch_image_size or FLAGS.image_size, FLAGS.repeats,
                        FLAGS.threads or os.cpu_count(), dtype=FLAGS.dtype)
  elif FLAGS.suite == "data":
    from efficientsam_jax.bench import data
    config = FLAGS.config
    if config is None:
      raise UserError("--suite=data needs --config=configs/NAME.py[:VARIANT]")
    if FLAGS.data_images < 1:
      raise UserError("--data-images must be at least 1")
    emitter = records.Emitter(suite="data", config=config.trainer,
                              image_size=config.data.image_size, host_memory_kept=kept)
    data.run(emitter, config, FLAGS.repeats, FLAGS.data_images, FLAGS.report)
  elif FLAGS.suite == "onnx":
    from efficientsam_jax.bench import inference, onnx_compare
    registry.family_of(FLAGS.model)
    try:
      import onnxruntime  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      import jax2onnx  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise UserError(f'--suite=onnx needs the onnx extra ({e}): pip install -e ".[onnx]"'
                      ) from None
    predictor = inference.make_predictor(FLAGS.model, FLAGS.image_size, FLAGS.checkpoint,
                                         FLAGS.dtype)
    hw = (FLAGS.input_height or FLAGS.image_size, FLAGS.input_width or FLAGS.image_size)
    emitter = records.Emitter(suite="onnx", model=FLAGS.model, image_size=FLAGS.image_size,
                              batch=1, dtype=FLAGS.dtype, host_memory_kept=kept)
    onnx_compare.run(emitter, predictor, inference.test_image(*hw), FLAGS.repeats,
                     FLAGS.threads)
  else:
    from efficientsam_jax.bench import train
    config = FLAGS.config
    if config is None:
      raise UserError("--suite=train needs --config=configs/NAME.py[:VARIANT]")
    emitter = records.Emitter(suite="train", model=f"sami_{config.student.size}",
                              image_size=config.data.image_size, batch=config.batch_size,
                              dtype=config.student.dtype, teacher=config.teacher.size,
                              teacher_dtype=config.teacher.dtype, host_memory_kept=kept)
    train.run(emitter, config, FLAGS.repeats, FLAGS.data_batches, FLAGS.matmul_size)


def _underscore_flag_names(argv: list[str]) -> list[str]:
  """--image-size=N -> --image_size=N (absl names use underscores); values are untouched."""
  out = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config."):
      name, sep, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + sep + value
    out.append(arg)
  return out


if __name__ == "__main__":
  cli.run(main, "bench", keep_host_memory=False, argv=_underscore_flag_names(sys.argv))
