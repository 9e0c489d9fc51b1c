"""launch/*.sh without a cloud: the printed (--dry-run) commands, the same commands run against
fake gcloud/srun/scancel/scontrol/curl/python, one-line errors, and shellcheck."""
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_pod.sh", "slurm_gpu.sh", "single_host.sh"]
CONFIG = "configs/sami_vitt.py:demo,smoke"
OVERRIDES = ["--config.total_steps=2", "--config.data.path=/data/my images/it's"]


# Every script runs with stand-ins for the cloud and cluster commands first on PATH, so that a
# test can never reach a real gcloud or sbatch; a test that wants a recording fake adds its own.
_GUARD = pathlib.Path(tempfile.mkdtemp(prefix="launch-guard-"))
for _name in ["gcloud", "sbatch", "srun", "scancel", "scontrol"]:
  (_GUARD / _name).write_text(f'#!/bin/sh\necho "real {_name} called from a test" >&2\nexit 99\n')
  (_GUARD / _name).chmod(0o755)


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("ESAM_") and k != "XLA_FLAGS"}
  env["PATH"] = f"{_GUARD}:{os.environ['PATH']}"
  env.update(extra)
  return env


def _run(script, *args, env=None, cwd=None, timeout=60):
  return subprocess.run(["bash", str(LAUNCH / script), *args], env=env or _env(), cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


def _ok(script, *args, **kwargs) -> list[str]:
  proc = _run(script, *args, **kwargs)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.splitlines()


def _contains(seq, sub) -> bool:
  return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def _fake(bindir: pathlib.Path, name: str, body: str) -> None:
  path = bindir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)


def _wait_for(path: pathlib.Path, timeout=10.0) -> None:
  end = time.time() + timeout
  while not path.exists() or not path.read_text().strip():
    assert time.time() < end, f"{path} never appeared"
    time.sleep(0.05)


# ---- TPU pod -----------------------------------------------------------------------------
POD = ["--name=sami-pod", "--zone=us-central2-b", "--project=my-proj"]


def test_tpu_create_and_delete_commands():
  (create,) = _ok("tpu_pod.sh", "create", *POD, "--type=v4-32",
                  "--version=tpu-ubuntu2204-base", "--spot", "--dry-run")
  assert shlex.split(create) == [
      "gcloud", "compute", "tpus", "tpu-vm", "create", "sami-pod", "--zone=us-central2-b",
      "--project=my-proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]
  env = _env(ESAM_TPU_NAME="sami-pod", ESAM_ZONE="europe-west4-a", ESAM_TPU_TYPE="v5p-64",
             ESAM_TPU_VERSION="v2-alpha-tpuv5", ESAM_PROVISIONING="preemptible")
  (create,) = _ok("tpu_pod.sh", "create", "--dry-run", env=env)
  assert shlex.split(create)[-3:] == [
      "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", "--preemptible"]
  (delete,) = _ok("tpu_pod.sh", "delete", *POD, "--dry-run")
  assert shlex.split(delete) == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "sami-pod",
                                 "--zone=us-central2-b", "--project=my-proj", "--quiet"]


def test_tpu_install_copies_checkout_to_all_workers():
  archive, scp, ssh = _ok("tpu_pod.sh", "install", *POD, "--dry-run")
  assert shlex.split(archive)[:3] == ["git", "-C", str(REPO)] and " HEAD" in archive
  scp = shlex.split(scp)
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  ssh = shlex.split(ssh)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sami-pod"]
  assert "--worker=all" in ssh
  remote = ssh[-1].removeprefix("--command=")
  assert "tar -xzf efficientsam_jax.tar.gz" in remote
  assert _contains(shlex.split(remote), ["-e", "./efficientsam_jax", "jax[tpu]"])
  (ssh,) = _ok("tpu_pod.sh", "install", *POD, "--repo=https://example.com/e.git", "--ref=v1",
               "--dry-run")
  assert "git clone --quiet https://example.com/e.git efficientsam_jax" in ssh


def _pod_run_line(*extra_args, env=None):
  """The ssh line of `run --dry-run` (the line before it is the local precheck)."""
  precheck, line = _ok("tpu_pod.sh", "run", *POD, f"--config={CONFIG}", "--bucket=my-bucket",
                       "--dry-run", *extra_args, env=env)
  assert "--config.compile_for=" in precheck
  return shlex.split(line)


