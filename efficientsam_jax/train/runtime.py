"""Process-level runtime: joining a cluster, preemption notices, workdir checks.

Exit statuses of `python -m efficientsam_jax.main` (launch scripts rely on them):
  0   finished `total_steps`.
  2   a user mistake (config, path, data, weights): one line on stderr.
  3   a non-finite loss or parameters (`nonfinite_policy=stop`); nothing after the last good
      checkpoint was saved.
  75  stopped by SIGTERM (preemption) or Ctrl-C after saving a checkpoint at the current step;
      run the same command again to resume (75 is EX_TEMPFAIL: "try again"). A second Ctrl-C
      stops at once (killed by SIGINT: 130 in a shell), without saving.
"""
import hashlib
import json
import os
import shutil
import signal

import jax
import numpy as np
from absl import logging

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import checkpoints as checkpoints_lib
from efficientsam_jax.io import paths

CONFIG_FILE = "config.json"
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """Raised after the preemption checkpoint is written."""

  def __init__(self, step: int, cause: str = "SIGTERM"):
    super().__init__(f"stopped by {cause} after saving a checkpoint at step {step}; "
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
  """Tells every process, at the same step, that a SIGTERM or a Ctrl-C (SIGINT) arrived.

  Both mean "finish this step, save, exit 75". A second Ctrl-C stops the process at once:
  after the first one SIGINT gets its default action back, which the kernel carries out even
  while Python waits inside a compiled computation (the signal kills the process, status
  130 in a shell; the last complete checkpoint stays the resume point).

  With several processes JAX's preemption sync service agrees on the step (a SIGTERM on any
  host reaches all of them); a SIGINT is passed on to it as a SIGTERM to this process. A
  single process handles both signals itself.
  """

  def __init__(self):
    self._multi = jax.process_count() > 1
    self.cause = None  # the signal that asked to stop, once one did
    self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint)}
    if not self._multi:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: finishing this step, then saving a checkpoint")
    self.cause = self.cause or "SIGTERM"

  def _on_sigint(self, signum, frame):
    del signum, frame
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    logging.warning("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to "
                    "stop at once, without saving)")
    self.cause = self.cause or "SIGINT"
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier listens to SIGTERM

  def reached(self, step: int) -> bool:
    """Call after every step, on every process, with the same step."""
    if self._multi:
      from jax.experimental import multihost_utils
      reached = multihost_utils.reached_preemption_sync_point(step)
      if reached and self.cause is None:
        self.cause = "SIGTERM or Ctrl-C"  # on this process (JAX's handler) or another
      return reached
    return self.cause is not None

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def check_workdir(workdir: str, bytes_needed: int) -> None:
  """One-line errors before compiling, on every process: a workdir we cannot write (a
  missing bucket, no permission, no credentials), or a local one with no room for a
  checkpoint (object stores report no free space)."""
  paths.check_writable_dir(workdir, "workdir")
  if paths.is_remote(workdir):
    return
  free = shutil.disk_usage(workdir).free
  if free < bytes_needed:
    raise UserError(f"workdir {workdir} has {free / 2**30:.2f} GiB free; a checkpoint needs "
                    f"about {bytes_needed / 2**30:.2f} GiB")


def check_config_paths(config, output: str, output_label: str = "the workdir") -> None:
  """One-line errors before compiling for the paths a config names: each gs:// bucket must
  exist (a typo would otherwise surface deep inside a library, or as an empty checkpoint
  folder), and none may be the output folder."""
  def walk(node, prefix):
    for key, value in node.items():
      name = f"{prefix}.{key}"
      if hasattr(value, "items"):
        yield from walk(value, name)
      elif isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.split(","))):
          if paths.is_remote(part) or key in ("path", "checkpoint", "init_from", "cache_dir",
                                              "annotations", "tfds_data_dir"):
            yield name, part

  for name, path in walk(config, "config"):
    if paths.is_remote(path):
      paths.check_bucket(path, name)
    if paths.same_file(path, output):
      raise UserError(f"{name}={path} is also {output_label}; give {output_label} its own "
                      "folder")


def check_same_trainer(config, workdir: str) -> None:
  """UserError when the workdir's config.json names another trainer and it has checkpoints
  (before a trainer writes anything into it)."""
  try:
    old = json.loads(paths.read_bytes(paths.join(workdir, CONFIG_FILE)))
  except (OSError, ValueError):
    return
  trainer = old.get("trainer") if isinstance(old, dict) else None
  if trainer and trainer != config.trainer and checkpoints_lib.is_training_workdir(workdir):
    raise UserError(f"workdir {workdir} holds checkpoints of the {trainer!r} trainer, not "
                    f"{config.trainer!r}; use a new --workdir")


def check_same_model(config, workdir: str, checkpoints, abstract_params) -> None:
  """UserError when the workdir's checkpoints come from another trainer or model: resuming
  would fail, and rewriting config.json would lose how they were trained."""
  step = checkpoints.latest_step()
  if step is None:
    return
  check_same_trainer(config, workdir)
  stored = checkpoints.param_shapes(step)
  if stored is None:  # unreadable: restoring will set it aside as damaged
    return
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  wanted = {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape)
            for k, v in flat}
  if stored != wanted:
    differ = sorted(set(stored) ^ set(wanted)) or sorted(
        k for k in wanted if stored[k] != wanted[k])
    name = differ[0]
    raise UserError(f"workdir {workdir} holds checkpoints of another model (first "
                    f"difference: {name} {stored.get(name, 'absent')} in the checkpoint, "
                    f"{wanted.get(name, 'absent')} configured); use a new --workdir")


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
