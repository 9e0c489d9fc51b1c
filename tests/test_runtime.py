"""Running at scale, tested on CPU processes: two processes as one job, preemption, crashes at
random moments, elastic restore, non-finite guards, compile-ahead."""
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from efficientsam_jax import cli
from sami_runs import REPO, checkpoint_steps, env, losses, popen, run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 1-device smoke run."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  run(workdir)
  return losses(workdir)


def _assert_same(expected, got, rel):
  assert sorted(got) == sorted(expected)
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=rel), step


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_process(reference, bucket):
  port = _free_port()
  workdir = f"{bucket}/multi"  # as on a pod: one workdir in Cloud Storage (a local server)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "efficientsam_jax.main", "--config=configs/sami_vitt.py:demo,smoke",
       f"--workdir={workdir}", f"--process_id={i}", "--num_processes=2"],
      # Two local devices each (a pod host has 4 chips; 2 run the same code 16 s sooner).
      env=env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}"), cwd=REPO,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[1] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "process 0/2" in outputs[0] and "process 1/2" in outputs[1]
  digests = [l.rsplit(":", 1)[1].strip() for out in outputs for l in out.splitlines()
             if "parameter digest" in l]
  assert len(digests) == 2 and digests[0] == digests[1]
  # Two processes of 2 devices against the one-device reference: the batch's mean is summed
  # in another order across devices and processes (gloo), so the losses agree to float32
  # noise, not bits (measured 1.7e-7 relative; 1.5e-7 for one process of 8 devices).
  _assert_same(reference, losses(workdir), rel=1e-5)


