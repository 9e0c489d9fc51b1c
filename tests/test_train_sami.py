"""End-to-end SAMI training through the command line: resume after SIGKILL, mesh invariance,
loss falling, one-line errors. Each run is a subprocess so it can be killed and can choose its
own fake device count."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import require_module
from sami_runs import (REPO, checkpoint_steps, env, event_scalars, losses as _losses, popen,
                        run as _run)


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


_WRITE_EVENTS = """
import sys
from efficientsam_jax.train import metrics
writer = metrics.MetricWriter(sys.argv[1], total_steps=2)
writer.write(1, {"loss": 0.5})
writer.write(2, {"loss": 0.25})
writer.close()
print("torch imported:", "torch" in sys.modules)
import torch  # still importable afterwards
print("then:", torch.__name__)
"""


def test_event_files_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when installed (2 s per training process); the metric writer
  keeps it out, and the event file still holds the scalars."""
  require_module("torch")
  proc = subprocess.run([sys.executable, "-c", _WRITE_EVENTS, str(tmp_path)], env=env(1),
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[:2] == ["torch imported: False", "then: torch"]
  (name,) = os.listdir(tmp_path / "tensorboard")
  scalars = event_scalars((tmp_path / "tensorboard" / name).read_bytes())
  assert (1, "loss", 0.5) in scalars and (2, "loss", 0.25) in scalars


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


def test_bucket_workdir_killed_after_its_first_checkpoint_resumes_to_the_local_losses(
    reference_run, bucket):
  """The whole workdir in Cloud Storage (a local server): config, metrics, TensorBoard and
  Orbax checkpoints, and the teacher's weights read from there (the demo's fixed-seed random
  teacher, stored: the same numbers); SIGKILL once the first checkpoint is committed, then
  the same command."""
  from configs import sami_vitt
  from efficientsam_jax.io import checkpoints
  from efficientsam_jax.models import sam_encoder
  demo_teacher = sami_vitt.get_config("demo,smoke").teacher
  teacher = f"{bucket}/teacher/sam_{demo_teacher.size}"
  checkpoints.save_params(teacher, {"image_encoder": sam_encoder.init_sam_encoder_params(
      sam_encoder.SamEncoderConfig.from_name(demo_teacher.size), demo_teacher.seed)},
                          {"model": f"sam {demo_teacher.size} image encoder"})
  workdir = f"{bucket}/sami"
  overrides = (f"--config.teacher.checkpoint={teacher}", "--config.teacher.random_init=False")
  proc = popen(workdir, *overrides)
  deadline = time.time() + 300
  while not checkpoint_steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] < 40, "killed too late"
  restarted = _run(workdir, *overrides)
  assert "resuming from step" in restarted.stderr
  expected, got = _losses(reference_run), _losses(workdir)
  assert sorted(got) == sorted(expected)
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=1e-6), step
  from efficientsam_jax.io import paths
  names = paths.walk_files(workdir)
  assert "config.json" in names and checkpoint_steps(workdir)[-1] == 40
  assert any(n.startswith("tensorboard/events.out.tfevents") for n in names), names


def test_another_model_or_trainer_on_a_workdir_with_checkpoints_is_refused(reference_run,
                                                                          tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference_run, workdir)
  config_json = open(os.path.join(workdir, "config.json"), "rb").read()
  for config, message in (("configs/sami_vits.py:demo,smoke", "checkpoints of another model"),
                          ("configs/efficientsam_vitt.py:demo,smoke", "'sami' trainer")):
    proc = _run(workdir, config=config, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("main: error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert open(os.path.join(workdir, "config.json"), "rb").read() == config_json


def test_damaged_latest_checkpoint_is_set_aside_and_the_one_before_restored(reference_run,
                                                                           tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference_run, workdir)
  data_files = [os.path.join(d, n) for d, _, names in
                os.walk(os.path.join(workdir, "checkpoints", "40", "params")) for n in names]
  biggest = max(data_files, key=os.path.getsize)
  half = os.path.getsize(biggest) // 2
  with open(biggest, "r+b") as f:
    f.truncate(half)
  proc = _run(workdir)
  damaged = [l for l in proc.stderr.splitlines() if "checkpoint 40 is damaged" in l]
  assert len(damaged) == 1 and "checkpoints_damaged" in damaged[0], proc.stderr[-3000:]
  assert "resuming from step 30" in proc.stderr
  set_aside = os.path.join(workdir, "checkpoints_damaged", "40")
  assert os.path.getsize(os.path.join(set_aside, os.path.relpath(
      biggest, os.path.join(workdir, "checkpoints", "40")))) == half  # moved aside as it was (checkpoint 40 is written anew)
  expected, got = _losses(reference_run), _losses(workdir)
  for step, loss in expected.items():  # steps 31-40 trained again from checkpoint 30
    assert got[step] == pytest.approx(loss, rel=1e-6), step


def test_disk_filling_mid_run_ends_with_one_line_and_the_last_checkpoint_intact(tmp_path):
  """After the first checkpoint, the run may write no file beyond 64 KiB (RLIMIT_FSIZE set
  on the live process: EFBIG, as a full disk gives ENOSPC): metrics still fit, the next
  checkpoint's data files do not."""
  workdir = str(tmp_path / "w")
  proc = popen(workdir)
  deadline = time.time() + 300
  while not checkpoint_steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith("main: error: ")]
  assert len(errors) == 1 and "file too large" in errors[0], err[-3000:]
  assert "last complete checkpoint is step 10" in errors[0] and "Traceback" not in err
  assert checkpoint_steps(workdir) == [10]
  from efficientsam_jax.io import checkpoints
  params = checkpoints.latest_workdir_params(workdir)  # intact: it restores
  assert params["image_encoder"]


def test_bucket_refusing_writes_mid_run_ends_with_one_line_and_the_last_checkpoint_intact(
    bucket, gcs_server_url):
  """Write permission withdrawn after the first checkpoint (a proxy answers 403 from then
  on): not a transient error, so no retries; one line, status 2, checkpoint 10 intact."""
  import gcs_server
  blocked = {"writes": False}
  proxy = gcs_server.DenyingProxy(
      gcs_server_url.url,
      deny=lambda method, path: blocked["writes"] and method not in ("GET", "HEAD"))
  workdir = f"{bucket}/revoked"
  try:
    proc = popen(workdir, **gcs_server.server_env(proxy.url))
    deadline = time.time() + 300
    while not checkpoint_steps(workdir) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    blocked["writes"] = True
    _, err = proc.communicate(timeout=300)
  finally:
    proxy.close()
  assert proc.returncode == 2, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith("main: error: ")]
  assert len(errors) == 1 and "permission denied" in errors[0], err[-3000:]
  assert "the last complete checkpoint is step 10" in errors[0] and "Traceback" not in err
  assert checkpoint_steps(workdir) == [10]


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
