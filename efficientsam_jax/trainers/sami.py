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

from efficientsam_jax import checkpointing, data, masking, optim, sharding, teacher
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


def tree_norm(tree) -> jax.Array:
  return optax.global_norm(tree)


def make_train_step(config, student, teacher_apply, tx, schedule, mesh):
  """The jitted step: (params, opt_state, teacher_params, batch, step) -> new state, metrics."""
  image_size = config.data.image_size
  grid = image_size // student.encoder.patch_size
  num_tokens = grid * grid
  keep = masking.num_kept(num_tokens, config.mask_ratio)
  base_key = jax.random.key(config.seed)
  loss_cfg = config.loss

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
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "learning_rate": schedule(step), "grad_norm": tree_norm(grads),
               "param_norm": tree_norm(params), "update_norm": tree_norm(updates),
               "valid_images": jnp.sum(valid)}
    return params, opt_state, metrics

  return train_step


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train(config, workdir: str) -> dict:
  """Runs SAMI pretraining in `workdir`; returns the last logged metrics."""
  # --- Workdir and config ------------------------------------------------------------------
  os.makedirs(workdir, exist_ok=True)
  if not os.access(workdir, os.W_OK):
    raise UserError(f"workdir {workdir} is not writable")
  if config.batch_size % jax.device_count():
    raise UserError(f"batch_size {config.batch_size} is not divisible by the "
                    f"{jax.device_count()} devices")
  teacher_spec = teacher.TeacherSpec.from_config(config.teacher)  # validates before compiling
  write_config(config, workdir)

  # --- Mesh, models, optimiser -------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  student = build_student(config)
  size = config.data.image_size
  ids = masking.random_masking(jax.random.key(0), 1, (size // 16) ** 2,
                               masking.num_kept((size // 16) ** 2, config.mask_ratio))
  init_fn = lambda rng: student.init(rng, jnp.zeros((1, size, size, 3)), *ids)["params"]
  abstract_params = jax.eval_shape(init_fn, jax.random.key(config.seed))
  tx, schedule = optim.make_optimizer(config, abstract_params)
  abstract_opt_state = jax.eval_shape(tx.init, abstract_params)

  rules, min_size = list(config.sharding.rules), config.sharding.fsdp_min_size
  param_shardings = sharding.tree_shardings(mesh, abstract_params, rules, min_size)
  opt_shardings = sharding.tree_shardings(mesh, abstract_opt_state, rules, min_size)

  # --- Data --------------------------------------------------------------------------------
  train_iter = data.make_train_iterator(config)

  # --- State: restore, or born sharded -----------------------------------------------------
  checkpoints = checkpointing.TrainCheckpoints(workdir, config.keep_checkpoints,
                                               config.async_checkpointing)
  start_step = checkpoints.latest_step() or 0
  if start_step:
    logging.info("resuming from step %d in %s", start_step, checkpoints.directory)
    params, opt_state = checkpoints.restore(
        start_step, sharding.with_shardings(abstract_params, param_shardings),
        sharding.with_shardings(abstract_opt_state, opt_shardings), train_iter)
  else:
    if config.get("init_from"):
      raise UserError("config.init_from is not supported by SAMI pretraining yet")
    params = jax.jit(init_fn, out_shardings=param_shardings)(jax.random.key(config.seed))
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)

  # The frozen teacher: loaded once, placed by the same rules, never checkpointed.
  teacher_apply, teacher_params = teacher.load(teacher_spec, mesh, rules, min_size)

  # --- The compiled step -------------------------------------------------------------------
  batch_shard = sharding.batch_sharding(mesh)
  step_fn = jax.jit(
      make_train_step(config, student, teacher_apply, tx, schedule, mesh),
      in_shardings=(param_shardings, opt_shardings, jax.tree.map(lambda x: x.sharding,
                                                                 teacher_params),
                    {"image": batch_shard, "valid": batch_shard}, sharding.replicated(mesh)),
      out_shardings=(param_shardings, opt_shardings, sharding.replicated(mesh)),
      donate_argnums=(0, 1))

  # --- Loop --------------------------------------------------------------------------------
  writer = MetricWriter(workdir, config.total_steps, resumed_step=start_step)
  pending = None  # (step, device metrics): fetched one step late so the device never waits
  last_record, skipped_images = {}, 0
  compile_start = time.perf_counter()

  def finish(step, metrics):
    nonlocal last_record, skipped_images
    host = jax.device_get(metrics)
    if not np.isfinite(host["loss"]):
      raise FloatingPointError(f"non-finite loss {host['loss']} at step {step}; "
                               "no checkpoint is written for it")
    skipped_images += config.batch_size - int(host.pop("valid_images"))
    if step % config.log_every == 0 or step == config.total_steps:
      last_record = writer.write(step, {**host, "skipped_images": skipped_images})

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
      if done % config.checkpoint_every == 0 or done == config.total_steps:
        finish(*pending)  # never checkpoint a state whose loss was not checked
        pending = None
        checkpoints.save(done, params, opt_state, train_iter)
    if pending is not None:
      finish(*pending)
  checkpoints.close()
  writer.close()
  return last_record
