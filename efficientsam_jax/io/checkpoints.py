"""Every Orbax call of the project lives here.

Two kinds of checkpoint:
- Training checkpoints in `WORKDIR/checkpoints/<step>/`, composite items `params`,
  `opt_state`, `progress` (JSON: step) and `data` (the grain iterator position, one file per
  process; the caller passes its Orbax args, so this module never imports grain). Orbax writes
  each into a temporary directory and renames it when complete, so a run killed mid-save
  never sees a half-written checkpoint. A teacher is never saved.
- The best checkpoint of a run that evaluates while it trains, `WORKDIR/best/`: a workdir of
  its own (its `config.json`, `checkpoints/<step>/` with `params` and `best`, JSON: step,
  metric, value), so every tool that takes a workdir takes it.
- Parameter checkpoints (what `convert` writes): a directory with items `params` and
  `metadata` (JSON: model name, format version, anything the writer adds).
"""
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from efficientsam_jax.errors import UserError

CHECKPOINTS_SUBDIR = "checkpoints"


def _host_target(item_directory: str):
  """Restore target for an item saved on any mesh: its shapes and dtypes on this process's
  first device. Without a target Orbax insists on the saving topology (elastic restore)."""
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(item_directory)
  tree = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


def _restore_args_for(abstract_tree, item_directory: str):
  if abstract_tree is None:
    abstract_tree = _host_target(item_directory)
  return ocp.args.StandardRestore(abstract_tree)


class TrainCheckpoints:
  """Periodic, asynchronous training checkpoints of one workdir (latest `max_to_keep` kept)."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_SUBDIR)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params, opt_state, data_args=None) -> None:
    """Starts saving (returns before the write ends when asynchronous). data_args: Orbax
    save args of the data iterator's position (data.iterator_save_args)."""
    items = dict(params=ocp.args.StandardSave(params),
                 opt_state=ocp.args.StandardSave(opt_state),
                 progress=ocp.args.JsonSave({"step": int(step)}))
    if data_args is not None:
      items["data"] = data_args
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_params, abstract_opt_state, data_args=None):
    """Restores (params, opt_state) onto the shardings of the abstract trees; data_args
    (data.iterator_restore_args) moves the iterator in place to its saved position."""
    items = dict(params=ocp.args.StandardRestore(abstract_params),
                 opt_state=ocp.args.StandardRestore(abstract_opt_state),
                 progress=ocp.args.JsonRestore())
    if data_args is not None:
      items["data"] = data_args
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if restored["progress"]["step"] != step:
      raise UserError(f"checkpoint {step} says it is step {restored['progress']['step']}")
    return restored["params"], restored["opt_state"]

  def close(self) -> None:
    """Waits for the last save to be complete on disk; safe to call twice."""
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None


class BestCheckpoint:
  """Keeps the parameters of the best evaluation so far in WORKDIR/best (module docstring).

  mode "max" (accuracy) or "min" (a loss). `value` is the best so far, read back on resume.
  """

  def __init__(self, workdir: str, metric: str, mode: str = "max"):
    if mode not in ("max", "min"):
      raise UserError(f"best checkpoint mode must be 'max' or 'min', got {mode!r}")
    self.metric, self.mode = metric, mode
    self.workdir = os.path.join(os.path.abspath(workdir), "best")
    self.manager = ocp.CheckpointManager(
        os.path.join(self.workdir, CHECKPOINTS_SUBDIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False))
    self.value = None
    step = self.manager.latest_step()
    if step is not None:
      self.value = self.manager.restore(step, args=ocp.args.Composite(
          best=ocp.args.JsonRestore()))["best"]["value"]
    config = os.path.join(os.path.dirname(self.workdir), "config.json")
    if jax.process_index() == 0 and os.path.exists(config):
      shutil.copyfile(config, os.path.join(self.workdir, "config.json"))

  def better(self, value: float) -> bool:
    if self.value is None:
      return True
    return value > self.value if self.mode == "max" else value < self.value

  def offer(self, step: int, params, value: float) -> bool:
    """Saves `params` (written by every process) if `value` beats the best; returns whether."""
    if not self.better(value):
      return False
    self.value = float(value)
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        best=ocp.args.JsonSave({"step": int(step), "metric": self.metric,
                                "value": self.value})), force=True)
    self.manager.wait_until_finished()
    return True

  def close(self) -> None:
    if self.manager is not None:
      self.manager.close()
      self.manager = None


def is_training_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, CHECKPOINTS_SUBDIR))


def latest_workdir_params(workdir: str, abstract_params=None) -> Any:
  """Parameters of the latest checkpoint in a training workdir (numpy/jax arrays)."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_SUBDIR)
  if not os.path.isdir(directory):
    raise UserError(f"{workdir} is not a training workdir (no {CHECKPOINTS_SUBDIR}/)")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True)) as manager:
    step = manager.latest_step()
    if step is None:
      raise UserError(f"{workdir} has no finished checkpoint yet")
    restored = manager.restore(step, args=ocp.args.Composite(
        params=_restore_args_for(abstract_params, os.path.join(directory, str(step), "params"))))
  return restored["params"]


def save_params(directory: str, params, metadata: dict) -> None:
  """Writes a parameter checkpoint (Orbax) with a JSON metadata item; refuses to overwrite."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    raise UserError(f"{directory} exists; choose a new output path")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, ocp.args.Composite(
        params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(dict(metadata))))


def restore_params(directory: str, abstract_params=None) -> tuple[Any, dict]:
  """Reads a parameter checkpoint written by save_params: (params, metadata)."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(os.path.join(directory, "params")):
    raise UserError(f"{directory} is not a parameter checkpoint (no params/ item)")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(directory, ocp.args.Composite(
        params=_restore_args_for(abstract_params, os.path.join(directory, "params")),
        metadata=ocp.args.JsonRestore()))
  return restored["params"], dict(restored["metadata"])
