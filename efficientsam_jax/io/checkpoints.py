"""Every Orbax call of the project lives here (and the one barrier between processes).

Two kinds of checkpoint:
- Training checkpoints in `WORKDIR/checkpoints/<step>/`, composite items `params`,
  `opt_state`, `progress` (JSON: step) and `data` (the grain iterator position, one file per
  process; the caller passes its Orbax args, so this module never imports grain). On a local
  disk Orbax writes each into a temporary directory and renames it when complete; in a
  bucket (no renames there) it writes `commit_success.txt` last and ignores steps without
  it. Either way a run killed mid-save never restores a half-written checkpoint. A
  checkpoint that is complete but damaged (a file truncated or deleted later) is set aside
  into `WORKDIR/checkpoints_damaged/` (never deleted) and the newest intact one restored.
  A failed save (a full disk, a lost bucket) is a one-line UserError naming the last
  complete checkpoint. A teacher is never saved.
- The best checkpoint of a run (`WORKDIR/best/`, `BestCheckpoint`): the parameters of the step
  with the best evaluation metric so far, laid out as a workdir of its own.
- Parameter checkpoints (what `convert` writes): a directory with items `params` and
  `metadata` (JSON: model name, format version, anything the writer adds). Written whole or
  not at all: on a failure what Orbax had written is removed (it did not exist before).
"""
import contextlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths

CHECKPOINTS_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "checkpoints_damaged"
BEST_SUBDIR = "best"  # beside checkpoints/: the best parameters by an evaluation metric


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
    self.workdir = paths.absolute(workdir)
    self.directory = paths.join(self.workdir, CHECKPOINTS_SUBDIR)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _complete_step(self) -> int | None:
    """The newest checkpoint complete in storage (after a failed save)."""
    try:
      self.manager.reload()
      return self.manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      return None

  def _resume_note(self) -> str:
    last = self._complete_step() if self.manager is not None else None
    return (f"the last complete checkpoint is step {last}: the same command resumes from it"
            if last else "no checkpoint is complete yet")

  def _failed(self, error: Exception, step: int | None) -> UserError:
    where = f"checkpoint {step}" if step is not None else "the last checkpoint"
    return UserError(f"saving {where} in {self.directory} failed: {paths.cause(error)}; "
                     f"{self._resume_note()}")

  def with_resume_note(self, error: UserError) -> UserError:
    """A failure during training (e.g. the metrics could not be written), saying which
    checkpoint a rerun resumes from (unless it says so already)."""
    if "the last complete checkpoint" in str(error) or "no checkpoint is complete" in str(
        error):
      return error
    return UserError(f"{error}; {self._resume_note()}")

  def save(self, step: int, params, opt_state, data_args=None) -> None:
    """Starts saving (returns before the write ends when asynchronous). data_args: Orbax
    save args of the data iterator's position (data.iterator_save_args). A failure of this
    save or of the previous asynchronous one is a UserError."""
    items = dict(params=ocp.args.StandardSave(params),
                 opt_state=ocp.args.StandardSave(opt_state),
                 progress=ocp.args.JsonSave({"step": int(step)}))
    if data_args is not None:
      items["data"] = data_args
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(e, step) from None

  def param_shapes(self, step: int) -> dict[str, tuple] | None:
    """{'/'-joined path: shape} of a checkpoint's parameters (None if unreadable)."""
    try:
      with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(paths.join(self.directory, str(step), "params"))
      tree = getattr(metadata, "item_metadata", metadata)
      flat = jax.tree_util.tree_flatten_with_path(tree)[0]
      return {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.shape)
              for k, v in flat}
    except Exception:  # pylint: disable=broad-except
      return None

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

  def restore_latest(self, abstract_params, abstract_opt_state, data_args_fn=lambda: None):
    """(step, params, opt_state) of the newest intact checkpoint, or None when there is
    none. A damaged one (its files truncated or missing) is reported in one log line, moved
    into WORKDIR/checkpoints_damaged/ by process 0 and the next newest tried. Storage that
    cannot be reached (a permission, a dropped connection) is an error, not damage.
    data_args_fn: a new Orbax restore args of the data iterator for each try."""
    while (step := self.latest_step()) is not None:
      try:
        return (step,) + self.restore(step, abstract_params, abstract_opt_state,
                                      data_args_fn())
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        reason = paths.cause(e)
        if paths.is_transient(e) or reason == "permission denied" or "credentials" in reason:
          raise UserError(f"cannot read checkpoint {step} in {self.directory}: "
                          f"{reason}") from None
        self._set_aside(step, reason)
    return None

  def _set_aside(self, step: int, reason: str) -> None:
    target = paths.join(self.workdir, DAMAGED_SUBDIR, str(step))
    suffix = 1
    while paths.exists(target):
      target = paths.join(self.workdir, DAMAGED_SUBDIR, f"{step}.{suffix}")
      suffix += 1
    logging.warning("checkpoint %d is damaged (%s): set aside as %s; trying the one before",
                    step, reason[:200], target)
    if jax.process_index() == 0:
      paths.move(paths.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self.manager.reload()

  def close(self) -> None:
    """Waits for the last save to be complete on disk; safe to call twice. A failed
    asynchronous save is a UserError (see save)."""
    if self.manager is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = self._failed(e, None)
      with contextlib.suppress(Exception):  # closing re-raises the same failure
        self.manager.close()
      self.manager = None
      raise error from None
    self.manager.close()
    self.manager = None


class BestCheckpoint:
  """WORKDIR/best/: the parameters of one step, the best by a metric so far, laid out as a
  workdir of their own (`config.json` and `checkpoints/<step>/` with `params` and `best`, a
  JSON item {"step", "metric", "value"}), so every tool that reads a workdir reads it. Saving
  a new best replaces the old one (Orbax keeps 1)."""

  def __init__(self, workdir: str, config, async_save: bool = True):
    self.directory = paths.join(paths.absolute(workdir), BEST_SUBDIR)
    self._config = config
    self.manager = ocp.CheckpointManager(
        paths.join(self.directory, CHECKPOINTS_SUBDIR),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True))
    self._value = None
    step = self.manager.latest_step()
    if step is not None:  # a resumed run compares with what an earlier run kept
      restored = self.manager.restore(step, args=ocp.args.Composite(
          best=ocp.args.JsonRestore()))
      self._value = float(restored["best"]["value"])

  def value(self) -> float | None:
    """The kept metric value, None before the first."""
    return self._value

  def save(self, step: int, params, metric: str, value: float) -> None:
    self._value = float(value)
    if jax.process_index() == 0:
      paths.write(paths.join(self.directory, "config.json"),
                  self._config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    if step in self.manager.all_steps():  # a resumed run beat, at the same step, what it
      self.manager.delete(step)  # kept before the kill; Orbax never overwrites a step
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        best=ocp.args.JsonSave({"step": int(step), "metric": metric, "value": float(value)})),
        force=True)

  def close(self) -> None:
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None


