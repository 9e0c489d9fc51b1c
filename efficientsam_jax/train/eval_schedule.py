"""Evaluation during training: when the loop calls `Task.evaluate`, and the best checkpoint.

The loop (loop.py) calls `task.evaluate(params, teacher, step)` on every process every
`config.eval.every` steps and at the last step (0: never), logs the returned metrics as
`eval/NAME` in the same metrics.jsonl record and TensorBoard step as the training metrics,
and hands them to `EvalSchedule.keep_if_best`.
"""
from absl import logging

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import checkpoints as checkpoints_lib


class EvalSchedule:
  """When the loop evaluates (`config.eval.every` steps and the last step; 0: never) and the
  best checkpoint: WORKDIR/best/ keeps the parameters of the step with the best
  `config.eval.best_metric` so far (`best_mode` "max" or "min"), as a workdir of its own
  that predict, evaluate and convert read. Ties keep the earlier step."""

  def __init__(self, config, workdir: str):
    e = config.get("eval") or {}
    self.every, self.total = int(e.get("every") or 0), config.total_steps
    self.metric, self.mode = e.get("best_metric") or "", e.get("best_mode") or "max"
    if self.every < 0 or self.mode not in ("max", "min"):
      raise UserError("config.eval.every must be >= 0 and config.eval.best_mode max or min")
    self.best = None
    if self.every and self.metric:
      self.best = checkpoints_lib.BestCheckpoint(workdir, config, config.async_checkpointing)

  def due(self, step: int) -> bool:
    return bool(self.every) and (step % self.every == 0 or step == self.total)

  def keep_if_best(self, step: int, params, scores) -> None:
    if self.best is None:
      return
    if not scores or self.metric not in scores:
      raise UserError(f"config.eval.best_metric {self.metric!r} is not one of the task's "
                      f"metrics {sorted(scores or {})}")
    value, previous = float(scores[self.metric]), self.best.value()
    if previous is None or (value > previous if self.mode == "max" else value < previous):
      self.best.save(step, params, self.metric, value)
      logging.info("best %s so far at step %d: %.6g (kept in %s)", self.metric, step, value,
                   self.best.directory)

  def close(self) -> None:
    if self.best is not None:
      self.best.close()
