"""Nothing the user owns is lost: outputs never clobber inputs or existing files unasked, and
every write is whole or absent, locally (a full disk simulated with RLIMIT_FSIZE: the kernel
answers EFBIG past the limit, as it answers ENOSPC on a full disk, without root or a loop
device) and in a bucket (a local Cloud Storage server). Also the path layer's retries and
the SA-1B .tar member tables that are built once and stored."""
import io
import json
import os
import resource
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import require_module
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths, storage_errors
from sami_runs import REPO, env, random_model


def _limited(limit_bytes: int):
  """preexec_fn: the child may write no file beyond limit_bytes (EFBIG after that)."""
  return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def _python(code: str, limit_bytes: int | None = None, **kw):
  return subprocess.run([sys.executable, "-c", code], env=env(1), cwd=REPO, capture_output=True,
                        text=True, timeout=300,
                        preexec_fn=_limited(limit_bytes) if limit_bytes else None, **kw)


# --- Atomic writes ------------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  target = tmp_path / "result.npz"
  target.write_bytes(b"the good old file")
  code = ("from efficientsam_jax.io import paths; import numpy as np\n"
          f"paths.write_with({str(target)!r}, lambda f: np.savez(f, a=np.zeros(1 << 20)))")
  proc = _python(code, limit_bytes=64 << 10)  # the new file outgrows the limit
  assert proc.returncode != 0 and "file too large" in proc.stderr
  assert target.read_bytes() == b"the good old file"
  assert os.listdir(tmp_path) == ["result.npz"]  # no temporary left behind
  paths.write_with(str(target), lambda f: np.savez(f, a=np.arange(3)))  # unlimited: replaced
  assert np.load(target)["a"].tolist() == [0, 1, 2]
  assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_a_bucket_object_is_written_whole_or_not_at_all(bucket):
  target = f"{bucket}/out/result.json"

  def fails_half_way(f):
    f.write(b'{"half": ')
    raise ValueError("serialisation failed")

  with pytest.raises(ValueError):
    paths.write_with(target, fails_half_way)
  assert not paths.exists(target)
  paths.write(target, '{"whole": true}')
  with pytest.raises(ValueError):
    paths.write_with(target, fails_half_way)
  assert paths.read_json(target) == {"whole": True}


def test_retrying_waits_out_transient_errors_and_reports_persistent_ones():
  calls, waits = [], []

  def flaky():
    calls.append(1)
    if len(calls) < 3:
      raise ConnectionResetError(104, "Connection reset by peer")
    return "done"

  assert storage_errors.retrying(flaky, "writing x", sleep=waits.append) == "done"
  assert len(calls) == 3 and waits == [1.0, 2.0]

  def down():
    raise OSError("Service Unavailable: http://127.0.0.1/upload 503")

  waits.clear()
  with pytest.raises(UserError, match=r"writing x: failed after 5 tries: .*Service Unavail"):
    storage_errors.retrying(down, "writing x", sleep=waits.append)
  assert waits == [1.0, 2.0, 4.0, 8.0]
  with pytest.raises(UserError, match="permission denied"):  # not transient: no retry
    storage_errors.retrying(lambda: (_ for _ in ()).throw(PermissionError(13, "denied")), "x",
                            sleep=waits.append)
  assert len(waits) == 4


# --- Outputs never clobber inputs ---------------------------------------------------------

def _tool(name, *args):
  return subprocess.run([sys.executable, "-m", f"efficientsam_jax.{name}", *args], env=env(1),
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def _refused(proc, program, message):
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{program}: error: ") and message in last, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_outputs_that_are_inputs_or_exist_are_refused(tmp_path):
  image, prompts, annotations = (tmp_path / "photo.png", tmp_path / "prompts.json",
                                 tmp_path / "instances.json")
  image.write_bytes(b"my photo")
  prompts.write_text("[]")
  annotations.write_text('{"images": [], "annotations": []}')
  common = ["--checkpoint=model.pt", f"--image={image}", f"--prompts={prompts}"]
  _refused(_tool("predict", *common, f"--output={tmp_path / 'out.npz'}", f"--overlay={image}"),
           "predict", f"--overlay={image} is also --image")
  existing = tmp_path / "out.npz"
  existing.write_bytes(b"yesterday's result")
  _refused(_tool("predict", *common, f"--output={existing}"), "predict",
           "exists; pass --overwrite")
  _refused(_tool("evaluate", "--checkpoint=model.pt", f"--images={tmp_path}",
                 f"--annotations={annotations}", f"--output={annotations}"), "evaluate",
           "is also --annotations")
  assert image.read_bytes() == b"my photo" and existing.read_bytes() == b"yesterday's result"
  assert json.loads(annotations.read_text()) == {"images": [], "annotations": []}
  with pytest.raises(UserError, match="is also --output"):
    paths.check_outputs({"--output": str(tmp_path / "a"), "--overlay": str(tmp_path / "a")},
                        {})
  paths.check_outputs({"--output": str(existing)}, {}, overwrite=True)  # asked: allowed


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory):
  """A released-format EfficientSAM-Ti .pt with random weights (about 40 MB)."""
  require_module("torch")
  from efficientsam_jax.io import model_files
  path = str(tmp_path_factory.mktemp("weights") / "vitt.pt")
  model_files.save_torch(path, random_model())
  return path