def is_training_workdir(path: str) -> bool:
  return paths.is_dir(paths.join(path, CHECKPOINTS_SUBDIR))


def latest_workdir_params(workdir: str, abstract_params=None) -> Any:
  """Parameters of the latest checkpoint in a training workdir (numpy/jax arrays)."""
  directory = paths.join(paths.absolute(workdir), CHECKPOINTS_SUBDIR)
  if not paths.is_dir(directory):
    raise UserError(f"{workdir} is not a training workdir (no {CHECKPOINTS_SUBDIR}/)")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True)) as manager:
    step = manager.latest_step()
    if step is None:
      raise UserError(f"{workdir} has no finished checkpoint yet")
    restored = manager.restore(step, args=ocp.args.Composite(
        params=_restore_args_for(abstract_params, paths.join(directory, str(step), "params"))))
  return restored["params"]


def save_params(directory: str, params, metadata: dict) -> None:
  """Writes a parameter checkpoint (Orbax) with a JSON metadata item, whole or not at all;
  refuses to overwrite."""
  directory = paths.absolute(directory)
  if paths.exists(directory):
    raise UserError(f"{directory} exists; choose a new output path")
  paths.check_bucket(directory, "output")
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
      checkpointer.save(directory, ocp.args.Composite(
          params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(dict(metadata))))
  except Exception as e:  # pylint: disable=broad-except
    _remove_partial_save(directory)
    raise paths.storage_error(e, directory, "write") from None


def _remove_partial_save(directory: str) -> None:
  """What a failed Orbax save of `directory` (new: save_params checked) left behind: locally
  its temporary `<name>.orbax-checkpoint-tmp*` siblings, in a bucket the directory itself."""
  leftovers = [directory] if paths.exists(directory) else []
  parent, name = paths.dirname(directory), paths.basename(directory)
  if paths.is_dir(parent):
    leftovers += [paths.join(parent, n) for n in paths.list_dir(parent)
                  if n.startswith(name + ".orbax-checkpoint-tmp")]
  for leftover in leftovers:
    try:
      paths.remove_tree(leftover)
    except OSError as e:
      logging.warning("could not remove the partial %s: %s", leftover, paths.cause(e))


def restore_params(directory: str, abstract_params=None) -> tuple[Any, dict]:
  """Reads a parameter checkpoint written by save_params: (params, metadata)."""
  directory = paths.absolute(directory)
  if not paths.is_dir(paths.join(directory, "params")):
    raise UserError(f"{directory} is not a parameter checkpoint (no params/ item)")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(directory, ocp.args.Composite(
        params=_restore_args_for(abstract_params, paths.join(directory, "params")),
        metadata=ocp.args.JsonRestore()))
  return restored["params"], dict(restored["metadata"])


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
  """Returns when every process of the job has called this with the same `name` (a no-op for
  one process). A barrier of JAX's coordination service, not a collective: it waits up to
  `timeout_s` where Gloo's CPU collectives give up after 30 s. It lives here because Orbax's
  is the public barrier of the libraries this project uses."""
  ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)
