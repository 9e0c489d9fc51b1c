"""`--config.compile_for`: the real train step compiled for TPU slices on this CPU machine
(libtpu, from the test extra), the report checked against its own numbers and the chip
tables, meshes on megacore chips, the attention decision made for the target, and a step
that cannot fit: exit 2 with the measured levers."""
import json
import subprocess
import sys

import jax
import pytest

from conftest import require_module
from sami_runs import REPO, env

SAMI = "configs/sami_vitt.py:demo,smoke"
FINETUNE = "configs/efficientsam_vitt.py:smoke"
# The released finetuning model has 12 blocks; one keeps the compile short and every code
# path (encoder, prompt encoder, decoder, a correction round) in the step.
SHALLOW = ["--config.model.encoder_depth=1"]


@pytest.fixture(scope="module")
def targets():
  require_module("libtpu")
  from efficientsam_jax.train import targets as targets_lib
  return targets_lib


def compile_for(workdir, config, target, *overrides):
  return subprocess.run(
      [sys.executable, "-m", "efficientsam_jax.main", f"--config={config}",
       f"--workdir={workdir}", f"--config.compile_for={target}", *overrides],
      env=env(1), cwd=REPO, capture_output=True, text=True, timeout=900)


def report_of(proc) -> dict:
  assert proc.returncode in (0, 2), proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def check_projection(report, chip, total_steps):
  """Step time, days and host feed rates are the FLOPs over the chip's peak, recomputed."""
  flops = report["flops_per_step_per_device"]
  assert flops > 0 and report["model_flops_per_step"] == flops * report["chips"]
  assert report["peak_flops_per_chip"] == chip.peak_flops
  for mfu, tag in ((0.4, "40pct_mfu"), (1.0, "100pct_mfu")):
    step = flops / (chip.peak_flops * mfu)
    assert report[f"step_seconds_{tag}"] == pytest.approx(step)
    assert report[f"train_days_{tag}"] == pytest.approx(step * total_steps / 86400)
    per_host = report["per_chip_batch"] * report["chips"] / report["hosts"] / step
    assert report[f"host_images_per_second_{tag}"] == pytest.approx(per_host)
  assert report["host_cores"] == chip.host_cores


def check_memory(report, chip):
  assert report["compiled"] and report["fits"]
  assert min(report[k] for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                 "temp_size_in_bytes")) > 0
  assert report["peak_bytes_per_device_estimate"] == (
      report["argument_size_in_bytes"] + report["output_size_in_bytes"]
      - report["alias_size_in_bytes"] + report["temp_size_in_bytes"])
  assert report["peak_bytes_per_device_estimate"] < report["hbm_per_chip_bytes"] == chip.hbm_bytes


@pytest.fixture(scope="module")
def sami_v5e(tmp_path_factory, targets):
  del targets
  return report_of(compile_for(tmp_path_factory.mktemp("sami_v5e"), SAMI, "v5litepod-4"))


def test_sami_step_compiles_for_a_v5e_slice(sami_v5e, targets):
  report = sami_v5e
  assert {k: report[k] for k in ("target", "topology", "device_kind", "platform", "chips",
                                 "hosts", "mesh", "batch_size", "per_chip_batch")} == {
      "target": "v5litepod-4", "topology": "v5e:2x2", "device_kind": "TPU v5 lite",
      "platform": "tpu", "chips": 4, "hosts": 1, "mesh": {"data": 4, "fsdp": 1},
      "batch_size": 8, "per_chip_batch": 2}
  check_memory(report, targets.CHIPS["v5e"])
  check_projection(report, targets.CHIPS["v5e"], total_steps=40)
  assert "levers" not in report


def test_microbatches_count_every_part_and_hold_less(sami_v5e, tmp_path, targets):
  """The same step in 2 microbatches: the compiler counts the loop body once, and the report
  adds the other part from the lowered program, so the step's FLOPs stay those of the step
  in one piece (to 5%: the optimiser runs once either way, and the lowered program is not
  optimised); half the activations are live at once."""
  proc = compile_for(tmp_path, SAMI, "v5litepod-4", "--config.microbatches=2")
  report = report_of(proc)
  check_memory(report, targets.CHIPS["v5e"])
  whole = sami_v5e["flops_per_step_per_device"]
  assert report["compiler_flops_per_step_per_device"] < 0.7 * whole
  assert report["flops_per_step_per_device"] == pytest.approx(whole, rel=0.05)
  assert report["temp_size_in_bytes"] < sami_v5e["temp_size_in_bytes"]
  assert not (tmp_path / "checkpoints").exists()


