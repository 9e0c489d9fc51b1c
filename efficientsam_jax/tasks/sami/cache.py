"""Runs a training config's teacher once over its dataset and writes the targets (bfloat16)
to a feature cache the trainer reads instead of running the teacher
(`python -m efficientsam_jax.cache_teacher`; layout in data/teacher_cache.py).

Every process (the same command on every host, as for training) writes its own shards with
the teacher jitted over its local devices, the batch split between them: processes never
wait for each other, so each can skip the shards it already finished.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax import data
from efficientsam_jax.errors import UserError
from efficientsam_jax.tasks.sami.task import check_config
from efficientsam_jax.tasks.sami.teacher import Teacher
from efficientsam_jax.train import runtime, sharding

SHARD_BYTES = 512 << 20  # targets per shard file when not given: about this many bytes


def write_cache(config, output: str, batch_size: int | None = None,
                records_per_shard: int = 0) -> dict:
  """Caches `config`'s teacher over its dataset into `output` (this process's shards).

  batch_size: images per teacher call on this process (a multiple of its local device
  count); default the config's batch_size over the process count, which gives the teacher the
  per-device batch of training (its bf16 results depend on it, at the level of bf16 noise).
  Returns {"records", "skipped_shards", "seconds"}.
  """
  check_config(config)  # the config trains on this cache: its values must hold
  if config.teacher.get("cache_dir"):
    raise UserError("config.teacher.cache_dir is set: the config already reads a cache")
  if "://" not in output and os.path.exists(output) and not os.path.isdir(output):
    # Found before the teacher loads (the cache module checks a folder's contents later).
    raise UserError(f"cannot use {output} as the cache directory: it is a file")
  runtime.check_config_paths(config, output, "--output")
  teacher = Teacher(config.teacher)
  data.num_examples(config)  # a missing dataset fails here, before the teacher weights load
  mesh = sharding.make_mesh(-1, 1, devices=jax.local_devices())
  batch_size = batch_size or max(config.batch_size // jax.process_count(), 1)
  if batch_size % mesh.size:
    raise UserError(f"--batch_size {batch_size} is not divisible by the {mesh.size} local "
                    "devices")
  abstract = teacher.abstract_params(mesh)
  params = teacher.load_params(abstract)
  size = config.data.image_size
  grid = size // teacher.encoder_config.patch_size
  target_shape = (grid, grid, teacher.feature_dim)
  batch_sharding = sharding.batch_sharding(mesh)
  forward = jax.jit(lambda p, images: teacher.apply(p, images).astype(jnp.bfloat16),
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