def test_sigkill_at_three_random_moments_then_restart_gives_the_same_losses(reference, tmp_path):
  workdir = str(tmp_path)
  rng = random.Random(int(time.time()))
  for _ in range(3):
    proc = popen(workdir, "--config.checkpoint_every=7")
    time.sleep(rng.uniform(2.0, 12.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  run(workdir, "--config.checkpoint_every=7")
  _assert_same(reference, losses(workdir), rel=1e-6)


def _stop_once_training(workdir, signum) -> int:
  """Starts a 40-step run, sends `signum` once metrics appear, checks the stop (exit 75, one
  last line naming the signal and the saved step, metrics up to exactly that step, no
  traceback); returns the saved step."""
  proc = popen(workdir, "--config.total_steps=40", "--config.checkpoint_every=1000")
  deadline = time.time() + 300
  metrics = os.path.join(workdir, "metrics.jsonl")
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      break
    time.sleep(0.01)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  saved = checkpoint_steps(workdir)
  assert saved and saved[-1] < 40
  assert err.strip().splitlines()[-1] == (
      f"stopped by {signal.Signals(signum).name} after saving a checkpoint at step {saved[-1]}; "
      "run the same command again to resume")
  assert max(losses(workdir)) == saved[-1]  # logged up to exactly the saved step
  return saved[-1]


def test_sigterm_saves_the_current_step_exits_75_and_resumes(reference, tmp_path):
  _stop_once_training(str(tmp_path), signal.SIGTERM)
  run(str(tmp_path), "--config.checkpoint_every=1000")
  _assert_same(reference, losses(str(tmp_path)), rel=1e-6)


def test_ctrl_c_in_training_saves_the_current_step_and_exits_75(tmp_path):
  _stop_once_training(str(tmp_path), signal.SIGINT)


_TWO_CTRL_C = """
import os, signal, sys, time
from efficientsam_jax.train import runtime
watch = runtime.PreemptionWatch()
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.5)  # the handler runs
print(watch.reached(1), watch.cause, flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
print("still running", flush=True)
"""


def test_a_second_ctrl_c_stops_at_once_and_other_tools_stop_with_one_line():
  proc = subprocess.run([sys.executable, "-c", _TWO_CTRL_C], env=env(1), cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.stdout.split() == ["True", "SIGINT"], proc.stderr[-2000:]
  assert proc.returncode == -signal.SIGINT  # the default action: no waiting, no save
  assert "finishing this step" in proc.stderr and "Ctrl-C again" in proc.stderr
  tool = subprocess.run(
      [sys.executable, "-c", "import os, signal, time\nfrom efficientsam_jax import cli\n"
       "def main(argv):\n  os.kill(os.getpid(), signal.SIGINT)\n  time.sleep(30)\n"
       "cli.run(main, 'predict')"],
      env=env(1), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert tool.returncode == 130
  assert tool.stderr.strip().splitlines() == ["predict: interrupted"]


def test_a_folder_of_unreadable_images_stops_before_any_checkpoint(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for i in range(12):
    (images / f"{i}.jpg").write_bytes(b"not an image %d" % i)
  workdir = str(tmp_path / "workdir")
  proc = run(workdir, "--config.data.source=folder", f"--config.data.path={images}",
             check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "main: error: the first 10 batches (80 images) held no readable example")
  assert checkpoint_steps(workdir) == []


def test_checkpoint_from_eight_devices_with_fsdp_resumes_on_one_device(reference, tmp_path):
  workdir = str(tmp_path)
  overrides = ["--config.mesh.data=4", "--config.mesh.fsdp=2",
               "--config.sharding.fsdp_min_size=1024"]
  proc = popen(workdir, *overrides, devices=8)
  while proc.poll() is None and not checkpoint_steps(workdir):
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] < 40
  # What convert and predict read (no target tree) also restores on one device.
  loaded = subprocess.run(
      [sys.executable, "-c", "from efficientsam_jax.io import checkpoints as c; import jax; "
       "p = c.latest_workdir_params(%r); "
       "print(sum(x.size for x in jax.tree.leaves(p)), len(jax.devices()))" % workdir],
      env=env(1), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert loaded.returncode == 0, loaded.stderr[-2000:]
  assert loaded.stdout.split()[-1] == "1" and int(loaded.stdout.split()[-2]) > 0
  resumed = run(workdir, devices=1)
  assert "resuming from step" in resumed.stderr
  _assert_same(reference, losses(workdir), rel=1e-4)


def test_nonfinite_loss_stops_naming_the_step_and_skip_policy_carries_on(tmp_path):
  stop = run(str(tmp_path / "stop"), "--config.optimizer.lr=1e30", check=False)
  assert stop.returncode == 3
  assert "non-finite" in stop.stderr and "at step" in stop.stderr
  assert "Traceback" not in stop.stderr
  skip = run(str(tmp_path / "skip"), "--config.optimizer.lr=1e30",
             "--config.nonfinite_policy=skip", "--config.total_steps=6")
  with open(tmp_path / "skip" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f][-1]
  assert last["step"] == 6 and last["skipped_updates"] >= 1
  assert np.isfinite(last["param_norm"])
  del skip


@pytest.mark.parametrize("overrides,message", [
    (["--config.data.source=folder", "--config.data.path=/nonexistent/images"], "/nonexistent"),
    (["--config.mesh.data=3"], "mesh"),
    (["--config.nonfinite_policy=ignore"], "nonfinite_policy"),
    (["--config.microbatches=3"], "microbatches"),  # 8 images per device: not in 3 parts
])
def test_bad_setup_is_a_one_line_error_before_compiling(tmp_path, overrides, message):
  proc = run(str(tmp_path), *overrides, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr.strip().splitlines()[-1]
  assert "Traceback" not in proc.stderr
  assert "train step compiled" not in proc.stderr


def test_unwritable_workdir_is_a_one_line_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  proc = run(str(blocker / "workdir"), check=False)
  assert proc.returncode == 2
  assert "not writable" in proc.stderr.strip().splitlines()[-1]


def test_compile_only_reports_per_device_memory_without_weights_or_data(tmp_path):
  proc = run(str(tmp_path), "--config.compile_only=True", "--config.mesh.data=4",
             "--config.mesh.fsdp=2", "--config.teacher.size=vit_b",
             "--config.teacher.random_init=False", devices=8)
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["mesh"] == {"data": 4, "fsdp": 2}
  assert report["argument_size_in_bytes"] > 0 and report["temp_size_in_bytes"] > 0
  assert report["flops_per_step_per_device"] > 0
  assert not os.path.exists(tmp_path / "checkpoints")


def test_keep_freed_host_memory_applies_unless_the_user_chose(monkeypatch):
  monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
  assert cli.keep_freed_host_memory() is False  # the user's glibc settings win
  monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
  monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
  glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
  assert cli.keep_freed_host_memory() is glibc
