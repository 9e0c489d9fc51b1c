"""Process-level runtime: joining a cluster, preemption notices, workdir checks.

Exit statuses of `python -m efficientsam_jax.main` (launch scripts rely on them):
  0   finished `total_steps`.
  2   a user mistake (config, path, data, weights): one line on stderr.
  3   a non-finite loss or parameters (`nonfinite_policy=stop`); nothing after the last good
      checkpoint was saved.
  75  stopped by SIGTERM (preemption) after saving a checkpoint at the current step; run the
      same command again to resume (75 is EX_TEMPFAIL: "try again").
"""
import hashlib
import os
import shutil
import signal

import jax
import numpy as np
from absl import logging

from efficientsam_jax.errors import UserError

EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """Raised after the preemption checkpoint is written."""

  def __init__(self, step: int):
    super().__init__(f"stopped by SIGTERM after saving a checkpoint at step {step}; "
                     "run the same command again to resume")
    self.step = step


class NonFiniteError(Exception):
  """A non-finite loss or parameter norm with nonfinite_policy=stop."""


def in_cluster() -> bool:
  """True when this process is one of several (TPU pod, Slurm job, explicit coordinator)."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def initialize_distributed(num_processes: int | None = None, process_id: int | None = None):
  """jax.distributed.initialize() when in a cluster. TPU pods and Slurm describe themselves;
  elsewhere JAX_COORDINATOR_ADDRESS plus the process count and id (flags or the
  JAX_NUM_PROCESSES / JAX_PROCESS_ID variables) do."""
  if not in_cluster():
    return
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    # CPU processes need a cross-process collective library (tests, CPU clusters).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(num_processes=num_processes, process_id=process_id)
  except ValueError as e:  # e.g. a coordinator address with no way to learn the count
    raise UserError(f"cannot join the cluster: {' '.join(str(e).split())} (outside TPU pods "
                    "and Slurm pass --num_processes and --process_id)") from e


class PreemptionWatch:
  """Tells every process, at the same step, that a SIGTERM arrived.

  With several processes JAX's preemption sync service agrees on the step (a notice on any
  host reaches all of them); a single process handles SIGTERM itself.
  """

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._notified = False
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: finishing this step, then saving a checkpoint")
    self._notified = True

  def reached(self, step: int) -> bool:
    """Call after every step, on every process, with the same step."""
    if self._multi:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notified

  def close(self) -> None:
    if not self._multi:
      signal.signal(signal.SIGTERM, self._previous)


def check_workdir(workdir: str, bytes_needed: int) -> None:
  """One-line errors before compiling: a workdir we cannot write, or one with no room for a
  checkpoint (checked for local paths; object stores report no free space)."""
  if "://" in workdir:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_probe")
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from e
  free = shutil.disk_usage(workdir).free
  if free < bytes_needed:
    raise UserError(f"workdir {workdir} has {free / 2**30:.2f} GiB free; a checkpoint needs "
                    f"about {bytes_needed / 2**30:.2f} GiB")


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def replicated_digest(tree) -> str:
  """sha256 of this process's copy of every fully replicated leaf: equal on all processes
  exactly when their replicas agree bit for bit (sharded leaves are left out)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    if leaf.is_fully_replicated:
      digest.update(np.asarray(leaf.addressable_shards[0].data).tobytes())
  return digest.hexdigest()[:16]


def host_copy(tree):
  """A numpy copy of a tree of (possibly sharded, multi-process) jax.Arrays, whole on every
  process (an allgather across processes; every process must call it)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(tree, tiled=True)
