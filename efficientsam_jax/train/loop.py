"""What every trainer shares: mesh, sharded state, the jitted step with its non-finite guard,
resume/init order, checkpoints (with the data iterator), preemption, one-step-late metrics.

A trainer defines a `Task` (its model, loss, data and, if it has one, its teacher) and calls
`train(config, workdir, task)`. Resume order: the latest checkpoint in the workdir, else
`task.init_from_params` (config.init_from), else a fresh init from `config.seed`.

Two words, two things: the *teacher* is arrays passed into every step that are never trained
nor checkpointed (SAMI's SAM image encoder); *frozen* parameters are parameters of the
trained model that the optimiser never updates (a model's buffers, `optimizer.frozen`).

The module is long because it is the one training loop, read top to bottom: setup, state,
the step loop and what each failure during it leaves behind belong in one place.
"""
import abc
import contextlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from efficientsam_jax import data
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import checkpoints as checkpoints_lib
from efficientsam_jax.io import paths
from efficientsam_jax.train import eval_schedule, optim, precheck, runtime, sharding
from efficientsam_jax.train.metrics import MetricWriter

# A run whose first this many batches hold no readable example stops (UserError): a folder of
# unreadable files must not train on blanks, with loss 0, and write checkpoints.
BLANK_BATCHES = 10

CONFIG_FILE = runtime.CONFIG_FILE


class Task(abc.ABC):
  """The trainer-specific half of a run: its model, loss, data and teacher.

  Everything a Task needs is in its config, given to the constructor; no method changes the
  Task or the config.
  """

  def __init__(self, config):
    self.config = config

  @abc.abstractmethod
  def init_params(self, rng):
    """rng -> params (pure; jitted with the parameters' output shardings)."""

  @abc.abstractmethod
  def loss_fn(self, params, teacher, batch, rng):
    """-> (scalar loss, dict of scalar metrics); the metrics include "valid_images" (the
    count of real examples in the batch). `teacher` is `load_teacher`'s arrays or None.
    `rng`: the key of this step (fold_in(key(config.seed), step)), or of this microbatch of
    the step (that key folded with the microbatch's index) with config.microbatches > 1."""

  @abc.abstractmethod
  def batch_spec(self) -> dict:
    """{name: (shape, dtype)} of the GLOBAL batch (leading axis = batch_size)."""

  @abc.abstractmethod
  def make_iterator(self):
    """This host's checkpointable (grain) iterator of numpy batches."""

  def frozen(self) -> tuple[str, ...]:
    """Regexes of '/'-joined parameter paths the optimiser never updates: the model's
    buffers (a task with such a model adds them) and the config's `optimizer.frozen`."""
    return tuple(self.config.optimizer.get("frozen") or ())

  def abstract_teacher(self, mesh, rules, min_size):
    """ShapeDtypeStructs (with shardings) of the teacher's arrays; None without a teacher.
    Reads no file: enough to compile the step."""
    del mesh, rules, min_size
    return None

  def load_teacher(self, abstract_teacher):
    """The teacher's arrays, placed as `abstract_teacher` says; None without a teacher."""
    del abstract_teacher
    return None

  def evaluate(self, params, teacher, step: int) -> dict | None:
    """Held-out metrics of `params` ({name: float}), or None when the task has none. The loop
    calls it on every process at the same steps (every `config.eval.every` steps and at the
    end); it must return the same dict on all of them. Logged as `eval/NAME`;
    `config.eval.best_metric` names the one whose best value keeps a checkpoint."""
    del params, teacher, step
    return None

  def init_from_params(self, abstract_params):
    """Parameters to start from when the workdir has no checkpoint (numpy tree) or None."""
    del abstract_params
    if self.config.get("init_from"):
      raise UserError(f"config.init_from is not supported by the {self.config.trainer} trainer")
    return None


def _float0_to_zeros(grads, params):
  # allow_int: integer leaves (BatchNorm's num_batches_tracked counter in TinyViT) get
  # float0 gradients; they become zeros of the leaf's dtype, and the optimiser freezes them.
  return jax.tree.map(
      lambda g, p: jnp.zeros_like(p) if g.dtype == jax.dtypes.float0 else g, grads, params)


