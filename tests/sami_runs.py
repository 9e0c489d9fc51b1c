"""Running a trainer (SAMI by default; `config=` picks another) as a subprocess (so tests can kill it and choose device counts)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "configs/sami_vitt.py:demo,smoke"


def env(devices: int = 1, **extra) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def command(workdir, *overrides, config=SMOKE) -> list[str]:
  return [sys.executable, "-m", "efficientsam_jax.main", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def run(workdir, *overrides, devices=1, config=SMOKE, check=True, **extra_env):
  proc = subprocess.run(command(workdir, *overrides, config=config), env=env(devices, **extra_env),
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def popen(workdir, *overrides, devices=1, config=SMOKE, **extra_env) -> subprocess.Popen:
  return subprocess.Popen(command(workdir, *overrides, config=config), env=env(devices, **extra_env),
                          cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def losses(workdir) -> dict[int, float]:
  """step -> loss from metrics.jsonl (local or gs://), checking it reads as one run."""
  from efficientsam_jax.io import paths
  text = paths.read_text(paths.join(str(workdir), "metrics.jsonl"))
  records = [json.loads(line) for line in text.splitlines()]
  steps = [r["step"] for r in records]
  assert steps == sorted(set(steps)), "metrics.jsonl must read as one run"
  for r in records:
    assert {"step", "loss", "learning_rate"} <= set(r)
  return {r["step"]: r["loss"] for r in records}


def event_scalars(event_file: bytes) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in a TensorBoard event file (TFRecord framing:
  length, its CRC, the event, its CRC)."""
  import struct
  from tensorboardX.proto import event_pb2
  found, at = [], 0
  while at < len(event_file):
    (length,) = struct.unpack_from("<Q", event_file, at)
    event = event_pb2.Event.FromString(event_file[at + 12:at + 12 + length])
    at += 12 + length + 4
    found += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return found


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the complete checkpoints (local: renamed into place; gs://: committed)."""
  from efficientsam_jax.io import paths
  directory = paths.join(str(workdir), "checkpoints")
  if not paths.is_remote(directory):
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
        directory) else []
  return sorted(int(d) for d in (paths.list_dir(directory) if paths.is_dir(directory) else [])
                if d.isdigit() and paths.exists(paths.join(directory, d, "commit_success.txt")))


def random_model(name: str = "efficientsam_vitt", seed: int = 0):
  """A model (io.model_files.LoadedModel) with small random weights, made from the
  parameter shapes alone: nothing is compiled, so it takes a second even on a busy machine."""
  import jax
  import numpy as np
  from efficientsam_jax.io import model_files
  from efficientsam_jax.models import registry
  family, config = registry.family_of(name), registry.config(name)
  model = family.build(config)
  shapes = jax.eval_shape(lambda rng: model.init(rng, *family.init_args(config),
                                                 method=model.init_all)["params"],
                          jax.random.key(0))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (rng.normal(0, 0.02, s.shape)).astype(s.dtype), shapes)
  return model_files.LoadedModel(config, params)
