"""SAMI pretraining, top to bottom.

A ViT student sees 25% of the patches of each image; its decoder reconstructs, for every
token, the features a frozen SAM image encoder produces for the same image. Resume order: the
latest checkpoint in the workdir, else from scratch (the shared loop in `loop.py` runs it;
this file holds only SAMI's model, loss and data).
"""
import jax
import jax.numpy as jnp

from efficientsam_jax import data, masking, teacher
from efficientsam_jax.errors import UserError
from efficientsam_jax.losses import sami as sami_losses
from efficientsam_jax.models import precision
from efficientsam_jax.models import sami as sami_model
from efficientsam_jax.models import vit
from efficientsam_jax.trainers import loop


def build_student(config) -> sami_model.SAMI:
  s = config.student
  encoder = vit.ViTConfig.from_name(s.size, **dict(s.get("overrides", {})))
  decoder = sami_model.DecoderConfig(**dict(config.decoder))
  if s.dtype not in precision.DTYPES:
    raise UserError(f"config.student.dtype must be one of {', '.join(precision.DTYPES)}, got "
                    f"{s.dtype!r}")
  return sami_model.SAMI(encoder, decoder, target_dim=teacher.feature_dim(config.teacher),
                         dtype=precision.compute_dtype(s.dtype),
                         remat=bool(s.get("remat", False)))


class SamiTask(loop.Task):
  """SAMI's model, loss and data for the shared loop; the frozen input is the teacher."""

  def __init__(self, config):
    self.config = config
    self.student = build_student(config)
    size, patch = config.data.image_size, self.student.encoder.patch_size
    self.num_tokens = (size // patch) ** 2
    self.keep = masking.num_kept(self.num_tokens, config.mask_ratio)
    self.teacher_spec = teacher.TeacherSpec.from_config(
        config.teacher, need_weights=not config.compile_only)
    self.teacher_apply = None

  def init_params(self, rng):
    size = self.config.data.image_size
    ids = masking.random_masking(jax.random.key(0), 1, self.num_tokens, self.keep)
    return self.student.init(rng, jnp.zeros((1, size, size, 3)), *ids)["params"]

  def batch_spec(self):
    c = self.config
    size = c.data.image_size
    return {"image": ((c.batch_size, size, size, 3), jnp.float32),
            "valid": ((c.batch_size,), jnp.int32)}

  def make_iterator(self):
    return data.make_train_iterator(self.config)

  def abstract_frozen(self, mesh, rules, min_size):
    self.teacher_apply, abstract = teacher.abstract(self.teacher_spec, mesh, rules, min_size)
    return abstract

  def load_frozen(self, abstract_frozen):
    return teacher.load_params(self.teacher_spec, abstract_frozen)

  def loss_fn(self, params, teacher_params, batch, step):
    """Reconstruction loss of one batch: images (B, S, S, 3), valid (B,)."""
    loss_cfg = self.config.loss
    images, valid = batch["image"], batch["valid"]
    b = images.shape[0]
    # The teacher is data: evaluated, never differentiated.
    target = jax.lax.stop_gradient(self.teacher_apply(teacher_params, images))
    target = target.astype(jnp.float32).reshape(b, self.num_tokens, -1)
    ids_keep, ids_masked, ids_restore = masking.random_masking(
        jax.random.fold_in(jax.random.key(self.config.seed), step), b, self.num_tokens,
        self.keep)
    masked = masking.masked_token_indicator(ids_restore, self.keep)
    pred = self.student.apply({"params": params}, images.astype(self.student.dtype), ids_keep,
                              ids_masked, ids_restore)
    loss = sami_losses.reconstruction_loss(
        pred, target, masked, valid, kind=loss_cfg.kind, masked_only=loss_cfg.masked_only,
        normalise_target=loss_cfg.normalise_target)
    return loss, {"valid_images": jnp.sum(valid)}


def Setup(config) -> loop.Setup:  # pylint: disable=invalid-name
  """The shared loop's Setup for SAMI (kept under this name for tools that build it)."""
  return loop.Setup(config, SamiTask(config))


def train(config, workdir: str) -> dict:
  """Runs SAMI pretraining in `workdir`; returns the last logged metrics."""
  return loop.train(config, workdir, SamiTask(config))