def test_tpu_run_starts_the_same_training_on_all_workers():
  argv = _pod_run_line("--", *OVERRIDES)
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sami-pod"]
  assert "--worker=all" in argv
  remote = argv[-1].removeprefix("--command=")
  assert _contains(shlex.split(remote), [
      "../esam-venv/bin/python", "-m", "efficientsam_jax.main", f"--config={CONFIG}",
      "--workdir=gs://my-bucket/sami_vitt_demo_smoke", *OVERRIDES])
  assert "setsid nohup" in remote and "</dev/null &" in remote
  # resume is run again with the same workdir; --extra and ESAM_EXTRA add overrides.
  _, resume = _ok("tpu_pod.sh", "resume", *POD, f"--config={CONFIG}", "--bucket=my-bucket",
                  "--extra=--config.total_steps=2", f"--extra={OVERRIDES[1]}", "--dry-run")
  assert shlex.split(resume) == argv
  env = _env(ESAM_EXTRA="--config.a=1 --config.b=2")
  remote = _pod_run_line("--workdir=gs://other/run", env=env)[-1]
  assert _contains(shlex.split(remote.removeprefix("--command=")),
                   ["--workdir=gs://other/run", "--config.a=1", "--config.b=2"])


def test_tpu_commands_run_through_gcloud_unchanged(tmp_path):
  """Without --dry-run the script runs exactly the printed argv (fake gcloud records it)."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  record = tmp_path / "argv.json"
  _fake(bindir, "gcloud", f'{shlex.quote(sys.executable)} -c "import json,sys; '
        f'json.dump(sys.argv[1:], open({str(record)!r}, \'w\'))" "$@"\n')
  env = _env(PATH=f"{bindir}:{_GUARD}:{os.environ['PATH']}")
  _ok("tpu_pod.sh", "run", *POD, f"--config={CONFIG}", "--bucket=my-bucket", "--skip-precheck",
      "--", *OVERRIDES, env=env)
  assert ["gcloud", *json.loads(record.read_text())] == _pod_run_line("--", *OVERRIDES)


def _precheck_harness(tmp_path, python_status: int):
  """A gcloud that records every call and says the slice is a v5litepod-64, and a local
  python that records its argv and answers like the compile check (report, exit status)."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  calls = tmp_path / "gcloud_calls"
  _fake(bindir, "gcloud", f'echo "$*" >> {shlex.quote(str(calls))}\n'
        'case "$*" in *describe*) echo v5litepod-64 ;; esac\n')
  checks = tmp_path / "python_argv"
  report = '{"target": "v5litepod-64", "fits": false}'
  _fake(bindir, "fakepython", f'printf "%s\\n" "$@" > {shlex.quote(str(checks))}\n'
        f"echo '{report}'\n"
        + (f'echo "main: error: the train step does not fit v5litepod-64" >&2\n'
           if python_status else "") + f"exit {python_status}\n")
  env = _env(PATH=f"{bindir}:{_GUARD}:{os.environ['PATH']}", ESAM_PYTHON=str(bindir / "fakepython"))
  return env, calls, checks


def test_tpu_run_compiles_for_the_slice_here_and_stops_when_it_does_not_fit(tmp_path):
  env, calls, checks = _precheck_harness(tmp_path, python_status=2)
  proc = _run("tpu_pod.sh", "run", *POD, f"--config={CONFIG}", "--bucket=my-bucket", "--",
              *OVERRIDES, env=env)
  assert proc.returncode == 2
  assert '"fits": false' in proc.stdout  # the report reaches the user
  assert "does not fit v5litepod-64" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("launch/tpu_pod.sh: error: precheck")
  # The slice's type came from gcloud; nothing was started on the pod.
  gcloud = calls.read_text().splitlines()
  assert len(gcloud) == 1 and gcloud[0].startswith("compute tpus tpu-vm describe sami-pod")
  argv = checks.read_text().splitlines()
  assert argv[:3] == ["-m", "efficientsam_jax.main", f"--config={CONFIG}"]
  assert argv[-1] == "--config.compile_for=v5litepod-64" and _contains(argv, OVERRIDES)
  assert argv[3].startswith("--workdir=") and not os.path.exists(argv[3].split("=", 1)[1])


def test_tpu_run_starts_after_a_passing_precheck_and_can_skip_it(tmp_path):
  env, calls, checks = _precheck_harness(tmp_path, python_status=0)
  _ok("tpu_pod.sh", "run", *POD, "--type=v4-128", f"--config={CONFIG}", "--bucket=my-bucket",
      env=env)
  gcloud = calls.read_text().splitlines()
  assert len(gcloud) == 1 and gcloud[0].startswith("compute tpus tpu-vm ssh sami-pod")
  assert checks.read_text().splitlines()[-1] == "--config.compile_for=v4-128"
  checks.unlink()
  _ok("tpu_pod.sh", "resume", *POD, f"--config={CONFIG}", "--bucket=my-bucket",
      "--skip-precheck", env=env)
  assert not checks.exists()
  _ok("tpu_pod.sh", "resume", *POD, f"--config={CONFIG}", "--bucket=my-bucket",
      env={**env, "ESAM_SKIP_PRECHECK": "1"})
  assert not checks.exists()


