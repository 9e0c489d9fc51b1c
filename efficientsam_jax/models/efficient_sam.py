"""EfficientSAM: ViT image encoder + point prompt encoder + two-way mask decoder.

Submodule names are the release's (`image_encoder`, `prompt_encoder`, `mask_decoder`), so
`weights.torch_to_flax(state_dict, abstract_params, conv_transpose=CONV_TRANSPOSE)` fills every
one of the 278 tensors of a released checkpoint. Images are NHWC float in [0, 1]; image
embeddings are (B, g, g, 256) with g = image_size / 16.

The released `forward` (reproduced by `__call__`):
  1. resize the image to image_size x image_size (torch bilinear, aspect ratio not kept),
     normalise with the ImageNet mean/std, encode;
  2. rescale points per axis by image_size/W, image_size/H (coordinates < 0 stay -1), pad each
     query with (-1, -1)/label -1 to exactly `max_num_points` points or cut it there (the
     identical padding tokens are computed as one, counted that many times: `prompt_tokens`);
  3. decode every query (multimask): low-res logits (B, Q, 3, 4g, 4g) and IoU (B, Q, 3);
  4. resize the logits to the original H x W with torch bicubic.

The prompt encoder's Fourier matrix is a torch buffer kept in `params`; trainers leave every
parameter matching `NON_TRAINABLE` out of the optimiser (the module also stops its gradient).
"""
import dataclasses
import re
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from efficientsam_jax import resize, weights
from efficientsam_jax.models import mask_decoder as mask_decoder_lib
from efficientsam_jax.models import precision
from efficientsam_jax.models import prompt_encoder as prompt_encoder_lib
from efficientsam_jax.models import vit

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# Parameter paths ('/'-joined flax names) that are buffers in the release: never optimised.
NON_TRAINABLE = (r"^prompt_encoder/pe_layer/positional_encoding_gaussian_matrix$",)

# torch modules that are ConvTranspose2d (their weight layout is (in, out, kh, kw)).
CONV_TRANSPOSE = ("mask_decoder.final_output_upscaling_layers.0.0",
                  "mask_decoder.final_output_upscaling_layers.1.0")

# Every module/leaf name of the release in the order torch registers it among its siblings,
# so exports list their keys exactly as the released files do (strict loading does not care,
# people diffing key lists do). Numeric indices sort as numbers.
_TORCH_ORDER = (
    "image_encoder", "prompt_encoder", "mask_decoder",
    "pos_embed", "patch_embed", "blocks", "neck",
    "self_attn", "norm1", "attn", "qkv", "proj", "cross_attn_token_to_image", "norm2", "mlp",
    "fc1", "fc2", "norm3", "norm4", "cross_attn_image_to_token",
    "q_proj", "k_proj", "v_proj", "out_proj",
    "pe_layer", "positional_encoding_gaussian_matrix", "invalid_points", "point_embeddings",
    "bbox_top_left_embeddings", "bbox_bottom_right_embeddings",
    "transformer", "layers", "final_attn_token_to_image", "norm_final_attn", "iou_token",
    "mask_tokens", "final_output_upscaling_layers", "output_hypernetworks_mlps",
    "iou_prediction_head", "fc", "weight", "bias")

# Model name -> encoder size.
MODELS = {"efficientsam_vitt": "vitt", "efficientsam_vits": "vits"}


@dataclasses.dataclass(frozen=True)
class EfficientSamConfig:
  """Shape of an EfficientSAM model. image_size is 1024 in the release; smaller sizes (a
  multiple of 16) make cheap demo/test models with a (image_size/16)^2 embedding grid.
  encoder_depth: None = the released 12 blocks; fewer make a shrunk demo model (such weights
  are not in the released format).
  dtype: compute dtype of the matrix products, "float32" or "bfloat16" (precision.py:
  parameters and activations stay float32; mask logits and IoU are float32).
  remat: recompute each encoder block, decoder block and the mask upscaling in the backward
  pass instead of keeping their activations (training memory; no effect on the values)."""
  encoder: str = "vitt"
  image_size: int = 1024
  max_num_points: int = 6
  embed_dim: int = 256
  encoder_depth: int | None = None
  dtype: str = "float32"
  remat: bool = False

  @classmethod
  def from_name(cls, name: str, **overrides) -> "EfficientSamConfig":
    if name not in MODELS:
      raise ValueError(f"unknown EfficientSAM model {name!r}; known: {sorted(MODELS)}")
    return cls(encoder=MODELS[name], **overrides)

  @property
  def grid(self) -> int:
    return self.image_size // 16

  @property
  def compute_dtype(self):
    return precision.compute_dtype(self.dtype)


