r"""Runs a training config's teacher once over its dataset and writes the targets (bfloat16)
to a cache that the trainer reads instead of running the teacher.

  python -m efficientsam_jax.cache_teacher --config=configs/mobilesam_distill.py \
      --config.data.path=SA1B_IMAGES --config.teacher.checkpoint=sam_vit_h_4b8939.pth \
      --output=/data/vit_h_targets
  python -m efficientsam_jax.main --config=configs/mobilesam_distill.py --workdir=/runs/distill \
      --config.data.path=SA1B_IMAGES --config.teacher.cache_dir=/data/vit_h_targets

Every process (the same command on every host, as for training) writes its own shards
(shard S belongs to process S mod the process count; the process index is in the file name)
with the teacher jitted over its local devices, the batch split between them. Running it
again with the same --output finishes what is missing and skips complete shards; partial ones
are rewritten. Layout and record format: efficientsam_jax/data/teacher_cache.py. Progress
(records, rate, ETA) goes to the log. Mistakes print one line on stderr and exit with 2.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

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

SHARD_BYTES = 512 << 20


def run(config, output: str, batch_size: int | None = None, records_per_shard: int = 0) -> dict:
  """Caches `config`'s teacher over its dataset into `output` (this process's shards)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from efficientsam_jax import data, sharding, teacher
  from efficientsam_jax.errors import UserError

  if config.teacher.get("cache_dir"):
    raise UserError("config.teacher.cache_dir is set: the config already reads a cache")
  spec = teacher.TeacherSpec.from_config(config.teacher)
  data.num_examples(config)  # a missing dataset fails here, before the teacher weights load
  # Each process runs the teacher on its own devices: processes never wait for each other,
  # so each can skip the shards it already finished.
  mesh = sharding.make_mesh(-1, 1, devices=jax.local_devices())
  batch_size = batch_size or max(config.batch_size // jax.process_count(), 1)
  if batch_size % mesh.size:
    raise UserError(f"--batch_size {batch_size} is not divisible by the {mesh.size} local "
                    "devices")
  apply_fn, abstract = teacher.abstract(spec, mesh)
  params = teacher.load_params(spec, abstract)
  size = config.data.image_size
  grid = size // spec.encoder_config.patch_size
  target_shape = (grid, grid, teacher.feature_dim(config.teacher))
  batch_sharding = sharding.batch_sharding(mesh)
  forward = jax.jit(lambda p, images: apply_fn(p, images).astype(jnp.bfloat16),
                    in_shardings=(jax.tree.map(lambda a: a.sharding, abstract), batch_sharding),
                    out_shardings=batch_sharding)

  def compute_targets(images: np.ndarray) -> np.ndarray:
    return np.asarray(forward(params, jax.device_put(images, batch_sharding)))

  if not records_per_shard:
    records_per_shard = max(1, SHARD_BYTES // (int(np.prod(target_shape)) * 2))
  return data.write_teacher_cache(
      output, config, compute_targets, target_shape, batch_size=batch_size,
      records_per_shard=records_per_shard, process_index=jax.process_index(),
      process_count=jax.process_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from efficientsam_jax import data, runtime
  from efficientsam_jax.errors import UserError

  runtime.keep_freed_host_memory()
  try:
    runtime.initialize_distributed(flags.FLAGS.num_processes, flags.FLAGS.process_id)
    stats = run(flags.FLAGS.config, flags.FLAGS.output, flags.FLAGS.batch_size,
                flags.FLAGS.records_per_shard)
  except (UserError, data.DataError) as e:
    print(f"cache_teacher: error: {e}", file=sys.stderr)
    sys.exit(runtime.EXIT_USER_ERROR)
  logging.info("teacher cache: %s", stats)
  print(f"wrote {stats['records']} targets to {flags.FLAGS.output} in {stats['seconds']:.1f}s "
        f"({stats['skipped_shards']} shards were already complete)")


if __name__ == "__main__":
  app.run(main)