def test_tpu_remote_command_detaches_logs_and_stops(tmp_path):
  """The run/stop remote commands executed locally against fake metadata and a fake python."""
  home = tmp_path / "home"
  (home / "efficientsam_jax").mkdir(parents=True)
  (home / "esam-venv" / "bin").mkdir(parents=True)
  bindir = tmp_path / "bin"
  bindir.mkdir()
  _fake(bindir, "curl", 'case "$*" in *agent-worker-number*) echo 3 ;; '
        '*worker-network-endpoints*) echo "n0:0:10.1.2.3,n1:1:10.1.2.4" ;; esac\n')
  # The fake trainer: reports its argv and coordinator, then waits for SIGTERM.
  _fake(home / "esam-venv" / "bin", "python",
        'trap \'echo "got SIGTERM"; exit 0\' TERM\n'
        'echo "argv: $*"; echo "coordinator: $JAX_COORDINATOR_ADDRESS"\n'
        'while true; do sleep 0.05; done\n')
  env = _env(PATH=f"{bindir}:{_GUARD}:{os.environ['PATH']}", HOME=str(home))
  remote = _pod_run_line("--", *OVERRIDES)[-1].removeprefix("--command=")
  started = subprocess.run(["bash", "-c", remote], cwd=home, env=env, capture_output=True,
                           text=True, timeout=30)
  assert started.returncode == 0, started.stderr
  assert "worker 3: started" in started.stdout
  log = home / "esam-logs" / "train-worker3.log"
  _wait_for(log)
  time.sleep(0.2)
  text = log.read_text()
  assert f"argv: -m efficientsam_jax.main --config={CONFIG}" in text
  assert f"--config.data.path={OVERRIDES[1]}" not in text and OVERRIDES[1] in text
  assert "coordinator: 10.1.2.3:8482" in text
  pid = int((home / "esam-logs" / "train.pid").read_text())
  try:
    again = subprocess.run(["bash", "-c", remote], cwd=home, env=env, capture_output=True,
                           text=True, timeout=30)
    assert again.returncode != 0 and "already running" in again.stderr
    (stop,) = _ok("tpu_pod.sh", "stop", *POD, "--dry-run")
    stop_remote = shlex.split(stop)[-1].removeprefix("--command=")
    stopped = subprocess.run(["bash", "-c", stop_remote], cwd=home, env=env,
                             capture_output=True, text=True, timeout=30)
    assert "sent SIGTERM" in stopped.stdout
    end = time.time() + 10
    while "got SIGTERM" not in log.read_text():
      assert time.time() < end, "the trainer never got SIGTERM"
      time.sleep(0.05)
  finally:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


# ---- Slurm -------------------------------------------------------------------------------
SLURM = ["--nodes=4", "--gpus-per-node=8", "--time=24:00:00", "--partition=gpu",
         f"--config={CONFIG}", "--workdir=/shared/runs/sami"]


def _slurm_dry(tmp_path, *extra):
  lines = _ok("slurm_gpu.sh", *SLURM, f"--log-dir={tmp_path}", "--dry-run", *extra,
              "--", *OVERRIDES)
  assert lines[0] == f"mkdir -p {tmp_path}"
  script_path = str(tmp_path / "esam-sami_vitt.sbatch")
  assert lines[1] == f"cat > {script_path} <<'EOF'"
  end = lines.index("EOF")
  return lines[2:end], lines[end + 1:]


def test_slurm_batch_script(tmp_path):
  body, after = _slurm_dry(tmp_path, "--setup=source ~/venvs/esam/bin/activate",
                           "--mem-fraction=0.9")
  assert after == [f"sbatch {tmp_path / 'esam-sami_vitt.sbatch'}"]
  for directive in ["--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--time=24:00:00",
                    "--partition=gpu", "--signal=B:USR1@120", "--requeue", "--open-mode=append",
                    f"--chdir={REPO}"]:
    assert f"#SBATCH {directive}" in body, directive
  assert body[0] == "#!/bin/bash"
  assert "source ~/venvs/esam/bin/activate" in body
  assert "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in body
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in body
  assert "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in body
  (srun,) = [line for line in body if line.startswith("srun ")]
  assert shlex.split(srun) == [
      "srun", "--ntasks-per-node=1", "python", "-m", "efficientsam_jax.main",
      f"--config={CONFIG}", "--workdir=/shared/runs/sami", *OVERRIDES, "&"]
  assert any('scontrol requeue "$SLURM_JOB_ID"' in line for line in body)


