"""Segment Anything (vit_b / vit_l / vit_h) and MobileSAM: image encoder + SAM prompt encoder +
SAM mask decoder.

Submodule names are segment_anything's (`image_encoder`, `prompt_encoder`, `mask_decoder`);
a plain state_dict (`sam_vit_b_01ec64.pth`, `mobile_sam.pt`) converts key for key with
`params_from_torch` / `params_to_torch`. The encoder is `sam_encoder.SamImageEncoder` or, for
MobileSAM, `tiny_vit.TinyViT`; the decoder is `mask_decoder.MaskDecoder` with `SAM_OPTIONS`.

`pixel_mean` / `pixel_std` are not parameters: segment_anything registers them as
non-persistent buffers, so its `state_dict()` (and the released files, loaded strictly) do not
hold them. A file that does carry them is accepted when they hold SAM's constants (they are
dropped, so such a file does not round trip to the same key list).

What SamPredictor does, reproduced here (images are (B, H, W, 3) float in 0..255):
  1. resize the longest side to image_size: new = int(old * image_size / max(H, W) + 0.5),
     bilinear with antialiasing (torch's `F.interpolate(..., antialias=True)`, the
     `ResizeLongestSide.apply_image_torch` path; `apply_image` goes through PIL on uint8 and
     rounds the result to whole grey levels);
  2. normalise with mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375), zero-pad
     bottom/right to image_size x image_size, encode;
  3. points and boxes are scaled by new/old per axis; the decoder gives 256x256 logits;
  4. `postprocess_masks`: bilinear to image_size, crop to the resized input, bilinear to (H, W).
"""
import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax import resize, weights
from efficientsam_jax.models import mask_decoder as mask_decoder_lib
from efficientsam_jax.models import precision
from efficientsam_jax.models import prompt_encoder as prompt_encoder_lib
from efficientsam_jax.models import sam_encoder, tiny_vit

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
TINY_VIT = "tiny_vit"

# Model name -> encoder: a sam_encoder.SAM_SIZES key, or TinyViT.
MODELS = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h",
          "mobile_sam": TINY_VIT}

# Parameter paths ('/'-joined) that are buffers in the releases: never optimised.
NON_TRAINABLE = (r"^prompt_encoder/pe_layer/positional_encoding_gaussian_matrix$",
                 r"^image_encoder/.*" + tiny_vit.NON_TRAINABLE[0])

CONV_TRANSPOSE = ("mask_decoder.output_upscaling.0", "mask_decoder.output_upscaling.3")

