"""MobileSAM (TinyViT + SAM prompt encoder/decoder) against the PyTorch modules of
mobilesam-mirror, random perturbed weights (BatchNorm statistics included); conversion of the
released `mobile_sam.pt` layout both ways."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_reference as ref
from efficientsam_jax.io import model_files, torch_files
from efficientsam_jax.models import sam, tiny_vit

CONFIG = sam.FAMILY.config("mobile_sam")


@functools.lru_cache(maxsize=None)
def _pair():
  """(torch MobileSAM built as mobile_sam's build_sam_vit_t does, its state_dict, our params)."""
  # torch initialises modules from its global generator: seeded, every run checks the same
  # reference (the tolerances hold with margin for this draw, not proven for every draw).
  ref.seed_torch()
  modeling = ref.mobile_sam_modeling()
  encoder = modeling.TinyViT(
      img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
      depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0,
      drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
      local_conv_size=3, layer_lr_decay=0.8)
  model = ref.build_sam(modeling, encoder)
  state = ref.state_dict_numpy(model)
  return model, state, sam.FAMILY.params_from_torch(state, CONFIG)


@functools.lru_cache(maxsize=None)
def _embeddings():
  model, _, params = _pair()
  image = np.random.default_rng(3).integers(0, 256, (480, 360, 3), dtype=np.uint8)
  _, size = ref.reference_input(image, model)
  return (image, size, *ref.embeddings_both(model, params, CONFIG, image))


def test_embeddings_match():
  _, _, want, got = _embeddings()
  diff = np.abs(got - want).max()
  print(f"MobileSAM embeddings: max abs diff {diff:.2e}")
  assert got.shape == (1, 64, 64, 256) and diff < 1e-4


def test_masks_match():
  import torch
  model, _, params = _pair()
  image, size, want_emb, got_emb = _embeddings()
  original = image.shape[:2]
  ratio = np.array([size[1] / original[1], size[0] / original[0]], np.float32)
  box = np.array([[30.0, 40.0], [300.0, 420.0]], np.float32)
  pts = np.array([[100.0, 200.0], [250.0, 90.0]], np.float32)
  with torch.no_grad():
    want = []
    for kwargs in ({"points": (torch.from_numpy(pts * ratio)[None], torch.tensor([[1, 0]])),
                    "boxes": None, "masks": None},
                   {"points": None, "boxes": torch.from_numpy((box * ratio).reshape(1, 4)),
                    "masks": None}):
      sparse, dense = model.prompt_encoder(**kwargs)
      low, iou = model.mask_decoder(torch.from_numpy(want_emb).permute(0, 3, 1, 2),
                                    model.prompt_encoder.get_dense_pe(), sparse, dense, True)
      want.append((low[0].numpy(), iou[0].numpy()))
  points = np.full((1, 2, 6, 2), -1.0, np.float32)
  labels = np.full((1, 2, 6), -1.0, np.float32)
  points[0, 0, :2], labels[0, 0, :2] = pts, (1, 0)
  points[0, 1, :2], labels[0, 1, :2] = box, (2, 3)
  decode = jax.jit(lambda p, e: sam.Sam(CONFIG).apply(
      {"params": p}, e, points, labels, original, size, method=sam.Sam.predict_masks))
  # Decoded from our own embeddings: the whole JAX model against the whole torch model.
  low, iou = decode(params, jnp.asarray(got_emb))
  for i, (want_low, want_iou) in enumerate(want):
    d_low = np.abs(np.asarray(low[0, i]) - want_low).max()
    d_iou = np.abs(np.asarray(iou[0, i]) - want_iou).max()
    print(f"MobileSAM query {i}: low-res {d_low:.2e}, iou {d_iou:.2e}")
    assert d_low < 1e-3 and d_iou < 1e-4  # embeddings' 1e-5 noise, amplified by the decoder


def test_release_layout_round_trip(tmp_path):
  import torch
  model, state, _ = _pair()
  path = str(tmp_path / "mobile_sam.pt")
  torch.save(model.state_dict(), path)  # the release is a plain state_dict
  assert model_files.convert(path, str(tmp_path / "jax")) == "mobile_sam"  # inferred
  back = str(tmp_path / "back.pt")
  assert model_files.convert(str(tmp_path / "jax"), back) == "mobile_sam"
  loaded = torch_files.load(back)
  assert list(loaded) == list(state)
  for name, value in state.items():
    got = np.asarray(loaded[name])
    assert got.dtype == value.dtype and got.shape == value.shape, name
    assert got.tobytes() == value.tobytes(), name
  model.load_state_dict(torch.load(back), strict=True)  # and torch takes it back strictly


def test_tiny_vit_shapes_and_buffers():
  params = jax.eval_shape(tiny_vit.TinyViT().init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3)))["params"]
  counts = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert counts > 0 and "norm_head" in params and "head" in params
  assert tiny_vit.attention_bias_index(7).max() + 1 == 49  # (|dy|, |dx|) in 0..6 x 0..6


@pytest.mark.parametrize("window", [7, 14])
def test_attention_bias_index_matches_release(window):
  modeling = ref.mobile_sam_modeling()
  attn = modeling.tiny_vit_sam.Attention(dim=20, key_dim=10, num_heads=2, attn_ratio=1,
                                         resolution=(window, window))
  np.testing.assert_array_equal(tiny_vit.attention_bias_index(window),
                                attn.attention_bias_idxs.numpy())
