"""The compute-dtype switch (bf16 products, float32 parameters) and the remat switch."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import Predictor
from efficientsam_jax.models import efficient_sam as es
from efficientsam_jax.models import precision
from efficientsam_jax.models import vit
from efficientsam_jax.models.family import ModelConfig
from efficientsam_jax.tasks.sami import student as sami_model

CONFIG = ModelConfig("efficientsam_vitt", image_size=64, encoder_overrides=(("depth", 1),))


def _inputs():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(0, 1, (2, 64, 64, 3)), jnp.float32)
  points = jnp.asarray(rng.uniform(0, 64, (2, 3, 2, 2)), jnp.float32)
  labels = jnp.asarray([[[1, 1], [1, -1], [2, 3]]] * 2, jnp.float32)
  return images, points, labels


def _params(config, abstract=False):
  images, points, labels = _inputs()
  init = lambda: es.EfficientSam(config).init(jax.random.key(0), images, points, labels,
                                              scale_to_original_image_size=False)["params"]
  return jax.eval_shape(init) if abstract else jax.jit(init)()


@pytest.fixture(scope="module")
def params():
  return _params(CONFIG)


def _loss_and_grads(config, params):
  model = es.EfficientSam(config)
  images, points, labels = _inputs()

  def loss(p):
    logits, iou = model.apply({"params": p}, images, points, labels,
                              scale_to_original_image_size=False)
    return jnp.mean(jax.nn.sigmoid(logits)) + jnp.mean(iou**2)

  return jax.jit(jax.value_and_grad(loss))(params)


def _assert_same_grads(got, want):
  """Equal up to float32 rounding (recomputation may fuse differently), relative to the
  largest gradient (some are exactly zero in theory and ~1e-9 noise in practice)."""
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want))
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  assert diff <= 1e-5 * scale, (diff, scale)


def test_compute_dtype_names():
  assert precision.compute_dtype("bfloat16") == jnp.bfloat16
  assert precision.compute_dtype(jnp.float32) == jnp.float32
  with pytest.raises(ValueError, match="unknown compute dtype"):
    precision.compute_dtype("float16")


def test_bf16_keeps_float32_params_and_outputs(params):
  bf16 = dataclasses.replace(CONFIG, dtype="bfloat16")
  # The same parameter tree (names, shapes, float32) in both dtypes.
  assert jax.tree.map(lambda x: (x.shape, x.dtype), _params(bf16, abstract=True)) == \
      jax.tree.map(lambda x: (x.shape, x.dtype), params)
  loss32, grads32 = _loss_and_grads(CONFIG, params)
  loss16, grads16 = _loss_and_grads(bf16, params)
  assert {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
  assert abs(float(loss16) - float(loss32)) < 2e-2 * abs(float(loss32))
  flat32, flat16 = jax.tree.leaves(grads32), jax.tree.leaves(grads16)
  cos = [float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30))
         for a, b in zip(flat32, flat16) if float(jnp.linalg.norm(a)) > 1e-6]
  assert np.median(cos) > 0.99, np.median(cos)


def test_remat_gives_the_same_loss_and_gradients(params):
  loss, grads = _loss_and_grads(CONFIG, params)
  loss_r, grads_r = _loss_and_grads(dataclasses.replace(CONFIG, remat=True), params)
  np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-6)
  _assert_same_grads(grads_r, grads)


def test_sami_remat_gives_the_same_gradients():
  encoder = vit.ViTConfig.from_name("vitt", depth=2)
  decoder = sami_model.DecoderConfig(width=64, depth=2, num_heads=2)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  ids = jnp.asarray([[0, 3], [1, 2]]), jnp.asarray([[1, 2], [0, 3]]), \
      jnp.asarray([[0, 2, 3, 1], [2, 0, 1, 3]])
  plain = sami_model.SAMI(encoder, decoder, target_dim=8)
  params = plain.init(jax.random.key(0), images, *ids)["params"]

  def grads(model):
    loss = lambda p: jnp.mean(model.apply({"params": p}, images, *ids) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (loss, g), (loss_r, g_r) = grads(plain), grads(dataclasses.replace(plain, remat=True))
  np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-6)
  _assert_same_grads(g_r, g)


def test_predictor_dtype(params):
  params = jax.device_get(params)
  with pytest.raises(UserError, match="unknown compute dtype"):
    Predictor(params, CONFIG, dtype="float16")
  image = (np.random.default_rng(0).uniform(0, 255, (48, 80, 3))).astype(np.uint8)
  out = {}
  for dtype in ("float32", "bfloat16"):
    predictor = Predictor(params, CONFIG, dtype=dtype)
    assert predictor.config.dtype == dtype
    predictor.set_image(image)
    out[dtype] = predictor.predict(boxes=np.asarray([[10, 10, 60, 40]], np.float32))
    assert out[dtype]["logits"].dtype == np.float32
    assert predictor.image_embeddings.dtype == np.float32
  diff = np.abs(out["bfloat16"]["low_res_logits"] - out["float32"]["low_res_logits"]).max()
  assert 0 < diff < 0.5, diff
