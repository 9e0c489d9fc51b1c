"""EfficientSAM finetuning end to end: the CLI run (loss falls, SIGKILL resume), its workdir
through convert / predict / evaluate, SAMI workdirs as EfficientSAM and timm files."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sami_runs import REPO, env, losses, popen, run

FT_SMOKE = "configs/efficientsam_vitt.py:demo,smoke"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finetune"))
  proc = run(workdir, config=FT_SMOKE)
  assert "evaluate --checkpoint" in proc.stdout  # the demo says how to score held-out images
  return workdir


def test_smoke_finetuning_loss_falls(reference):
  got = losses(reference)
  assert sorted(got) == list(range(1, 21))
  assert got[20] < 0.7 * got[1]
  with open(os.path.join(reference, "metrics.jsonl")) as f:
    last = json.loads(f.readlines()[-1])
  assert {"focal", "dice", "iou_mse", "miou", "steps_per_sec"} <= set(last)
  assert os.path.exists(os.path.join(reference, "demo_data", "val", "instances.json"))


def _evaluations(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if "eval/box_miou" in r}


def test_held_out_miou_is_logged_and_the_best_checkpoint_kept(reference):
  evaluated = _evaluations(reference)
  assert sorted(evaluated) == [10, 20]  # config.eval.every=10 in :smoke
  for record in evaluated.values():
    assert 0 <= record["eval/box_miou"] <= 1 and 0 <= record["eval/point1_miou"] <= 1
  best = max(sorted(evaluated), key=lambda s: evaluated[s]["eval/box_miou"])  # ties: earlier
  assert os.listdir(os.path.join(reference, "best", "checkpoints")) == [str(best)]
  with open(os.path.join(reference, "best", "checkpoints", str(best), "best",
                         "metadata")) as f:
    kept = json.load(f)
  assert kept == {"step": best, "metric": "box_miou",
                  "value": evaluated[best]["eval/box_miou"]}


def test_sigkill_then_restart_gives_the_uninterrupted_losses(reference, tmp_path):
  workdir = str(tmp_path)
  proc = popen(workdir, config=FT_SMOKE)
  first = os.path.join(workdir, "checkpoints", "5")
  deadline = time.time() + 400
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(first)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "20")), "killed too late"
  restarted = run(workdir, config=FT_SMOKE)
  assert "resuming from step" in restarted.stderr
  expected, got = losses(reference), losses(workdir)
  assert sorted(got) == sorted(expected)
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=1e-6), step


@pytest.fixture(scope="module")
def released_pt(reference, tmp_path_factory):
  """The reference workdir converted once to the released .pt format."""
  from efficientsam_jax.io import model_files
  out = str(tmp_path_factory.mktemp("released") / "finetuned.pt")
  assert model_files.convert(reference, out) == "efficientsam_vitt"
  return out


def test_workdir_converts_to_the_released_format_and_predicts_like_the_jax_model(
    reference, released_pt):
  from efficientsam_jax.inference.predictor import Predictor
  from efficientsam_jax.io import checkpoints, torch_files
  from efficientsam_jax.models import efficient_sam as es
  from efficientsam_jax.models.family import ModelConfig
  state_dict = torch_files.load(released_pt)["model"]
  assert len(state_dict) == 278
  image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
  boxes = np.array([[5, 6, 40, 30], [30, 10, 70, 44]], np.float32)
  predictor = Predictor.from_checkpoint(released_pt, image_size=64)
  predictor.set_image(image)
  got = predictor.predict(boxes=boxes)
  params = checkpoints.latest_workdir_params(reference)
  model = es.EfficientSam(ModelConfig("efficientsam_vitt", image_size=64))
  points = jnp.asarray(boxes.reshape(1, 2, 2, 2))
  labels = jnp.asarray(np.tile([[2.0, 3.0]], (1, 2, 1)))
  logits, iou = model.apply({"params": params}, jnp.asarray(image[None] / 255.0, jnp.float32),
                            points, labels)
  np.testing.assert_allclose(got["iou"], np.asarray(iou[0]), atol=1e-4)
  np.testing.assert_allclose(got["logits"], np.asarray(logits[0]), atol=1e-3)


def test_workdir_converts_to_the_released_parameter_names(released_pt, fixtures_dir):
  from efficientsam_jax.io import torch_files
  with open(fixtures_dir / "state_dict_manifest.json") as f:
    released = dict(json.load(f)["vitt"])  # name -> shape, of the official release's file
  ours = {name: list(value.shape) for name, value in torch_files.load(released_pt)["model"].items()}
  assert set(ours) == set(released)
  # The position table is stored at the pretraining size (224 px) in both files.
  assert all(ours[name] == released[name] for name in released), [
      name for name in released if ours[name] != released[name]]


def test_evaluate_cli_on_the_best_checkpoint_gives_the_logged_miou(reference, tmp_path):
  val = os.path.join(reference, "demo_data", "val")
  result_path = tmp_path / "result.json"
  proc = subprocess.run(
      [sys.executable, "-m", "efficientsam_jax.evaluate",
       f"--checkpoint={os.path.join(reference, 'best')}", f"--images={val}",
       f"--annotations={val}/instances.json", "--prompt=box,point1",
       f"--output={result_path}"], env=env(1), cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(val, "instances.json")) as f:
    count = len(json.load(f)["annotations"])
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["box"]["count"] == result["point1"]["count"] == count
  best = int(os.listdir(os.path.join(reference, "best", "checkpoints"))[0])
  logged = _evaluations(reference)[best]
  assert result["box"]["miou"] == pytest.approx(logged["eval/box_miou"], abs=1e-6)
  assert result["point1"]["miou"] == pytest.approx(logged["eval/point1_miou"], abs=1e-6)
  assert json.loads(result_path.read_text()) == result
  assert "images" in proc.stderr  # progress
  bad = subprocess.run(
      [sys.executable, "-m", "efficientsam_jax.evaluate", f"--checkpoint={reference}",
       f"--images={val}", "--annotations=/nonexistent.json"], env=env(1), cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr  # a user mistake: exit 2
  assert "/nonexistent.json" in bad.stderr.strip().splitlines()[-1]


def _sami_workdir(path, depth=12):
  from configs import sami_vitt
  from efficientsam_jax.io import checkpoints
  from efficientsam_jax.models import vit
  from efficientsam_jax.tasks.sami import masking
  from efficientsam_jax.tasks.sami import student as sami_model
  from efficientsam_jax.train import loop
  # A workdir is read through the trainer named in its config.json, as the trainer writes it.
  config = sami_vitt.get_config("demo")
  config.student.overrides = {"depth": depth}
  config.decoder.update(width=32, depth=1, num_heads=2)
  os.makedirs(path, exist_ok=True)
  loop.write_config(config, str(path))
  student = sami_model.SAMI(vit.ViTConfig.from_name("vitt", depth=depth),
                            sami_model.DecoderConfig(width=32, depth=1, num_heads=2),
                            target_dim=256)
  ids = masking.random_masking(jax.random.key(0), 1, 4, 1)
  # Any values do (the tests compare arrays): drawn from the shapes with numpy, as eager
  # initialisation of 12 blocks takes ~18 s.
  shapes = jax.eval_shape(lambda rng: student.init(rng, jnp.zeros((1, 32, 32, 3)), *ids),
                          jax.random.key(1))["params"]
  rng = np.random.default_rng(depth)
  params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype), shapes)
  manager = checkpoints.TrainCheckpoints(str(path), async_save=False)
  manager.save(3, params, {"count": jnp.zeros(())})
  manager.close()
  return params


@pytest.fixture(scope="module")
def sami_workdir(tmp_path_factory):
  """(path, params) of a SAMI workdir with a released-size (vitt, 12 blocks) encoder."""
  path = tmp_path_factory.mktemp("sami")
  return str(path), _sami_workdir(path)


def test_sami_workdir_loads_as_efficientsam_and_converts_to_timm(sami_workdir, tmp_path,
                                                                 caplog):
  from efficientsam_jax.errors import UserError
  from efficientsam_jax.io import model_files, torch_files
  path, sami = sami_workdir
  with caplog.at_level(logging.INFO):
    loaded = model_files.load(path)
  assert loaded.name == "efficientsam_vitt"
  params = loaded.params
  # Which parts are fresh is logged (absl logging.info), no longer printed.
  assert "freshly initialised" in caplog.text
  np.testing.assert_array_equal(params["image_encoder"]["blocks_11"]["attn"]["qkv"]["kernel"],
                                sami["image_encoder"]["blocks_11"]["attn"]["qkv"]["kernel"])
  assert "neck_0" in params["image_encoder"] and "mask_decoder" in params
  out = str(tmp_path / "vit_tiny.pt")
  model_files.convert(path, out, torch_format="timm")
  state_dict = torch_files.load(out)
  assert state_dict["pos_embed"].shape == (1, 197, 192)
  assert state_dict["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
  assert state_dict["blocks.11.attn.qkv.weight"].shape == (576, 192)
  assert state_dict["blocks.0.mlp.fc2.bias"].shape == (192,)
  assert not any(k.startswith(("neck", "cls_token", "norm.", "head")) for k in state_dict)
  assert len(state_dict) == 2 + 1 + 12 * 12  # pos, patch w/b, 12 tensors per block
  np.testing.assert_array_equal(
      np.asarray(state_dict["blocks.3.attn.qkv.weight"]),
      np.asarray(sami["image_encoder"]["blocks_3"]["attn"]["qkv"]["kernel"]).T)
  _sami_workdir(tmp_path / "shallow", depth=2)
  with pytest.raises(UserError, match="12"):
    model_files.load(str(tmp_path / "shallow"))


def test_init_from_a_sami_workdir_takes_its_encoder(sami_workdir, tmp_path):
  from configs import efficientsam_vitt
  from efficientsam_jax.errors import UserError
  from efficientsam_jax.tasks.finetune import task as efficientsam
  path, sami = sami_workdir
  config = efficientsam_vitt.get_config("demo,smoke")
  config.init_from = path
  config, _ = efficientsam.with_demo_data(config, str(tmp_path / "wd"))
  params = efficientsam.EfficientSamTask(config).init_from_params(None)
  np.testing.assert_array_equal(params["image_encoder"]["pos_embed"],
                                sami["image_encoder"]["pos_embed"])
  config.model.size = "vits"
  with pytest.raises(UserError, match="efficientsam_vitt"):
    efficientsam.EfficientSamTask(config).init_from_params(None)