# Every module/leaf name in the order torch registers it among its siblings (own parameters
# and buffers before submodules), so exports list keys as `state_dict()` does.
_TORCH_ORDER = (
    "image_encoder", "prompt_encoder", "mask_decoder",
    "pos_embed", "patch_embed", "seq", "layers", "blocks", "downsample", "norm_head", "head",
    "neck", "rel_pos_h", "rel_pos_w", "attention_biases", "self_attn", "norm1", "attn",
    "norm", "qkv", "proj", "cross_attn_token_to_image", "norm2", "mlp", "lin1", "lin2", "fc1",
    "fc2", "norm3", "norm4", "cross_attn_image_to_token", "local_conv", "conv1", "conv2",
    "conv3", "c", "bn", "q_proj", "k_proj", "v_proj", "out_proj",
    "pe_layer", "positional_encoding_gaussian_matrix", "point_embeddings", "not_a_point_embed",
    "mask_downscaling", "no_mask_embed",
    "transformer", "final_attn_token_to_image", "norm_final_attn", "iou_token", "mask_tokens",
    "output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head",
    "weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclasses.dataclass(frozen=True)
class SamConfig:
  """Shape of a SAM-family model. `encoder_overrides` (name, value) pairs reshape the encoder
  config, e.g. (("depth", 2), ("global_blocks", (1,))) for a fast test model. `dtype` is the
  compute dtype ("float32" | "bfloat16", parameters stay float32) of the ViT encoder and the
  decoder; MobileSAM's TinyViT encoder always computes in float32."""
  encoder: str = "vit_h"
  image_size: int = 1024
  embed_dim: int = 256
  max_num_points: int = 6  # prompt length queries are padded to (longer ones are kept)
  encoder_overrides: tuple[tuple[str, Any], ...] = ()
  dtype: str = "float32"

  @classmethod
  def from_name(cls, name: str, **overrides) -> "SamConfig":
    if name not in MODELS:
      raise ValueError(f"unknown SAM model {name!r}; known: {sorted(MODELS)}")
    return cls(encoder=MODELS[name], **overrides)

  @property
  def grid(self) -> int:
    return self.image_size // 16

  @property
  def compute_dtype(self):
    return precision.compute_dtype(self.dtype)

  def encoder_module(self) -> nn.Module:
    overrides = dict(self.encoder_overrides)
    if self.encoder == TINY_VIT:
      return tiny_vit.TinyViT(tiny_vit.TinyViTConfig(**overrides))
    return sam_encoder.SamImageEncoder(sam_encoder.SamEncoderConfig.from_name(
        self.encoder, pretrain_size=self.image_size, **overrides), dtype=self.compute_dtype)


def resized_hw(height: int, width: int, image_size: int) -> tuple[int, int]:
  """Size after resizing the longest side to image_size, with SamPredictor's rounding."""
  scale = image_size * 1.0 / max(height, width)
  return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(images, image_size: int):
  """(B, H, W, 3) float RGB in 0..255 -> (B, image_size, image_size, 3): longest side
  resized (antialiased bilinear), normalised, zero-padded bottom/right."""
  h, w = resized_hw(images.shape[1], images.shape[2], image_size)
  x = resize.resize_hw(images.astype(jnp.float32), h, w, "linear_aa")
  x = (x - jnp.asarray(PIXEL_MEAN, jnp.float32)) / jnp.asarray(PIXEL_STD, jnp.float32)
  return jnp.pad(x, ((0, 0), (0, image_size - h), (0, image_size - w), (0, 0)))


def rescale_points(points, input_hw, resized):
  """(..., 2) (x, y) original pixels -> encoder-input pixels, x * new_w / old_w per axis.

  input_hw and resized: (H, W) tuples or (2,) arrays (traced: no recompile per image size).
  """
  old = jnp.asarray(input_hw, jnp.float32)[::-1]
  new = jnp.asarray(resized, jnp.float32)[::-1]
  return points.astype(jnp.float32) * (new / old)


def postprocess_masks(low_res_logits, resized: tuple[int, int], original: tuple[int, int],
                      image_size: int = 1024):
  """segment_anything's `postprocess_masks`: (..., 4g, 4g) -> (..., H, W), bilinear up to
  image_size, crop the padding away (to `resized`), bilinear to `original`."""
  x = resize.resize_hw(low_res_logits, image_size, image_size, "linear", channels_last=False)
  x = x[..., :resized[0], :resized[1]]
  return resize.resize_hw(x, original[0], original[1], "linear", channels_last=False)


class Sam(nn.Module):
  """The whole model; `get_image_embeddings` once per image, `predict_masks` per query batch."""
  config: SamConfig = SamConfig()

  def setup(self):
    c = self.config
    self.image_encoder = c.encoder_module()
    self.prompt_encoder = prompt_encoder_lib.SamPromptEncoder(c.embed_dim, c.image_size, c.grid)
    self.mask_decoder = mask_decoder_lib.MaskDecoder(c.embed_dim, dtype=c.compute_dtype,
                                                     **mask_decoder_lib.SAM_OPTIONS)

  def encode(self, preprocessed):
    """(B, S, S, 3) output of `preprocess` -> (B, S/16, S/16, 256)."""
    return self.image_encoder(preprocessed)

  def get_image_embeddings(self, images):
    """(B, H, W, 3) float RGB in 0..255 -> (B, g, g, 256)."""
    return self.encode(preprocess(images, self.config.image_size))

  def decoder_context(self, image_embeddings) -> dict:
    """The query-independent part of decoding without a mask input (the no-mask embedding
    is the same for every query), once per image; for `predict_masks(context=...)`."""
    return self.mask_decoder.image_context(image_embeddings, self.prompt_encoder.dense_pe(),
                                           self.prompt_encoder.embed_masks(None, None))

  def predict_masks(self, image_embeddings, points, labels, input_hw, resized,
                    mask_input=None, has_mask=None, multimask_output: bool = True,
                    context: dict | None = None):
    """Decodes queries against image embeddings (low-resolution logits).

    Args:
      image_embeddings: (B, g, g, 256) (unused, may be None, when `context` is given).
      points: (B, Q, N, 2) (x, y) original-image pixels.
      labels: (B, Q, N) -1 padding (no token), 0 negative, 1 positive, 2/3 box corners.
      input_hw: original (H, W); resized: (H', W') after the longest-side resize (tuples or
        (2,) arrays).
      mask_input: None, or (B, Q, 4g, 4g) low-res logits from a previous prediction.
      has_mask: (B, Q) bool, which queries use their mask_input (default all).
      multimask_output: masks 1..3 (True) or mask 0 (False).
      context: `decoder_context(image_embeddings)`, when already computed (no mask_input).
    Returns:
      low_res_logits (B, Q, M, 4g, 4g) and iou (B, Q, M); M = 3 or 1.
    """
    points = rescale_points(points, input_hw, resized)
    sparse, token_mask = self.prompt_encoder(points, labels)
    b, q = points.shape[:2]
    if mask_input is None:  # the no-mask embedding: the same for every query
      if context is None:
        context = self.decoder_context(image_embeddings)
      return self.mask_decoder.decode(context, sparse, multimask_output, token_mask)
    if has_mask is None:
      has_mask = jnp.ones((b, q), bool)
    dense = self.prompt_encoder.embed_masks(mask_input, has_mask)
    dense = jnp.broadcast_to(dense, (b, q) + dense.shape[-3:])
    return self.mask_decoder(image_embeddings, self.prompt_encoder.dense_pe(), sparse,
                             multimask_output, dense, token_mask)

  def predict_tokens(self, context: dict, points, labels, input_hw, resized,
                     multimask_output: bool = True):
    """`predict_masks` (no mask input) up to the mask upscaling: -> (state, iou (B, Q, M));
    `mask_logits(state)` gives the low-res logits."""
    points = rescale_points(points, input_hw, resized)
    sparse, token_mask = self.prompt_encoder(points, labels)
    image, hyper, iou = self.mask_decoder.decode_tokens(context, sparse, multimask_output,
                                                        token_mask)
    return {"image": image, "hyper": hyper}, iou

  def mask_logits(self, state: dict):
    """Low-res logits (B, Q, M, 4g, 4g) from `predict_tokens`' state."""
    g = self.config.grid
    return self.mask_decoder.mask_logits(state["image"], state["hyper"], (g, g))

  def __call__(self, images, points, labels, mask_input=None, multimask_output: bool = True):
    """(B, H, W, 3) images in 0..255, (B, Q, N, 2) points, (B, Q, N) labels -> logits
    (B, Q, M, H, W) at the original size and iou (B, Q, M)."""
    c = self.config
    hw = images.shape[1:3]
    resized = resized_hw(*hw, c.image_size)
    low, iou = self.predict_masks(self.get_image_embeddings(images), points, labels, hw,
                                  resized, mask_input, None, multimask_output)
    return postprocess_masks(low, resized, hw, c.image_size), iou


def abstract_params(config: SamConfig) -> dict:
  """ShapeDtypeStructs of the params tree (mask-input path included), without computing."""
  model = Sam(config)
  s, g = config.image_size, config.grid
  init = lambda rng: model.init(rng, jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 1, 2)),
                                jnp.ones((1, 1, 1)), jnp.zeros((1, 1, 4 * g, 4 * g)))
  return jax.eval_shape(init, jax.random.key(0))["params"]


