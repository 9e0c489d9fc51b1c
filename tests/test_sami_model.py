"""The SAMI student: what the encoder sees, what the decoder returns."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientsam_jax.models import vit
from efficientsam_jax.tasks.sami import masking
from efficientsam_jax.tasks.sami import student as sami

ENCODER = vit.ViTConfig(width=32, depth=2, num_heads=2)
SIZE, GRID = 64, 4  # 4x4 = 16 tokens


@pytest.fixture(scope="module", params=["cross", "all"])
def model_and_params(request):
  model = sami.SAMI(ENCODER, sami.DecoderConfig(kind=request.param, width=32, depth=2,
                                                num_heads=4), target_dim=8)
  keep = masking.num_kept(GRID * GRID, 0.75)
  ids = masking.random_masking(jax.random.key(1), 2, GRID * GRID, keep)
  params = model.init(jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3)), *ids)["params"]
  return model, params, ids, keep


def test_output_shape_and_encoder_has_no_neck(model_and_params):
  model, params, ids, _ = model_and_params
  out = model.apply({"params": params}, jnp.ones((2, SIZE, SIZE, 3)), *ids)
  assert out.shape == (2, GRID * GRID, 8)
  assert not any(k.startswith("neck") for k in params["image_encoder"])
  # The pretrained encoder keeps EfficientSAM's (1, 197, D) position table layout.
  assert params["image_encoder"]["pos_embed"].shape == (1, 197, 32)


def test_prediction_ignores_the_pixels_of_masked_patches(model_and_params):
  """The encoder sees only the kept 25%: changing a hidden patch changes no prediction."""
  model, params, ids, _ = model_and_params
  ids_keep, ids_masked, _ = ids
  images = jax.random.normal(jax.random.key(2), (2, SIZE, SIZE, 3))
  hidden = int(ids_masked[0, 0])
  row, col = divmod(hidden, GRID)
  changed = images.at[0, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16].add(5.0)
  base = model.apply({"params": params}, images, *ids)
  np.testing.assert_allclose(model.apply({"params": params}, changed, *ids), base, atol=1e-5)
  kept = int(ids_keep[0, 0])
  row, col = divmod(kept, GRID)
  changed = images.at[0, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16].add(5.0)
  assert np.abs(model.apply({"params": params}, changed, *ids) - base).max() > 1e-3


def test_cross_decoder_kept_positions_are_the_projected_encoder_tokens():
  model = sami.SAMI(ENCODER, sami.DecoderConfig(width=32, depth=1, num_heads=4), target_dim=8)
  keep = 4
  ids = masking.random_masking(jax.random.key(3), 1, 16, keep)
  params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), *ids)["params"]
  zeroed = jax.tree.map(jnp.zeros_like, params["decoder_blocks_0"])
  # With the decoder blocks zeroed, every query stays "mask token + position"; the kept
  # outputs must not depend on the decoder blocks at all.
  images = jax.random.normal(jax.random.key(4), (1, SIZE, SIZE, 3))
  a = model.apply({"params": params}, images, *ids)
  b = model.apply({"params": {**params, "decoder_blocks_0": zeroed}}, images, *ids)
  kept = np.asarray(ids[0][0])
  np.testing.assert_allclose(a[0, kept], b[0, kept], atol=1e-6)
  masked = np.asarray(ids[1][0])
  assert np.abs(a[0, masked] - b[0, masked]).max() > 1e-4
