"""EfficientSAM: ViT image encoder + point prompt encoder + two-way mask decoder.

Submodule names are the release's (`image_encoder`, `prompt_encoder`, `mask_decoder`), so
`FAMILY.params_from_torch` fills every one of the 278 tensors of a released checkpoint by
name. Images are NHWC float in [0, 1]; image embeddings are (B, g, g, 256), g = image_size / 16.

The released `forward` (reproduced by `__call__`):
  1. resize the image to image_size x image_size (torch bilinear, aspect ratio not kept),
     normalise with the ImageNet mean/std, encode;
  2. rescale points per axis by image_size/W, image_size/H (coordinates < 0 stay -1), pad each
     query with (-1, -1)/label -1 to exactly `max_num_points` points or cut it there (the
     identical padding tokens are computed as one, counted that many times: `prompt_tokens`);
  3. decode every query (multimask): low-res logits (B, Q, 3, 4g, 4g) and IoU (B, Q, 3);
  4. resize the logits to the original H x W with torch bicubic.

The prompt encoder's Fourier matrix is a torch buffer kept in `params`; trainers leave every
parameter matching `FAMILY.buffers` out of the optimiser (the module also stops its gradient).
"""
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.models import family, resize, vit
from efficientsam_jax.models import mask_decoder as mask_decoder_lib
from efficientsam_jax.models import prompt_encoder as prompt_encoder_lib
from efficientsam_jax.models.family import ModelConfig

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


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
  """The whole model, with the inference methods every family shares (models/family.py):
  `encode` once per image, `predict_masks` for any number of queries against it."""
  config: ModelConfig = ModelConfig()
  supports_mask_input = False  # the release has no mask-input path
  image_resizes = ("torch",)  # the release's forward: torch bilinear inside `preprocess`
  default_image_resize = "torch"

  def setup(self):
    c = self.config
    dtype = c.compute_dtype
    encoder = vit.ViTConfig.from_name(FAMILY.models[c.name], neck_channels=c.embed_dim,
                                      **dict(c.encoder_overrides))
    self.image_encoder = vit.ImageEncoder(encoder, dtype, remat=c.remat)
    self.prompt_encoder = prompt_encoder_lib.PromptEncoder(c.embed_dim, c.image_size, c.grid)
    self.mask_decoder = mask_decoder_lib.MaskDecoder(c.embed_dim, dtype=dtype, remat=c.remat)

  # --- what needs no parameters --------------------------------------------------------
  def preprocess(self, images):
    """(B, H, W, 3) float RGB in 0..255 -> (B, S, S, 3) normalised encoder input."""
    return preprocess(images.astype(jnp.float32) / 255.0, self.config.image_size)

  def resized_hw(self, height: int, width: int) -> tuple[int, int]:
    """Every image is stretched to S x S (aspect not kept)."""
    del height, width
    return self.config.image_size, self.config.image_size

  def prompt_length(self, longest: int) -> int:
    """2 when every query is one box or at most 2 points, else max_num_points: the model
    pads to max_num_points itself, computing the padding as one token, so shorter arrays are
    cheaper, and two lengths keep compilations few."""
    return 2 if longest <= 2 else self.config.max_num_points

  def postprocess(self, low_res_logits, input_hw, resized_hw=None):
    """(..., 4g, 4g) -> (..., H, W) with torch bicubic, as the release's forward."""
    del resized_hw
    return upscale_logits(low_res_logits, *input_hw)

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

  def predict_masks(self, image_embeddings, points, labels, input_hw, resized_hw=None, *,
                    mask_input=None, has_mask=None, multimask_output: bool = True,
                    context: dict | None = None):
    """Decodes queries against image embeddings (low-resolution logits).

    Args:
      image_embeddings: (B, g, g, 256) (unused, may be None, when `context` is given).
      points: (B, Q, N, 2) (x, y) in original-image pixels; negative = no point.
      labels: (B, Q, N) -1 padding, 0 negative, 1 positive, 2/3 box corners.
      input_hw: the original image (H, W) that the points refer to (tuple or (2,) array).
      resized_hw: unused (the image fills the whole input); the shared signature.
      mask_input, has_mask: must be None (no mask-input path).
      multimask_output: 3 masks per query (True) or the single-mask output.
      context: `decoder_context(image_embeddings)`, when already computed.
    Returns:
      logits (B, Q, M, 4g, 4g), iou (B, Q, M); M = 3 or 1; float32.
    """
    del resized_hw
    if mask_input is not None or has_mask is not None:
      raise UserError("mask_input needs a SAM or MobileSAM model: EfficientSAM has no "
                      "mask-input path")
    sparse, token_count = self.prompt_tokens(points, labels, input_hw)
    if context is None:
      context = self.decoder_context(image_embeddings)
    return self.mask_decoder.decode(context, sparse, multimask_output, token_count)

  def predict_tokens(self, context: dict, points, labels, input_hw, resized_hw=None,
                     multimask_output: bool = True):
    """`predict_masks` up to the mask upscaling: -> (state, iou (B, Q, M)); `mask_logits`
    (state) gives the low-res logits. Lets a caller skip the upscaling of queries it will
    drop on their predicted IoU (segment everything)."""
    del resized_hw
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
    logits, iou = self.predict_masks(embeddings, points, labels, hw)
    return (upscale_logits(logits, *hw) if scale_to_original_image_size else logits), iou

  def init_all(self, images, points, labels, mask_input=None):
    """Touches every parameter (`ModelFamily.init_args`); mask_input is not used."""
    del mask_input
    return self(images, points, labels, scale_to_original_image_size=False)


