"""MobileSAM-style decoupled distillation through the SAMI trainer (configs/mobilesam_distill.py)
and the teacher-feature cache (`python -m efficientsam_jax.cache_teacher`): the loss falls, the
student is a MobileSAM / EfficientSAM encoder, cached targets train exactly as the live teacher,
the cache resumes and refuses what does not match."""
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from configs import mobilesam_distill
from efficientsam_jax import data
from efficientsam_jax.data import sources, teacher_cache, transforms
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import checkpoints, model_files, torch_files
from efficientsam_jax.models import registry
from efficientsam_jax.tasks.sami import export
from efficientsam_jax.tasks.sami import task as sami_trainer
from sami_runs import REPO, env, losses as _losses, run as _run

DISTILL = "configs/mobilesam_distill.py:demo,smoke"
# bf16 teacher (the real recipe's): the cache stores bf16, so live and cached agree bit for bit.
BF16_TEACHER = "--config.teacher.dtype=bfloat16"
NO_EVAL = "--config.eval.every=0"  # evaluation needs the live teacher, not a cache


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory):
  """The smoke distillation (20 steps, held-out evaluation every 10) with the bf16 teacher:
  also the live reference the cached-targets run must repeat."""
  workdir = str(tmp_path_factory.mktemp("distill"))
  _run(workdir, BF16_TEACHER, config=DISTILL)
  return workdir


def test_distillation_loss_falls_and_the_student_is_a_mobile_sam_encoder(distill_run, tmp_path):
  losses = _losses(distill_run)
  assert sorted(losses) == list(range(1, 21))
  assert losses[20] < 0.6 * losses[1], losses
  params = checkpoints.latest_workdir_params(distill_run)
  assert set(params) == {"image_encoder"}
  assert params["image_encoder"]["neck_3"]["scale"].shape == (256,)
  # The workdir converts as MobileSAM: TinyViT from the workdir (checked key for key against
  # the MobileSAM layout), SAM's prompt encoder and decoder (fresh: the demo teacher has none).
  out = str(tmp_path / "mobile_sam.pt")
  assert model_files.convert(distill_run, out) == "mobile_sam"
  state = torch_files.load(out)
  assert any(k.startswith("mask_decoder.") for k in state)
  got = np.asarray(state["image_encoder.layers.1.blocks.0.attn.qkv.weight"])
  want = np.asarray(params["image_encoder"]["layers_1"]["blocks_0"]["attn"]["qkv"]["kernel"])
  np.testing.assert_array_equal(got, want.T)


def test_held_out_embedding_mse_is_logged_and_the_lowest_kept(distill_run):
  with open(os.path.join(distill_run, "metrics.jsonl")) as f:
    evaluated = {r["step"]: r["eval/mse"] for r in map(json.loads, f) if "eval/mse" in r}
  assert sorted(evaluated) == [10, 20]  # config.eval.every=10 in :smoke
  assert all(np.isfinite(v) and v > 0 for v in evaluated.values())
  best = min(sorted(evaluated), key=evaluated.get)
  assert os.listdir(os.path.join(distill_run, "best", "checkpoints")) == [str(best)]
  # The kept parameters are a workdir of their own: tools read them as the run's model.
  assert model_files.load(os.path.join(distill_run, "best")).name == "mobile_sam"


def test_mobile_sam_takes_the_decoder_of_a_whole_sam_teacher(monkeypatch, distill_run,
                                                              tmp_path):
  encoder = checkpoints.latest_workdir_params(distill_run)["image_encoder"]
  fresh = export.mobile_sam_from_encoder(encoder).params
  teacher = {"image_encoder": {}, "prompt_encoder": jax.tree.map(lambda x: x + 1,
                                                                 fresh["prompt_encoder"]),
             "mask_decoder": jax.tree.map(lambda x: x - 1, fresh["mask_decoder"])}
  # Reading a real sam_vit_h_4b8939.pth is another test's business (test_sam_parity).
  monkeypatch.setattr(model_files, "load", lambda path, model=None: model_files.LoadedModel(
      registry.config("sam_vit_h"), teacher))
  checkpoint = tmp_path / "sam_vit_h_4b8939.pth"
  checkpoint.write_bytes(b"")
  loaded = export.mobile_sam_from_encoder(encoder, str(checkpoint))
  assert loaded.name == "mobile_sam"
  params = loaded.params
  for part in ("prompt_encoder", "mask_decoder"):
    for a, b in zip(jax.tree.leaves(params[part]), jax.tree.leaves(teacher[part])):
      np.testing.assert_array_equal(a, b)


