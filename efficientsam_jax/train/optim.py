"""Optimiser and learning-rate schedule from config; weight decay and freezing as regex data."""
import re

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def learning_rate(config) -> float:
  """Peak rate: `optimizer.lr`, or `optimizer.base_lr * batch_size / 256` (linear scaling)."""
  opt = config.optimizer
  if opt.get("lr"):
    return float(opt.lr)
  return float(opt.base_lr) * config.batch_size / 256


def make_schedule(config) -> optax.Schedule:
  """Linear warmup from 0, then cosine (or linear) decay to `end_lr` at total_steps."""
  opt = config.optimizer
  peak = learning_rate(config)
  warmup = int(opt.warmup_steps)
  decay_steps = max(config.total_steps - warmup, 1)
  if opt.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_lr / peak if peak else 0)
  elif opt.decay == "linear":
    decay = optax.linear_schedule(peak, opt.end_lr, decay_steps)
  else:
    raise ValueError(f"optimizer.decay must be 'cosine' or 'linear', got {opt.decay!r}")
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _path_labels(params, patterns, label: str, default: str):
  """Labels each leaf `label` if its '/'-joined path matches any regex in patterns."""
  compiled = [re.compile(p) for p in patterns]
  flat = traverse_util.flatten_dict(params)
  labels = {path: label if any(c.fullmatch("/".join(path)) for c in compiled) else default
            for path in flat}
  return traverse_util.unflatten_dict(labels)


def make_optimizer(config, params_shape, frozen: tuple[str, ...] = ()):
  """AdamW with decoupled weight decay masked off `optimizer.no_decay` paths. Parameters
  whose '/'-joined path matches a regex of `frozen` (the task's: its model's buffers plus
  `optimizer.frozen`), and integer leaves (counters), get no update and no optimiser state."""
  opt = config.optimizer
  schedule = make_schedule(config)
  decay_mask = _path_labels(params_shape, opt.no_decay, "no", "yes")
  decay_mask = jax.tree.map(lambda label: label == "yes", decay_mask)
  adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                      weight_decay=opt.weight_decay, mask=decay_mask)
  chain = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.get("grad_clip_norm") else []
  tx = optax.chain(*chain, adamw)
  labels = _path_labels(params_shape, tuple(frozen), "frozen", "trained")
  labels = jax.tree.map(
      lambda label, x: label if jnp.issubdtype(x.dtype, jnp.inexact) else "frozen", labels,
      params_shape)
  if "frozen" in jax.tree.leaves(labels):
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule

