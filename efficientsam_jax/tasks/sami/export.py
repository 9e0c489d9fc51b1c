"""The servable model in a SAMI or distillation workdir (io/model_files.py asks for it).

A SAMI student is a ViT encoder plus a reconstruction decoder; a distillation student is an
encoder with its neck (a ViT, or MobileSAM's TinyViT). What serves is a whole promptable
model around the trained encoder:
- a ViT student becomes EfficientSAM: the trained patch embedding, positions and blocks (and
  the neck, when the student has one), with a fresh neck, prompt encoder and mask decoder
  otherwise (SAMI's decoder is not part of EfficientSAM);
- a TinyViT student becomes MobileSAM with the prompt encoder and mask decoder of the teacher
  file when that is a whole SAM checkpoint (MobileSAM's decoupled recipe: the decoder is never
  retrained), fresh ones otherwise.
Which parts are fresh is logged. A width or depth that no released model has is a UserError.
"""
import re

import jax
import numpy as np
from absl import logging

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import model_files
from efficientsam_jax.models import efficient_sam, registry, vit

# Parameter shapes do not depend on the input size: fresh parts are built small.
_INIT_SIZE = 64


def efficientsam_from_encoder(encoder, seed: int = 0, source: str = "") -> model_files.LoadedModel:
  """A trained ViT `image_encoder` tree -> EfficientSAM (see the module docstring)."""
  encoder = jax.tree.map(np.asarray, encoder)
  width = int(np.shape(encoder["pos_embed"])[-1])
  depth = sum(1 for k in encoder if re.fullmatch(r"blocks_\d+", k))
  names = {vit.VIT_SIZES[size][0]: name for name, size in efficient_sam.FAMILY.models.items()}
  where = source or "SAMI workdir"
  if width not in names:
    raise UserError(f"{where}: encoder width {width} matches no released EfficientSAM "
                    "(vitt 192, vits 384)")
  if depth != 12:
    raise UserError(f"{where}: encoder has {depth} blocks; released EfficientSAM encoders "
                    "have 12")
  name = names[width]
  params = efficient_sam.FAMILY.init_around_encoder(
      efficient_sam.FAMILY.config(name, image_size=_INIT_SIZE), encoder, seed)
  fresh = ("prompt encoder and mask decoder" if "neck_0" in encoder
           else "neck, prompt encoder and mask decoder")
  logging.info("%s: %s with the trained encoder; %s freshly initialised", where, name, fresh)
  return model_files.checked(registry.config(name), params)


def _whole_sam_params(path: str | None):
  """Params of a whole SAM checkpoint at `path`, or None (unset, missing, encoder only)."""
  if not path:
    return None
  try:
    loaded = model_files.load(path)
  except UserError:
    return None
  return loaded.params if loaded.family.name == "sam" and loaded.name != "mobile_sam" else None


def mobile_sam_from_encoder(encoder, teacher_checkpoint: str | None = None, seed: int = 0,
                            source: str = "") -> model_files.LoadedModel:
  """A distilled TinyViT `image_encoder` tree -> MobileSAM (see the module docstring)."""
  sam_family = registry.family_of("mobile_sam")
  where = source or "distillation workdir"
  teacher = _whole_sam_params(teacher_checkpoint)
  if teacher is None:
    teacher = sam_family.init_params(
        sam_family.config("mobile_sam", image_size=_INIT_SIZE), seed,
        keep=sam_family.all_but(["image_encoder"]))
    logging.info("%s: mobile_sam with the distilled encoder; prompt encoder and mask decoder "
                 "freshly initialised (the teacher file is not a whole SAM)", where)
  else:
    logging.info("%s: mobile_sam with the distilled encoder and the prompt encoder and mask "
                 "decoder of %s", where, teacher_checkpoint)
  params = {"image_encoder": jax.tree.map(np.asarray, encoder),
            "prompt_encoder": teacher["prompt_encoder"], "mask_decoder": teacher["mask_decoder"]}
  # Strict (a shrunk TinyViT is no MobileSAM): the error names the misfit tensor.
  return model_files.checked(registry.config("mobile_sam"), params)


def workdir_model(config: dict, params, workdir: str) -> model_files.LoadedModel:
  """The model of a SAMI / distillation workdir (`config`: its config.json)."""
  if not isinstance(params, dict) or "image_encoder" not in params:
    raise UserError(f"{workdir}: its checkpoint holds no image_encoder")
  encoder = params["image_encoder"]
  if "seq_0" in encoder.get("patch_embed", {}):  # TinyViT's convolutional stem
    teacher = config.get("teacher", {}).get("checkpoint")
    return mobile_sam_from_encoder(encoder, teacher, source=workdir)
  return efficientsam_from_encoder(encoder, source=workdir)
