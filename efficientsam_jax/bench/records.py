"""Benchmark output and timing: one JSON object per measurement, medians after warm-up.

Every record holds `name`, `value`, `unit` and the settings that produced it (model,
image_size, batch, dtype, device, jax_version, ...) plus `load_avg_1m`: on a shared machine
the load next to a number says how much to trust it.
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def device_description() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{d.device_kind} x{jax.device_count()} ({os.cpu_count()} host cores)"


class Emitter:
  """Prints records as JSON lines to `stream` (stdout) and keeps them (`records`)."""

  def __init__(self, stream=None, **settings):
    self.stream = stream or sys.stdout
    self.settings = {"device": device_description(), "jax_version": jax.__version__,
                     **settings}
    self.records = []

  def emit(self, name: str, value, unit: str, **extra) -> dict:
    record = {"name": name, "value": float(value), "unit": unit, **self.settings, **extra,
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    self.records.append(record)
    print(json.dumps(record), file=self.stream, flush=True)
    return record


def block(tree):
  """Waits for every jax.Array in a tree (numpy arrays and torch tensors are already done)."""
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      leaf.block_until_ready()
  return tree


def time_call(fn, repeats: int, warmup: int = 1) -> dict:
  """Runs fn() warmup times, then `repeats` timed times (each blocked until done).

  Returns {"median": s, "min": s, "runs": [s, ...]}; the median is the reported value, the
  min says what an unloaded machine gets.
  """
  for _ in range(warmup):
    block(fn())
  runs = []
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    block(fn())
    runs.append(time.perf_counter() - start)
  return {"median": float(np.median(runs)), "min": float(np.min(runs)), "runs": runs}


def time_compile(jitted, *args) -> tuple[float, object]:
  """(seconds, compiled) for jitted.lower(*args).compile()."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return time.perf_counter() - start, compiled


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a large float32 (size x size) @ (size x size) matmul, median of repeats: the
  practical peak of this machine for the MFU denominator."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  timing = time_call(lambda: matmul(a, b), repeats, warmup=2)
  return 2.0 * size**3 / timing["median"]
