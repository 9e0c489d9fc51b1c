"""`python -m efficientsam_jax.convert`: round trips, inference of the model, refusals."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import require_module
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import checkpoints, model_files, torch_files
from efficientsam_jax.models import efficient_sam as es

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def released(fixtures_dir):
  return str(fixtures_dir / "efficient_sam_vitt_random.pt")


@pytest.fixture(scope="module")
def released_state(released):
  return torch_files.load(released)["model"]


@pytest.fixture(scope="module")
def jax_dir(released, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("convert") / "vitt_jax")
  assert model_files.convert(released, out) == "efficientsam_vitt"
  return out


def _assert_identical(ours: dict, theirs: dict):
  assert list(ours) == list(theirs)
  for name, value in theirs.items():
    assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
    assert ours[name].tobytes() == value.tobytes(), name


def test_round_trip_is_bit_exact(jax_dir, released_state, tmp_path):
  require_module("torch")
  back = str(tmp_path / "back.pt")
  assert model_files.convert(jax_dir, back) == "efficientsam_vitt"  # name from the metadata
  loaded = torch_files.load(back)
  assert list(loaded) == ["model"]
  _assert_identical(loaded["model"], released_state)


def test_state_dict_format(jax_dir, tmp_path):
  require_module("torch")
  out = str(tmp_path / "plain.pth")
  model_files.convert(jax_dir, out, torch_format="state_dict")
  assert len(torch_files.load(out)) == 278


def test_jax_checkpoint_holds_metadata(jax_dir, released_state):
  params, metadata = checkpoints.restore_params(jax_dir)
  assert metadata["model"] == "efficientsam_vitt"
  assert metadata["format"] == model_files.PARAMS_FORMAT
  flat = es.FAMILY.params_to_torch(jax.tree.map(np.asarray, params))
  _assert_identical(flat, released_state)


def test_model_mismatch(jax_dir, tmp_path):
  with pytest.raises(UserError, match="holds efficientsam_vitt"):
    model_files.convert(jax_dir, str(tmp_path / "x.pt"), model="efficientsam_vits")


def test_vits_inferred_from_width(tmp_path):
  require_module("torch")
  shapes = es.FAMILY.abstract_params(es.FAMILY.config("efficientsam_vits"))
  params = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)
  path = str(tmp_path / "vits.pt")
  torch_files.save({"model": es.FAMILY.params_to_torch(params)}, path)
  assert model_files.convert(path, str(tmp_path / "vits_jax")) == "efficientsam_vits"


def test_training_workdir_input(released_state, tmp_path):
  require_module("torch")
  params = model_files.from_state_dict(released_state).params
  manager = checkpoints.TrainCheckpoints(str(tmp_path / "work"), async_save=False)
  for step in (1, 2):  # the latest one is used
    scaled = jax.tree.map(lambda x, s=step: x * s, params)
    manager.save(step, scaled, {"count": np.zeros((), np.int32)})
  manager.close()
  # A workdir is read through the trainer named by its config.json (a finetuning one here).
  (tmp_path / "work" / "config.json").write_text(json.dumps(
      {"trainer": "efficientsam", "model": {"size": "vitt", "image_size": 1024}}))
  out = str(tmp_path / "from_workdir.pt")
  assert model_files.convert(str(tmp_path / "work"), out) == "efficientsam_vitt"
  got = torch_files.load(out)["model"]
  name = "mask_decoder.iou_token.weight"
  np.testing.assert_array_equal(got[name], released_state[name] * 2)


@pytest.mark.parametrize("edit,message", [
    ("drop", "missing tensor 'mask_decoder.iou_token.weight'"),
    ("extra", "unexpected tensor 'mask_decoder.extra.weight'"),
    ("reshape", "tensor 'mask_decoder.iou_token.weight' has shape (2, 128)"),
])
def test_misfit_tensors_named(released_state, tmp_path, edit, message):
  require_module("torch")
  state = dict(released_state)
  if edit == "drop":
    del state["mask_decoder.iou_token.weight"]
  elif edit == "extra":
    state["mask_decoder.extra.weight"] = np.zeros(3, np.float32)
  else:
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"].reshape(2, 128)
  path = str(tmp_path / "bad.pt")
  torch_files.save({"model": state}, path)
  with pytest.raises(UserError) as info:
    model_files.convert(path, str(tmp_path / "out"))
  assert message in str(info.value) and "\n" not in str(info.value)


def test_corrupted_inputs(released, jax_dir, tmp_path):
  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(open(released, "rb").read()[:100_000])
  with pytest.raises(UserError, match="truncated"):
    model_files.convert(str(truncated), str(tmp_path / "out1"))
  not_a_checkpoint = tmp_path / "empty_dir"
  not_a_checkpoint.mkdir()
  with pytest.raises(UserError, match="not a parameter checkpoint"):
    model_files.convert(str(not_a_checkpoint), str(tmp_path / "out2.pt"))


def test_damaged_jax_directory(jax_dir, tmp_path):
  damaged = tmp_path / "damaged"
  subprocess.run(["cp", "-r", jax_dir, str(damaged)], check=True)
  for root, _, files in os.walk(damaged / "params"):
    for name in files:
      if "manifest" in name or name.startswith("d") or root.endswith("/d"):
        os.remove(os.path.join(root, name))
  with pytest.raises(UserError) as info:
    model_files.convert(str(damaged), str(tmp_path / "out.pt"))
  assert "\n" not in str(info.value)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "efficientsam_jax.convert", *args],
                        capture_output=True, text=True, env=env, cwd=REPO)


def test_cli(released, tmp_path):
  require_module("torch")
  ok = _cli(f"--input={released}", f"--output={tmp_path / 'jax'}")
  assert ok.returncode == 0, ok.stderr
  assert "efficientsam_vitt" in ok.stdout
  for args in ([f"--input={released}", f"--output={tmp_path / 'jax'}"],  # exists
               [f"--input={tmp_path / 'missing.pt'}", f"--output={tmp_path / 'x'}"],
               [f"--input={released}", f"--output={tmp_path / 'y'}", "--model=sam_vit_h"],
               [f"--input={released}", f"--output={tmp_path / 'z'}", "--model=sam_vit_x"]):
    bad = _cli(*args)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("convert: error: ") and bad.stderr.count("\n") == 1, bad.stderr


def test_sam_plain_state_dict_round_trip(tmp_path):
  """A vit_b-sized SAM state_dict (plain, as released) -> JAX -> .pth: identical, plain."""
  require_module("torch")
  from efficientsam_jax.models import sam
  shapes = sam.FAMILY.abstract_params(sam.FAMILY.config("sam_vit_b"))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  state = sam.FAMILY.params_to_torch(params)
  path = str(tmp_path / "sam_vit_b.pth")
  torch_files.save(state, path)
  assert model_files.convert(path, str(tmp_path / "jax")) == "sam_vit_b"  # inferred from width
  back = str(tmp_path / "back.pth")
  assert model_files.convert(str(tmp_path / "jax"), back, model="sam_vit_b") == "sam_vit_b"
  _assert_identical(torch_files.load(back), state)