class EfficientSamFamily(family.ModelFamily):
  """EfficientSAM-Ti and -S as released (github.com/yformer/EfficientSAM)."""
  name = "efficientsam"
  models = {"efficientsam_vitt": "vitt", "efficientsam_vits": "vits"}
  release_format = family.WRAPPED
  # torch modules that are ConvTranspose2d (their weight layout is (in, out, kh, kw)).
  conv_transpose = ("mask_decoder.final_output_upscaling_layers.0.0",
                    "mask_decoder.final_output_upscaling_layers.1.0")
  # The prompt encoder's Fourier matrix is a buffer in the release: never optimised.
  buffers = (r"^prompt_encoder/pe_layer/positional_encoding_gaussian_matrix$",)
  # Every module/leaf name of the release in the order torch registers it among its
  # siblings, so exports list their keys exactly as the released files do (strict loading
  # does not care, people diffing key lists do). Numeric indices sort as numbers.
  torch_order = (
      "image_encoder", "prompt_encoder", "mask_decoder",
      "pos_embed", "patch_embed", "blocks", "neck",
      "self_attn", "norm1", "attn", "qkv", "proj", "cross_attn_token_to_image", "norm2",
      "mlp", "fc1", "fc2", "norm3", "norm4", "cross_attn_image_to_token",
      "q_proj", "k_proj", "v_proj", "out_proj",
      "pe_layer", "positional_encoding_gaussian_matrix", "invalid_points",
      "point_embeddings", "bbox_top_left_embeddings", "bbox_bottom_right_embeddings",
      "transformer", "layers", "final_attn_token_to_image", "norm_final_attn", "iou_token",
      "mask_tokens", "final_output_upscaling_layers", "output_hypernetworks_mlps",
      "iou_prediction_head", "fc", "weight", "bias")

  def build(self, config: ModelConfig) -> EfficientSam:
    return EfficientSam(config)

  def infer_name(self, state: Mapping[str, Any]) -> str | None:
    """efficientsam_vitt / _vits from the width of image_encoder.pos_embed (1, 197, D)."""
    pos = state.get("image_encoder.pos_embed")
    if pos is None or len(np.shape(pos)) != 3:
      return None
    width = int(np.shape(pos)[-1])
    for name, size in self.models.items():
      if vit.VIT_SIZES[size][0] == width:
        return name
    raise UserError(f"no EfficientSAM model has encoder width {width}")


FAMILY = EfficientSamFamily()
