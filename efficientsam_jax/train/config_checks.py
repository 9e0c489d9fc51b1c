"""Config values checked before anything is built or compiled: one-line UserErrors that name
the key, its value and what it must be (`config.batch_size must be at least 1, got 0`).

Each trainer has one place that checks its whole config, `check_config(config)` in its
`tasks/*/task.py`, called first thing by its `train()`; it calls `run_settings` for what
every trainer shares (configs/common.py's run settings and AdamW block) and adds its own.
A config file's types are already enforced by ml_collections; these are the values.
"""
from efficientsam_jax.errors import UserError


def value(config, key: str):
  """config['a.b.c'] by a dotted key."""
  out = config
  for part in key.split("."):
    out = out[part]
  return out


def _fail(key: str, got, requirement: str):
  raise UserError(f"config.{key} must be {requirement}, got {got!r}")


def _number(config, key: str):
  got = value(config, key)
  if got is None:
    raise UserError(f"config.{key} must be set")
  if isinstance(got, bool) or not isinstance(got, (int, float)):
    _fail(key, got, "a number")
  return got


def at_least(config, minimum, *keys: str) -> None:
  for key in keys:
    got = _number(config, key)
    if not got >= minimum:  # also refuses NaN
      _fail(key, got, f"at least {minimum}")


def positive(config, *keys: str) -> None:
  for key in keys:
    got = _number(config, key)
    if not got > 0:
      _fail(key, got, "positive")


def in_range(config, key: str, low: float, high: float, *, include_low: bool = True,
             include_high: bool = True) -> None:
  """low <= value <= high, each end open when not included (e.g. [0, 1))."""
  got = _number(config, key)
  above = got >= low if include_low else got > low
  below = got <= high if include_high else got < high
  if not (above and below):
    _fail(key, got, f"in {'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}")


def one_of(config, key: str, choices) -> None:
  got = value(config, key)
  if got not in choices:
    _fail(key, got, f"one of {', '.join(repr(c) for c in choices)}")


def multiple_of(config, key: str, factor: int) -> None:
  got = _number(config, key)
  if got < factor or got % factor:
    _fail(key, got, f"a positive multiple of {factor}")


def run_settings(config) -> None:
  """What every trainer reads: steps, batch, logging, checkpoints, mesh, guards, AdamW."""
  at_least(config, 1, "total_steps", "batch_size", "log_every", "checkpoint_every",
           "keep_checkpoints", "microbatches")
  for axis in ("mesh.data", "mesh.fsdp"):
    got = _number(config, axis)
    if got != -1 and got < 1:
      _fail(axis, got, "a device count (at least 1), or -1 for the remaining devices")
  at_least(config, 0, "sharding.fsdp_min_size")
  one_of(config, "nonfinite_policy", ("stop", "skip"))
  opt = config.optimizer
  if opt.get("lr") is not None:
    positive(config, "optimizer.lr")
  elif opt.get("base_lr") is not None:
    positive(config, "optimizer.base_lr")
  else:
    raise UserError("config.optimizer.lr (or optimizer.base_lr, scaled by batch_size / 256) "
                    "must be set")
  for beta in ("optimizer.b1", "optimizer.b2"):
    in_range(config, beta, 0, 1, include_high=False)
  positive(config, "optimizer.eps")
  at_least(config, 0, "optimizer.weight_decay", "optimizer.warmup_steps", "optimizer.end_lr")
  one_of(config, "optimizer.decay", ("cosine", "linear"))
  if opt.get("grad_clip_norm") is not None:
    positive(config, "optimizer.grad_clip_norm")


def input_pipeline(config) -> None:
  """The grain settings of `config.data` that every pipeline reads."""
  at_least(config, 0, "data.worker_count")
  at_least(config, 1, "data.read_threads", "data.prefetch_buffer_size")
