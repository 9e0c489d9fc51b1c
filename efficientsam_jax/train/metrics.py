"""Where training numbers go: metrics.jsonl, TensorBoard event files, the console.

Only process 0 writes. tensorboardX writes event files without TensorFlow.
"""
import datetime
import json
import math
import os
import time

import jax
from absl import logging

METRICS_FILE = "metrics.jsonl"


def _json_value(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricWriter:
  """Appends one JSON object per logged step; on resume, drops steps after the checkpoint so
  the file reads as one uninterrupted run."""

  def __init__(self, workdir: str, total_steps: int, resumed_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    self._last = None  # (step, wall time) of the previous log, for steps/s
    if not self.enabled:
      return
    self._truncate_after(resumed_step)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      logging.warning("tensorboardX is not installed: no TensorBoard event files")

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(lines)
    os.replace(tmp, self.path)

  def start_timer(self, step: int) -> None:
    """Marks where steps/s counting begins (after compile, after restore)."""
    self._last = (step, time.perf_counter())

  def write(self, step: int, metrics: dict) -> dict:
    """Adds steps_per_sec, writes everywhere, prints a progress line; returns the record."""
    now = time.perf_counter()
    record = {"step": int(step)}
    if self._last is not None and step > self._last[0]:
      record["steps_per_sec"] = (step - self._last[0]) / (now - self._last[1])
    self._last = (step, now)
    record.update({k: _json_value(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, float):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()
    rate = record.get("steps_per_sec")
    eta = (datetime.timedelta(seconds=int((self.total_steps - step) / rate))
           if rate else "?")
    extra = " ".join(f"{k} {v:.4g}" for k, v in record.items()
                     if k not in ("step", "loss", "steps_per_sec") and isinstance(v, float))
    logging.info("step %d/%d | loss %.5g | %s steps/s | ETA %s | %s", step, self.total_steps,
                 record.get("loss", float("nan")), f"{rate:.3g}" if rate else "?", eta, extra)
    return record

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