def test_slurm_no_submit_writes_the_printed_script(tmp_path):
  body, _ = _slurm_dry(tmp_path)
  _ok("slurm_gpu.sh", *SLURM, f"--log-dir={tmp_path}", "--no-submit", "--", *OVERRIDES)
  written = (tmp_path / "esam-sami_vitt.sbatch").read_text()
  assert written == "\n".join(body) + "\n"
  assert subprocess.run(["bash", "-n", str(tmp_path / "esam-sami_vitt.sbatch")]).returncode == 0


def _slurm_job(tmp_path):
  """Starts the batch script under bash with fake srun/scancel/scontrol; returns (proc, log)."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  log = tmp_path / "events.log"
  _fake(bindir, "srun", f'echo "srun $*" >> {log}; echo $$ > {tmp_path}/srun.pid\n'
        f'trap \'echo "training got SIGTERM" >> {log}; exit 0\' TERM\n'
        'while true; do sleep 0.05; done\n')
  _fake(bindir, "scancel", f'echo "scancel $*" >> {log}; kill -TERM "$(cat {tmp_path}/srun.pid)"\n')
  _fake(bindir, "scontrol", f'echo "scontrol $*" >> {log}\n')
  _ok("slurm_gpu.sh", *SLURM, f"--log-dir={tmp_path}", "--no-submit")
  env = _env(PATH=f"{bindir}:{_GUARD}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
  proc = subprocess.Popen(["bash", str(tmp_path / "esam-sami_vitt.sbatch")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(tmp_path / "srun.pid")
  time.sleep(0.2)  # let the batch shell reach its `wait`
  return proc, log


def test_slurm_time_limit_signal_stops_training_then_requeues(tmp_path):
  proc, log = _slurm_job(tmp_path)
  proc.send_signal(signal.SIGUSR1)
  out, _ = proc.communicate(timeout=20)
  assert proc.returncode == 0, out
  events = log.read_text().splitlines()
  assert events[1:] == ["scancel --signal=TERM 4242", "training got SIGTERM",
                        "scontrol requeue 4242"]


def test_slurm_preemption_waits_for_training_without_requeue(tmp_path):
  proc, log = _slurm_job(tmp_path)
  proc.send_signal(signal.SIGTERM)  # Slurm signals the batch shell and the steps
  time.sleep(0.3)
  assert proc.poll() is None, "the batch shell must outlive SIGTERM while the training saves"
  os.kill(int((tmp_path / "srun.pid").read_text()), signal.SIGTERM)
  out, _ = proc.communicate(timeout=20)
  assert proc.returncode == 0, out
  assert "scontrol" not in log.read_text() and "scancel" not in log.read_text()


def test_slurm_xla_flags_are_known_to_this_jaxlib(tmp_path):
  """XLA aborts on an unknown flag, so the flags the script sets must parse."""
  body, _ = _slurm_dry(tmp_path)
  (line,) = [line for line in body if line.startswith("export XLA_FLAGS=")]
  flags = shlex.split(line.removeprefix("export "))[0].removeprefix("XLA_FLAGS=")
  proc = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"],
                        env=_env(XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


# ---- single host -------------------------------------------------------------------------
def test_single_host_dry_run():
  cd, cmd = _ok("single_host.sh", "--gpus=0,1,2,3", f"--config={CONFIG}", "--workdir=runs/x",
                "--dry-run", "--", *OVERRIDES, cwd="/tmp")
  assert cd == f"cd {REPO}"
  assert shlex.split(cmd) == [
      "exec", "env", "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
      "CUDA_VISIBLE_DEVICES=0,1,2,3", "python", "-m", "efficientsam_jax.main",
      f"--config={CONFIG}", "--workdir=/tmp/runs/x", *OVERRIDES]
  _, cmd = _ok("single_host.sh", "--cpu", "--cpu-devices=8", f"--config={CONFIG}",
               "--workdir=/tmp/w", "--dry-run")
  assert shlex.split(cmd)[:4] == [
      "exec", "env", "XLA_FLAGS=--xla_force_host_platform_device_count=8", "JAX_PLATFORMS=cpu"]


def test_single_host_execs_python_in_place(tmp_path):
  """exec, not a child: the trainer has the script's pid, so signals sent to it reach Python."""
  fake = tmp_path / "python"
  _fake(tmp_path, "python", f'echo "$$ $PWD $*" > {tmp_path}/seen\n')
  proc = subprocess.Popen(["bash", str(LAUNCH / "single_host.sh"), f"--python={fake}", "--cpu",
                           f"--config={CONFIG}", "--workdir=/tmp/w", "--", *OVERRIDES[:1]],
                          env=_env())
  assert proc.wait(timeout=30) == 0
  pid, cwd, args = (tmp_path / "seen").read_text().strip().split(" ", 2)
  assert int(pid) == proc.pid and cwd == str(REPO)
  assert args == f"-m efficientsam_jax.main --config={CONFIG} --workdir=/tmp/w {OVERRIDES[0]}"


