"""Model weights on disk, in every form the CLIs accept, as (model name, flax params).

- PyTorch file (`.pt`/`.pth`, the released `{"model": state_dict}` or a plain state_dict):
  read without torch (torch_io), converted key for key (weights.py).
- JAX parameter checkpoint: a directory written by `checkpointing.save_params`, whose
  metadata names the model.
- Training workdir: a directory with `checkpoints/`; its latest parameters are used. A
  finetuning workdir's config.json gives the model's input size/depth (a shrunk demo model);
  a SAMI pretraining workdir gives an EfficientSAM whose encoder is the pretrained one and whose
  neck, prompt encoder and mask decoder are freshly initialised (said on the console). A
  distillation workdir (configs/mobilesam_distill.py) gives its student encoder with its neck:
  a TinyViT student becomes MobileSAM, with the prompt encoder and mask decoder of the teacher
  file when that is a whole SAM checkpoint (MobileSAM's recipe) and fresh ones otherwise; a
  ViT student becomes EfficientSAM with a fresh prompt encoder and decoder.
Every failure is a `ModelFileError` with a one-line message naming the file or tensor.
"""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from efficientsam_jax import checkpointing, torch_io, weights
from efficientsam_jax.models import efficient_sam as es
from efficientsam_jax.models import sam

TORCH_SUFFIXES = (".pt", ".pth")
PARAMS_FORMAT = "efficientsam_jax.params/1"  # metadata["format"] of our parameter checkpoints
# Every model name the CLIs accept: EfficientSAM sizes, then SAM sizes and MobileSAM.
KNOWN_MODELS = tuple(es.MODELS) + tuple(sam.MODELS)
PLANNED_MODELS = ()


class ModelFileError(ValueError):
  """A weights file or directory cannot be used: one-line reason."""


def is_torch_path(path: str) -> bool:
  return path.lower().endswith(TORCH_SUFFIXES)


def check_model_name(name: str | None) -> None:
  if name is None or name in KNOWN_MODELS:
    return
  if name in PLANNED_MODELS:
    raise ModelFileError(f"model {name!r} is not supported yet; supported: {KNOWN_MODELS}")
  raise ModelFileError(f"unknown model {name!r}; known: {KNOWN_MODELS}")


def is_sam(name: str) -> bool:
  """SAM family (sam_vit_*, mobile_sam): plain state_dict files, models/sam.py."""
  return name in sam.MODELS


def config_for(name: str, **overrides):
  """The model config of a known name (EfficientSamConfig or SamConfig)."""
  check_model_name(name)
  family = sam.SamConfig if is_sam(name) else es.EfficientSamConfig
  return family.from_name(name, **overrides)


def _family(name: str):
  return sam if is_sam(name) else es


def infer_model_name(state_dict) -> str:
  """From the tensors: SAM sizes and MobileSAM by their encoder, else EfficientSAM sizes."""
  return sam.infer_model_name(state_dict) or es.infer_model_name(state_dict)


def _infer_from_params(params) -> str:
  encoder = params.get("image_encoder", {})
  if "pos_embed" not in encoder and "patch_embed" not in encoder:
    raise ModelFileError("parameters have no image_encoder/pos_embed; not a SAM-family "
                         "model")
  if "seq_0" in encoder.get("patch_embed", {}):
    return "mobile_sam"
  return infer_model_name({"image_encoder.pos_embed": np.zeros(np.shape(encoder["pos_embed"]))})


def params_from_state_dict(state_dict: dict, model: str | None = None) -> tuple[str, dict]:
  """Torch state_dict -> (model name, flax params); checks every name and shape."""
  name = model or infer_model_name(state_dict)
  return name, _family(name).params_from_torch(state_dict, config_for(name))


def load_torch(path: str, model: str | None = None) -> tuple[str, dict]:
  return params_from_state_dict(weights.load_torch_file(path), model)


def workdir_model_overrides(path: str) -> dict:
  """EfficientSamConfig fields a finetuning workdir recorded in config.json (its input size
  and encoder depth), so its weights load as the model they are; {} for anything else."""
  config = _workdir_config(path)
  if config.get("trainer") != "efficientsam":
    return {}
  model = config.get("model", {})
  out = {"image_size": model.get("image_size"), "encoder_depth": model.get("encoder_depth")}
  return {k: v for k, v in out.items() if v is not None}


def is_sami_params(params) -> bool:
  return (isinstance(params, dict) and "image_encoder" in params
          and "mask_decoder" not in params and "decoder_embed" in params)