def test_finetuning_step_compiles_for_a_v4_slice_one_device_per_chip(tmp_path, targets):
  # v4-8 is 8 TensorCores on 4 chips: 4 JAX devices, FSDP over 2 of them.
  report = report_of(compile_for(tmp_path, FINETUNE, "v4-8", *SHALLOW, "--config.mesh.fsdp=2"))
  assert (report["target"], report["topology"], report["device_kind"], report["chips"]) == (
      "v4-8", "v4:2x2x1", "TPU v4", 4)
  assert report["mesh"] == {"data": 2, "fsdp": 2} and report["per_chip_batch"] == 1
  check_memory(report, targets.CHIPS["v4"])
  check_projection(report, targets.CHIPS["v4"], total_steps=20)


def test_a_step_that_cannot_fit_exits_2_with_measured_levers(tmp_path, targets):
  # A million 32 px images per chip; remat, bf16 and FSDP already on, so the one lever left
  # is gradient accumulation (the same batch in two parts), compiled and measured. Here the
  # input images dominate the memory, so a part's copy of them costs more than its smaller
  # activations save: the report says so. The teacher comes from a cache (never read when
  # compiling).
  batch = 4 * 2**20
  proc = compile_for(tmp_path, SAMI, "v5e:2x2", f"--config.batch_size={batch}",
                     "--config.student.remat=True", "--config.student.dtype=bfloat16",
                     "--config.mesh.fsdp=4", "--config.mesh.data=1",
                     "--config.teacher.cache_dir=/never/read")
  assert proc.returncode == 2, proc.stderr[-3000:]
  report = report_of(proc)
  assert report["fits"] is False and report["target"] == "v5litepod-4"
  needed = report["peak_bytes_per_device_estimate"]
  assert needed > report["hbm_per_chip_bytes"]
  (lever,) = report["levers"]
  assert (lever["lever"], lever["flag"]) == ("microbatches=2", "--config.microbatches=2")
  assert lever["saves_bytes"] == needed - lever["peak_bytes_per_device_estimate"] != 0
  assert lever["fits"] is False
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("main: error: the train step does not fit v5litepod-4: it needs "
                              f"about {needed / 1e9:.1f} GB per chip")
  assert "--config.microbatches=2" in lines[-1] and "Traceback" not in proc.stderr


def test_target_names(targets):
  from efficientsam_jax.errors import UserError
  for name, (slice_name, topology, chips, hosts) in {
      "v5litepod-64": ("v5litepod-64", "v5e:8x8", 64, 16),
      "v5e-64": ("v5litepod-64", "v5e:8x8", 64, 16),
      "v5e:8x8": ("v5litepod-64", "v5e:8x8", 64, 16),
      "v4-128": ("v4-128", "v4:4x4x4", 64, 16),
      "v4-64": ("v4-64", "v4:2x4x4", 32, 8),
      "v5p-128": ("v5p-128", "v5p:4x4x4", 64, 16),
      "v6e-64": ("v6e-64", "v6e:8x8", 64, 16)}.items():
    t = targets.resolve(name)
    assert (t.slice_name, t.topology, t.chips, t.hosts) == (slice_name, topology, chips, hosts)
    assert {d.platform for d in t.devices} == {"tpu"}
  for bad in ("v4-100", "v5litepod-3", "tpu9", "v5e:1x1"):
    with pytest.raises(UserError, match="compile_for"):
      targets.resolve(bad)


def test_meshes_on_tpu_cubes_and_per_core_devices(targets):
  from jax.experimental import topologies
  from efficientsam_jax.train import sharding
  for name in ("v4-128", "v5p-128"):  # fsdp=8 is not a product of the 4x4x4 cube's axes
    devices = targets.resolve(name).devices
    mesh = sharding.make_mesh(-1, 8, devices)
    assert dict(mesh.shape) == {"data": 8, "fsdp": 8}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
  per_core = topologies.get_topology_desc("v4:2x2x1", platform="tpu").devices  # 2 per chip
  assert len(per_core) == 8
  assert dict(sharding.make_mesh(-1, 2, per_core).shape) == {"data": 4, "fsdp": 2}


def test_window_attention_is_grouped_only_when_compiled_for_a_cpu(targets):
  """SAM's 64 windows of 196 tokens x 16 heads: grouped by 8 for a CPU's caches, all at once
  for a TPU, decided by the mesh being compiled for, not by this (CPU) host."""
  from efficientsam_jax.models import attention
  from efficientsam_jax.train import sharding
  seen = []

  def step(x):
    seen.append((attention.target_platform(), attention.auto_batch_chunk(64, 196, 16, 196)))
    return x

  for devices in (targets.resolve("v5e-4").devices, jax.devices()[:4]):
    with jax.set_mesh(sharding.make_mesh(-1, 1, devices)):
      jax.jit(step).trace(1.0)
  jax.jit(step).trace(1.0)  # no mesh: this host's backend
  assert seen == [("tpu", None), ("cpu", 8), ("cpu", 8)]
