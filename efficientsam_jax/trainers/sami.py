"""SAMI pretraining, top to bottom.

A ViT student sees 25% of the patches of each image; its decoder reconstructs, for every
token, the features a frozen SAM image encoder produces for the same image. Resume order: the
latest checkpoint in the workdir, else `config.init_from`, else from scratch.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from efficientsam_jax import checkpointing, data, masking, optim, runtime, sharding, teacher
from efficientsam_jax.errors import UserError
from efficientsam_jax.losses import sami as sami_losses
from efficientsam_jax.metric_writers import MetricWriter
from efficientsam_jax.models import sami as sami_model
from efficientsam_jax.models import vit


def build_student(config) -> sami_model.SAMI:
  s = config.student
  encoder = vit.ViTConfig.from_name(s.size, **dict(s.get("overrides", {})))
  decoder = sami_model.DecoderConfig(**dict(config.decoder))
  return sami_model.SAMI(encoder, decoder, target_dim=teacher.feature_dim(config.teacher),
                         dtype=jnp.dtype(s.dtype))


def make_train_step(config, student, teacher_apply, tx, schedule):
  """The step: (params, opt_state, teacher_params, batch, step) -> new state, metrics."""
  image_size = config.data.image_size
  grid = image_size // student.encoder.patch_size
  num_tokens = grid * grid
  keep = masking.num_kept(num_tokens, config.mask_ratio)
  base_key = jax.random.key(config.seed)
  loss_cfg = config.loss
  skip_nonfinite = config.nonfinite_policy == "skip"

  def train_step(params, opt_state, teacher_params, batch, step):
    images, valid = batch["image"], batch["valid"]
    b = images.shape[0]
    # The teacher is data: evaluated, never differentiated.
    target = jax.lax.stop_gradient(teacher_apply(teacher_params, images))
    target = target.astype(jnp.float32).reshape(b, num_tokens, -1)
    ids_keep, ids_masked, ids_restore = masking.random_masking(
        jax.random.fold_in(base_key, step), b, num_tokens, keep)
    masked = masking.masked_token_indicator(ids_restore, keep)

    def loss_fn(p):
      pred = student.apply({"params": p}, images.astype(student.dtype), ids_keep, ids_masked,
                           ids_restore)
      return sami_losses.reconstruction_loss(
          pred, target, masked, valid, kind=loss_cfg.kind, masked_only=loss_cfg.masked_only,
          normalise_target=loss_cfg.normalise_target)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = {"loss": loss, "learning_rate": schedule(step), "grad_norm": grad_norm,
               "update_norm": optax.global_norm(updates), "valid_images": jnp.sum(valid)}
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
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


class Setup:
  """Everything the loop needs, built abstractly first so nothing is materialised before the
  shapes, shardings and the compiled step are known."""

  def __init__(self, config):
    if config.nonfinite_policy not in ("stop", "skip"):
      raise UserError(f"config.nonfinite_policy must be 'stop' or 'skip', got "
                      f"{config.nonfinite_policy!r}")
    self.config = config
    try:
      self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    except ValueError as e:
      raise UserError(str(e)) from e
    if config.batch_size % self.mesh.size:
      raise UserError(f"batch_size {config.batch_size} is not divisible by the "
                      f"{self.mesh.size} devices of the mesh")
    self.student = build_student(config)
    size, patch = config.data.image_size, self.student.encoder.patch_size
    tokens = (size // patch) ** 2
    ids = masking.random_masking(jax.random.key(0), 1, tokens,
                                 masking.num_kept(tokens, config.mask_ratio))
    self.init_fn = lambda rng: self.student.init(rng, jnp.zeros((1, size, size, 3)),
                                                 *ids)["params"]
    self.abstract_params = jax.eval_shape(self.init_fn, jax.random.key(config.seed))
    self.tx, self.schedule = optim.make_optimizer(config, self.abstract_params)
    self.abstract_opt_state = jax.eval_shape(self.tx.init, self.abstract_params)
    rules, min_size = list(config.sharding.rules), config.sharding.fsdp_min_size
    self.param_shardings = sharding.tree_shardings(self.mesh, self.abstract_params, rules,
                                                   min_size)
    self.opt_shardings = sharding.tree_shardings(self.mesh, self.abstract_opt_state, rules,
                                                 min_size)
    self.teacher_spec = teacher.TeacherSpec.from_config(
        config.teacher, need_weights=not config.compile_only)
    self.teacher_apply, self.abstract_teacher = teacher.abstract(
        self.teacher_spec, self.mesh, rules, min_size)

  @property
  def checkpoint_bytes(self) -> int:
    return runtime.tree_bytes(self.abstract_params) + runtime.tree_bytes(
        self.abstract_opt_state)

  def abstract_batch(self):
    c, shard = self.config, sharding.batch_sharding(self.mesh)
    size = c.data.image_size
    return {"image": jax.ShapeDtypeStruct((c.batch_size, size, size, 3), jnp.float32,
                                          sharding=shard),
            "valid": jax.ShapeDtypeStruct((c.batch_size,), jnp.int32, sharding=shard)}

  def jitted_step(self):
    batch_shard = sharding.batch_sharding(self.mesh)
    return jax.jit(
        make_train_step(self.config, self.student, self.teacher_apply, self.tx, self.schedule),
        in_shardings=(self.param_shardings, self.opt_shardings,
                      jax.tree.map(lambda x: x.sharding, self.abstract_teacher),
                      {"image": batch_shard, "valid": batch_shard},
                      sharding.replicated(self.mesh)),
        out_shardings=(self.param_shardings, self.opt_shardings,
                       sharding.replicated(self.mesh)),
        donate_argnums=(0, 1))

  def compile(self):
    """Compiles the step from shapes alone: no weights, no data, no teacher file read."""
    with jax.set_mesh(self.mesh):
      return self.jitted_step().lower(
          sharding.with_shardings(self.abstract_params, self.param_shardings),
          sharding.with_shardings(self.abstract_opt_state, self.opt_shardings),
          self.abstract_teacher, self.abstract_batch(),
          jax.ShapeDtypeStruct((), jnp.int32)).compile()


def compile_report(config) -> dict:
  """Per-device memory and FLOPs of the compiled train step (config.compile_only)."""
  setup = Setup(config)
  compiled = setup.compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report = {"devices": setup.mesh.size, "mesh": dict(setup.mesh.shape),
            "platform": jax.devices()[0].platform,
            "flops_per_step_per_device": float(cost.get("flops", 0.0)) if cost else None}
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    report[field] = int(getattr(memory, field, 0) or 0)
  report["peak_bytes_per_device_estimate"] = (report["argument_size_in_bytes"]
                                              + report["output_size_in_bytes"]
                                              - report["alias_size_in_bytes"]
                                              + report["temp_size_in_bytes"])
  return report


def train(config, workdir: str) -> dict:
  """Runs SAMI pretraining in `workdir`; returns the last logged metrics."""
  if config.get("compile_only"):
    report = compile_report(config)
    logging.info("compiled train step: %s", json.dumps(report))
    if jax.process_index() == 0:
      print(json.dumps(report))
    return report

  # --- Shapes, shardings, checks: all before anything is compiled --------------------------
  setup = Setup(config)
  runtime.check_workdir(workdir, 2 * setup.checkpoint_bytes)
  write_config(config, workdir)
  mesh = setup.mesh
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  train_iter = data.make_train_iterator(config)

  # --- State: restore, or born sharded -----------------------------------------------------
  checkpoints = checkpointing.TrainCheckpoints(workdir, config.keep_checkpoints,
                                               config.async_checkpointing)
  start_step = checkpoints.latest_step() or 0
  if start_step:
    logging.info("resuming from step %d in %s", start_step, checkpoints.directory)
    params, opt_state = checkpoints.restore(
        start_step, sharding.with_shardings(setup.abstract_params, setup.param_shardings),
        sharding.with_shardings(setup.abstract_opt_state, setup.opt_shardings), train_iter)
  else:
    if config.get("init_from"):
      raise UserError("config.init_from is not supported by SAMI pretraining yet")
    params = jax.jit(setup.init_fn, out_shardings=setup.param_shardings)(
        jax.random.key(config.seed))
    opt_state = jax.jit(setup.tx.init, out_shardings=setup.opt_shardings)(params)

  # The frozen teacher: loaded once, placed by the same rules, never checkpointed.
  teacher_params = teacher.load_params(setup.teacher_spec, setup.abstract_teacher)
  step_fn = setup.jitted_step()

  # --- Loop --------------------------------------------------------------------------------
  writer = MetricWriter(workdir, config.total_steps, resumed_step=start_step)
  preemption = runtime.PreemptionWatch()
  pending = None  # (step, device metrics): fetched one step late so the device never waits
  last_record, counters = {}, {"skipped_images": 0, "skipped_updates": 0}
  compile_start = time.perf_counter()

  def finish(step, metrics):
    nonlocal last_record
    host = jax.device_get(metrics)
    if not (np.isfinite(host["loss"]) and np.isfinite(host["param_norm"])):
      raise runtime.NonFiniteError(
          f"non-finite loss ({host['loss']}) or parameters at step {step}; the last checkpoint"
          " holds the last good state (set nonfinite_policy=skip to skip such updates)")
    counters["skipped_images"] += config.batch_size - int(host.pop("valid_images"))
    counters["skipped_updates"] += int(host.pop("skipped_update", 0))
    if step % config.log_every == 0 or step == config.total_steps:
      last_record = writer.write(step, {**host, **counters})

  try:
    with jax.set_mesh(mesh):
      for step in range(start_step, config.total_steps):
        batch = sharding.host_batch_to_global(next(train_iter), mesh)
        params, opt_state, metrics = step_fn(params, opt_state, teacher_params, batch,
                                             jnp.asarray(step, jnp.int32))
        if step == start_step:
          jax.block_until_ready(metrics)
          logging.info("first step (compile included) took %.1fs",
                       time.perf_counter() - compile_start)
          writer.start_timer(step + 1)
        if pending is not None:
          finish(*pending)
        pending = (step + 1, metrics)
        done = step + 1
        preempted = preemption.reached(done)
        if done % config.checkpoint_every == 0 or done == config.total_steps or preempted:
          finish(*pending)  # never checkpoint a state whose loss was not checked
          pending = None
          checkpoints.save(done, params, opt_state, train_iter)
        if preempted:
          checkpoints.close()
          raise runtime.Preempted(done)
      if pending is not None:
        finish(*pending)
    logging.info("parameter digest (process %d): %s", jax.process_index(),
                 runtime.replicated_digest(params))
  finally:
    preemption.close()
    checkpoints.close()
    writer.close()
  return last_record
