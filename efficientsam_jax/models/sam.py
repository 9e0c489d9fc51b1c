"""Segment Anything (vit_b / vit_l / vit_h) and MobileSAM: image encoder + SAM prompt encoder +
SAM mask decoder.

Submodule names are segment_anything's (`image_encoder`, `prompt_encoder`, `mask_decoder`);
a plain state_dict (`sam_vit_b_01ec64.pth`, `mobile_sam.pt`) converts key for key with
`FAMILY.params_from_torch` / `params_to_torch`, through `RENAMES` where our modules use
EfficientSAM's names for the same layers. The encoder is `sam_encoder.SamImageEncoder` or, for
MobileSAM, `tiny_vit.TinyViT`; the decoder is `mask_decoder.MaskDecoder` with `SAM_OPTIONS`.

`pixel_mean` / `pixel_std` are not parameters: segment_anything registers them as
non-persistent buffers, so its `state_dict()` (and the released files, loaded strictly) do not
hold them. A file that does carry them is accepted when they hold SAM's constants (they are
dropped, so such a file does not round trip to the same key list).

What SamPredictor does, reproduced here (images are (B, H, W, 3) float in 0..255):
  1. resize the longest side to image_size: new = int(old * image_size / max(H, W) + 0.5).
     `SamPredictor.set_image` (what scripts call) does it with `ResizeLongestSide.apply_image`:
     PIL's bilinear on the uint8 image, rounded to whole grey levels; the Predictor does that
     on the host (`default_image_resize = "pil"`), and `preprocess` then finds the image at
     its size. Given a larger image, `preprocess` resizes it itself, as `set_torch_image`
     after `apply_image_torch` (float, antialiased bilinear; "torch");
  2. normalise with mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375), zero-pad
     bottom/right to image_size x image_size, encode;
  3. points and boxes are scaled by new/old per axis; the decoder gives 256x256 logits;
  4. `postprocess_masks`: bilinear to image_size, crop to the resized input, bilinear to (H, W).
"""
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.models import family, resize, sam_encoder, state_dict, tiny_vit
from efficientsam_jax.models import mask_decoder as mask_decoder_lib
from efficientsam_jax.models import prompt_encoder as prompt_encoder_lib
from efficientsam_jax.models.family import ModelConfig

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
TINY_VIT = "tiny_vit"