def _convert(src, dst, limit_bytes=None):
  return subprocess.run([sys.executable, "-m", "efficientsam_jax.convert", f"--input={src}",
                         f"--output={dst}"], env=env(1), cwd=REPO, capture_output=True,
                        text=True, timeout=300,
                        preexec_fn=_limited(limit_bytes) if limit_bytes else None)


def test_convert_on_a_full_disk_leaves_nothing_partial(small_pt, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  jax_dir = out / "vitt_jax"
  _refused(_convert(small_pt, jax_dir, limit_bytes=1 << 20), "convert", "file too large")
  assert os.listdir(out) == []  # neither the directory nor Orbax's temporary one
  assert _convert(small_pt, jax_dir).returncode == 0
  pt = out / "again.pt"
  _refused(_convert(jax_dir, pt, limit_bytes=1 << 20), "convert", "file too large")
  assert sorted(os.listdir(out)) == ["vitt_jax"]  # no partial .pt, no temporary


# --- SA-1B .tar member tables, built once ---------------------------------------------------

def _sa1b_shard(path: str, count: int) -> None:
  from efficientsam_jax.data import demo_sa1b, segmentation
  with tarfile.open(path, "w") as tar:
    for index in range(count):
      image, masks = demo_sa1b.demo_sample(0, index, 32)
      record = demo_sa1b.annotation_record(index, f"sa_{index}.jpg", masks,
                                           np.random.default_rng(index))
      for name, data in ((f"sa_{index}.jpg", segmentation.encode_jpeg(image)),
                         (f"sa_{index}.json", json.dumps(record).encode())):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_tar_member_tables_are_built_once_and_read_back(where, tmp_path, monkeypatch, request):
  from efficientsam_jax.data import segmentation, tar_index
  local_shard = str(tmp_path / "sa_000000.tar")
  _sa1b_shard(local_shard, 5)
  if where == "bucket":
    root = request.getfixturevalue("bucket")
    shard, index_dir = f"{root}/sa1b/sa_000000.tar", f"{root}/run/sa1b_index"
    paths.write(shard, paths.read_bytes(local_shard))
  else:
    shard, index_dir = local_shard, str(tmp_path / "run" / "sa1b_index")
  first = segmentation.SA1BSource(shard, index_dir)
  assert len(first) == 5 and len(paths.list_dir(index_dir)) == 1
  monkeypatch.setattr(tar_index, "scan", lambda *_: pytest.fail("scanned the shard again"))
  again = segmentation.SA1BSource(shard, index_dir)  # e.g. every host, at every resume
  assert len(again) == 5
  for i in range(5):
    assert again[i] == first[i] and again[i]["image"][:2] == b"\xff\xd8"
  with tarfile.open(local_shard) as tar:
    assert first[4]["annotations"] == tar.extractfile("sa_4.json").read()


def test_a_teacher_cache_write_failing_half_way_keeps_complete_shards_only(tmp_path):
  """The disk fills while shard 1 is being written (the stand-in teacher raises ENOSPC on
  its 4th call): shard 0 stays complete under its name, nothing partial is left."""
  import errno
  from configs import mobilesam_distill
  from efficientsam_jax import data
  config = mobilesam_distill.get_config("demo,smoke")
  calls = []

  def teacher(images):
    calls.append(1)
    if len(calls) == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return np.zeros(images.shape[:1] + (2, 2, 256), np.float32)

  directory = str(tmp_path / "cache")
  with pytest.raises(UserError, match="no space left on device"):
    data.write_teacher_cache(directory, config, teacher, (2, 2, 256), batch_size=3,
                             records_per_shard=5, process_index=0, process_count=1)
  assert sorted(os.listdir(directory)) == ["cache.json",
                                           "targets-00000-of-00007.p0.array_record"]
