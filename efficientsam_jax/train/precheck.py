"""`config.compile_only`: compile the train step from shapes alone and report what it needs.

Without `compile_for` the step is compiled for this machine's devices (per-device memory and
FLOPs). With `compile_for=TARGET` (a TPU slice or GPU machine, train/targets.py) it is
compiled for that hardware, wherever this runs, and the report says whether it fits the
chip's memory, the FLOPs per step, the step time and the days to train the whole recipe at
40% and 100% of the chip's peak bf16 FLOP/s, and the images per second each host must feed.
A step that does not fit is compiled again with each memory lever applied (twice the
microbatches, remat, FSDP, bf16 compute) and the one-line error says what each would need: measured,
not guessed.

The TPU compiler refuses a program that does not fit the chip (RESOURCE_EXHAUSTED naming the
bytes); the GPU compiler does not, and gives no FLOP count (docs/tpu.md).
"""
import dataclasses
import json
import re
import time
from typing import Callable

import jax
import numpy as np
from absl import logging

from efficientsam_jax.errors import UserError, one_line
from efficientsam_jax.train import sharding, targets

MFUS = (0.4, 1.0)
SECONDS_PER_DAY = 86400.0
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# Config keys of the remat and compute-dtype switches of each trainer's trained model.
MODEL_KEYS = {"sami": "student", "efficientsam": "model"}


@dataclasses.dataclass
class Lever:
  name: str
  flag: str  # the command-line override that applies it
  apply: Callable  # config -> None (edits a copy)


def levers(config, chips: int) -> list[Lever]:
  """The memory levers that are not already pulled in `config`."""
  out = []
  parts = config.get("microbatches", 1)
  if (config.batch_size // chips) % (2 * parts) == 0:
    # The recipe's batch, its gradient accumulated over twice as many parts.
    out.append(Lever(f"microbatches={2 * parts}", f"--config.microbatches={2 * parts}",
                     lambda c: setattr(c, "microbatches", 2 * parts)))
  key = MODEL_KEYS.get(config.trainer)
  model = config.get(key) if key else None
  if model is not None and not model.get("remat", False):
    out.append(Lever("remat", f"--config.{key}.remat=True",
                     lambda c: c[key].update(remat=True)))
  fsdp = config.mesh.fsdp if config.mesh.fsdp > 0 else 1
  more = next((f for f in (8, 4, 2) if f > fsdp and chips % f == 0), None)
  if more:
    out.append(Lever(f"fsdp={more}", f"--config.mesh.fsdp={more} --config.mesh.data=-1",
                     lambda c: c.mesh.update(fsdp=more, data=-1)))
  if model is not None and model.get("dtype", "float32") == "float32":
    out.append(Lever("bf16 compute", f"--config.{key}.dtype=bfloat16",
                     lambda c: c[key].update(dtype="bfloat16")))
  return out


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * _UNITS[unit])


