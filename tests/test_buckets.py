"""Every path may be gs://: the tools and a finetuning run against a real Cloud Storage server
on localhost (fake-gcs-server, tests/gcs_server.py), and the one-line errors for a missing
bucket and a read-only one. (SAMI's resume in a bucket: test_train_sami.py; two processes
sharing a bucket workdir: test_runtime.py; the cache in a bucket: test_distill.py.)"""
import io
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from conftest import require_module
from sami_runs import REPO, env, event_scalars, losses, random_model, run

FT_SMOKE = "configs/efficientsam_vitt.py:demo,smoke"


@pytest.fixture(scope="module")
def store(gcs_server_url):
  """A bucket for this module's data and runs: gs://NAME."""
  return gcs_server_url.create_bucket(f"buckets-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def coco(store, tmp_path_factory):
  """A small COCO-format set (generated shapes) in the bucket: (images dir, annotations)."""
  from efficientsam_jax.data import demo_sa1b, segmentation
  from efficientsam_jax.io import paths
  local = str(tmp_path_factory.mktemp("coco"))
  demo_sa1b.write_split(local, seed=0, first=0, count=12, size=64)
  instances = segmentation.sa1b_to_coco(local)
  images = f"{store}/coco/images"
  for info in instances["images"]:
    paths.write(f"{images}/{info['file_name']}",
                paths.read_bytes(os.path.join(local, info["file_name"])))
  annotations = f"{store}/coco/instances.json"
  paths.write(annotations, json.dumps(instances))
  return images, annotations, instances


@pytest.fixture(scope="module")
def init_pt(store):
  """A released-format EfficientSAM-Ti .pt in the bucket (written through the path layer)."""
  require_module("torch")
  from efficientsam_jax.io import model_files
  path = f"{store}/weights/efficient_sam_vitt_init.pt"
  model_files.save_torch(path, random_model(seed=3))
  return path


@pytest.fixture(scope="module")
def finetuned(store, coco, init_pt):
  """A finetuning smoke run reading COCO-format data and init_from from the bucket, its
  workdir in the bucket too."""
  images, annotations, _ = coco
  workdir = f"{store}/finetune"
  proc = run(workdir, "--config.data.source=coco", f"--config.data.path={images}",
             f"--config.data.annotations={annotations}", f"--config.init_from={init_pt}",
             # Evaluation during training reads its COCO set from the bucket too (the training
             # images here: this checks the reading, not generalisation).
             f"--config.eval.images={images}", f"--config.eval.annotations={annotations}",
             # The smoke's own 20 steps: the same compiled step as tests/test_finetune.py's.
             config=FT_SMOKE)
  assert f"initialised from {init_pt}" in proc.stderr
  from efficientsam_jax.io import paths
  # The held-out evaluation at step 20 ran, and kept its best parameters in the bucket.
  last = json.loads(paths.read_text(f"{workdir}/metrics.jsonl").splitlines()[-1])
  assert "eval/box_miou" in last
  assert paths.exists(f"{workdir}/best/config.json")
  return workdir


def _tool(name, *args, extra_env=None, check=True):
  proc = subprocess.run([sys.executable, "-m", f"efficientsam_jax.{name}", *args],
                        env=dict(env(1), **(extra_env or {})), cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_finetuning_with_data_and_init_from_in_the_bucket(finetuned):
  from efficientsam_jax.io import paths
  got = losses(finetuned)
  assert sorted(got) == list(range(1, 21)) and all(np.isfinite(list(got.values())))
  config = json.loads(paths.read_text(f"{finetuned}/config.json"))
  assert config["data"]["path"].startswith("gs://") and config["init_from"].startswith("gs://")
  steps = paths.list_dir(f"{finetuned}/checkpoints")
  assert {"10", "20"} <= set(steps)


def test_convert_both_ways_predict_and_evaluate_with_bucket_paths(finetuned, coco, store,
                                                                  tmp_path):
  from efficientsam_jax.inference.predictor import Predictor
  from efficientsam_jax.io import model_files, paths
  images, annotations, instances = coco
  # A bucket workdir -> a local .pt, and the .pt -> a JAX directory in the bucket.
  local_pt = str(tmp_path / "finetuned.pt")
  _tool("convert", f"--input={finetuned}", f"--output={local_pt}")
  jax_dir = f"{store}/converted/vitt"
  _tool("convert", f"--input={local_pt}", f"--output={jax_dir}")
  from_pt, from_bucket = model_files.load(local_pt), model_files.load(jax_dir)
  assert from_bucket.name == from_pt.name == "efficientsam_vitt"
  import jax
  assert jax.tree.structure(from_pt.params) == jax.tree.structure(from_bucket.params)
  for a, b in zip(jax.tree.leaves(from_pt.params), jax.tree.leaves(from_bucket.params)):
    assert a.dtype == b.dtype and np.array_equal(a, b)  # bit for bit through the bucket

  # predict: checkpoint, image and prompts in the bucket, outputs written there.
  image_path = f"{images}/{instances['images'][0]['file_name']}"
  prompts = f"{store}/predict/prompts.json"
  paths.write(prompts, json.dumps([{"box": [5, 6, 40, 30]}, {"points": [[20, 20]],
                                                              "labels": [1]}]))
  out, overlay = f"{store}/predict/out.npz", f"{store}/predict/overlay.png"
  _tool("predict", f"--checkpoint={finetuned}", f"--image={image_path}",
        f"--prompts={prompts}", f"--output={out}", f"--overlay={overlay}")
  with np.load(io.BytesIO(paths.read_bytes(out))) as got:
    got = dict(got)
  predictor = Predictor.from_checkpoint(local_pt, image_size=64)
  from efficientsam_jax.io import images as images_io
  from efficientsam_jax.inference import files
  predictor.set_image(images_io.read(image_path))
  want = predictor.predict_queries(files.read_prompts(prompts))
  np.testing.assert_allclose(got["iou"], want["iou"], atol=1e-4)
  np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-3)
  assert paths.read_bytes(overlay)[:8] == b"\x89PNG\r\n\x1a\n"

  # evaluate: images and annotations in the bucket, the result written there.
  result_path = f"{store}/evaluate/result.json"
  proc = _tool("evaluate", f"--checkpoint={finetuned}", f"--images={images}",
               f"--annotations={annotations}", "--prompt=box", f"--output={result_path}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["count"] == len(instances["annotations"]) and 0 <= result["miou"] <= 1
  assert json.loads(paths.read_text(result_path)) == result


def _one_error_line(proc, program, message):
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith(f"{program}: error: ")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  return errors[0]


def test_missing_bucket_is_one_line_before_compiling(gcs_server_url, tmp_path):
  proc = run("gs://no-such-bucket-esam/run", check=False)
  _one_error_line(proc, "main", "no such bucket gs://no-such-bucket-esam")
  assert "first step" not in proc.stderr
  data = run(str(tmp_path / "w"), "--config.data.source=folder",
             "--config.data.path=gs://no-such-bucket-esam/images", check=False)
  _one_error_line(data, "main", "config.data.path gs://no-such-bucket-esam/images: no such "
                  "bucket")
  assert not (tmp_path / "w" / "config.json").exists()
  convert = _tool("convert", "--input=gs://no-such-bucket-esam/m.pt",
                  f"--output={tmp_path / 'x'}", check=False)
  _one_error_line(convert, "convert", "no such bucket gs://no-such-bucket-esam")


def test_read_only_bucket_is_one_line_permission_error(bucket, read_only_gcs, finetuned,
                                                       tmp_path):
  proc = run(f"{bucket}/run", check=False, **read_only_gcs)
  line = _one_error_line(proc, "main", "permission denied")
  assert f"{bucket}/run" in line and "first step" not in proc.stderr
  convert = _tool("convert", f"--input={finetuned}", f"--output={bucket}/vitt.pt",
                  extra_env=read_only_gcs, check=False)
  _one_error_line(convert, "convert", "permission denied")


def test_metrics_and_event_files_in_a_bucket_are_whole_rolled_and_cut_back(bucket,
                                                                           monkeypatch):
  """Nothing is appended in a bucket: metrics.jsonl is rewritten whole, event files are
  uploaded whole and a new one begun past ROLL_BYTES; a resume cuts metrics back."""
  from efficientsam_jax.io import paths
  from efficientsam_jax.train import metrics
  monkeypatch.setattr(metrics, "ROLL_BYTES", 400)
  monkeypatch.setattr(metrics, "SYNC_SECONDS", 0.0)
  workdir = f"{bucket}/metrics"
  writer = metrics.MetricWriter(workdir, total_steps=30)
  for step in range(1, 31):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  lines = paths.read_text(f"{workdir}/metrics.jsonl").splitlines()
  assert [json.loads(l)["step"] for l in lines] == list(range(1, 31))
  events = [n for n in paths.list_dir(f"{workdir}/tensorboard") if "tfevents" in n]
  assert len(events) >= 3  # rolled
  losses_logged = sorted((step, value) for name in events for step, tag, value in event_scalars(
      paths.read_bytes(f"{workdir}/tensorboard/{name}")) if tag == "loss")
  assert losses_logged == [(s, pytest.approx(1.0 / s)) for s in range(1, 31)]
  resumed = metrics.MetricWriter(workdir, total_steps=30, resumed_step=10)
  resumed.close()
  lines = paths.read_text(f"{workdir}/metrics.jsonl").splitlines()
  assert [json.loads(l)["step"] for l in lines] == list(range(1, 11))
