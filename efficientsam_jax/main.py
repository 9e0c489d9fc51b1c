"""Training entry point: parses flags, starts the runtime, hands the config to a trainer.

  python -m efficientsam_jax.main --config=configs/sami_vitb.py:demo --workdir=/tmp/sami
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go.")
flags.DEFINE_integer("num_processes", None, "Processes in the job, where the cluster does not "
                     "say (with JAX_COORDINATOR_ADDRESS); default $JAX_NUM_PROCESSES.")
flags.DEFINE_integer("process_id", None, "This process's index, where the cluster does not say;"
                     " default $JAX_PROCESS_ID.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  import jax  # after flag parsing, so --help stays fast

  from efficientsam_jax import data, runtime, trainers
  from efficientsam_jax.errors import UserError

  runtime.keep_freed_host_memory()
  try:
    runtime.initialize_distributed(flags.FLAGS.num_processes, flags.FLAGS.process_id)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(runtime.EXIT_USER_ERROR)
  logging.info("JAX %s, process %d/%d, %d local / %d global devices (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  config = flags.FLAGS.config
  try:
    trainers.get_trainer(config.trainer)(config, flags.FLAGS.workdir)
  except (UserError, data.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(runtime.EXIT_USER_ERROR)
  except runtime.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(runtime.EXIT_NONFINITE)
  except runtime.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(runtime.EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main)
