"""Segment Anything in JAX against segment_anything's PyTorch modules (random, perturbed weights).

The encoder here is vit_b-shaped (width 768, 12 heads, windows 14, neck 256) but 2 blocks deep
(one windowed, one global) to keep CPU time low; the full-depth encoder is the one of
test_sam_encoder.py and is run end to end in test_predict.py. The prompt encoder and decoder
have the real shapes (they are the same for every SAM size).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_reference as ref
from efficientsam_jax.models import sam

SHALLOW = (("depth", 2), ("global_blocks", (1,)))
CONFIG = sam.FAMILY.config("sam_vit_b", encoder_overrides=SHALLOW)


@functools.lru_cache(maxsize=None)
def _pair():
  """(torch Sam, our params): the same random weights."""
  import torch
  # torch initialises modules from its global generator: seeded, every run checks the same
  # reference (the tolerances hold with margin for this draw, not proven for every draw).
  ref.seed_torch()
  modeling = ref.segment_anything_modeling()
  encoder = modeling.ImageEncoderViT(
      img_size=1024, patch_size=16, embed_dim=768, depth=2, num_heads=12, mlp_ratio=4,
      out_chans=256, qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
      use_rel_pos=True, window_size=14, global_attn_indexes=(1,))
  model = ref.build_sam(modeling, encoder)
  return model, sam.FAMILY.params_from_torch(ref.state_dict_numpy(model), CONFIG)


@functools.lru_cache(maxsize=None)
def _image_case():
  """A non-square image (padding and cropping matter): torch embeddings and ours."""
  model, params = _pair()
  image = np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8)
  _, size = ref.reference_input(image, model)
  return (image, size, *ref.embeddings_both(model, params, CONFIG, image))


def test_preprocessing_and_embeddings_match():
  _, size, want, got = _image_case()
  assert size == sam.resized_hw(300, 410, 1024) == (749, 1024)
  diff = np.abs(got - want).max()
  print(f"image embeddings: max abs diff {diff:.2e}")
  assert got.shape == (1, 64, 64, 256) and diff < 1e-4


def _torch_decode(model, embeddings, points, labels, box, mask, multimask, original, size):
  """segment_anything's prompt encoder + decoder for one query (coordinates in original
  pixels, scaled as ResizeLongestSide.apply_coords does)."""
  import torch
  ratio = np.array([size[1] / original[1], size[0] / original[0]])
  kwargs = {"points": None, "boxes": None, "masks": None}
  if points is not None:
    kwargs["points"] = (torch.from_numpy((points * ratio)[None].astype(np.float32)),
                        torch.from_numpy(np.asarray(labels)[None]))
  if box is not None:
    kwargs["boxes"] = torch.from_numpy((np.reshape(box, (2, 2)) * ratio).reshape(1, 4)
                                       .astype(np.float32))
  if mask is not None:
    kwargs["masks"] = torch.from_numpy(mask[None, None])
  with torch.no_grad():
    sparse, dense = model.prompt_encoder(**kwargs)
    low, iou = model.mask_decoder(torch.from_numpy(embeddings).permute(0, 3, 1, 2),
                                  model.prompt_encoder.get_dense_pe(), sparse, dense,
                                  multimask)
    full = model.postprocess_masks(low, size, original)
  return low[0].numpy(), iou[0].numpy(), full[0].numpy()


@pytest.mark.parametrize("multimask", [True, False])
def test_points_boxes_and_mask_input_match(multimask):
  model, params = _pair()
  image, size, want_emb, _ = _image_case()
  original = image.shape[:2]
  # The mask input is what SAM's interactive loop feeds back: the reference's own low-res
  # logits for a box. (White noise as mask input puts some pixels' 4-channel LayerNorm in
  # the mask downscaling near zero variance, 0.007 against a median of 4: the dense prompt
  # then differs by 1.3e-4 at that one pixel, 6e-8 elsewhere: conditioning, not a mismatch.)
  mask = _torch_decode(model, want_emb, None, None, [40.0, 30.0, 380.0, 270.0], None, False,
                       original, size)[0][0]
  queries = [  # (points, labels, box, mask)
      (np.array([[120.0, 80.0], [300.0, 200.0], [50.5, 250.25]]), [1, 0, 1], None, None),
      (None, None, [40.0, 30.0, 380.0, 270.0], None),
      (np.array([[200.0, 150.0]]), [0], [100.0, 60.0, 330.0, 240.0], None),
      (np.array([[210.0, 140.0]]), [1], None, mask),
      (None, None, [10.0, 20.0, 200.0, 290.0], mask),
  ]
  n = 6
  points = np.full((len(queries), n, 2), -1.0, np.float32)
  labels = np.full((len(queries), n), -1.0, np.float32)
  for i, (p, l, box, _) in enumerate(queries):
    rows = [] if p is None else list(zip(p.tolist(), l))
    if box is not None:  # SAM orders the box corners after the points
      rows += [(box[:2], 2), (box[2:], 3)]
    for j, (xy, label) in enumerate(rows):
      points[i, j], labels[i, j] = xy, label
  masks = np.stack([np.zeros_like(mask) if q[3] is None else q[3] for q in queries])
  has_mask = np.array([q[3] is not None for q in queries])

  decode = jax.jit(lambda p, e, pts, lbl, m, hm: sam.Sam(CONFIG).apply(
      {"params": p}, e, pts, lbl, original, size, mask_input=m, has_mask=hm,
      multimask_output=multimask, method=sam.Sam.predict_masks))
  # The reference embeddings go into both decoders: this test is about prompts and decoder.
  low, iou = decode(params, jnp.asarray(want_emb), points[None], labels[None], masks[None],
                    has_mask[None])
  low, iou = np.asarray(low[0]), np.asarray(iou[0])
  full = np.asarray(sam.postprocess_masks(jnp.asarray(low), size, original))
  assert low.shape == (len(queries), 3 if multimask else 1, 256, 256)
  for i, (p, l, box, m) in enumerate(queries):
    want_low, want_iou, want_full = _torch_decode(model, want_emb, p, l, box, m, multimask,
                                                  original, size)
    d_low, d_iou = np.abs(low[i] - want_low).max(), np.abs(iou[i] - want_iou).max()
    d_full = np.abs(full[i] - want_full).max()
    print(f"query {i}: low-res {d_low:.2e}, iou {d_iou:.2e}, full-res {d_full:.2e}, "
          f"largest logit {np.abs(want_low).max():.1f}")
    assert d_low < 1e-4 and d_iou < 1e-5 and d_full < 1e-4, i


def test_parameter_names_and_order_match_state_dict():
  model, params = _pair()
  theirs = ref.state_dict_numpy(model)
  ours = sam.FAMILY.params_to_torch(params)
  assert list(ours) == list(theirs)
  assert all(ours[k].tobytes() == theirs[k].tobytes() for k in theirs)


def test_full_size_parameter_counts():
  # vit_b: encoder 89,670,912 + prompt encoder 6,220 + decoder 4,058,340 (+ Fourier buffer).
  count = lambda name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      sam.FAMILY.abstract_params(sam.FAMILY.config(name))))
  assert count("sam_vit_b") == 89_670_912 + 6_220 + 4_058_340 + 256
