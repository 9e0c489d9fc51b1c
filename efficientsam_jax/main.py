"""Training entry point: parses flags, starts the runtime, hands the config to a trainer.

  python -m efficientsam_jax.main --config=configs/sami_vitb.py:demo --workdir=/tmp/sami
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go.")
flags.mark_flags_as_required(["config", "workdir"])

CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def _in_cluster() -> bool:
  """True when this process is one of several (TPU pod, Slurm job, explicit coordinator)."""
  if any(os.environ.get(v) for v in CLUSTER_ENV):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  import jax  # after flag parsing, so --help stays fast

  from efficientsam_jax import trainers
  from efficientsam_jax.errors import UserError

  if _in_cluster():
    jax.distributed.initialize()
  logging.info("JAX %s, process %d/%d, %d local / %d global devices (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  config = flags.FLAGS.config
  try:
    trainers.get_trainer(config.trainer)(config, flags.FLAGS.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