def out_of_memory(error: Exception) -> dict | None:
  """What a compiler's out-of-memory refusal says: {"temp_size_in_bytes" or
  "required_bytes", "available_bytes", "compiler_error"}; None for any other error."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
    return None
  out = {"compiler_error": one_line(text.split("\n")[0])}
  temp = re.search(r"temporaries \(([\d.]+)([KMGT])\) exceeds available \w+ \(([\d.]+)([KMGT])\)",
                   text)
  used = re.search(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT])", text)
  if temp:
    out["temp_size_in_bytes"] = _bytes(*temp.group(1, 2))
    out["available_bytes"] = _bytes(*temp.group(3, 4))
  elif used:
    out["required_bytes"] = _bytes(*used.group(1, 2))
    out["available_bytes"] = _bytes(*used.group(3, 4))
  return out


def _shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def measure(setup) -> dict:
  """Compiles `setup`'s step: memory per device (compiler's analysis, or on an out-of-memory
  refusal the bytes it names plus the arguments counted from their shapes), FLOPs, time."""
  start = time.perf_counter()
  try:
    compiled = setup.compile()
  except Exception as e:  # pylint: disable=broad-except
    oom = out_of_memory(e)
    if oom is None:
      raise
    arguments = sum(_shard_bytes(tree) for tree in (
        sharding.with_shardings(setup.abstract_params, setup.param_shardings),
        sharding.with_shardings(setup.abstract_opt_state, setup.opt_shardings),
        setup.abstract_teacher, setup.abstract_batch()) if tree is not None)
    needed = oom.get("required_bytes", arguments + oom.get("temp_size_in_bytes", 0))
    return {**oom, "compiled": False, "argument_size_in_bytes": arguments,
            "peak_bytes_per_device_estimate": needed,
            "compile_seconds": round(time.perf_counter() - start, 1)}
  out = {"compiled": True, "compile_seconds": round(time.perf_counter() - start, 1)}
  memory = compiled.memory_analysis()
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    out[field] = int(getattr(memory, field, 0) or 0)
  out["peak_bytes_per_device_estimate"] = (out["argument_size_in_bytes"]
                                           + out["output_size_in_bytes"]
                                           - out["alias_size_in_bytes"]
                                           + out["temp_size_in_bytes"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost["flops"]) if cost and "flops" in cost else None
  if flops and setup.microbatches > 1:
    # The compiler counted the microbatch loop's body once: add the other parts' FLOPs, from
    # one part's lowered program (all chips) shared evenly over the chips.
    part = setup.microbatch_flops()
    out["compiler_flops_per_step_per_device"] = flops
    flops = flops + (setup.microbatches - 1) * part / setup.mesh.size if part else None
  out["flops_per_step_per_device"] = flops
  return out


def _gb(n) -> str:
  return f"{n / 1e9:.1f} GB"


def target_report(config, build: Callable, target: targets.Target) -> dict:
  """The compile report of `config`'s step on `target` (module docstring)."""
  setup = build(config, target.devices)
  chips, chip = setup.mesh.size, target.chip
  report = {"target": target.slice_name, "topology": target.topology,
            "device_kind": target.devices[0].device_kind, "platform": target.platform,
            "chips": chips, "hosts": target.hosts, "mesh": dict(setup.mesh.shape),
            "batch_size": config.batch_size, "per_chip_batch": config.batch_size // chips,
            "hbm_per_chip_bytes": chip.hbm_bytes, "peak_flops_per_chip": chip.peak_flops}
  report.update(measure(setup))
  report["fits"] = bool(report["compiled"]
                        and report["peak_bytes_per_device_estimate"] <= chip.hbm_bytes)
  flops = report.get("flops_per_step_per_device")
  if flops:
    report["model_flops_per_step"] = flops * chips
    chips_per_host = chips / report["hosts"]
    for mfu in MFUS:
      tag = f"{round(mfu * 100)}pct_mfu"
      step = flops / (chip.peak_flops * mfu)
      report[f"step_seconds_{tag}"] = step
      report[f"train_days_{tag}"] = step * config.total_steps / SECONDS_PER_DAY
      report[f"host_images_per_second_{tag}"] = report["per_chip_batch"] * chips_per_host / step
    report["host_cores"] = chip.host_cores
  if not report["fits"]:
    report["levers"] = []
    for lever in levers(config, chips):
      changed = config.copy_and_resolve_references()
      lever.apply(changed)
      logging.info("does not fit; compiling with %s", lever.name)
      result = measure(build(changed, target.devices))
      needed = result["peak_bytes_per_device_estimate"]
      report["levers"].append({
          "lever": lever.name, "flag": lever.flag, "peak_bytes_per_device_estimate": needed,
          "saves_bytes": report["peak_bytes_per_device_estimate"] - needed,
          "fits": bool(result["compiled"] and needed <= chip.hbm_bytes)})
  return report


def no_fit_message(report: dict) -> str:
  """The one-line error of a report whose step does not fit."""
  text = (f"the train step does not fit {report['target']}: it needs about "
          f"{_gb(report['peak_bytes_per_device_estimate'])} per chip "
          f"({report['per_chip_batch']} images), the chip has {_gb(report['hbm_per_chip_bytes'])}")
  options = [f"{x['lever']} ({x['flag']}): {_gb(x['peak_bytes_per_device_estimate'])}"
             f"{', fits' if x['fits'] else ''}" for x in report.get("levers", ())]
  return text + ("; measured levers: " + "; ".join(options) if options else "")


def compile_only(config, build: Callable) -> dict:
  """config.compile_only: prints the JSON report (process 0) and returns it; raises UserError
  with the levers when a `compile_for` target does not fit. build(config, devices) -> the
  loop's Setup."""
  if config.get("compile_for"):
    target = targets.resolve(config.compile_for)
    report = target_report(config, build, target)
  else:
    setup = build(config, None)
    report = {"devices": setup.mesh.size, "mesh": dict(setup.mesh.shape),
              "platform": setup.mesh.devices.flat[0].platform,
              "device_kind": setup.mesh.devices.flat[0].device_kind, **measure(setup)}
  logging.info("compiled train step: %s", json.dumps(report))
  if jax.process_index() == 0:
    print(json.dumps(report), flush=True)
  if config.get("compile_for") and not report["fits"]:
    raise UserError(no_fit_message(report))
  return report