def preprocess(images, image_size: int):
  """(B, H, W, 3) float RGB in [0, 1] -> (B, image_size, image_size, 3) normalised.

  Resized only when the size differs, with torch's bilinear (half-pixel, no antialias).
  """
  images = resize.resize_hw(images.astype(jnp.float32), image_size, image_size, "linear")
  return (images - jnp.asarray(PIXEL_MEAN, jnp.float32)) / jnp.asarray(PIXEL_STD, jnp.float32)


def rescale_points(points, input_hw, image_size: int):
  """(..., 2) (x, y) original-image pixels -> encoder-input pixels; coordinates < 0 become -1.

  input_hw: (H, W) of the original image, a tuple or a (2,) array (traced: no recompile per
  image size). Computed as x * image_size / W in float32, the release's order of operations.
  """
  points = points.astype(jnp.float32)
  wh = jnp.stack([jnp.asarray(input_hw[1]), jnp.asarray(input_hw[0])]).astype(jnp.float32)
  scaled = points * jnp.float32(image_size) / wh
  return jnp.where(points >= 0, scaled, -1.0)


def pad_points(points, labels, num_points: int):
  """Pads with (-1, -1)/label -1, or cuts, to num_points.

  (..., N, 2) points, (..., N) labels -> (..., num_points, 2), (..., num_points).
  """
  n = points.shape[-2]
  if n >= num_points:
    return points[..., :num_points, :], labels[..., :num_points]
  extra = num_points - n
  points = jnp.concatenate(
      [points, jnp.full(points.shape[:-2] + (extra, 2), -1.0, points.dtype)], axis=-2)
  labels = jnp.concatenate([labels, jnp.full(labels.shape[:-1] + (extra,), -1, labels.dtype)],
                           axis=-1)
  return points, labels


def upscale_logits(low_res_logits, height: int, width: int):
  """(..., 4g, 4g) -> (..., height, width) with torch bicubic (a = -0.75, half-pixel)."""
  return resize.resize_hw(low_res_logits, height, width, "cubic", channels_last=False)


