"""Segment everything: the pure pieces on plain arrays, and one tiny end-to-end run."""
import numpy as np

from efficientsam_jax.bench import inference
from efficientsam_jax.inference import Predictor, automatic
from efficientsam_jax.models import efficient_sam as es


def test_point_grid_centres():
  grid = automatic.point_grid(2, 100, 200)
  np.testing.assert_allclose(grid, [[50, 25], [150, 25], [50, 75], [150, 75]])


def test_stability_score():
  logits = np.full((2, 4, 4), -5.0, np.float32)
  logits[0, :2] = 5.0  # a crisp mask: stable
  logits[1, :2], logits[1, 2:] = 5.0, 0.5  # half the low mask is near the threshold
  np.testing.assert_allclose(automatic.stability_score(logits, 0.0, 1.0), [1.0, 0.5])


def test_mask_boxes_and_nms():
  masks = np.zeros((3, 10, 10), bool)
  masks[0, 2:5, 3:8] = True
  masks[1, 2:5, 3:7] = True  # almost the same box as mask 0
  masks[2, 7:9, 0:2] = True
  boxes = automatic.mask_boxes(masks)
  np.testing.assert_array_equal(boxes[0], [3, 2, 7, 4])
  keep = automatic.box_nms(boxes, np.asarray([0.5, 0.9, 0.7]), 0.5)
  np.testing.assert_array_equal(keep, [1, 2])  # best first; mask 0 suppressed by mask 1


def test_crop_boxes_cover_the_image():
  boxes = automatic.crop_boxes(300, 400, 1, 0.3)
  assert boxes[0] == (0, 0, 400, 300) and len(boxes) == 5
  assert max(b[2] for b in boxes[1:]) == 400 and max(b[3] for b in boxes[1:]) == 300


def test_generate_tiny_model():
  config = es.FAMILY.config("efficientsam_vitt", image_size=64)
  predictor = Predictor(es.FAMILY.init_params(config), config)
  image = inference.test_image(48, 80)
  loose = automatic.EverythingConfig(points_per_side=3, pred_iou_thresh=-10.0,
                                     stability_score_thresh=0.0, crop_layers=1)
  result = automatic.generate(predictor, image, loose)
  k = len(result["iou"])
  assert k >= 1
  assert result["masks"].shape == (k, 48, 80) and result["masks"].dtype == bool
  assert result["boxes"].shape == (k, 4) and result["points"].shape == (k, 2)
  assert np.all(np.diff(result["iou"]) <= 0)  # best first


def test_skipping_low_iou_upscaling_changes_nothing():
  config = es.FAMILY.config("efficientsam_vitt", image_size=64)
  predictor = Predictor(es.FAMILY.init_params(config), config, query_chunk=1)
  image = inference.test_image(64, 64)
  predictor.set_image(image)
  points, labels = inference.single_point_queries(automatic.point_grid(3, 64, 64), 6)
  full = predictor.predict_arrays(points, labels, full_resolution=False)
  threshold = float(np.median(full["iou"].max(axis=1)))  # some queries pass, some do not
  gated = predictor.predict_arrays(points, labels, full_resolution=False, min_iou=threshold)
  passed = full["iou"].max(axis=1) > threshold
  assert passed.any() and not passed.all()
  np.testing.assert_array_equal(gated["iou"], full["iou"])
  np.testing.assert_array_equal(gated["low_res_logits"][passed], full["low_res_logits"][passed])
  assert np.isnan(gated["low_res_logits"][~passed]).all()
  results = [automatic.generate(predictor, image, automatic.EverythingConfig(
      points_per_side=3, pred_iou_thresh=threshold, stability_score_thresh=0.0,
      skip_low_iou_upscaling=skip)) for skip in (True, False)]
  assert len(results[0]["iou"]) >= 1
  for key in results[0]:
    np.testing.assert_array_equal(results[0][key], results[1][key])
