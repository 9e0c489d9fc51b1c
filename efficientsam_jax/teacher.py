"""The frozen SAM image encoder that SAMI learns from: data, not train state.

Loaded once (a released SAM `.pth`, a converted JAX checkpoint, or fixed-seed random weights
for demos), optionally cast to bf16, placed by the same sharding rules as the student (so
ViT-H can be FSDP-split when it does not fit replicated), passed into the train step as an
argument and never differentiated or checkpointed.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from efficientsam_jax import checkpointing, sharding, weights
from efficientsam_jax.errors import UserError
from efficientsam_jax.models import sam_encoder

OUTPUTS = ("neck", "blocks")


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  size: str
  checkpoint: str | None
  output: str
  dtype: str
  seed: int

  @classmethod
  def from_config(cls, cfg, need_weights: bool = True) -> "TeacherSpec":
    """Validates config.teacher before anything is compiled. need_weights=False (compiling
    ahead from shapes alone) lets the checkpoint be missing."""
    if cfg.size not in sam_encoder.SAM_SIZES:
      raise UserError(f"config.teacher.size {cfg.size!r} is not one of "
                      f"{sorted(sam_encoder.SAM_SIZES)}")
    if cfg.output not in OUTPUTS:
      raise UserError(f"config.teacher.output must be one of {OUTPUTS}, got {cfg.output!r}")
    if cfg.dtype not in ("float32", "bfloat16"):
      raise UserError(f"config.teacher.dtype must be float32 or bfloat16, got {cfg.dtype!r}")
    if need_weights and not cfg.checkpoint and not cfg.random_init:
      raise UserError("config.teacher.checkpoint is required: the SAM image encoder weights "
                      f"for size {cfg.size} (e.g. sam_vit_h_4b8939.pth, or a converted JAX "
                      "checkpoint directory)")
    if cfg.checkpoint and not os.path.exists(cfg.checkpoint):
      raise UserError(f"config.teacher.checkpoint {cfg.checkpoint} does not exist")
    return cls(cfg.size, cfg.checkpoint or None, cfg.output, cfg.dtype, int(cfg.seed))

  @property
  def encoder_config(self) -> sam_encoder.SamEncoderConfig:
    return sam_encoder.SamEncoderConfig.from_name(self.size)


def feature_dim(cfg) -> int:
  """Channels of the teacher features the student regresses."""
  encoder = sam_encoder.SamEncoderConfig.from_name(cfg.size)
  return encoder.out_channels if cfg.output == "neck" else encoder.width


def _host_params(spec: TeacherSpec) -> dict:
  if spec.checkpoint is None:
    logging.info("teacher: SAM %s with fixed-seed (%d) random weights", spec.size, spec.seed)
    return jax.device_get(sam_encoder.init_sam_encoder_params(spec.encoder_config, spec.seed))
  if os.path.isdir(spec.checkpoint):
    params, _ = checkpointing.restore_params(spec.checkpoint)
    return params.get("image_encoder", params)  # a whole-SAM checkpoint or the encoder alone
  try:
    state_dict = weights.load_torch_file(spec.checkpoint)
    return sam_encoder.sam_encoder_params_from_torch(state_dict, spec.encoder_config)
  except (weights.WeightsError, ValueError, OSError) as e:
    raise UserError(f"teacher checkpoint {spec.checkpoint}: {e}") from e


def abstract(spec: TeacherSpec, mesh, rules=(), min_size: int = 2**16):
  """(apply_fn(params, images (B,S,S,3)) -> (B, S/16, S/16, C), ShapeDtypeStructs carrying the
  shardings the weights will have). Reads no file: enough to compile the train step."""
  dtype = jnp.dtype(spec.dtype)
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype),
                        sam_encoder.abstract_params(spec.encoder_config))
  shardings = sharding.tree_shardings(mesh, shapes, rules, min_size)
  model = sam_encoder.SamImageEncoder(spec.encoder_config, output=spec.output, dtype=dtype)

  def apply_fn(teacher_params, images):
    # Targets in the teacher's dtype: a bf16 teacher's outputs are bf16 numbers whether they
    # come live or from the cache (which stores bf16), so both train identically.
    return model.apply({"params": teacher_params}, images.astype(dtype)).astype(dtype)

  return apply_fn, sharding.with_shardings(shapes, shardings)


def load_params(spec: TeacherSpec, abstract_params):
  """Reads the teacher weights and places them as `abstract_params` (from `abstract`) says."""
  host = _host_params(spec)
  want, have = traverse_util.flatten_dict(abstract_params), traverse_util.flatten_dict(host)
  if want.keys() != have.keys() or any(np.shape(have[k]) != want[k].shape for k in want):
    raise UserError(f"teacher checkpoint {spec.checkpoint} does not hold a SAM {spec.size} "
                    "image encoder")
  return jax.tree.map(lambda a, h: jax.device_put(np.asarray(h).astype(a.dtype), a.sharding),
                      abstract_params, host)