class EfficientSam(nn.Module):
  """The whole model. Methods for inference in two stages: `get_image_embeddings` once per
  image, `predict_masks` for any number of queries against one embedding."""
  config: EfficientSamConfig = EfficientSamConfig()

  def setup(self):
    c = self.config
    depth = {"depth": c.encoder_depth} if c.encoder_depth else {}
    dtype = c.compute_dtype
    self.image_encoder = vit.ImageEncoder(vit.ViTConfig.from_name(
        c.encoder, neck_channels=c.embed_dim, **depth), dtype, remat=c.remat)
    self.prompt_encoder = prompt_encoder_lib.PromptEncoder(c.embed_dim, c.image_size, c.grid)
    self.mask_decoder = mask_decoder_lib.MaskDecoder(c.embed_dim, dtype=dtype, remat=c.remat)

  def encode(self, preprocessed):
    """(B, S, S, 3) output of `preprocess` (S = image_size) -> (B, S/16, S/16, 256)."""
    return self.image_encoder(preprocessed)

  def get_image_embeddings(self, images):
    """(B, H, W, 3) float RGB in [0, 1], any H, W -> (B, g, g, 256)."""
    return self.encode(preprocess(images, self.config.image_size))

  def decoder_context(self, image_embeddings) -> dict:
    """The query-independent part of decoding against (B, g, g, 256) embeddings, computed
    once per image; pass it to `predict_masks(context=...)`."""
    return self.mask_decoder.image_context(image_embeddings, self.prompt_encoder.dense_pe())

  def prompt_tokens(self, points, labels, input_hw):
    """(..., N, 2) points in original-image pixels, (..., N) labels -> the prompt tokens of
    the release's padded prompt (..., T, C) and how many tokens each one stands for,
    (..., T) float32, or None when every token counts once.

    The release pads every query with (-1, -1)/label -1 to `max_num_points` points. Those
    padding tokens are identical, and identical tokens stay identical through the decoder
    (each token's update depends only on itself and on what it attends to), so k of them
    act as one token counted k times in every softmax over tokens. A query given with
    N < max_num_points points therefore gets one padding token of count max_num_points - N
    instead of that many copies: the same function (to float32 rounding) with fewer tokens,
    which is what the decoder's per-query work scales with (a single point: 7 tokens, not
    11). N >= max_num_points is cut to max_num_points as in the release.
    """
    c = self.config
    points = rescale_points(points, input_hw, c.image_size)
    n = points.shape[-2]
    if n >= c.max_num_points:
      points, labels = pad_points(points, labels, c.max_num_points)
      return self.prompt_encoder(points, labels), None
    points, labels = pad_points(points, labels, n + 1)
    count = jnp.ones(labels.shape, jnp.float32).at[..., -1].set(c.max_num_points - n)
    return self.prompt_encoder(points, labels), count

  def predict_masks(self, image_embeddings, points, labels, input_hw: tuple[int, int],
                    output_hw: tuple[int, int] | None = None, multimask_output: bool = True,
                    context: dict | None = None):
    """Decodes queries against image embeddings.

    Args:
      image_embeddings: (B, g, g, 256) (unused, may be None, when `context` is given).
      points: (B, Q, N, 2) (x, y) in original-image pixels; negative = no point.
      labels: (B, Q, N) -1 padding, 0 negative, 1 positive, 2/3 box corners.
      input_hw: the original image (H, W) that the points refer to (tuple or (2,) array).
      output_hw: resize logits to this size (bicubic); None keeps (4g, 4g).
      multimask_output: 3 masks per query (True) or the single-mask output.
      context: `decoder_context(image_embeddings)`, when already computed.
    Returns:
      logits (B, Q, M, 4g, 4g) or (B, Q, M, *output_hw), iou (B, Q, M); M = 3 or 1; float32.
    """
    sparse, token_count = self.prompt_tokens(points, labels, input_hw)
    if context is None:
      context = self.decoder_context(image_embeddings)
    logits, iou = self.mask_decoder.decode(context, sparse, multimask_output, token_count)
    if output_hw is not None:
      logits = upscale_logits(logits, *output_hw)
    return logits, iou

  def predict_tokens(self, context: dict, points, labels, input_hw,
                     multimask_output: bool = True):
    """`predict_masks` up to the mask upscaling: -> (state, iou (B, Q, M)); `mask_logits`
    (state) gives the low-res logits. Lets a caller skip the upscaling of queries it will
    drop on their predicted IoU (segment everything)."""
    sparse, token_count = self.prompt_tokens(points, labels, input_hw)
    image, hyper, iou = self.mask_decoder.decode_tokens(context, sparse, multimask_output,
                                                        token_count)
    return {"image": image, "hyper": hyper}, iou

  def mask_logits(self, state: dict):
    """Low-res logits (B, Q, M, 4g, 4g) from `predict_tokens`' state."""
    g = self.config.grid
    return self.mask_decoder.mask_logits(state["image"], state["hyper"], (g, g))

  def __call__(self, images, points, labels, scale_to_original_image_size: bool = True):
    """The released `forward`: (B, H, W, 3) images in [0, 1], (B, Q, N, 2) points,
    (B, Q, N) labels -> logits (B, Q, 3, H, W) (or (B, Q, 3, 4g, 4g)) and iou (B, Q, 3)."""
    hw = images.shape[1:3]
    embeddings = self.get_image_embeddings(images)
    return self.predict_masks(embeddings, points, labels, hw,
                              hw if scale_to_original_image_size else None)


def abstract_params(config: EfficientSamConfig) -> dict:
  """ShapeDtypeStructs of the params tree, without computing anything."""
  model = EfficientSam(config)
  s = config.image_size
  init = lambda rng: model.init(rng, jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 1, 2)),
                                jnp.zeros((1, 1, 1)), scale_to_original_image_size=False)
  variables = jax.eval_shape(init, jax.random.key(0))
  return variables["params"]


def trainable_mask(params) -> dict:
  """Same tree as params with False for the NON_TRAINABLE buffers (for optax.masked etc.)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict(
      {k: not any(re.search(p, k) for p in NON_TRAINABLE) for k in flat}, sep="/")


def infer_model_name(state_dict: Mapping[str, np.ndarray]) -> str:
  """efficientsam_vitt / efficientsam_vits from the width of image_encoder.pos_embed."""
  pos = state_dict.get("image_encoder.pos_embed")
  if pos is None:
    raise weights.WeightsError("not an EfficientSAM state_dict (no 'image_encoder.pos_embed')")
  width = int(np.shape(pos)[-1])
  for name, size in MODELS.items():
    if vit.VIT_SIZES[size][0] == width:
      return name
  raise weights.WeightsError(f"no EfficientSAM model has encoder width {width}")


def params_from_torch(state_dict: Mapping[str, np.ndarray], config: EfficientSamConfig) -> dict:
  """Released state_dict (278 tensors) -> flax params; WeightsError names a misfit tensor."""
  return weights.torch_to_flax(state_dict, abstract_params(config),
                               conv_transpose=CONV_TRANSPOSE)


def params_to_torch(params) -> dict[str, np.ndarray]:
  """Flax params -> the released state_dict (torch names, layouts and key order)."""
  state_dict = weights.flax_to_torch(params, conv_transpose=CONV_TRANSPOSE)
  return weights.sort_torch_keys(state_dict, _TORCH_ORDER)