def accumulated_value_and_grad(loss_fn: Callable, microbatches: int):
  """(params, teacher, batch, rng) -> ((loss, metrics), grads) of `loss_fn` over the whole
  batch, computed in `microbatches` parts one after another (gradient accumulation).

  Each device's rows of the batch are split alike (microbatch i takes every n-th of them), so
  no example moves between devices. Loss, gradients and metrics are the means over the parts,
  except "valid_images", their sum; microbatch i draws its random numbers from
  fold_in(rng, i). With one microbatch: `loss_fn` on the whole batch with `rng` itself.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True, allow_int=True)
  n = microbatches

  def whole(params, teacher, batch, rng):
    (loss, metrics), grads = grad_fn(params, teacher, batch, rng)
    return (loss, metrics), _float0_to_zeros(grads, params)

  if n == 1:
    return whole

  def accumulated(params, teacher, batch, rng):
    # (B, ...) -> (B/n, n, ...) is free and keeps the batch's device split on the B/n axis;
    # part i is [:, i], sliced inside the loop (no transposed copy of the whole batch).
    rows = jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]), batch)

    def one_part(grad_sum, i):
      part = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, 1, keepdims=False), rows)
      (loss, metrics), grads = whole(params, teacher, part, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, grad_sum, grads), (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grad_sum, (losses, metrics) = jax.lax.scan(one_part, zeros, jnp.arange(n))
    metrics = {k: jnp.sum(v) if k == "valid_images" else jnp.mean(v)
               for k, v in metrics.items()}
    mean = lambda g: g / n if jnp.issubdtype(g.dtype, jnp.floating) else g  # int: zeros
    return (jnp.mean(losses), metrics), jax.tree.map(mean, grad_sum)

  return accumulated


def make_train_step(loss_fn: Callable, tx, schedule, skip_nonfinite: bool, seed: int,
                    microbatches: int = 1):
  """(params, opt_state, teacher, batch, step) -> (params, opt_state, metrics).

  Metrics: the task's, plus loss, learning_rate, grad/update/param norms and, with
  skip_nonfinite, skipped_update (1 when a non-finite step was dropped).
  """
  value_and_grad = accumulated_value_and_grad(loss_fn, microbatches)

  def train_step(params, opt_state, teacher, batch, step):
    rng = jax.random.fold_in(jax.random.key(seed), step)
    (loss, task_metrics), grads = value_and_grad(params, teacher, batch, rng)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = {**task_metrics, "loss": loss, "learning_rate": schedule(step),
               "grad_norm": grad_norm, "update_norm": optax.global_norm(updates)}
    if skip_nonfinite:
      # A bad step (loss, gradients or the updated weights) leaves the state untouched.
      finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                & jnp.isfinite(optax.global_norm(new_params)))
      keep_old = lambda new, old: jnp.where(finite, new, old)
      new_params = jax.tree.map(keep_old, new_params, params)
      new_opt_state = jax.tree.map(keep_old, new_opt_state, opt_state)
      metrics["skipped_update"] = 1 - finite.astype(jnp.int32)
    metrics["param_norm"] = optax.global_norm(new_params)
    return new_params, new_opt_state, metrics

  return train_step


def write_config(config, workdir: str) -> None:
  """WORKDIR/config.json, whole (process 0)."""
  if jax.process_index() == 0:
    paths.write(paths.join(workdir, CONFIG_FILE),
                config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


class Setup:
  """Everything the loop needs, built abstractly first so nothing is materialised before the
  shapes, shardings and the compiled step are known."""

  def __init__(self, config, task: Task, devices=None):
    """devices: those of the mesh (default all); a topology's compile-only devices when
    compiling for other hardware (precheck.py)."""
    if config.nonfinite_policy not in ("stop", "skip"):
      raise UserError(f"config.nonfinite_policy must be 'stop' or 'skip', got "
                      f"{config.nonfinite_policy!r}")
    self.config, self.task = config, task
    try:
      self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    except ValueError as e:
      raise UserError(str(e)) from e
    if config.batch_size % self.mesh.size:
      raise UserError(f"batch_size {config.batch_size} is not divisible by the "
                      f"{self.mesh.size} devices of the mesh")
    self.microbatches = config.get("microbatches", 1)
    if (config.batch_size // self.mesh.size) % self.microbatches:
      raise UserError(f"config.microbatches ({self.microbatches}) must divide the "
                      f"{config.batch_size // self.mesh.size} images each of the "
                      f"{self.mesh.size} devices gets (batch_size {config.batch_size})")
    self.init_fn = task.init_params
    self.abstract_params = jax.eval_shape(self.init_fn, jax.random.key(config.seed))
    self.tx, self.schedule = optim.make_optimizer(config, self.abstract_params, task.frozen())
    self.abstract_opt_state = jax.eval_shape(self.tx.init, self.abstract_params)
    rules, min_size = list(config.sharding.rules), config.sharding.fsdp_min_size
    self.param_shardings = sharding.tree_shardings(self.mesh, self.abstract_params, rules,
                                                   min_size)
    self.opt_shardings = sharding.tree_shardings(self.mesh, self.abstract_opt_state, rules,
                                                 min_size)
    self.abstract_teacher = task.abstract_teacher(self.mesh, rules, min_size)

  @property
  def checkpoint_bytes(self) -> int:
    return runtime.tree_bytes(self.abstract_params) + runtime.tree_bytes(
        self.abstract_opt_state)

  def abstract_batch(self):
    shard = sharding.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shard)
            for k, (shape, dtype) in self.task.batch_spec().items()}

  def jitted_step(self):
    batch_shard = sharding.batch_sharding(self.mesh)
    step = make_train_step(self.task.loss_fn, self.tx, self.schedule,
                           self.config.nonfinite_policy == "skip", self.config.seed,
                           self.microbatches)
    return jax.jit(
        step,
        in_shardings=(self.param_shardings, self.opt_shardings,
                      jax.tree.map(lambda x: x.sharding, self.abstract_teacher),
                      {k: batch_shard for k in self.task.batch_spec()},
                      sharding.replicated(self.mesh)),
        out_shardings=(self.param_shardings, self.opt_shardings,
                       sharding.replicated(self.mesh)),
        donate_argnums=(0, 1))

  def microbatch_flops(self) -> float | None:
    """FLOPs of one microbatch's loss and gradients over the whole batch part (all devices),
    counted on the program lowered for this host's default backend without sharding (a
    TPU topology's lowering gives no count; the count is the program's, not the chip's);
    None when the backend does not count them. A compiler's cost analysis counts a loop's
    body once, so a step in n microbatches needs this to count the other n - 1."""
    plain = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    part = {k: jax.ShapeDtypeStruct((shape[0] // self.microbatches,) + tuple(shape[1:]), dtype)
            for k, (shape, dtype) in self.task.batch_spec().items()}
    lowered = jax.jit(accumulated_value_and_grad(self.task.loss_fn, 1)).lower(
        plain(self.abstract_params), plain(self.abstract_teacher), part,
        jax.eval_shape(jax.random.key, 0))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None

  def compile(self):
    """Compiles the step from shapes alone: no weights, no data, no teacher file read."""
    with jax.set_mesh(self.mesh):
      return self.jitted_step().lower(
          sharding.with_shardings(self.abstract_params, self.param_shardings),
          sharding.with_shardings(self.abstract_opt_state, self.opt_shardings),
          self.abstract_teacher, self.abstract_batch(),
          jax.ShapeDtypeStruct((), jnp.int32)).compile()


def initial_state(setup: Setup, checkpoints, train_iter):
  """(params, opt_state, start_step): the latest intact checkpoint, else init_from, else
  fresh."""
  restored = checkpoints.restore_latest(
      sharding.with_shardings(setup.abstract_params, setup.param_shardings),
      sharding.with_shardings(setup.abstract_opt_state, setup.opt_shardings),
      lambda: data.iterator_restore_args(train_iter))
  if restored is not None:
    start_step, params, opt_state = restored
    logging.info("resuming from step %d in %s", start_step, checkpoints.directory)
    return params, opt_state, start_step
  loaded = setup.task.init_from_params(setup.abstract_params)
  if loaded is not None:
    shapes = lambda tree: jax.tree.map(np.shape, tree)
    if shapes(loaded) != shapes(setup.abstract_params):
      raise UserError(f"config.init_from {setup.config.init_from}: its parameters do not fit "
                      "the configured model (another size or depth?)")
    params = jax.tree.map(lambda x, a, s: jax.device_put(np.asarray(x, a.dtype), s), loaded,
                          setup.abstract_params, setup.param_shardings)
  else:
    params = jax.jit(setup.init_fn, out_shardings=setup.param_shardings)(
        jax.random.key(setup.config.seed))
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.opt_shardings)(params)
  return params, opt_state, 0


def train(config, workdir: str, task: Task) -> dict:
  """Runs `task` in `workdir` to config.total_steps; returns the last logged metrics."""
  if config.get("compile_only"):
    # A lever that changes the config (precheck.py) gets a task built from it.
    return precheck.compile_only(config, lambda c, devices: Setup(
        c, task if c is config else type(task)(c), devices))

  # From here a SIGTERM or Ctrl-C means: finish the current step, save, exit 75.
  preemption = runtime.PreemptionWatch()
  try:
    return _train(config, workdir, task, preemption)
  finally:
    preemption.close()


def _blank_data_error(batches: int, config) -> UserError:
  return UserError(
      f"the first {batches} batches ({batches * config.batch_size} images) held no readable "
      "example: every image (or its annotations) was unreadable; check config.data. Nothing "
      "was saved")


def _train(config, workdir: str, task: Task, preemption) -> dict:
  # --- Shapes, shardings, checks: all before anything is compiled --------------------------
  setup = Setup(config, task)
  runtime.check_config_paths(config, workdir)
  runtime.check_workdir(workdir, 2 * setup.checkpoint_bytes)
  checkpoints = checkpoints_lib.TrainCheckpoints(workdir, config.keep_checkpoints,
                                                 config.async_checkpointing)
  runtime.check_same_model(config, workdir, checkpoints, setup.abstract_params)
  write_config(config, workdir)
  mesh = setup.mesh
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  train_iter = task.make_iterator()

  # --- State: restore, or init_from, or born sharded ---------------------------------------
  params, opt_state, start_step = initial_state(setup, checkpoints, train_iter)
  # The teacher: loaded once, placed by the same rules, never checkpointed.
  teacher = task.load_teacher(setup.abstract_teacher)
  compile_start = time.perf_counter()
  step_fn = setup.compile()
  logging.info("train step compiled in %.1fs", time.perf_counter() - compile_start)

  # --- Loop --------------------------------------------------------------------------------
  evaluation = eval_schedule.EvalSchedule(config, workdir)
  writer = MetricWriter(workdir, config.total_steps, resumed_step=start_step)
  # Every process compiled alone; they meet here, at a barrier of the job's coordination
  # service (no time limit that matters), so that they reach the first step's collectives
  # together: Gloo's CPU collectives give up when one process arrives 30 s after another
  # (process 0 alone also opens the metric files).
  checkpoints_lib.wait_for_all_processes("start of training")
  replicated = sharding.replicated(mesh)
  pending = None  # (step, device metrics): fetched one step late so the device never waits
  last_record, counters = {}, {"skipped_images": 0, "skipped_updates": 0}
  blank_batches = 0  # batches without one readable example, until the first that has one

  def finish(step, metrics, evaluated=None):
    nonlocal last_record, blank_batches
    host = jax.device_get(metrics)
    if not (np.isfinite(host["loss"]) and np.isfinite(host["param_norm"])):
      raise runtime.NonFiniteError(
          f"non-finite loss ({host['loss']}) or parameters at step {step}; the last checkpoint"
          " holds the last good state (set nonfinite_policy=skip to skip such updates)")
    valid = int(host.pop("valid_images"))
    if blank_batches >= 0:
      blank_batches = -1 if valid else blank_batches + 1
      if blank_batches >= BLANK_BATCHES:
        raise _blank_data_error(blank_batches, config)
    counters["skipped_images"] += config.batch_size - valid
    counters["skipped_updates"] += int(host.pop("skipped_update", 0))
    if step % config.log_every == 0 or step == config.total_steps or evaluated:
      extra = {f"eval/{k}": v for k, v in (evaluated or {}).items()}
      last_record = writer.write(step, {**host, **counters, **extra})

  def close_all():
    with contextlib.ExitStack() as stack:  # each closed even when another fails
      stack.callback(writer.close)
      stack.callback(evaluation.close)
      stack.callback(checkpoints.close)

  try:
    with jax.set_mesh(mesh):
      for step in range(start_step, config.total_steps):
        batch = sharding.host_batch_to_global(next(train_iter), mesh)
        params, opt_state, metrics = step_fn(params, opt_state, teacher, batch,
                                             jax.device_put(np.int32(step), replicated))
        if step == start_step:
          jax.block_until_ready(metrics)
          writer.start_timer(step + 1)
        if pending is not None:
          finish(*pending)
        pending = (step + 1, metrics)
        done = step + 1
        if evaluation.due(done):
          scores = task.evaluate(params, teacher, done)
          finish(*pending, evaluated=scores)  # the step's record carries the scores
          pending = None
          evaluation.keep_if_best(done, params, scores)
        preempted = preemption.reached(done)
        if done % config.checkpoint_every == 0 or done == config.total_steps or preempted:
          if pending is not None:
            finish(*pending)  # never checkpoint a state whose loss was not checked
          pending = None
          if blank_batches > 0:  # nothing readable yet: nothing worth keeping
            raise _blank_data_error(blank_batches, config)
          writer.sync()  # a bucket's metrics reach the checkpoint before it exists
          checkpoints.save(done, params, opt_state, data.iterator_save_args(train_iter))
          logging.info("checkpoint at step %d: saving to %s", done,
                       paths.join(checkpoints.directory, str(done)))
        if preempted:
          checkpoints.close()
          raise runtime.Preempted(done, preemption.cause)
      if pending is not None:
        finish(*pending)
    logging.info("parameter digest (process %d): %s", jax.process_index(),
                 runtime.replicated_digest(params))
  except BaseException as e:
    # The first failure is the one reported; a storage failure says where to resume from.
    failure = checkpoints.with_resume_note(e) if isinstance(e, UserError) else e
    with contextlib.suppress(Exception):
      close_all()
    raise failure from None
  close_all()
  return last_record
