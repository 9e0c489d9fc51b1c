"""`efficientsam_jax.sam_compat` against segment-anything itself, on the same weights: a SAM
with a small encoder (64 wide, 4 blocks; the released prompt encoder and decoder) loaded
through `sam_model_registry["vit_b"](checkpoint=...)`, on the fixture photo (1072 x 603, not
1024), every call made from the uint8 image as scripts make it.
"""
import functools

import numpy as np
import pytest

import sam_reference as ref
from efficientsam_jax.errors import UserError

@functools.lru_cache(maxsize=None)
def _torch_sam():
  """(torch Sam, our config of its shape)."""
  return ref.vit_sam(64, 4, 4, (1, 3))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """The torch model's weights as a JAX parameter checkpoint (it keeps the encoder shape)."""
  from efficientsam_jax.io import model_files
  from efficientsam_jax.models import sam
  model, config = _torch_sam()
  params = sam.FAMILY.params_from_torch(ref.state_dict_numpy(model), config)
  path = str(tmp_path_factory.mktemp("sam_compat") / "tiny_sam")
  model_files.save_jax(path, model_files.LoadedModel(config, params))
  return path


@pytest.fixture(scope="module")
def photo(fixtures_dir):
  from efficientsam_jax.io import images
  return images.read(str(fixtures_dir / "dogs.png"))


@pytest.fixture(scope="module")
def sam(checkpoint):
  """Ours, through the registry; one per module (its Predictor compiles once)."""
  from efficientsam_jax.sam_compat import sam_model_registry
  return sam_model_registry["vit_b"](checkpoint=checkpoint)


@pytest.fixture(scope="module")
def predictors(sam, photo):
  """(segment-anything's SamPredictor, ours), both with the photo set by set_image."""
  from efficientsam_jax.sam_compat import SamPredictor
  ours = SamPredictor(sam)
  ours.set_image(photo[..., ::-1].copy(), image_format="BGR")  # converted back to RGB
  return ref.sam_predictor(_torch_sam()[0], photo), ours


QUERIES = [  # segment-anything's predict() keyword arguments
    {"point_coords": [[500.0, 300.0]], "point_labels": [1]},
    {"point_coords": [[500.0, 300.0], [700.0, 350.0], [120.5, 80.25]], "point_labels": [1, 0, 1]},
    {"box": [60.0, 80.0, 560.0, 590.0]},
    {"point_coords": [[300.0, 400.0]], "point_labels": [0], "box": [60.0, 80.0, 560.0, 590.0],
     "multimask_output": False},
    {"point_coords": [[300.0, 400.0]], "point_labels": [1], "mask_input": "previous"},
]


def test_predictor_matches_segment_anything(predictors, photo):
  theirs, ours = predictors
  assert ours.original_size == theirs.original_size == (603, 1072)
  assert ours.input_size == tuple(theirs.input_size) == (576, 1024)
  d_emb = np.abs(ours.get_image_embedding() - theirs.get_image_embedding().numpy()).max()
  print(f"image embeddings (set_image, PIL resize): {d_emb:.1e}")
  assert ours.get_image_embedding().shape == (1, 256, 64, 64) and d_emb < 1e-4
  arrays = lambda query: {k: (np.asarray(v) if k != "multimask_output" else v)
                          for k, v in query.items()}
  previous = theirs.predict(**arrays(QUERIES[0]), multimask_output=False)[2]  # (1, 256, 256)
  for i, query in enumerate(QUERIES):
    kwargs = arrays(query)
    if query.get("mask_input") == "previous":
      kwargs["mask_input"] = previous
    want = theirs.predict(**kwargs, return_logits=True)
    got = ours.predict(**kwargs, return_logits=True)
    masks, iou, low = ours.predict(**kwargs)
    count = 3 if query.get("multimask_output", True) else 1
    assert masks.dtype == bool and masks.shape == (count, 603, 1072)
    assert iou.shape == (count,) and low.shape == (count, 256, 256)
    d_low, d_iou = np.abs(got[2] - want[2]).max(), np.abs(got[1] - want[1]).max()
    d_full = np.abs(got[0] - want[0]).max()
    agree = ((got[0] > 0) == (want[0] > 0)).mean()
    print(f"query {i}: low-res {d_low:.1e}, iou {d_iou:.1e}, full-size {d_full:.1e}, mask "
          f"pixels equal {agree:.7f} (largest logit {np.abs(want[2]).max():.0f})")
    assert d_low < 1e-4 and d_iou < 1e-4 and d_full < 1e-4 and agree > 0.9999, i
    np.testing.assert_array_equal(masks, got[0] > 0)