def is_distilled_params(params) -> bool:
  """A decoupled-distillation student (SAMI trainer, decoder.kind="none"): the encoder alone."""
  return isinstance(params, dict) and set(params) == {"image_encoder"}


def efficientsam_from_sami(sami_params, seed: int = 0, source: str = "") -> tuple[str, dict]:
  """SAMI (or distilled ViT) student params -> (model name, EfficientSAM params): the trained
  encoder (patch embedding, position table, blocks, and the neck when the student has one)
  plus fresh parts for everything else.

  The size (vitt / vits) comes from the encoder width; a width or depth that no released
  EfficientSAM has is a ModelFileError.
  """
  encoder = jax.tree.map(np.asarray, sami_params["image_encoder"])
  width = int(np.shape(encoder["pos_embed"])[-1])
  depth = sum(1 for k in encoder if re.fullmatch(r"blocks_\d+", k))
  try:
    name = es.infer_model_name({"image_encoder.pos_embed": np.zeros((1, 1, width))})
  except weights.WeightsError:
    raise ModelFileError(f"{source or 'SAMI workdir'}: encoder width {width} matches no "
                         f"released EfficientSAM (vitt 192, vits 384)") from None
  if depth != 12:
    raise ModelFileError(f"{source or 'SAMI workdir'}: encoder has {depth} blocks; released "
                         f"EfficientSAM encoders have 12")
  config = config_for(name, image_size=64)  # parameter shapes do not depend on the input size
  model = es.EfficientSam(config)
  fresh = jax.jit(lambda rng: model.init(
      rng, jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 1, 2)), jnp.zeros((1, 1, 1)),
      scale_to_original_image_size=False)["params"])(jax.random.key(seed))
  params = jax.tree.map(np.asarray, fresh)
  params["image_encoder"] = {**params["image_encoder"], **encoder}  # SAMI: the neck is fresh
  fresh = "prompt encoder and mask decoder" if "neck_0" in encoder else (
      "neck, prompt encoder and mask decoder")
  print(f"{source or 'SAMI workdir'}: {name} with the trained encoder; {fresh} freshly "
        "initialised")
  return name, params


def _whole_sam_params(path: str | None):
  """Params of a whole SAM checkpoint at `path`, or None (unset, missing, encoder only)."""
  if not path or not os.path.exists(path):
    return None
  try:
    name, params = load(path)
  except ModelFileError:
    return None
  return params if name in sam.MODELS and name != "mobile_sam" else None


def mobile_sam_from_distilled(encoder, teacher_checkpoint: str | None = None, seed: int = 0,
                              source: str = "") -> tuple[str, dict]:
  """A distilled TinyViT (`image_encoder` params) -> ("mobile_sam", params): MobileSAM is that
  encoder in front of SAM's own prompt encoder and mask decoder, taken from the teacher's
  checkpoint when it is a whole SAM (the decoupled recipe: the decoder is never retrained),
  else freshly initialised."""
  config = config_for("mobile_sam", image_size=64)  # TinyViT's shapes do not depend on it
  teacher = _whole_sam_params(teacher_checkpoint)
  if teacher is None:
    s = config.image_size
    model = sam.Sam(config)
    teacher = jax.jit(lambda rng: model.init(
        rng, jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 1, 2)), jnp.ones((1, 1, 1)),
        jnp.zeros((1, 1, 4 * config.grid, 4 * config.grid)))["params"])(jax.random.key(seed))
    print(f"{source or 'distillation workdir'}: mobile_sam with the distilled encoder; prompt "
          "encoder and mask decoder freshly initialised (the teacher file is not a whole SAM)")
  else:
    print(f"{source or 'distillation workdir'}: mobile_sam with the distilled encoder and the "
          f"prompt encoder and mask decoder of {teacher_checkpoint}")
  params = {"image_encoder": jax.tree.map(np.asarray, encoder),
            "prompt_encoder": jax.tree.map(np.asarray, teacher["prompt_encoder"]),
            "mask_decoder": jax.tree.map(np.asarray, teacher["mask_decoder"])}
  # Strict check (a shrunk TinyViT is no MobileSAM): WeightsError names the misfit tensor.
  return "mobile_sam", sam.params_from_torch(sam.params_to_torch(params),
                                             config_for("mobile_sam"))


def _workdir_config(path: str) -> dict:
  """A training workdir's config.json as a dict ({} when absent or unreadable)."""
  try:
    with open(os.path.join(path, "config.json")) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return {}
  return config if isinstance(config, dict) else {}


