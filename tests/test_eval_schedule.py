"""The loop's evaluation hook, trainer-independent (train/eval_schedule.py): when
`Task.evaluate` is due, which step's parameters WORKDIR/best/ keeps for "max" and "min"
metrics (ties: the earlier step), what a resumed run compares with, and the one-line errors.
The trainers' own evaluations are tested in test_finetune.py and test_distill.py."""
import json
import os

import ml_collections
import numpy as np
import pytest

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import checkpoints
from efficientsam_jax.train import eval_schedule


def _config(every=5, total=12, metric="score", mode="max"):
  return ml_collections.ConfigDict(dict(
      total_steps=total, async_checkpointing=False,
      eval=dict(every=every, best_metric=metric, best_mode=mode)))


def _kept(workdir):
  """(step, value, params["w"]) of WORKDIR/best/."""
  best = os.path.join(workdir, "best")
  step, = os.listdir(os.path.join(best, "checkpoints"))
  with open(os.path.join(best, "checkpoints", step, "best", "metadata")) as f:
    record = json.load(f)
  assert record["step"] == int(step)
  params = checkpoints.latest_workdir_params(best)
  return int(step), record["value"], float(np.asarray(params["w"]))


def _run(workdir, config, scores):
  """The loop's calls: evaluate when due, keep the best. scores: {step: metric value}."""
  schedule = eval_schedule.EvalSchedule(config, workdir)
  try:
    for step in range(1, config.total_steps + 1):
      if schedule.due(step):
        schedule.keep_if_best(step, {"w": np.float32(step)}, {"score": scores[step],
                                                              "other": -1.0})
  finally:
    schedule.close()


def test_due_every_n_steps_and_at_the_last_one():
  schedule = eval_schedule.EvalSchedule(_config(metric=""), "/nonexistent")
  assert [s for s in range(1, 13) if schedule.due(s)] == [5, 10, 12]
  never = eval_schedule.EvalSchedule(_config(every=0), "/nonexistent")
  assert not any(never.due(s) for s in range(1, 13)) and never.best is None


@pytest.mark.parametrize("mode,expected", [("max", 10), ("min", 5)])
def test_best_by_metric_ties_keep_the_earlier_step_and_resume_compares(tmp_path, mode,
                                                                       expected):
  workdir = str(tmp_path)
  _run(workdir, _config(mode=mode), {5: 0.25, 10: 0.5, 12: 0.5 if mode == "max" else 0.25})
  assert _kept(workdir) == (expected, {5: 0.25, 10: 0.5}[expected], float(expected))
  assert os.path.exists(os.path.join(workdir, "best", "config.json"))
  # A resumed run (same workdir) keeps the earlier best unless it beats it.
  worse = 0.1 if mode == "max" else 0.9
  _run(workdir, _config(mode=mode), {5: worse, 10: worse, 12: worse})
  assert _kept(workdir)[0] == expected
  better = 0.9 if mode == "max" else 0.1
  _run(workdir, _config(mode=mode), {5: worse, 10: better, 12: worse})
  assert _kept(workdir) == (10, better, 10.0)


def test_mistakes_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="best_mode"):
    eval_schedule.EvalSchedule(_config(mode="maximum"), str(tmp_path))
  with pytest.raises(UserError, match="every"):
    eval_schedule.EvalSchedule(_config(every=-1), str(tmp_path))
  schedule = eval_schedule.EvalSchedule(_config(metric="accuracy"), str(tmp_path))
  try:
    with pytest.raises(UserError, match=r"'accuracy' is not one of .*\['other', 'score'\]"):
      schedule.keep_if_best(5, {"w": np.float32(0)}, {"score": 1.0, "other": 0.0})
    with pytest.raises(UserError, match="accuracy"):  # a task without evaluate: None
      schedule.keep_if_best(5, {"w": np.float32(0)}, None)
  finally:
    schedule.close()
