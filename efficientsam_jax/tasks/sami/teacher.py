"""The teacher of SAMI and distillation: a SAM image encoder, data, not train state.

Loaded once (a released SAM `.pth`, a converted JAX checkpoint, or fixed-seed random weights
for demos), optionally cast to bf16, placed by the same sharding rules as the student (so
ViT-H can be FSDP-split when it does not fit replicated), passed into the train step as an
argument and never differentiated or checkpointed.

`teacher.size="model"`: the teacher is the image encoder (with its neck, 256 channels) of
whatever EfficientSAM model `teacher.checkpoint` holds: a released or converted file, or a
finetuning workdir of any shape (the miniature experiment's own trained teacher). Its weights
are read when the Teacher is built, also for compile_only.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from efficientsam_jax.errors import UserError, in_context
from efficientsam_jax.io import checkpoints, model_files, paths
from efficientsam_jax.models import efficient_sam, sam_encoder, state_dict, vit
from efficientsam_jax.train import sharding

OUTPUTS = ("neck", "blocks")
DTYPES = ("float32", "bfloat16")
MODEL = "model"  # teacher.size: the encoder of the EfficientSAM model in teacher.checkpoint
MODEL_FEATURES = 256  # EfficientSAM's neck width


def feature_dim(cfg) -> int:
  """Channels of the teacher features the student regresses (`config.teacher`)."""
  if cfg.size == MODEL:
    return MODEL_FEATURES
  encoder = sam_encoder.SamEncoderConfig.from_name(cfg.size)
  return encoder.out_channels if cfg.output == "neck" else encoder.width


def _model_encoder(path: str):
  """(ViTConfig with the neck, numpy encoder params) of the EfficientSAM model at `path`."""
  try:
    loaded = model_files.load(path)
  except UserError as e:
    raise in_context(e, "config.teacher.checkpoint") from None
  if loaded.family is not efficient_sam.FAMILY:
    raise UserError(f"config.teacher.checkpoint {path} holds {loaded.name}; teacher.size="
                    "'model' takes an EfficientSAM model (use teacher.size=vit_b|vit_l|vit_h "
                    "for a SAM encoder)")
  c = loaded.config
  config = vit.ViTConfig.from_name(efficient_sam.FAMILY.models[c.name],
                                   neck_channels=c.embed_dim, **dict(c.encoder_overrides))
  return config, loaded.params["image_encoder"]


class Teacher:
  """`config.teacher`, checked, with its model: `apply`, `abstract_params`, `load_params`.

  need_weights=False (compiling ahead from shapes alone, or training from a feature cache)
  lets the checkpoint be missing. Every problem is a UserError before anything compiles.
  """

  def __init__(self, cfg, need_weights: bool = True):
    if cfg.size not in sam_encoder.SAM_SIZES and cfg.size != MODEL:
      raise UserError(f"config.teacher.size {cfg.size!r} is not one of "
                      f"{sorted(sam_encoder.SAM_SIZES) + [MODEL]}")
    if cfg.output not in OUTPUTS:
      raise UserError(f"config.teacher.output must be one of {OUTPUTS}, got {cfg.output!r}")
    if cfg.dtype not in DTYPES:
      raise UserError(f"config.teacher.dtype must be float32 or bfloat16, got {cfg.dtype!r}")
    if need_weights and not cfg.checkpoint and not cfg.random_init:
      raise UserError("config.teacher.checkpoint is required: the SAM image encoder weights "
                      f"for size {cfg.size} (e.g. sam_vit_h_4b8939.pth, or a converted JAX "
                      "checkpoint directory)")
    if need_weights and cfg.checkpoint and not paths.exists(cfg.checkpoint):
      paths.check_bucket(cfg.checkpoint, "config.teacher.checkpoint")
      raise UserError(f"config.teacher.checkpoint {cfg.checkpoint} does not exist")
    self.size, self.output, self.seed = cfg.size, cfg.output, int(cfg.seed)
    self.checkpoint = cfg.checkpoint or None
    self.dtype = jnp.dtype(cfg.dtype)
    self.feature_dim = feature_dim(cfg)
    self._model_params = None
    if cfg.size == MODEL:
      if not self.checkpoint:
        raise UserError("config.teacher.size='model' reads the teacher from "
                        "config.teacher.checkpoint (an EfficientSAM file or workdir): not set")
      if cfg.output != "neck":
        raise UserError("config.teacher.size='model' gives the neck's features: "
                        "teacher.output must be 'neck'")
      self.encoder_config, self._model_params = _model_encoder(self.checkpoint)
      self._model = vit.ImageEncoder(self.encoder_config, self.dtype)
    else:
      self.encoder_config = sam_encoder.SamEncoderConfig.from_name(cfg.size)
      self._model = sam_encoder.SamImageEncoder(self.encoder_config, output=cfg.output,
                                                dtype=self.dtype)

  def apply(self, teacher_params, images):
    """images (B, S, S, 3) -> targets (B, S/16, S/16, C) in the teacher's dtype: a bf16
    teacher's outputs are bf16 numbers whether they come live or from the cache (which stores
    bf16), so both train identically."""
    return self._model.apply({"params": teacher_params},
                             images.astype(self.dtype)).astype(self.dtype)

  def abstract_params(self, mesh, rules=(), min_size: int = 2**16):
    """ShapeDtypeStructs of the weights (in the teacher's dtype) carrying the shardings they
    will have, by the same rules as the student's. Reads no file."""
    params = (self._model_params if self._model_params is not None
              else sam_encoder.abstract_params(self.encoder_config))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), self.dtype), params)
    return sharding.with_shardings(shapes, sharding.tree_shardings(mesh, shapes, rules,
                                                                   min_size))

  def load_params(self, abstract_params):
    """Reads the weights and places them as `abstract_params` says."""
    host = self._host_params()
    return jax.tree.map(lambda a, h: jax.device_put(np.asarray(h).astype(a.dtype), a.sharding),
                        abstract_params, host)

  def _host_params(self) -> dict:
    """The encoder weights (float32 numpy), strictly checked against the configured size."""
    if self._model_params is not None:
      return self._model_params
    if self.checkpoint is None:
      logging.info("teacher: SAM %s with fixed-seed (%d) random weights", self.size,
                   self.seed)
      return jax.device_get(sam_encoder.init_sam_encoder_params(self.encoder_config,
                                                                self.seed))
    try:
      if paths.is_dir(self.checkpoint):
        # A converted whole SAM, or an encoder alone; our names or an older naming.
        params, _ = checkpoints.restore_params(self.checkpoint)
        state = state_dict.flax_to_torch(
            jax.tree.map(np.asarray, params.get("image_encoder", params)))
        prefix = ""
      else:
        state, prefix = model_files.read_torch_state(self.checkpoint), "image_encoder."
      return sam_encoder.sam_encoder_params_from_torch(state, self.encoder_config, prefix)
    except UserError as e:
      raise in_context(e, f"teacher checkpoint {self.checkpoint} (SAM {self.size} encoder)") \
          from None