def test_predict_torch_takes_batched_boxes(predictors):
  import torch
  theirs, ours = predictors
  boxes = np.array([[60.0, 80.0, 560.0, 590.0], [500.0, 100.0, 1000.0, 500.0],
                    [10.0, 10.0, 300.0, 200.0]])
  want = theirs.predict_torch(None, None, boxes=theirs.transform.apply_boxes_torch(
      torch.from_numpy(boxes), theirs.original_size), multimask_output=False)
  got = ours.predict_torch(None, None, boxes=ours.transform.apply_boxes(
      boxes, ours.original_size), multimask_output=False)
  assert got[0].shape == (3, 1, 603, 1072) and got[0].dtype == bool
  assert np.abs(got[2] - want[2].numpy()).max() < 1e-4
  assert np.abs(got[1] - want[1].numpy()).max() < 1e-4
  assert (got[0] == want[0].numpy()).mean() > 0.9999


def test_set_torch_image_path_is_kept_as_an_option(checkpoint, photo, predictors):
  """image_resize="torch": segment-anything's set_torch_image after the antialiased float
  resize; it differs from set_image's path by PIL's rounding (why that path is the default)."""
  from efficientsam_jax.sam_compat import SamPredictor, sam_model_registry
  ours = SamPredictor(sam_model_registry["vit_b"](checkpoint=checkpoint, image_resize="torch"))
  ours.set_image(photo)
  theirs = ref.sam_predictor(_torch_sam()[0], photo, torch_resize=True)
  diff = np.abs(ours.get_image_embedding() - theirs.get_image_embedding().numpy()).max()
  across = np.abs(ours.get_image_embedding() - predictors[1].get_image_embedding()).max()
  print(f"image embeddings (set_torch_image path): {diff:.1e}; set_image's path vs this one: "
        f"{across:.1e}")
  assert diff < 1e-4 and across > 100 * diff


# These random weights give noisy masks spanning the whole frame (every box is the image), so
# box NMS would keep one: it is off here (1.0), and so is the predicted-IoU filter
# (segment-anything applies thresholds only above 0; this draw predicts IoUs below 0.25). The
# stability threshold sits in a gap of this draw's scores, 0.0046 from the nearest (checked
# below): the same records, not a coin toss at a boundary.
AMG_SETTINGS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.626,
                "box_nms_thresh": 1.0}