def test_single_host_trains(tmp_path):
  """The real thing on CPU: two steps of the smoke config (about 15 s)."""
  proc = _run("single_host.sh", "--cpu", f"--config={CONFIG}", f"--workdir={tmp_path}", "--",
              "--config.total_steps=2", env=_env(PYTHONPATH=str(REPO)), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "config.json").exists()
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]


# ---- all scripts -------------------------------------------------------------------------
BAD = [
    ("tpu_pod.sh", []),
    ("tpu_pod.sh", ["launch"]),
    ("tpu_pod.sh", ["create", "--zone=z"]),
    ("tpu_pod.sh", ["create", *POD, "--version=tpu-ubuntu2204-base"]),
    ("tpu_pod.sh", ["create", *POD, "--type=v4-32"]),
    ("tpu_pod.sh", ["create", *POD, "--type=big", "--version=x"]),
    ("tpu_pod.sh", ["run", *POD, f"--config={CONFIG}"]),
    ("tpu_pod.sh", ["run", *POD, f"--config={CONFIG}", "--workdir=/local/dir"]),
    ("tpu_pod.sh", ["run", *POD, "--config=configs/nope.py", "--bucket=b"]),
    ("tpu_pod.sh", ["run", *POD, f"--config={CONFIG}", "--bucket=b", "--", "total_steps=2"]),
    ("tpu_pod.sh", ["delete", *POD, "--colour=red"]),
    ("tpu_pod.sh", ["delete", "--name=Bad_Name", "--zone=z"]),
    ("tpu_pod.sh", ["delete", *POD, "--zone"]),
    ("slurm_gpu.sh", []),
    ("slurm_gpu.sh", ["--workdir=/w"]),
    ("slurm_gpu.sh", [f"--config={CONFIG}"]),
    ("slurm_gpu.sh", [f"--config={CONFIG}", "--workdir=/w", "--nodes=0"]),
    ("slurm_gpu.sh", [f"--config={CONFIG}", "--workdir=/w", "--gpus-per-node=eight"]),
    ("slurm_gpu.sh", [f"--config={CONFIG}", "--workdir=/w", "--mem-fraction=1.5"]),
    ("slurm_gpu.sh", [f"--config={CONFIG}", "--workdir=/w", "stray"]),
    ("single_host.sh", []),
    ("single_host.sh", [f"--config={CONFIG}"]),
    ("single_host.sh", ["--config=configs/nope.py", "--workdir=/w"]),
    ("single_host.sh", [f"--config={CONFIG}", "--workdir=/w", "--gpus=all"]),
    ("single_host.sh", [f"--config={CONFIG}", "--workdir=/w", "--cpu-devices=4"]),
    ("single_host.sh", [f"--config={CONFIG}", "--workdir=/w", "--bogus"]),
]


@pytest.mark.parametrize("script,args", BAD, ids=[f"{s}:{' '.join(a)}" for s, a in BAD])
def test_bad_arguments_give_one_line_error(script, args):
  proc = _run(script, *args, "--dry-run")
  assert proc.returncode != 0
  assert proc.stdout == ""
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"launch/{script}: error: "), proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  proc = _run(script, "--help")
  assert proc.returncode == 0 and proc.stdout.startswith("Usage: ") and proc.stderr == ""


def test_shellcheck():
  shellcheck = shutil.which("shellcheck")
  if shellcheck is None:
    if os.environ.get("CI") == "true":
      pytest.fail("shellcheck is not installed; CI must lint launch/*.sh")
    pytest.skip("shellcheck not installed")
  proc = subprocess.run([shellcheck, *(str(LAUNCH / s) for s in [*SCRIPTS, "lib.sh"])],
                        capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout
