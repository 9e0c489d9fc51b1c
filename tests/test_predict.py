"""Predictor and `python -m efficientsam_jax.predict` against the official outputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import Predictor, Queries
from efficientsam_jax.inference import predictor as predictor_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  return dict(np.load(fixtures_dir / "efficient_sam_vitt_random_io.npz"))


@pytest.fixture(scope="module")
def checkpoint(fixtures_dir):
  return str(fixtures_dir / "efficient_sam_vitt_random.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint, golden):
  p = Predictor.from_checkpoint(checkpoint)
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
  points, labels = Queries.from_json(fixture_queries).arrays(6)
  out = predictor.predict_arrays(points, labels)
  _check_against_golden(out, golden)
  # Same through predict with the fixture's own 2-point arrays: the model pads them to 6 as
  # one padding token counted 4 times (above: 6 slots, padded explicitly), so equal to float32
  # rounding, not bit for bit.
  again = predictor.predict(golden["points"][0], golden["labels"][0])
  _check_against_golden(again, golden)
  np.testing.assert_allclose(again["low_res_logits"], out["low_res_logits"], rtol=0, atol=1e-4)


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


def test_points_and_box_in_one_query_equal_the_model_called_directly(predictor, checkpoint,
                                                                      golden):
  """EfficientSAM takes a combined query as its points, then the box corners (labels 2, 3)."""
  from efficientsam_jax.io import model_files
  from efficientsam_jax.models import efficient_sam as es
  query = {"points": [[500.0, 300.0], [620.0, 250.0]], "labels": [1, 0],
           "box": [300.0, 150.0, 800.0, 500.0]}
  out = predictor.predict_queries(Queries.from_json([query]), full_resolution=False)
  points = np.array([[[[500, 300], [620, 250], [300, 150], [800, 500]]]], np.float32)
  labels = np.array([[[1, 0, 2, 3]]], np.float32)
  params = model_files.load(checkpoint).params
  low, iou = es.EfficientSam(predictor.config).apply(
      {"params": params}, predictor._embeddings, points, labels,
      golden["image_uint8"].shape[:2], method=es.EfficientSam.predict_masks)
  np.testing.assert_allclose(out["low_res_logits"], np.asarray(low[0]), atol=1e-5)
  np.testing.assert_allclose(out["iou"], np.asarray(iou[0]), atol=1e-6)
  with pytest.raises(UserError, match="mask_input needs a SAM"):
    predictor.predict_queries(Queries.from_json([{**query, "mask_input": np.zeros((256, 256))}]))


def test_bucket_sizes():
  assert [predictor_lib.bucket_size(n) for n in (1, 2, 4, 5, 16, 17, 64, 65, 200)] == [
      1, 4, 4, 16, 16, 64, 64, 128, 256]


@pytest.mark.parametrize("queries,message", [
    ([], "non-empty"),
    ([{"points": [[1, 2]], "labels": [1, 1]}], "1 points but 2 labels"),
    ([{"box": [1, 2, 3]}], "'box' must be"),
    ([{"points": [[1, 2]], "labels": [7]}], "labels must be"),
    ([{"points": [["a", 2]], "labels": [1]}], "must be numbers"),
    ([{"pts": []}], "needs 'points' and 'labels'"),
    ([{"points": [[1, 2]], "box": [1, 2, 3, 4]}], "needs 'points' and 'labels'"),
    ([{"points": [[1, 2]], "labels": [1], "box": [1, 2]}], "'box' must be"),
])
def test_bad_prompts(queries, message):
  with pytest.raises(UserError, match=message):
    Queries.from_json(queries).arrays(6)


def test_combined_query_arrays():
  points, labels = Queries.from_json(
      [{"points": [[1, 2]], "labels": [0], "box": [3, 4, 5, 6]}, {"box": [7, 8, 9, 10]}]).arrays(6)
  np.testing.assert_array_equal(points[0, :3], [[1, 2], [3, 4], [5, 6]])
  np.testing.assert_array_equal(labels, [[0, 2, 3, -1, -1, -1], [2, 3, -1, -1, -1, -1]])


def test_mask_inputs_from_lists_arrays_and_npy(tmp_path):
  mask = np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32)
  np.save(tmp_path / "m.npy", mask)
  queries = [{"box": [0, 0, 1, 1], "mask_input": "m.npy"}, {"box": [0, 0, 1, 1]},
             {"box": [0, 0, 1, 1], "mask_input": mask[0].tolist()}]
  masks, has_mask = Queries.from_json(queries, str(tmp_path)).mask_arrays(8)
  np.testing.assert_array_equal(has_mask, [True, False, True])
  np.testing.assert_array_equal(masks[0], mask[0])
  np.testing.assert_array_equal(masks[2], mask[0])
  assert Queries.from_json(queries[1:2]).mask_arrays(8) == (None, None)
  # A query needs points or a box besides its mask input (Queries.from_json checks that first).
  with pytest.raises(UserError, match="must be 8x8"):
    Queries.from_json([{"box": [0, 0, 1, 1], "mask_input": [[1.0]]}]).mask_arrays(8)
  with pytest.raises(UserError, match="cannot read 'mask_input'"):
    Queries.from_json([{"box": [0, 0, 1, 1], "mask_input": "missing.npy"}], str(tmp_path))


# ----------------------------------------------------------------------------------------
# SAM prompts beyond points or a box, against segment_anything's SamPredictor: a SAM with a
# 4-block, 64-wide encoder (cheap at 1024) and the released prompt encoder and decoder.

@pytest.fixture(scope="module")
def tiny_sam():
  """(SamPredictor of the torch model with the image set, our Predictor, the image)."""
  import functools as ft
  import sam_reference as ref
  import torch
  from efficientsam_jax.models import registry, sam
  modeling = ref.segment_anything_modeling()
  encoder = modeling.ImageEncoderViT(
      img_size=1024, patch_size=16, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4,
      out_chans=256, qkv_bias=True, norm_layer=ft.partial(torch.nn.LayerNorm, eps=1e-6),
      use_rel_pos=True, window_size=14, global_attn_indexes=(1, 3))
  model = ref.build_sam(modeling, encoder)
  # SAM's "tiny" encoder shape (sam_encoder.SAM_SIZES["tiny"]) as overrides of vit_b.
  config = registry.config("sam_vit_b", encoder_overrides=(
      ("width", 64), ("depth", 4), ("num_heads", 4), ("global_blocks", (1, 3))))
  ours = Predictor(sam.FAMILY.params_from_torch(ref.state_dict_numpy(model), config), config)
  image = np.random.default_rng(5).integers(0, 256, (300, 420, 3), dtype=np.uint8)
  ours.set_image(image)
  return ref.sam_predictor(model, image), ours, image


def test_sam_points_box_and_mask_inputs_match_sam_predictor(tiny_sam):
  reference, ours, _ = tiny_sam
  rng = np.random.default_rng(1)
  masks = [rng.normal(0, 4, (256, 256)).astype(np.float32) for _ in range(2)]
  queries = [
      {"points": [[100, 120], [250, 80]], "labels": [1, 0], "box": [40, 30, 300, 260]},
      {"points": [[200, 150]], "labels": [1], "mask_input": masks[0]},
      {"box": [10, 20, 380, 280], "mask_input": masks[1][None]},
      {"points": [[60, 200], [300, 100], [320, 250]], "labels": [1, 1, 0],
       "box": [5, 5, 400, 290], "mask_input": masks[0]},
      {"points": [[60, 200]], "labels": [1]},  # no mask, in a call where others have one
  ]
  out = ours.predict_queries(Queries.from_json(queries))
  diff = np.abs(np.asarray(ours.image_embeddings) - reference.features[0].numpy()).max()
  assert diff < 1e-4, diff
  for i, query in enumerate(queries):
    mask = query.get("mask_input")
    logits, iou, low = reference.predict(
        point_coords=np.asarray(query["points"], np.float32) if "points" in query else None,
        point_labels=np.asarray(query["labels"]) if "points" in query else None,
        box=np.asarray(query["box"], np.float32) if "box" in query else None,
        mask_input=None if mask is None else np.asarray(mask).reshape(1, 256, 256),
        multimask_output=True, return_logits=True)
    d_low = np.abs(out["low_res_logits"][i] - low).max()
    d_iou = np.abs(out["iou"][i] - iou).max()
    d_full = np.abs(out["logits"][i] - logits).max()
    print(f"SamPredictor query {i}: low-res {d_low:.2e}, iou {d_iou:.2e}, full {d_full:.2e}")
    # The embeddings' float32 noise, amplified by the decoder (as in test_mobile_sam).
    assert d_low < 1e-3 and d_iou < 1e-4 and d_full < 1e-3, i
  # The array API: one mask per query, in the order point queries then boxes.
  again = ours.predict(points=[[[200, 150]]], labels=[[1]], boxes=[[10, 20, 380, 280]],
                       mask_input=np.stack(masks), full_resolution=False)
  # Another query count compiles another shape: float32 summation order, nothing more.
  np.testing.assert_allclose(again["low_res_logits"], out["low_res_logits"][1:3], atol=1e-4)


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
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith("predict: error: query 0") and result.stderr.count("\n") == 1

  np.save(tmp_path / "mask.npy", np.zeros((256, 256), np.float32))
  masked = tmp_path / "masked.json"
  masked.write_text(json.dumps([{"box": [1, 2, 30, 40], "mask_input": "mask.npy"}]))
  result = _cli(f"--checkpoint={checkpoint}", f"--image={image}", f"--prompts={masked}",
                f"--output={tmp_path / 'x.npz'}")
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith("predict: error: mask_input needs a SAM")


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
  path, model = sam_vit_b
  image_path = fixtures_dir / "dogs.png"
  mask = np.random.default_rng(2).normal(0, 4, (1, 256, 256)).astype(np.float32)
  np.save(tmp_path / "previous.npy", mask)
  queries = [{"points": [[500, 300], [700, 350]], "labels": [1, 0]},
             {"box": [60, 80, 560, 590]},
             {"points": [[300, 400]], "labels": [1], "box": [60, 80, 560, 590]},
             {"points": [[300, 400]], "labels": [1], "mask_input": "previous.npy"}]
  prompts = tmp_path / "prompts.json"
  prompts.write_text(json.dumps(queries))
  out, overlay = tmp_path / "out.npz", tmp_path / "overlay.png"
  result = _cli(f"--checkpoint={path}", f"--image={image_path}", f"--prompts={prompts}",
                f"--output={out}", f"--overlay={overlay}", "--model=sam_vit_b")
  assert result.returncode == 0, result.stderr
  arrays = dict(np.load(out))
  with Image.open(image_path) as picture:
    image = np.asarray(picture.convert("RGB"))
  h, w = image.shape[:2]
  assert arrays["logits"].shape == (4, 3, h, w) and arrays["iou"].shape == (4, 3)
  assert arrays["low_res_logits"].shape == (4, 3, 256, 256)
  reference = ref.sam_predictor(model, image)
  diff = np.abs(arrays["image_embeddings"] - reference.features[0].numpy()).max()
  print(f"sam_vit_b embeddings on dogs.png: max abs diff {diff:.2e}")
  assert diff < 1e-4
  for i, query in enumerate(queries):
    _, iou, low = reference.predict(
        point_coords=np.asarray(query["points"], np.float32) if "points" in query else None,
        point_labels=np.asarray(query["labels"]) if "points" in query else None,
        box=np.asarray(query["box"], np.float32) if "box" in query else None,
        mask_input=mask if "mask_input" in query else None, multimask_output=True)
    d_low = np.abs(arrays["low_res_logits"][i] - low).max()
    print(f"sam_vit_b query {i}: low-res {d_low:.2e}")
    assert d_low < 1e-3 and np.abs(arrays["iou"][i] - iou).max() < 1e-4, i
  with Image.open(overlay) as picture:
    assert picture.size == (w, h)
