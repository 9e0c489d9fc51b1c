"""Optimiser and learning-rate schedule from config; weight decay, freezing and layer-wise
learning-rate decay as data over '/'-joined parameter paths."""
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


_BLOCK = re.compile(r"(?:^|/)blocks_(\d+)(?:/|$)")
_EMBEDDING = re.compile(r"(?:^|/)(?:patch_embed|pos_embed|cls_token)(?:/|$)")


def layer_ids(params_shape) -> tuple[dict, int]:
  """ViT layer index of every parameter, as MAE's layer-wise decay numbers them: the patch
  embedding and position table 0, block i (`blocks_i`) i + 1, everything after the blocks
  (head, norms, a neck) depth + 1. Returns (tree of ints, depth + 1)."""
  flat = traverse_util.flatten_dict(params_shape)
  blocks = {int(m.group(1)) for path in flat if (m := _BLOCK.search("/".join(path)))}
  top = (max(blocks) + 1 if blocks else 0) + 1

  def layer(path):
    name = "/".join(path)
    if m := _BLOCK.search(name):
      return int(m.group(1)) + 1
    return 0 if _EMBEDDING.search(name) else top

  return traverse_util.unflatten_dict({p: layer(p) for p in flat}), top


def layer_decay_scales(params_shape, rate: float):
  """Learning-rate factor of every parameter: rate ** (top - layer id) (layer_ids), so the
  head trains at the full rate and each layer below at `rate` times the one above."""
  ids, top = layer_ids(params_shape)
  return jax.tree.map(lambda i: float(rate) ** (top - i), ids)


def make_optimizer(config, params_shape, frozen: tuple[str, ...] = ()):
  """`optimizer.kind` "adamw" (default): AdamW with decoupled weight decay masked off
  `optimizer.no_decay` paths; "lars": SGD with momentum 0.9 and LARS trust ratios (MAE's
  linear probing), neither weight decay nor trust ratio on `no_decay` paths.
  `optimizer.layer_decay` < 1 multiplies each parameter's update by layer_decay_scales (the
  learning rate and the decoupled weight decay both scale, as in MAE's parameter groups).
  Parameters whose '/'-joined path matches a regex of `frozen` (the task's: its model's
  buffers plus `optimizer.frozen`), and integer leaves (counters), get no update and no
  optimiser state."""
  opt = config.optimizer
  schedule = make_schedule(config)
  decay_mask = _path_labels(params_shape, opt.no_decay, "no", "yes")
  decay_mask = jax.tree.map(lambda label: label == "yes", decay_mask)
  kind = opt.get("kind", "adamw")
  if kind == "adamw":
    base = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay, mask=decay_mask)
  elif kind == "lars":
    base = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=decay_mask,
                      trust_ratio_mask=decay_mask, momentum=opt.get("momentum", 0.9))
  else:
    raise ValueError(f"optimizer.kind must be 'adamw' or 'lars', got {kind!r}")
  chain = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.get("grad_clip_norm") else []
  chain.append(base)
  layer_decay = float(opt.get("layer_decay", 1.0))
  if layer_decay != 1.0:
    scales = layer_decay_scales(params_shape, layer_decay)
    chain.append(optax.stateless(
        lambda updates, params: jax.tree.map(lambda u, f: u * f, updates, scales)))
  tx = optax.chain(*chain)
  labels = _path_labels(params_shape, tuple(frozen), "frozen", "trained")
  labels = jax.tree.map(
      lambda label, x: label if jnp.issubdtype(x.dtype, jnp.inexact) else "frozen", labels,
      params_shape)
  if "frozen" in jax.tree.leaves(labels):
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule

