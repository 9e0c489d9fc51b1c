r"""Runs a training config's teacher once over its dataset and writes the targets (bfloat16)
to a cache that the trainer reads instead of running the teacher.

  python -m efficientsam_jax.cache_teacher --config=configs/mobilesam_distill.py \
      --config.data.path=SA1B_IMAGES --config.teacher.checkpoint=sam_vit_h_4b8939.pth \
      --output=/data/vit_h_targets
  python -m efficientsam_jax.main --config=configs/mobilesam_distill.py --workdir=/runs/distill \
      --config.data.path=SA1B_IMAGES --config.teacher.cache_dir=/data/vit_h_targets

Every process (the same command on every host, as for training) writes its own shards
(shard S belongs to process S mod the process count; the process index is in the file name).
Running it again with the same --output finishes what is missing and skips complete shards;
partial ones are rewritten. Layout and record format: efficientsam_jax/data/teacher_cache.py.
Progress (records, rate, ETA) goes to the log. Mistakes print one line and exit with 2.
"""
from absl import flags, logging
from ml_collections import config_flags

from efficientsam_jax import cli

config_flags.DEFINE_config_file("config", None, "Training config file[:variant] whose teacher "
                                "and dataset are cached.", lock_config=True)
flags.DEFINE_string("output", None, "Cache directory (new, empty, or a cache of the same "
                    "config to resume). Train with --config.teacher.cache_dir=DIR.")
flags.DEFINE_integer("batch_size", None, "Images per teacher call on this process (a multiple "
                     "of its local device count); default: the config's batch_size divided "
                     "by the process count, which gives the teacher the per-device batch of "
                     "training (its bf16 results depend on it, at the level of bf16 noise).")
flags.DEFINE_integer("records_per_shard", 0, "Targets per shard file; 0: about 512 MiB of "
                     "targets per shard.")
flags.DEFINE_integer("num_processes", None, "As for efficientsam_jax.main.")
flags.DEFINE_integer("process_id", None, "As for efficientsam_jax.main.")
flags.mark_flags_as_required(["config", "output"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from efficientsam_jax.tasks.sami import cache  # after flag parsing: --help stays fast
  from efficientsam_jax.train import runtime

  runtime.initialize_distributed(FLAGS.num_processes, FLAGS.process_id)
  stats = cache.write_cache(FLAGS.config, FLAGS.output, FLAGS.batch_size,
                            FLAGS.records_per_shard)
  logging.info("teacher cache: %s", stats)
  print(f"wrote {stats['records']} targets to {FLAGS.output} in {stats['seconds']:.1f}s "
        f"({stats['skipped_shards']} shards were already complete)")


if __name__ == "__main__":
  cli.run(main, "cache_teacher")
