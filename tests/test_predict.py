"""Predictor and `python -m efficientsam_jax.predict` against the official outputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from efficientsam_jax import predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  return dict(np.load(fixtures_dir / "efficient_sam_vitt_random_io.npz"))


@pytest.fixture(scope="module")
def checkpoint(fixtures_dir):
  return str(fixtures_dir / "efficient_sam_vitt_random.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint, golden):
  p = predict.Predictor.from_checkpoint(checkpoint)
  p.set_image(golden["image_uint8"])  # the encoder compiles once for the module
  return p


@pytest.fixture(scope="module")
def fixture_queries(golden):
  """The fixture's 3 queries as prompt JSON (the -1 padding point dropped)."""
  queries = []
  for pts, lbl in zip(golden["points"][0], golden["labels"][0]):
    keep = lbl != -1
    queries.append({"points": pts[keep].tolist(), "labels": lbl[keep].astype(int).tolist()})
  return queries


def _check_against_golden(out, golden):
  assert np.abs(out["low_res_logits"] - golden["low_res_logits"][0]).max() < 1e-4
  assert np.abs(out["iou"] - golden["iou_predictions"][0]).max() < 1e-5
  assert np.abs(out["logits"][0] - golden["full_res_logits_query0"]).max() < 1e-3
  shape = tuple(golden["full_res_shape"])
  masks = np.unpackbits(golden["full_res_masks_packed"], axis=-1)[..., :shape[-1]].astype(bool)
  assert out["logits"].shape == shape[1:]
  assert np.mean(masks[0] == (out["logits"] > 0)) >= 0.999


def test_embeddings(predictor, golden):
  diff = np.abs(predictor.image_embeddings - golden["image_embeddings"][0]).max()
  assert diff < 1e-4


def test_fixture_queries(predictor, golden, fixture_queries):
  points, labels = predict.queries_to_arrays(fixture_queries, 6)
  out = predictor.predict_arrays(points, labels)
  _check_against_golden(out, golden)
  # Same through the array API with the fixture's own padded arrays.
  again = predictor.predict(golden["points"][0], golden["labels"][0], full_resolution=False)
  np.testing.assert_array_equal(again["low_res_logits"], out["low_res_logits"])


def test_64_boxes_in_one_call(predictor, golden):
  h, w = golden["image_uint8"].shape[:2]
  rng = np.random.default_rng(0)
  corner = rng.uniform(0, 1, (64, 2)) * [w, h]
  boxes = np.concatenate([corner, corner + rng.uniform(20, 300, (64, 2))], axis=1)
  compiled = predictor._decode._cache_size()
  out = predictor.predict(boxes=boxes, full_resolution=False)
  assert out["low_res_logits"].shape == (64, 3, 256, 256) and out["iou"].shape == (64, 3)
  assert predictor._decode._cache_size() <= compiled + 1  # one new bucket at most
  # Padding and chunking change nothing: the first boxes alone give the same answers.
  alone = predictor.predict(boxes=boxes[:3], full_resolution=False)
  np.testing.assert_allclose(alone["low_res_logits"], out["low_res_logits"][:3], atol=1e-5)
  np.testing.assert_allclose(alone["iou"], out["iou"][:3], atol=1e-6)


def test_bucket_sizes():
  assert [predict.bucket_size(n) for n in (1, 2, 4, 5, 16, 17, 64, 65, 200)] == [
      1, 4, 4, 16, 16, 64, 64, 128, 256]


@pytest.mark.parametrize("queries,message", [
    ([], "non-empty"),
    ([{"points": [[1, 2]], "labels": [1, 1]}], "1 points but 2 labels"),
    ([{"box": [1, 2, 3]}], "'box' must be"),
    ([{"points": [[1, 2]], "labels": [7]}], "labels must be"),
    ([{"points": [["a", 2]], "labels": [1]}], "must be numbers"),
    ([{"pts": []}], "needs 'points' and 'labels'"),
])
def test_bad_prompts(queries, message):
  with pytest.raises(predict.PromptError, match=message):
    predict.queries_to_arrays(queries, 6)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "efficientsam_jax.predict", *args],
                        capture_output=True, text=True, env=env, cwd=REPO)