def load_jax(directory: str, model: str | None = None) -> tuple[str, dict]:
  """A parameter checkpoint or a training workdir -> (model name, params as numpy)."""
  overrides = {}
  if checkpointing.is_training_workdir(directory):
    params, stored_name = checkpointing.latest_workdir_params(directory), None
    overrides = {k: v for k, v in workdir_model_overrides(directory).items()
                 if k == "encoder_depth"}
    name = None
    if is_distilled_params(params) and "seq_0" in params["image_encoder"].get("patch_embed", {}):
      teacher = _workdir_config(directory).get("teacher", {})
      name, params = mobile_sam_from_distilled(params["image_encoder"], teacher.get("checkpoint"),
                                               source=directory)
    elif is_sami_params(params) or is_distilled_params(params):
      name, params = efficientsam_from_sami(params, source=directory)
    if name is not None:
      if model and model != name:
        raise ModelFileError(f"{directory} holds a {name} encoder, not {model}")
      return name, params
  else:
    params, metadata = checkpointing.restore_params(directory)
    stored_name = metadata.get("model")
  params = jax.tree.map(np.asarray, params)
  if not isinstance(params, dict) or not {"image_encoder", "mask_decoder"} <= set(params):
    keys = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise ModelFileError(f"{directory}: parameters are not a whole SAM-family model "
                         f"(top level: {keys})")
  if model and stored_name and model != stored_name:
    raise ModelFileError(f"{directory} holds {stored_name}, not {model}")
  name = model or stored_name or _infer_from_params(params)
  # Same strict check as for torch files (every tensor present, named and shaped right); it
  # also rebuilds the tree in the model's own order.
  family = _family(name)
  return name, family.params_from_torch(family.params_to_torch(params),
                                        config_for(name, **overrides))


def load(path: str, model: str | None = None) -> tuple[str, dict]:
  """Any accepted weights path -> (model name, flax params); ModelFileError on failure."""
  check_model_name(model)
  if not os.path.exists(path):
    raise ModelFileError(f"{path}: no such file or directory")
  try:
    return load_jax(path, model) if os.path.isdir(path) else load_torch(path, model)
  except ModelFileError:
    raise
  except (torch_io.TorchFileError, weights.WeightsError, checkpointing.CheckpointError) as e:
    raise ModelFileError(_one_line(e, path)) from None
  except Exception as e:  # orbax/tensorstore errors on damaged directories
    raise ModelFileError(f"{path}: cannot read checkpoint ({type(e).__name__}: "
                         f"{_one_line(e)[:200]})") from None


def save_torch(path: str, name: str, params, plain: bool = False) -> None:
  """Writes the model's released format: EfficientSAM {"model": state_dict} (or a bare
  state_dict with plain); SAM and MobileSAM always a bare state_dict, as they ship."""
  if os.path.exists(path):
    raise ModelFileError(f"{path} exists; choose a new output path")
  state_dict = _family(name).params_to_torch(params)
  plain = plain or is_sam(name)
  try:
    torch_io.save(state_dict if plain else {"model": state_dict}, path)
  except RuntimeError as e:
    raise ModelFileError(_one_line(e)) from None


# timm's ViT names for the encoder tensors we export (patch 16 ViTs at 224).
TIMM_MODELS = {"vitt": "vit_tiny_patch16_224", "vits": "vit_small_patch16_224",
               "vitb": "vit_base_patch16_224"}


def timm_encoder_state_dict(params) -> dict[str, np.ndarray]:
  """EfficientSAM (or SAMI) encoder params -> a state_dict in the layout of timm's
  `vit_{tiny,small,base}_patch16_224`: pos_embed (1, 197, D) (slot 0 is the class slot, which
  was never trained), patch_embed.proj.*, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}.*. timm's cls_token, norm and head have no counterpart and are left out
  (load with strict=False); the EfficientSAM neck is not part of timm's ViT."""
  state_dict = weights.flax_to_torch(params["image_encoder"])
  return {k: v for k, v in state_dict.items() if not k.startswith("neck.")}


def save_timm(path: str, params) -> None:
  if os.path.exists(path):
    raise ModelFileError(f"{path} exists; choose a new output path")
  try:
    torch_io.save(timm_encoder_state_dict(params), path)
  except RuntimeError as e:
    raise ModelFileError(_one_line(e)) from None


def save_jax(directory: str, name: str, params, source: str = "") -> None:
  try:
    checkpointing.save_params(directory, params, {"model": name, "format": PARAMS_FORMAT,
                                                  "source": os.path.basename(source)})
  except checkpointing.CheckpointError as e:
    raise ModelFileError(_one_line(e)) from None


def _one_line(error: Exception, path: str | None = None) -> str:
  message = " ".join(str(error).split())
  if path and path not in message:
    message = f"{path}: {message}"
  return message
