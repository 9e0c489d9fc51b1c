"""EfficientSAM against the official PyTorch outputs stored in ../shared (random weights).

The encoder and the decoder are each compiled once per module (module-scoped fixtures).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientsam_jax.io import model_files
from efficientsam_jax.models import efficient_sam as es
from efficientsam_jax.models.family import ModelConfig


@pytest.fixture(scope="module")
def state_dict(fixtures_dir):
  return model_files.read_torch_state(str(fixtures_dir / "efficient_sam_vitt_random.pt"))


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  return dict(np.load(fixtures_dir / "efficient_sam_vitt_random_io.npz"))


@pytest.fixture(scope="module")
def model_and_params(state_dict):
  config = es.FAMILY.config(es.FAMILY.infer_name(state_dict))
  return es.EfficientSam(config), es.FAMILY.params_from_torch(state_dict, config)


@pytest.fixture(scope="module")
def embeddings(model_and_params, golden):
  model, params = model_and_params
  images = jnp.asarray(golden["image_uint8"][None], jnp.float32) / 255.0
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                            method=es.EfficientSam.get_image_embeddings))
  return np.asarray(encode(params, images))


@pytest.fixture(scope="module")
def decode(model_and_params, golden):
  """(points, labels) -> the model's low-res logits and IoU on the golden image's embeddings."""
  model, params = model_and_params
  hw = golden["image_uint8"].shape[:2]
  apply = jax.jit(lambda p, e, pts, lbl: model.apply(
      {"params": p}, e, pts, lbl, hw, method=es.EfficientSam.predict_masks))
  return lambda embeddings, points, labels: tuple(
      np.asarray(x) for x in apply(params, embeddings, points, labels))


@pytest.fixture(scope="module")
def decoded(decode, golden, embeddings):
  return decode(embeddings, golden["points"], golden["labels"])


def test_infers_vitt(state_dict):
  assert es.FAMILY.infer_name(state_dict) == "efficientsam_vitt"
  assert len(state_dict) == 278


def test_image_embeddings(embeddings, golden):
  # ours are NHWC, the release's NCHW
  diff = np.abs(embeddings.transpose(0, 3, 1, 2) - golden["image_embeddings"]).max()
  assert diff < 1e-4, diff


def test_low_res_logits_and_iou(decoded, golden):
  low, iou = decoded
  assert low.shape == (1, 3, 3, 256, 256) and iou.shape == (1, 3, 3)
  assert np.abs(low - golden["low_res_logits"]).max() < 1e-4
  assert np.abs(iou - golden["iou_predictions"]).max() < 1e-5


def test_release_padding_computed_as_one_token(model_and_params, golden, embeddings, decode):
  """The golden prompts have 2 points; the release pads them to 6 with identical tokens,
  which predict_masks computes as one token counted 4 times. Padding them ourselves (no
  counting) must give the same outputs: both against the release's."""
  model, params = model_and_params
  hw = golden["image_uint8"].shape[:2]
  points, labels = es.pad_points(golden["points"], golden["labels"], 6)
  assert points.shape == (1, 3, 6, 2)
  low, iou = decode(embeddings, points, labels)
  assert np.abs(low - golden["low_res_logits"]).max() < 1e-4
  assert np.abs(iou - golden["iou_predictions"]).max() < 1e-5
  sparse, count = model.apply({"params": params}, golden["points"], golden["labels"], hw,
                              method=es.EfficientSam.prompt_tokens)
  assert sparse.shape == (1, 3, 3, 256)
  np.testing.assert_array_equal(count, [[[1, 1, 4]] * 3])


def test_full_resolution(decoded, golden):
  h, w = golden["image_uint8"].shape[:2]
  full = np.asarray(es.upscale_logits(jnp.asarray(decoded[0]), h, w))
  assert np.abs(full[0, 0] - golden["full_res_logits_query0"]).max() < 1e-3
  shape = tuple(golden["full_res_shape"])
  masks = np.unpackbits(golden["full_res_masks_packed"], axis=-1)[..., :shape[-1]].astype(bool)
  assert masks.shape == shape == full.shape
  assert np.mean(masks == (full > 0)) >= 0.999


def test_export_is_bit_exact(model_and_params, state_dict):
  exported = es.FAMILY.params_to_torch(model_and_params[1])
  assert list(exported) == list(state_dict)  # the release's key order too
  for name, value in state_dict.items():
    ours = exported[name]
    assert ours.shape == value.shape and ours.dtype == value.dtype, name
    assert ours.tobytes() == np.ascontiguousarray(value).tobytes(), name


def test_vits_export_matches_manifest(fixtures_dir):
  manifest = json.loads((fixtures_dir / "state_dict_manifest.json").read_text())["vits"]
  shapes = es.FAMILY.abstract_params(es.FAMILY.config("efficientsam_vits"))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  exported = es.FAMILY.params_to_torch(params)
  assert [(k, list(v.shape)) for k, v in exported.items()] == [(k, s) for k, s in manifest]
  assert sum(v.size for v in exported.values()) == 26_413_028 + 256  # + the Fourier buffer


def test_fourier_matrix_is_frozen(model_and_params):
  frozen = es.FAMILY.buffer_paths(model_and_params[1])
  assert frozen == ["prompt_encoder/pe_layer/positional_encoding_gaussian_matrix"]


def test_small_image_size_runs():
  """Demo/test models use a smaller encoder input; the decoder scales with the grid."""
  config = ModelConfig("efficientsam_vitt", image_size=64)
  model = es.EfficientSam(config)
  images = jnp.zeros((2, 40, 50, 3))
  points = jnp.asarray([[[[10.0, 5.0]]]] * 2)
  labels = jnp.ones((2, 1, 1))
  # Shapes only: eval_shape traces without running (eager flax runs op by op, slowly).
  variables = jax.eval_shape(model.init, jax.random.key(0), images, points, labels)
  logits, iou = jax.eval_shape(model.apply, variables, images, points, labels)
  assert logits.shape == (2, 1, 3, 40, 50) and iou.shape == (2, 1, 3)
  low, _ = jax.eval_shape(lambda v: model.apply(v, images, points, labels,
                                                scale_to_original_image_size=False), variables)
  assert low.shape == (2, 1, 3, 16, 16)