def test_init_from_a_distillation_workdir(distill_run):
  config = mobilesam_distill.get_config("demo,smoke")
  config.init_from = distill_run
  task = sami_trainer.SamiTask(config)
  loaded = task.init_from_params(jax.eval_shape(task.init_params, jax.random.key(0)))
  stored = checkpoints.latest_workdir_params(distill_run)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(stored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_vit_student_keeps_its_neck_as_efficientsam():
  config = mobilesam_distill.get_config("demo,smoke,student=vitt")
  config.student.overrides = {}  # the released 12 blocks
  task = sami_trainer.SamiTask(config)
  params = jax.jit(task.init_params)(jax.random.key(0))
  pred = task.student.apply({"params": params}, np.zeros((2, 32, 32, 3), np.float32))
  assert pred.shape == (2, 4, 256)
  loaded = export.efficientsam_from_encoder(params["image_encoder"])
  assert loaded.name == "efficientsam_vitt"
  np.testing.assert_array_equal(loaded.params["image_encoder"]["neck_0"]["kernel"],
                                params["image_encoder"]["neck_0"]["kernel"])


@pytest.mark.parametrize("changes,message", [
    (dict(mask_ratio=0.75), "needs mask_ratio=0"),
    (dict(decoder=dict(kind="cross")), "cannot drop masked tokens"),
    (dict(decoder=dict(kind="nope")), "decoder.kind must be one of"),
    (dict(loss=dict(masked_only=True)), "no token to learn from"),
])
def test_objective_mistakes_are_user_errors(changes, message):
  config = mobilesam_distill.get_config("demo,smoke")
  for key, value in changes.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  with pytest.raises(UserError, match=message):
    sami_trainer.check_objective(config)


# ----------------------------------------------------------------------------------------
# The teacher-feature cache

def _cache(output, *overrides, check=True, devices=1):
  proc = subprocess.run(
      [sys.executable, "-m", "efficientsam_jax.cache_teacher", f"--config={DISTILL}",
       f"--output={output}", "--records_per_shard=10", BF16_TEACHER, *overrides],
      env=env(devices), cwd=REPO, capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _shards(directory):
  return sorted(n for n in os.listdir(directory) if n.endswith(".array_record"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  output = str(tmp_path_factory.mktemp("cache") / "targets")
  proc = _cache(output)
  assert "wrote 32 targets" in proc.stdout
  assert "records/s" in proc.stderr and "ETA" in proc.stderr  # progress on the log
  return output


def test_cache_layout_and_records(cache_dir):
  metadata = teacher_cache.read_metadata(cache_dir)
  assert metadata["num_records"] == 32 and metadata["target"] == {
      "shape": [2, 2, 256], "dtype": "bfloat16"}
  assert _shards(cache_dir) == [f"targets-0000{s}-of-00004.p0.array_record" for s in range(4)]
  cache = teacher_cache.TeacherCache(cache_dir)
  source = sources.DemoImageSource(32)
  target = cache.target(13, source[13])
  assert target.dtype == ml_dtypes.bfloat16 and target.shape == (2, 2, 256)
  with pytest.raises(UserError, match="computed from another image"):
    cache.target(13, source[14])


def test_cached_targets_train_exactly_as_the_live_teacher(cache_dir, distill_run, tmp_path):
  cached = str(tmp_path / "cached")
  # Evaluation during training needs the live teacher (the cache holds training images only);
  # it does not change what is trained, so the live run evaluates and this one does not.
  _run(cached, BF16_TEACHER, f"--config.teacher.cache_dir={cache_dir}", NO_EVAL, config=DISTILL)
  want, got = _losses(distill_run), _losses(cached)
  assert sorted(got) == list(range(1, 21))
  # Cache and live run on one device: the cache holds the very bf16 numbers the live step
  # computes (same teacher, same view, deterministic crop), and the losses are measured
  # bit-identical; 1e-6 leaves room only for float32 reassociation should XLA ever fuse the
  # step differently.
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-6), step
  with open(os.path.join(cached, "config.json")) as f:
    assert json.load(f)["teacher"]["cache_dir"] == cache_dir


def test_cache_over_two_devices_matches_to_bf16_noise(cache_dir, tmp_path):
  """Split over 2 devices the bf16 teacher runs on per-device batches of 4 instead of 8: its
  bf16 sums run in another order, so targets differ by bf16 noise (0.7% RMS measured),
  exactly as a live teacher on another mesh would. The default --batch_size (the config's,
  split over the same devices as training) keeps the per-device batch of training."""
  output = str(tmp_path / "two")
  _cache(output, "--batch_size=8", devices=2)
  one, two = teacher_cache.TeacherCache(cache_dir), teacher_cache.TeacherCache(output)
  source = sources.DemoImageSource(32)
  a = np.stack([one.target(i, source[i]) for i in range(32)]).astype(np.float32)
  b = np.stack([two.target(i, source[i]) for i in range(32)]).astype(np.float32)
  relative = np.linalg.norm(a - b) / np.linalg.norm(a)
  print(f"2-device cache vs 1-device cache: relative RMS difference {relative:.2e}")
  assert relative < 2e-2


def test_cache_in_a_bucket_holds_the_local_caches_targets(cache_dir, bucket):
  """array_record writes local files only: the shards are written locally and uploaded
  whole; the trainer's reader reads them from the bucket directly."""
  from efficientsam_jax.io import paths
  output = f"{bucket}/targets"
  assert "wrote 32 targets" in _cache(output).stdout
  names = sorted(paths.list_dir(output))
  assert names == sorted(["cache.json", *_shards(cache_dir)])
  local, remote = teacher_cache.TeacherCache(cache_dir), teacher_cache.TeacherCache(output)
  source = sources.DemoImageSource(32)
  for i in range(32):
    assert remote.target(i, source[i]).tobytes() == local.target(i, source[i]).tobytes()


def test_cache_resumes_skipping_complete_shards(cache_dir, tmp_path):
  directory = str(tmp_path / "resume")
  shutil.copytree(cache_dir, directory)
  original = {n: open(os.path.join(directory, n), "rb").read() for n in _shards(directory)}
  assert "0 targets" in _cache(directory).stdout  # all complete: nothing rewritten
  # An interrupted run: shard 2 half-written (temporary name), shard 3 never started.
  shard2, shard3 = sorted(original)[2:]
  os.replace(os.path.join(directory, shard2),
             os.path.join(directory, shard2 + teacher_cache.PARTIAL_SUFFIX))
  os.remove(os.path.join(directory, shard3))
  proc = _cache(directory)
  assert "wrote 12 targets" in proc.stdout and "2 shards were already complete" in proc.stdout
  assert sorted(os.listdir(directory)) == sorted(["cache.json", *original])
  for name, content in original.items():
    assert open(os.path.join(directory, name), "rb").read() == content, name


@pytest.mark.parametrize("command,message", [
    ("train", "was written for data.image_size=32"),
    ("cache_other_config", "holds a teacher cache of something else"),
    ("cache_foreign_dir", "is not empty and holds no teacher cache"),
    ("train_incomplete", "is incomplete"),
])
def test_cache_mistakes_are_one_line_errors(cache_dir, tmp_path, command, message):
  if command == "train":
    proc = _run(str(tmp_path / "w"), f"--config.teacher.cache_dir={cache_dir}",
                "--config.data.image_size=64", NO_EVAL, config=DISTILL, check=False)
  elif command == "cache_other_config":
    proc = _cache(cache_dir, "--config.data.crop=center", check=False)
  elif command == "cache_foreign_dir":
    (tmp_path / "notes.txt").write_text("mine")
    proc = _cache(str(tmp_path), check=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
  else:
    directory = str(tmp_path / "incomplete")
    shutil.copytree(cache_dir, directory)
    os.remove(os.path.join(directory, _shards(directory)[1]))
    proc = _run(str(tmp_path / "w"), f"--config.teacher.cache_dir={directory}", NO_EVAL,
                config=DISTILL, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr


def test_processes_write_their_own_shards(tmp_path):
  """Two processes (called in turn here) split the shards; the cache is whole only when both
  have written theirs. A stand-in teacher keeps this free of compiling."""
  config = mobilesam_distill.get_config("demo,smoke")
  fake_teacher = lambda images: np.broadcast_to(images[:, :2, :2, :1], images.shape[:1] + (
      2, 2, 256))
  directory = str(tmp_path / "cache")
  write = lambda p: data.write_teacher_cache(directory, config, fake_teacher, (2, 2, 256),
                                             batch_size=3, records_per_shard=5, process_index=p,
                                             process_count=2)
  assert write(0)["records"] == 17  # shards 0, 2, 4 and 6 (the last one: 2 records)
  with pytest.raises(UserError, match="incomplete: 3 of 7 shards missing"):
    teacher_cache.TeacherCache(directory)
  assert write(1)["records"] == 15  # shards 1, 3, 5
  assert _shards(directory)[:2] == ["targets-00000-of-00007.p0.array_record",
                                    "targets-00001-of-00007.p1.array_record"]
  cache, source = teacher_cache.TeacherCache(directory), sources.DemoImageSource(32)
  for i in (0, 6, 31):
    view = teacher_cache.cached_view(source[i], i, config.seed, config.data)["image"]
    want = fake_teacher(view[None])[0].astype(ml_dtypes.bfloat16)
    assert cache.target(i, source[i]).tobytes() == want.tobytes()


def test_record_round_trip_keeps_bf16_bits():
  target = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(ml_dtypes.bfloat16)
  header, back = teacher_cache.decode_record(teacher_cache.encode_record(7, 1234, target))
  assert header == {"index": 7, "image_crc32": 1234, "shape": [3, 4, 5], "dtype": "bfloat16"}
  assert back.dtype == target.dtype and back.tobytes() == target.tobytes()


def test_longest_side_view_is_sams():
  image = np.random.default_rng(0).integers(0, 256, (150, 225, 3), dtype=np.uint8)
  out = transforms.preprocess(image, np.random.default_rng(0), image_size=64,
                              crop="longest_side", flip=False)["image"]
  assert out.shape == (64, 64, 3) and transforms.longest_side_hw(150, 225, 64) == (43, 64)
  assert np.all(out[43:] == 0) and np.any(out[:43] != 0)  # zero (mean colour) padding below
  view = ml_collections.ConfigDict(dict(image_size=64, crop="longest_side", min_scale=0.2,
                                        flip=False))
  np.testing.assert_array_equal(teacher_cache.cached_view(image, 5, 0, view)["image"], out)