def test_automatic_mask_generator_matches_segment_anything(sam, photo):
  """Same records in the same order on the photo at half size: masks equal to 99.99% of
  pixels; boxes, points, crops equal; scores within float32 noise (1e-4 IoU, 1e-3 stability: a
  ratio of pixel counts at logits +-1)."""
  from efficientsam_jax.io import images
  from efficientsam_jax.sam_compat import SamAutomaticMaskGenerator
  small = images.resize_bilinear(photo, 302, 536)
  want = ref.sam_automatic_mask_generator(_torch_sam()[0], **AMG_SETTINGS).generate(small)
  generator = SamAutomaticMaskGenerator(sam, **AMG_SETTINGS)
  got = generator.generate(small)
  print(f"{len(got)} masks (segment-anything: {len(want)})")
  assert 20 <= len(want) == len(got) < 48
  for g, w in zip(got, want):
    assert sorted(g) == sorted(w)
    assert g["segmentation"].shape == w["segmentation"].shape == (302, 536)
    assert (g["segmentation"] == w["segmentation"]).mean() > 0.9999
    assert g["bbox"] == w["bbox"] and g["crop_box"] == w["crop_box"]
    np.testing.assert_allclose(g["point_coords"], w["point_coords"], atol=1e-6)
    assert abs(g["predicted_iou"] - w["predicted_iou"]) < 1e-4
    assert abs(g["stability_score"] - w["stability_score"]) < 1e-3
    assert abs(g["area"] - w["area"]) <= 1e-4 * w["area"] + 1
    assert w["stability_score"] - AMG_SETTINGS["stability_score_thresh"] > 4e-3
  # The IoU filter, with COCO RLE output: exactly the records above whose IoU passes.
  passing = [w for w in want if w["predicted_iou"] > 0.1]
  assert 0 < len(passing) < len(want)
  assert all(abs(w["predicted_iou"] - 0.1) > 1e-2 for w in want)
  coco = SamAutomaticMaskGenerator(sam, output_mode="coco_rle",
                                   **{**AMG_SETTINGS, "pred_iou_thresh": 0.1}).generate(small)
  from pycocotools import mask as mask_utils
  assert len(coco) == len(passing)
  for c, w in zip(coco, passing):
    assert (mask_utils.decode(c["segmentation"]).astype(bool) == w["segmentation"]).mean() > 0.9999


def test_registry_and_argument_mistakes(checkpoint, sam):
  from efficientsam_jax.sam_compat import (SamAutomaticMaskGenerator, SamPredictor,
                                           sam_model_registry)
  assert set(sam_model_registry) == {"default", "vit_h", "vit_l", "vit_b", "vit_t",
                                     "efficientsam_vitt", "efficientsam_vits"}
  with pytest.raises(UserError, match="unknown model"):
    sam_model_registry["vit_x"]
  with pytest.raises(UserError, match="holds sam_vit_b, not mobile_sam"):
    sam_model_registry["vit_t"](checkpoint=checkpoint)
  assert sam.to("cuda").eval() is sam
  with pytest.raises(UserError, match="set_image"):
    SamPredictor(sam).predict(point_coords=np.zeros((1, 2)), point_labels=np.ones(1))
  with pytest.raises(UserError, match="output_mode"):
    SamAutomaticMaskGenerator(sam, output_mode="png")


def test_efficientsam_through_the_api_gives_the_release_outputs(fixtures_dir):
  """sam_model_registry["efficientsam_vitt"] on the released-format golden file: a
  segment-anything-style script's predict() gives the released PyTorch forward's outputs
  (the golden fixture) for its first query."""
  from efficientsam_jax.sam_compat import SamPredictor, sam_model_registry
  golden = np.load(fixtures_dir / "efficient_sam_vitt_random_io.npz")
  predictor = SamPredictor(sam_model_registry["efficientsam_vitt"](
      checkpoint=fixtures_dir / "efficient_sam_vitt_random.pt"))
  predictor.set_image(golden["image_uint8"])
  logits, iou, low = predictor.predict(point_coords=golden["points"][0, 0],
                                       point_labels=golden["labels"][0, 0], return_logits=True)
  d_full = np.abs(logits - golden["full_res_logits_query0"]).max()
  d_iou = np.abs(iou - golden["iou_predictions"][0, 0]).max()
  d_low = np.abs(low - golden["low_res_logits"][0, 0]).max()
  print(f"efficientsam_vitt via sam_compat: full-size {d_full:.1e}, iou {d_iou:.1e}, "
        f"low-res {d_low:.1e}")
  assert logits.shape == (3, 603, 1072) and iou.shape == (3,) and low.shape == (3, 256, 256)
  assert d_full < 1e-3 and d_iou < 1e-4 and d_low < 1e-4
