"""Model weights on disk, in every form the CLIs accept, as (model name, flax params).

- PyTorch file (`.pt`/`.pth`, the released `{"model": state_dict}` or a plain state_dict):
  read without torch (torch_io), converted key for key (weights.py).
- JAX parameter checkpoint: a directory written by `checkpointing.save_params`, whose
  metadata names the model.
- Training workdir: a directory with `checkpoints/`; its latest parameters are used.
Every failure is a `ModelFileError` with a one-line message naming the file or tensor.
"""
import os

import jax
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


def load_jax(directory: str, model: str | None = None) -> tuple[str, dict]:
  """A parameter checkpoint or a training workdir -> (model name, params as numpy)."""
  if checkpointing.is_training_workdir(directory):
    params, stored_name = checkpointing.latest_workdir_params(directory), None
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
  return name, family.params_from_torch(family.params_to_torch(params), config_for(name))


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
