"""SAM image encoder (SAMI teacher): parity with segment_anything's ImageEncoderViT."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_module

from efficientsam_jax.bench import torch_reference
from efficientsam_jax.errors import UserError
from efficientsam_jax.models import sam_encoder as se

TOL = 1e-4
TINY = se.SamEncoderConfig.from_name("tiny")  # width 64, depth 4, 4 heads, global (1, 3)


def _torch_encoder(config: se.SamEncoderConfig, perturb: bool = True):
  """A torch ImageEncoderViT shaped like `config` (as build_sam makes it), every tensor
  perturbed so LayerNorms, biases, pos_embed and rel-pos tables all matter."""
  require_module("torch")
  try:
    torch_reference.sam_image_encoder_class()
  except ImportError:
    require_module("segment_anything")  # skips, or fails under CI=true
  return torch_reference.sam_image_encoder(config, seed=0, perturb=0.2 if perturb else 0.0)


@functools.lru_cache(maxsize=None)
def _tiny_pair():
  """(torch model, its state_dict as a full-SAM-style dict, our params), built once."""
  model = _torch_encoder(TINY)
  sd = {se.TORCH_PREFIX + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  # A released checkpoint also holds the prompt encoder, decoder and pixel statistics.
  sd["prompt_encoder.no_mask_embed.weight"] = np.zeros((1, 256), np.float32)
  sd["pixel_mean"] = np.zeros((3, 1, 1), np.float32)
  return model, sd, se.sam_encoder_params_from_torch(sd, TINY)


def _torch_forward(model, images_nhwc, blocks_only=False):
  """Torch encoder on NHWC numpy images; pos_embed bicubic-resized when the grid is not 64x64."""
  import torch
  import torch.nn.functional as F
  x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
  with torch.no_grad():
    tokens = model.patch_embed(x)
    pos = model.pos_embed
    if pos.shape[1:3] != tokens.shape[1:3]:
      pos = F.interpolate(pos.permute(0, 3, 1, 2), size=tokens.shape[1:3], mode="bicubic",
                          align_corners=False).permute(0, 2, 3, 1)
    tokens = tokens + pos
    for block in model.blocks:  # get_rel_pos resamples the global tables itself
      tokens = block(tokens)
    if blocks_only:
      return tokens.numpy()
    return model.neck(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def _images(batch, size, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _apply(output):
  return jax.jit(se.SamImageEncoder(TINY, output=output).apply)


@pytest.mark.parametrize("size,batch", [(1024, 1), (224, 2)])
def test_neck_output_matches_torch(size, batch):
  model, _, params = _tiny_pair()
  images = _images(batch, size)
  want = _torch_forward(model, images)
  got = np.asarray(_apply("neck")({"params": params}, jnp.asarray(images)))
  assert got.shape == (batch, size // 16, size // 16, 256)
  diff = np.abs(got - want).max()
  print(f"neck {size}: max abs diff {diff:.2e}")
  assert diff <= TOL


def test_blocks_output_matches_torch():
  model, _, params = _tiny_pair()
  images = _images(2, 224, seed=1)
  want = _torch_forward(model, images, blocks_only=True)
  got = np.asarray(_apply("blocks")({"params": params}, jnp.asarray(images)))
  assert got.shape == (2, 14, 14, TINY.width)
  # The residual stream is larger than the neck's normalised output: compare relative to it.
  diff = np.abs(got - want).max()
  print(f"blocks 224: max abs diff {diff:.2e} (max |x| {np.abs(want).max():.1f})")
  assert diff <= TOL * max(1.0, np.abs(want).max())


def test_non_square_grid_matches_torch():
  # 20x36 tokens: windows padded on both axes (-> 28x42), pos_embed resized unevenly.
  model, _, params = _tiny_pair()
  images = np.random.default_rng(2).standard_normal((1, 320, 576, 3)).astype(np.float32)
  want = _torch_forward(model, images)
  got = np.asarray(_apply("neck")({"params": params}, jnp.asarray(images)))
  assert np.abs(got - want).max() <= TOL


def test_vit_b_parameters_match_release():
  config = se.SamEncoderConfig.from_name("vit_b")
  model = _torch_encoder(config, perturb=False)
  assert se.count_params(config) == sum(p.numel() for p in model.parameters()) == 89_670_912
  # Every name and shape agrees both ways (torch_to_flax checks); views, so no 360 MB copy.
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  se.sam_encoder_params_from_torch(sd, config, prefix="")


def test_release_sizes():
  counts = {n: se.count_params(se.SamEncoderConfig.from_name(n)) for n in ("vit_l", "vit_h")}
  assert round(counts["vit_l"] / 1e6, 1) == 308.3
  assert round(counts["vit_h"] / 1e6, 1) == 637.0


def test_bad_state_dict_names_the_tensor():
  _, sd, _ = _tiny_pair()
  wrong = dict(sd)
  wrong["image_encoder.blocks.1.attn.rel_pos_h"] = np.zeros((27, 16), np.float32)
  with pytest.raises(UserError, match=r"blocks\.1\.attn\.rel_pos_h"):
    se.sam_encoder_params_from_torch(wrong, TINY)
  missing = {k: v for k, v in sd.items() if k != "image_encoder.neck.3.bias"}
  with pytest.raises(UserError, match=r"neck\.3\.bias"):
    se.sam_encoder_params_from_torch(missing, TINY)
  extra = dict(sd, **{"image_encoder.blocks.9.norm1.weight": np.ones(64, np.float32)})
  with pytest.raises(UserError, match=r"blocks\.9\.norm1\.weight"):
    se.sam_encoder_params_from_torch(extra, TINY)


def test_random_init_is_deterministic_and_bf16_runs():
  a = se.init_sam_encoder_params(TINY, seed=3)
  b = se.init_sam_encoder_params(TINY, seed=3)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert {x.dtype for x in jax.tree.leaves(a)} == {jnp.dtype(jnp.float32)}
  images = jnp.asarray(_images(1, 224))
  full = _apply("neck")({"params": a}, images)
  # bf16 compute: bf16 products, float32 parameters, activations and output (precision.py)
  half = jax.jit(se.SamImageEncoder(TINY, dtype=jnp.bfloat16).apply)({"params": a}, images)
  assert half.dtype == jnp.float32 and half.shape == full.shape == (1, 14, 14, 256)
  assert 0 < float(jnp.abs(half - full).mean()) < 0.05
