"""Training entry point: parses flags, starts the runtime, hands the config to a trainer.

  python -m efficientsam_jax.main --config=configs/sami_vitb.py:demo --workdir=/tmp/sami

Exit statuses: 0 done; 2 a user mistake (one line on stderr); 3 a non-finite loss; 75 stopped
by SIGTERM after a checkpoint (train/runtime.py).
"""
import logging as std_logging
import sys

from absl import flags, logging
from ml_collections import config_flags

from efficientsam_jax import cli

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go.")
flags.DEFINE_integer("num_processes", None, "Processes in the job, where the cluster does not "
                     "say (with JAX_COORDINATOR_ADDRESS); default $JAX_NUM_PROCESSES.")
flags.DEFINE_integer("process_id", None, "This process's index, where the cluster does not say;"
                     " default $JAX_PROCESS_ID.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax  # after flag parsing, so --help stays fast

  if FLAGS.config.get("compile_for"):
    # Compiling for other hardware needs none of this machine's accelerators (and must not
    # take the TPU of a job running here).
    FLAGS.config.compile_only = True
    jax.config.update("jax_platforms", "cpu")
  from efficientsam_jax.train import runtime, trainers

  runtime.initialize_distributed(FLAGS.num_processes, FLAGS.process_id)
  logging.info("JAX %s, process %d/%d, %d local / %d global devices (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    trainers.get_trainer(FLAGS.config.trainer)(FLAGS.config, FLAGS.workdir)
  except runtime.NonFiniteError as e:
    print(f"main: error: {e}", file=sys.stderr)
    sys.exit(runtime.EXIT_NONFINITE)
  except runtime.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(runtime.EXIT_PREEMPTED)


if __name__ == "__main__":
  cli.run(main, "main", library_level=std_logging.WARNING)
