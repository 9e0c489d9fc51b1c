"""End-to-end SAMI training through the command line: resume after SIGKILL, mesh invariance,
loss falling, one-line errors. Each run is a subprocess so it can be killed and can choose its
own fake device count."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sami_runs import REPO, env, losses as _losses, popen, run as _run

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  _run(workdir)
  return workdir


def test_reference_run_writes_outputs_and_loss_falls(reference_run):
  losses = _losses(reference_run)
  assert sorted(losses) == list(range(1, 41))
  assert losses[40] < 0.8 * losses[1]
  assert os.path.exists(os.path.join(reference_run, "config.json"))
  assert sorted(os.listdir(os.path.join(reference_run, "checkpoints")))[-1] == "40"
  assert any(f.startswith("events") for f in os.listdir(os.path.join(reference_run,
                                                                     "tensorboard")))
  with open(os.path.join(reference_run, "metrics.jsonl")) as f:
    assert "steps_per_sec" in json.loads(f.readlines()[-1])


def test_sigkill_after_first_checkpoint_then_restart_logs_identical_losses(reference_run,
                                                                           tmp_path):
  workdir = str(tmp_path)
  proc = popen(workdir)
  first = os.path.join(workdir, "checkpoints", "10")
  deadline = time.time() + 300
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(first)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "40")), "killed too late"
  restarted = _run(workdir)
  assert "resuming from step" in restarted.stderr
  expected, got = _losses(reference_run), _losses(workdir)
  assert sorted(got) == sorted(expected)
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=1e-6), step


def test_eight_devices_data_by_fsdp_mesh_logs_the_one_device_losses(reference_run, tmp_path):
  _run(str(tmp_path), "--config.mesh.data=4", "--config.mesh.fsdp=2",
       "--config.sharding.fsdp_min_size=1024", devices=8)
  expected, got = _losses(reference_run), _losses(str(tmp_path))
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=1e-4), step


@pytest.mark.parametrize("config,overrides,message", [
    ("configs/sami_vitt.py", [], "config.teacher.checkpoint is required"),
    ("configs/sami_vitt.py:demo", ["--config.teacher.checkpoint=/nonexistent.pth",
                                   "--config.teacher.random_init=False"], "does not exist"),
    ("configs/sami_vitt.py:demo", ["--config.batch_size=seven"], "batch_size"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, config, overrides, message):
  proc = subprocess.run(
      [sys.executable, "-m", "efficientsam_jax.main", f"--config={config}",
       f"--workdir={tmp_path}", *overrides], env=env(1), cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("main: error: ")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
