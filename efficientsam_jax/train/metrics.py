"""Where training numbers go: metrics.jsonl, TensorBoard event files, the console.

Only process 0 writes. tensorboardX writes event files without TensorFlow.

In a bucket (gs:// workdir) nothing can be appended to: metrics.jsonl is rewritten whole
from memory, and TensorBoard writes into a local folder whose event files are uploaded
whole; both at most every SYNC_SECONDS, at every checkpoint and at the end, each upload
retried on transient errors (io/paths.py). An event file is closed and a new one begun when
it passes ROLL_BYTES, so an upload never carries more than that: TensorBoard reads every
event file of the folder. A local workdir is appended to line by line, as always.
"""
import datetime
import json
import math
import os
import sys
import time

import jax
from absl import logging

from efficientsam_jax.io import paths

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
SYNC_SECONDS = 60.0
ROLL_BYTES = 4 << 20


def _json_value(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


def _records_up_to(text: str, step: int) -> list[str]:
  """The lines of a metrics.jsonl whose step is <= step (a line cut by a crash is dropped)."""
  kept = []
  for line in text.splitlines():
    try:
      if line.strip() and json.loads(line)["step"] <= step:
        kept.append(line + "\n")
    except (ValueError, KeyError, TypeError):
      continue
  return kept


class _BucketTensorBoard:
  """tensorboardX into a local folder, uploaded to the workdir's tensorboard/ (see module)."""

  def __init__(self, summary_writer_class, remote_dir: str):
    self._class, self._remote = summary_writer_class, remote_dir
    self._stage = paths.local_folder("esam-tensorboard-")
    self._local = self._stage.__enter__()
    self._rolls = 0  # event files begun: a suffix keeps names apart within one second
    self._writer = summary_writer_class(self._local, filename_suffix=".0")
    self._sent: dict[str, int] = {}  # local event file -> bytes uploaded

  def add_scalar(self, *args):
    self._writer.add_scalar(*args)

  def flush(self):
    self._writer.flush()

  def sync(self) -> None:
    self._writer.flush()
    for name in sorted(os.listdir(self._local)):
      local = os.path.join(self._local, name)
      size = os.path.getsize(local)
      if self._sent.get(name) != size:
        data, remote = paths.read_bytes(local), paths.join(self._remote, name)
        paths.retrying(lambda: paths.write_raw(remote, lambda f: f.write(data)),
                       f"uploading {remote}")
        self._sent[name] = size
      if size > ROLL_BYTES:  # begin a new event file; this one is complete upstream
        self._writer.close()
        os.remove(local)
        self._rolls += 1
        self._writer = self._class(self._local, filename_suffix=f".{self._rolls}")

  def close(self) -> None:
    try:
      self.sync()
    finally:
      self._writer.close()
      self._stage.__exit__(None, None, None)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet.

  tensorboardX imports torch when it is installed, only to accept torch tensors (which this
  project never logs): 2 s of CPU and 160 MB in the process that writes a run's metrics.
  A None entry in sys.modules makes that optional import fail as if torch were
  absent; it is removed again, so a later `import torch` in this process works."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    return SummaryWriter
  sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Appends one JSON object per logged step; on resume, drops steps after the checkpoint so
  the file reads as one uninterrupted run."""

  def __init__(self, workdir: str, total_steps: int, resumed_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.path = paths.join(workdir, METRICS_FILE)
    self.remote = paths.is_remote(workdir)
    self._tb = None
    self._last = None  # (step, wall time) of the previous log, for steps/s
    self._lines: list[str] = []  # a bucket's metrics.jsonl, rewritten whole
    self._synced = time.monotonic()
    if not self.enabled:
      return
    self._truncate_after(resumed_step)
    try:
      SummaryWriter = _summary_writer_class()
    except ImportError:
      logging.warning("tensorboardX is not installed: no TensorBoard event files")
      return
    tb_dir = paths.join(workdir, TENSORBOARD_SUBDIR)
    self._tb = _BucketTensorBoard(SummaryWriter, tb_dir) if self.remote else SummaryWriter(
        tb_dir)

  def _truncate_after(self, step: int) -> None:
    if not paths.exists(self.path):
      return
    text = paths.retrying(lambda: paths.read_text(self.path), f"reading {self.path}")
    self._lines = _records_up_to(text, step)
    if self.remote:
      self.sync()
    else:
      paths.write(self.path, "".join(self._lines))
      self._lines = []

  def start_timer(self, step: int) -> None:
    """Marks where steps/s counting begins (after compile, after restore)."""
    self._last = (step, time.perf_counter())

  def sync(self) -> None:
    """Puts a bucket workdir's metrics and event files in place (a local one always is)."""
    if not (self.enabled and self.remote):
      return
    text = "".join(self._lines)
    paths.retrying(lambda: paths.write_raw(self.path, lambda f: f.write(text.encode())),
                   f"writing {self.path}")
    if self._tb is not None:
      self._tb.sync()
    self._synced = time.monotonic()

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
    line = json.dumps(record) + "\n"
    if self.remote:
      self._lines.append(line)
    else:
      try:
        with open(self.path, "a") as f:
          f.write(line)
      except OSError as e:
        raise paths.storage_error(e, self.path, "write") from None
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, float):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()
    if self.remote and (time.monotonic() - self._synced >= SYNC_SECONDS
                        or step == self.total_steps):
      self.sync()
    rate = record.get("steps_per_sec")
    eta = (datetime.timedelta(seconds=int((self.total_steps - step) / rate))
           if rate else "?")
    extra = " ".join(f"{k} {v:.4g}" for k, v in record.items()
                     if k not in ("step", "loss", "steps_per_sec") and isinstance(v, float))
    logging.info("step %d/%d | loss %.5g | %s steps/s | ETA %s | %s", step, self.total_steps,
                 record.get("loss", float("nan")), f"{rate:.3g}" if rate else "?", eta, extra)
    return record

  def close(self) -> None:
    if self.remote:
      self.sync()
    if self._tb is not None:
      self._tb.close()