def infer_model_name(state_dict: Mapping[str, Any]) -> str | None:
  """sam_vit_b/l/h from the encoder width, mobile_sam from TinyViT's keys; None if neither."""
  if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
    return "mobile_sam"
  pos = state_dict.get("image_encoder.pos_embed")
  if pos is None or len(np.shape(pos)) != 4:  # EfficientSAM's is (1, 197, D)
    return None
  width = int(np.shape(pos)[-1])
  for name, size in MODELS.items():
    if size != TINY_VIT and sam_encoder.SAM_SIZES[size][0] == width:
      return name
  raise weights.WeightsError(f"no SAM model has encoder width {width}")


def params_from_torch(state_dict: Mapping[str, Any], config: SamConfig) -> dict:
  """segment_anything / MobileSAM state_dict -> flax params; WeightsError names a misfit."""
  extras = [k for k in ("pixel_mean", "pixel_std") if k in state_dict]
  for key, want in (("pixel_mean", PIXEL_MEAN), ("pixel_std", PIXEL_STD)):
    if key in state_dict and not np.allclose(np.ravel(state_dict[key]), want):
      raise weights.WeightsError(f"tensor {key!r} is not SAM's {want}; other pixel statistics"
                                 " are not supported")
  return weights.torch_to_flax(state_dict, abstract_params(config),
                               conv_transpose=CONV_TRANSPOSE, ignore=extras)


def params_to_torch(params) -> dict[str, np.ndarray]:
  """Flax params -> the release's state_dict (torch names, layouts, dtypes and key order)."""
  state_dict = weights.flax_to_torch(params, conv_transpose=CONV_TRANSPOSE)
  for key in state_dict:
    # torch keeps this counter as a 0-d int64; JAX may hold it as int32 and the checkpoint
    # library may store scalars as (1,).
    if key.endswith("num_batches_tracked"):
      state_dict[key] = state_dict[key].astype(np.int64).reshape(())
  return weights.sort_torch_keys(state_dict, _TORCH_ORDER)