# segment_anything's decoder names -> ours (EfficientSAM's names of the same layers).
DECODER_RENAMES = state_dict.KeyRenames([
    ("transformer.layers.{i}.mlp.lin1", "transformer.layers.{i}.mlp.layers.0.0"),
    ("transformer.layers.{i}.mlp.lin2", "transformer.layers.{i}.mlp.fc"),
    ("output_hypernetworks_mlps.{i}.layers.0", "output_hypernetworks_mlps.{i}.layers.0.0"),
    ("output_hypernetworks_mlps.{i}.layers.1", "output_hypernetworks_mlps.{i}.layers.1.0"),
    ("output_hypernetworks_mlps.{i}.layers.2", "output_hypernetworks_mlps.{i}.fc"),
    ("iou_prediction_head.layers.0", "iou_prediction_head.layers.0.0"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.1.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.fc"),
    # One flat Sequential (ConvT, LN, GELU, ConvT, GELU) in SAM; one per step in ours.
    ("output_upscaling.0", "final_output_upscaling_layers.0.0"),
    ("output_upscaling.1", "final_output_upscaling_layers.0.1"),
    ("output_upscaling.3", "final_output_upscaling_layers.1.0"),
])
RENAMES = (sam_encoder.ENCODER_RENAMES.under("image_encoder.")
           + DECODER_RENAMES.under("mask_decoder."))


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
  """The whole model, with the inference methods every family shares (models/family.py):
  `encode` once per image, `predict_masks` for any number of queries against it."""
  config: ModelConfig = ModelConfig(name="sam_vit_h")
  supports_mask_input = True  # SamPredictor's mask_input: previous low-res logits
  # SamPredictor.set_image resizes the uint8 image with PIL (the Predictor does that on the
  # host); "torch" = set_torch_image's antialiased float resize inside `preprocess`.
  image_resizes = ("pil", "torch")
  default_image_resize = "pil"

  def setup(self):
    c = self.config
    overrides = dict(c.encoder_overrides)
    encoder = FAMILY.models[c.name]
    if encoder == TINY_VIT:  # computes in float32 whatever the compute dtype
      self.image_encoder = tiny_vit.TinyViT(tiny_vit.TinyViTConfig(**overrides))
    else:
      self.image_encoder = sam_encoder.SamImageEncoder(sam_encoder.SamEncoderConfig.from_name(
          encoder, pretrain_size=c.image_size, **overrides), dtype=c.compute_dtype)
    self.prompt_encoder = prompt_encoder_lib.SamPromptEncoder(c.embed_dim, c.image_size, c.grid)
    self.mask_decoder = mask_decoder_lib.MaskDecoder(c.embed_dim, dtype=c.compute_dtype,
                                                     **mask_decoder_lib.SAM_OPTIONS)

  # --- what needs no parameters --------------------------------------------------------
  def preprocess(self, images):
    """(B, H, W, 3) float RGB in 0..255 -> (B, S, S, 3): longest side resized, normalised,
    zero-padded."""
    return preprocess(images, self.config.image_size)

  def resized_hw(self, height: int, width: int) -> tuple[int, int]:
    """The size after the longest side is resized to image_size (SamPredictor's rounding)."""
    return resized_hw(height, width, self.config.image_size)

  def prompt_length(self, longest: int) -> int:
    """Every point and box corner, at least max_num_points (most prompt sets then share one
    compiled shape); padding takes no part in SAM's decoder."""
    return max(self.config.max_num_points, longest)

  def postprocess(self, low_res_logits, input_hw, resized_hw):
    """segment_anything's `postprocess_masks`: (..., 4g, 4g) -> (..., H, W)."""
    return postprocess_masks(low_res_logits, resized_hw, input_hw, self.config.image_size)

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

  def predict_masks(self, image_embeddings, points, labels, input_hw, resized_hw, *,
                    mask_input=None, has_mask=None, multimask_output: bool = True,
                    context: dict | None = None):
    """Decodes queries against image embeddings (low-resolution logits).

    Args:
      image_embeddings: (B, g, g, 256) (unused, may be None, when `context` is given).
      points: (B, Q, N, 2) (x, y) original-image pixels.
      labels: (B, Q, N) -1 padding (no token), 0 negative, 1 positive, 2/3 box corners.
      input_hw: original (H, W); resized_hw: (H', W') after the longest-side resize (tuples
        or (2,) arrays).
      mask_input: None, or (B, Q, 4g, 4g) low-res logits from a previous prediction.
      has_mask: (B, Q) bool, which queries use their mask_input (default all).
      multimask_output: masks 1..3 (True) or mask 0 (False).
      context: `decoder_context(image_embeddings)`, when already computed (no mask_input).
    Returns:
      low_res_logits (B, Q, M, 4g, 4g) and iou (B, Q, M); M = 3 or 1.
    """
    points = rescale_points(points, input_hw, resized_hw)
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

  def predict_tokens(self, context: dict, points, labels, input_hw, resized_hw,
                     multimask_output: bool = True):
    """`predict_masks` (no mask input) up to the mask upscaling: -> (state, iou (B, Q, M));
    `mask_logits(state)` gives the low-res logits."""
    points = rescale_points(points, input_hw, resized_hw)
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
    hw = images.shape[1:3]
    resized = self.resized_hw(*hw)
    low, iou = self.predict_masks(self.get_image_embeddings(images), points, labels, hw,
                                  resized, mask_input=mask_input,
                                  multimask_output=multimask_output)
    return self.postprocess(low, hw, resized), iou

  def init_all(self, images, points, labels, mask_input=None):
    """Touches every parameter, the mask-input path included (`ModelFamily.init_args`)."""
    return self(images, points, labels, mask_input)


class SamFamily(family.ModelFamily):
  """segment-anything's SAM ViT-B/L/H and MobileSAM (TinyViT encoder, SAM's decoder)."""
  name = "sam"
  models = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h",
            "mobile_sam": TINY_VIT}
  release_format = family.PLAIN
  renames = RENAMES
  conv_transpose = ("mask_decoder.final_output_upscaling_layers.0.0",
                    "mask_decoder.final_output_upscaling_layers.1.0")
  # Buffers of the releases: the Fourier matrix, TinyViT's BatchNorm statistics.
  buffers = (r"^prompt_encoder/pe_layer/positional_encoding_gaussian_matrix$",
             r"^image_encoder/.*" + tiny_vit.NON_TRAINABLE[0])
  # Non-persistent buffers in segment_anything; a file that carries them must hold SAM's
  # constants (they are dropped, so such a file does not round trip to the same key list).
  ignored_keys = ("pixel_mean", "pixel_std")
  # Every module/leaf name in the order torch registers it among its siblings (own
  # parameters and buffers before submodules), so exports list keys as `state_dict()` does.
  torch_order = (
      "image_encoder", "prompt_encoder", "mask_decoder",
      "pos_embed", "patch_embed", "seq", "layers", "blocks", "downsample", "norm_head",
      "head", "neck", "rel_pos_h", "rel_pos_w", "attention_biases", "self_attn", "norm1",
      "attn", "norm", "qkv", "proj", "cross_attn_token_to_image", "norm2", "mlp", "lin1",
      "lin2", "fc1", "fc2", "norm3", "norm4", "cross_attn_image_to_token", "local_conv",
      "conv1", "conv2", "conv3", "c", "bn", "q_proj", "k_proj", "v_proj", "out_proj",
      "pe_layer", "positional_encoding_gaussian_matrix", "point_embeddings",
      "not_a_point_embed", "mask_downscaling", "no_mask_embed",
      "transformer", "final_attn_token_to_image", "norm_final_attn", "iou_token",
      "mask_tokens", "output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head",
      "weight", "bias", "running_mean", "running_var", "num_batches_tracked")

  def build(self, config: ModelConfig) -> Sam:
    return Sam(config)

  def infer_name(self, state: Mapping[str, Any]) -> str | None:
    """sam_vit_b/l/h from the encoder width, mobile_sam from TinyViT's keys; None if neither."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
      return "mobile_sam"
    pos = state.get("image_encoder.pos_embed")
    if pos is None or len(np.shape(pos)) != 4:  # EfficientSAM's is (1, 197, D)
      return None
    width = int(np.shape(pos)[-1])
    for name, size in self.models.items():
      if size != TINY_VIT and sam_encoder.SAM_SIZES[size][0] == width:
        return name
    raise UserError(f"no SAM model has encoder width {width}")

  def check_release_extras(self, state: Mapping[str, Any]) -> None:
    for key, want in (("pixel_mean", PIXEL_MEAN), ("pixel_std", PIXEL_STD)):
      if key in state and not np.allclose(np.ravel(state[key]), want):
        raise UserError(f"tensor {key!r} is not SAM's {want}; other pixel statistics are not "
                        "supported")

  def release_dtypes(self, state: dict) -> dict:
    for key in state:
      # torch keeps this counter as a 0-d int64; JAX may hold it as int32 and the checkpoint
      # library may store scalars as (1,).
      if key.endswith("num_batches_tracked"):
        state[key] = state[key].astype(np.int64).reshape(())
    return state


FAMILY = SamFamily()
