"""SAMI train-step benchmark, built by the trainer's own `Setup` (same step, same shardings).

Records: compile_seconds, model_flops_per_step (XLA cost analysis of the compiled step, all
devices), train_step_seconds, train_images_per_sec, achieved_flops_per_sec,
matmul_peak_flops_per_sec (a large float32 matmul in this process), mfu = achieved / peak, and
data_images_per_sec (the configured input pipeline alone).
"""
import time

import jax
import jax.numpy as jnp

from efficientsam_jax import data
from efficientsam_jax.bench import records
from efficientsam_jax.tasks.sami.task import SamiTask
from efficientsam_jax.train import loop, sharding


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def run(emitter: records.Emitter, config, repeats: int, data_batches: int,
        matmul_size: int) -> None:
  c = config
  emit = lambda *a, **kw: emitter.emit(*a, **kw, repeats=repeats)

  # --- The compiled step, from shapes (the trainer's Setup) -------------------------------
  setup = loop.Setup(config, SamiTask(config))
  start = time.perf_counter()
  compiled = setup.compile()
  emit("compile_seconds", time.perf_counter() - start, "s", part="train_step")
  # Cost analysis is per device (SPMD program); the step's total is devices x that.
  flops = _flops(compiled) * setup.mesh.size
  emit("model_flops_per_step", flops, "flop")

  # --- State and one batch, placed as the trainer places them -------------------------------
  params = jax.jit(setup.init_fn, out_shardings=setup.param_shardings)(
      jax.random.key(c.seed))
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.opt_shardings)(params)
  teacher_params = setup.task.load_teacher(setup.abstract_teacher)
  iterator = data.make_train_iterator(c)
  batch = sharding.host_batch_to_global(next(iterator), setup.mesh)

  state = {"params": params, "opt": opt_state, "step": 0}

  def step():  # donated state comes back as the new state, as in the training loop
    state["params"], state["opt"], metrics = compiled(
        state["params"], state["opt"], teacher_params, batch,
        jnp.asarray(state["step"], jnp.int32))
    state["step"] += 1
    return metrics

  t = records.time_call(step, repeats, warmup=2)
  seconds = t["median"]
  emit("train_step_seconds", seconds, "s", min_seconds=t["min"])
  emit("train_images_per_sec", c.batch_size / seconds, "images/s")
  achieved = flops / seconds
  emit("achieved_flops_per_sec", achieved, "flop/s")
  peak = records.matmul_peak_flops(matmul_size) * jax.device_count()
  emit("matmul_peak_flops_per_sec", peak, "flop/s", matmul_size=matmul_size)
  emit("mfu", achieved / peak, "fraction")

  # --- The input pipeline on its own ---------------------------------------------------------
  next(iterator)  # warm: worker start-up and the first decode are not throughput
  start = time.perf_counter()
  for _ in range(data_batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  emit("data_images_per_sec", data_batches * c.batch_size / elapsed, "images/s",
       data_batches=data_batches, source=c.data.source)
  if hasattr(iterator, "close"):
    iterator.close()
