"""The EfficientSAM paper in miniature: does SAMI pretraining give a better encoder?

  python -m efficientsam_jax.experiments.miniature --workdir=DIR [--quick]
  python -m efficientsam_jax.experiments.miniature --workdir=DIR \
      --config=configs/miniature.py --config.eval_split=val --config.finetune.optimizer.lr=2e-3

Trains a small SAM-style teacher on generated scenes, pretrains a smaller student with SAMI
(against the teacher's encoder features) and with MAE (its own pixels), finetunes the scratch,
MAE and SAMI students on a small labelled subset with identical settings, and scores them:
box and 1-click mIoU on held-out images, box mIoU on a held-out drawing style, and top-1 of
classification finetuning; for every seed of configs/miniature.py. Writes DIR/results.json
(per arm the mean and std over seeds of each metric) and DIR/miniature.png; running the same
command again resumes where it stopped. --jobs (default 2): stages run at once, each in a
process of its own, a stage as soon as those it needs are done. --quick: every stage shrunk
to seconds (the tests).
"""
import logging as std_logging
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from efficientsam_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "miniature.py")

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant]; default "
                                "configs/miniature.py of this checkout.")
flags.DEFINE_string("workdir", None, "Where every stage, results.json and the figure go.")
flags.DEFINE_bool("quick", False, "Every stage shrunk to seconds, one seed (= the config's "
                  "`quick` variant).")
flags.DEFINE_integer("jobs", 2, "Stages run at once, each in a process of its own (one such "
                     "process keeps about one CPU core busy); 1: every stage in this process, "
                     "one after another.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def load_default(quick: bool):
  """configs/miniature.py[:quick] of the checkout this package runs from."""
  import importlib  # pylint: disable=g-import-not-at-top
  if not os.path.exists(DEFAULT_CONFIG):
    from efficientsam_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"{DEFAULT_CONFIG} not found: run from a clone of the repository, or "
                    "pass --config=PATH/configs/miniature.py")
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  return importlib.import_module("configs.miniature").get_config("quick" if quick else None)


def main(argv):
  del argv
  from efficientsam_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from efficientsam_jax.experiments import paper, report  # pylint: disable=g-import-not-at-top

  if FLAGS.config is not None and FLAGS.quick:
    raise UserError("--quick picks configs/miniature.py:quick; with --config, add :quick to it")
  if FLAGS.jobs < 1:
    raise UserError(f"--jobs must be at least 1, got {FLAGS.jobs}")
  config = FLAGS.config if FLAGS.config is not None else load_default(FLAGS.quick)
  workdir = FLAGS.workdir
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir {workdir}: {e.strerror}") from None
  raw = paper.run(config, workdir, FLAGS.jobs)
  results = report.summarise(raw, config)
  path = os.path.join(workdir, "results.json")
  report.write_json(results, path)
  drew = report.figure(results, workdir, os.path.join(workdir, report.FIGURE))
  logging.info("miniature: wrote %s%s", path,
               f" and {os.path.join(workdir, report.FIGURE)}" if drew else "")
  for arm, metrics in results["arms"].items():
    print(arm, " ".join(f"{m} {s['mean']:.4f}+-{s['std']:.4f}" for m, s in metrics.items()))
  print(f"teacher {results['teacher']}; {results['total_wall_s']:.0f} s wall, "
        f"{results['total_cpu_s']:.0f} s CPU, {FLAGS.jobs} stage(s) at a time")


if __name__ == "__main__":
  cli.run(main, "miniature", library_level=std_logging.WARNING)