def test_cli(checkpoint, golden, fixture_queries, tmp_path):
  image = tmp_path / "image.png"
  Image.fromarray(golden["image_uint8"]).save(image)
  prompts = tmp_path / "prompts.json"
  prompts.write_text(json.dumps(fixture_queries))
  out, overlay = tmp_path / "out.npz", tmp_path / "overlay.png"
  result = _cli(f"--checkpoint={checkpoint}", f"--image={image}", f"--prompts={prompts}",
                f"--output={out}", f"--overlay={overlay}")
  assert result.returncode == 0, result.stderr
  arrays = dict(np.load(out))
  assert sorted(arrays) == ["image_embeddings", "iou", "logits", "low_res_logits"]
  assert arrays["logits"].dtype == np.float32 and arrays["image_embeddings"].shape == (256, 64, 64)
  _check_against_golden(arrays, golden)
  with Image.open(overlay) as picture:
    assert picture.format == "PNG" and picture.size == golden["image_uint8"].shape[1::-1]

  bad = tmp_path / "bad.json"
  bad.write_text("[{\"box\": [1, 2]}]")
  result = _cli(f"--checkpoint={checkpoint}", f"--image={image}", f"--prompts={bad}",
                f"--output={tmp_path / 'x.npz'}")
  assert result.returncode != 0
  assert result.stderr.startswith("predict: error: query 0") and result.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------
# SAM: `--model=sam_vit_b` with a random full-size vit_b checkpoint saved by torch.

@pytest.fixture(scope="module")
def sam_vit_b(tmp_path_factory):
  """(path of a plain-state_dict vit_b .pth, the torch Sam): random perturbed weights."""
  import functools as ft
  import sam_reference as ref
  import torch
  modeling = ref.segment_anything_modeling()
  encoder = modeling.ImageEncoderViT(
      img_size=1024, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
      out_chans=256, qkv_bias=True, norm_layer=ft.partial(torch.nn.LayerNorm, eps=1e-6),
      use_rel_pos=True, window_size=14, global_attn_indexes=(2, 5, 8, 11))
  model = ref.build_sam(modeling, encoder)
  path = str(tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth")
  torch.save(model.state_dict(), path)
  return path, model


def test_sam_vit_b_cli_on_real_image(sam_vit_b, fixtures_dir, tmp_path):
  import sam_reference as ref
  import torch
  path, model = sam_vit_b
  image_path = fixtures_dir / "dogs.png"
  prompts = tmp_path / "prompts.json"
  prompts.write_text(json.dumps([{"points": [[500, 300], [700, 350]], "labels": [1, 0]},
                                 {"box": [60, 80, 560, 590]}]))
  out, overlay = tmp_path / "out.npz", tmp_path / "overlay.png"
  result = _cli(f"--checkpoint={path}", f"--image={image_path}", f"--prompts={prompts}",
                f"--output={out}", f"--overlay={overlay}", "--model=sam_vit_b")
  assert result.returncode == 0, result.stderr
  arrays = dict(np.load(out))
  with Image.open(image_path) as picture:
    image = np.asarray(picture.convert("RGB"))
  h, w = image.shape[:2]
  assert arrays["logits"].shape == (2, 3, h, w) and arrays["iou"].shape == (2, 3)
  assert arrays["low_res_logits"].shape == (2, 3, 256, 256)
  x, _ = ref.reference_input(image, model)
  with torch.no_grad():
    want = model.image_encoder(x)[0].numpy()
  diff = np.abs(arrays["image_embeddings"] - want).max()
  print(f"sam_vit_b embeddings on dogs.png: max abs diff {diff:.2e}")
  assert diff < 1e-4
  with Image.open(overlay) as picture:
    assert picture.size == (w, h)
