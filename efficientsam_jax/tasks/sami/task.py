"""SAMI pretraining, and MobileSAM's decoupled distillation, top to bottom.

SAMI: a ViT student sees 25% of the patches of each image; its decoder reconstructs, for every
token, the features a frozen SAM image encoder produces for the same image.

Decoupled distillation (`decoder.kind="none"`, `mask_ratio=0`, configs/mobilesam_distill.py):
the same task with the masking and the decoder removed; the student's own encoder and neck
(`student.kind`: "vit", EfficientSAM's encoder, or "tiny_vit", MobileSAM's) regress the
teacher's embedding directly with the same loss.

The teacher is run live every step, or its targets are read from a feature cache written
once by `python -m efficientsam_jax.cache_teacher` (`teacher.cache_dir`; then no teacher
weights are loaded).

MAE (`target="pixels"`): the same task with the image's own patches as the target instead of
a teacher's features (no teacher at all); with MAE's decoder (`decoder.kind="all"`), the loss
on masked patches only and per-patch normalised pixels (`loss.masked_only`,
`loss.normalise_target`: MAE's norm_pix_loss) it is MAE's objective, and SAMI against MAE is
this one switch on the same code, data and budget (configs/sami.py's `target=pixels` word
sets all four). Resume order: the latest checkpoint in the workdir, else
`config.init_from` (distillation only: a released or converted MobileSAM / EfficientSAM model,
a workdir), else from scratch (the shared loop in `loop.py` runs it; this file holds only the
model, loss and data).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficientsam_jax import data
from efficientsam_jax.data import transforms
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import model_files
from efficientsam_jax.models import precision, tiny_vit, vit
from efficientsam_jax.tasks.sami import loss as sami_losses
from efficientsam_jax.tasks.sami import masking
from efficientsam_jax.tasks.sami import student as sami_model
from efficientsam_jax.tasks.sami.teacher import Teacher, feature_dim
from efficientsam_jax.train import config_checks, loop, sharding

STUDENT_KINDS = ("vit", "tiny_vit")
TARGETS = ("features", "pixels")


def patchify(images, patch_size: int):
  """(B, S, S, C) -> (B, N, p*p*C): each patch's pixels in (row, column, channel) order, patches
  in row-major grid order (the token order), N = (S/p)^2."""
  b, s, _, c = images.shape
  g = s // patch_size
  x = images.reshape(b, g, patch_size, g, patch_size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, g * g, patch_size * patch_size * c)


def check_objective(config) -> None:
  """One-line errors for student/decoder/masking combinations that do not make a task."""
  decoder, student = config.decoder.kind, config.student.get("kind", "vit")
  target = config.get("target", "features")
  if target not in TARGETS:
    raise UserError(f"config.target must be one of {TARGETS}, got {target!r}")
  if target == "pixels" and (decoder == sami_model.NO_DECODER or config.mask_ratio == 0):
    raise UserError("config.target='pixels' (MAE) reconstructs hidden patches: it needs a "
                    "decoder (decoder.kind='all' or 'cross') and mask_ratio > 0")
  if target == "pixels" and config.teacher.get("cache_dir"):
    raise UserError("config.target='pixels' has no teacher: unset teacher.cache_dir")
  if decoder not in sami_model.DECODER_KINDS + (sami_model.NO_DECODER,):
    raise UserError(f"config.decoder.kind must be one of "
                    f"{sami_model.DECODER_KINDS + (sami_model.NO_DECODER,)}, got {decoder!r}")
  if student not in STUDENT_KINDS:
    raise UserError(f"config.student.kind must be one of {STUDENT_KINDS}, got {student!r}")
  if decoder == sami_model.NO_DECODER and config.mask_ratio != 0:
    raise UserError("config.decoder.kind='none' (distillation) compares the student's own "
                    f"output with the teacher's: it needs mask_ratio=0, got {config.mask_ratio}")
  if student == "tiny_vit" and decoder != sami_model.NO_DECODER:
    raise UserError("config.student.kind='tiny_vit' cannot drop masked tokens: use "
                    "decoder.kind='none' and mask_ratio=0 (configs/mobilesam_distill.py)")
  if config.loss.masked_only and config.mask_ratio == 0:
    raise UserError("config.loss.masked_only with mask_ratio=0 leaves no token to learn from")


def check_config(config) -> None:
  """Every value of a SAMI / distillation config, before anything is built (one place: the
  shared run settings, the objective, the student, the data view)."""
  config_checks.run_settings(config)
  check_objective(config)
  config_checks.in_range(config, "mask_ratio", 0, 1, include_high=False)
  config_checks.one_of(config, "loss.kind", sami_losses.LOSS_KINDS)
  if config.student.get("kind", "vit") == "vit":
    config_checks.one_of(config, "student.size", tuple(vit.VIT_SIZES))
  if config.decoder.kind != sami_model.NO_DECODER:
    config_checks.at_least(config, 1, "decoder.width", "decoder.depth", "decoder.num_heads")
    config_checks.positive(config, "decoder.mlp_ratio")
    if config.decoder.width % config.decoder.num_heads:
      raise UserError(f"config.decoder.width ({config.decoder.width}) must be a multiple of "
                      f"decoder.num_heads ({config.decoder.num_heads})")
  # Student and teacher cut the image into 16-pixel patches.
  config_checks.multiple_of(config, "data.image_size", 16)
  if config.data.source == "demo":
    config_checks.at_least(config, 1, "data.num_demo_images")
  config_checks.input_pipeline(config)
  data.check_view_config(config.data)


def target_dim(config) -> int:
  """Channels of what the student predicts per token: the teacher's features, or the pixels of
  a patch (p * p * 3) for target="pixels"."""
  if config.get("target", "features") == "pixels":
    patch = vit.ViTConfig.from_name(config.student.size,
                                    **dict(config.student.get("overrides", {}))).patch_size
    return patch * patch * 3
  return feature_dim(config.teacher)


def build_student(config):
  """SAMI (masked ViT + decoder) or, with decoder.kind="none", EncoderStudent."""
  s = config.student
  overrides = dict(s.get("overrides", {}))
  out_dim = target_dim(config)
  if s.dtype not in precision.DTYPES:
    raise UserError(f"config.student.dtype must be one of {', '.join(precision.DTYPES)}, got "
                    f"{s.dtype!r}")
  dtype, remat = precision.compute_dtype(s.dtype), bool(s.get("remat", False))
  if config.decoder.kind == sami_model.NO_DECODER:
    if s.get("kind", "vit") == "tiny_vit":
      encoder = tiny_vit.TinyViTConfig(out_channels=out_dim, **overrides)
    else:
      encoder = vit.ViTConfig.from_name(s.size, **{"neck_channels": out_dim, **overrides})
    return sami_model.EncoderStudent(encoder, dtype, remat)
  encoder = vit.ViTConfig.from_name(s.size, **overrides)
  decoder = sami_model.DecoderConfig(**dict(config.decoder))
  return sami_model.SAMI(encoder, decoder, target_dim=out_dim, dtype=dtype, remat=remat)


class SamiTask(loop.Task):
  """Model, loss and data for the shared loop. The teacher is the SAM encoder, or nothing
  when its targets come from a cache (inside each batch) or are the pixels (MAE)."""

  def __init__(self, config):
    super().__init__(config)
    check_objective(config)
    self.student = build_student(config)
    self.masked = config.decoder.kind != sami_model.NO_DECODER
    self.pixels = config.get("target", "features") == "pixels"
    self.cache_dir = config.teacher.get("cache_dir")
    if self.pixels:
      self.teacher = None
      self.patch_size = self.student.encoder.patch_size
    else:
      self.teacher = Teacher(config.teacher,
                             need_weights=not (config.compile_only or self.cache_dir))
      self.patch_size = self.teacher.encoder_config.patch_size
    # Student (patch 16, or TinyViT's stride 16) and teacher share one token grid.
    self.grid = config.data.image_size // self.patch_size
    self.num_tokens = self.grid ** 2
    self.keep = masking.num_kept(self.num_tokens, config.mask_ratio)
    self._held_out = self._held_out_batches()
    self._eval_step = None

  def init_params(self, rng):
    size = self.config.data.image_size
    images = jnp.zeros((1, size, size, 3))
    if not self.masked:
      return self.student.init(rng, images)["params"]
    ids = masking.random_masking(jax.random.key(0), 1, self.num_tokens, self.keep)
    return self.student.init(rng, images, *ids)["params"]

  def frozen(self):
    """TinyViT's BatchNorm statistics are buffers (it runs BN with stored statistics)."""
    buffers = ()
    if self.config.student.get("kind", "vit") == "tiny_vit":
      buffers = tuple(r"^image_encoder/.*" + p for p in tiny_vit.NON_TRAINABLE)
    return buffers + super().frozen()

  def init_from_params(self, abstract_params):
    """Distillation starts from any model whose image encoder fits the student (a released
    mobile_sam.pt for TinyViT, an EfficientSAM .pt or SAMI workdir for a ViT)."""
    if self.masked or not self.config.get("init_from"):
      return super().init_from_params(abstract_params)
    try:
      loaded = model_files.load(self.config.init_from)
    except UserError as e:
      raise UserError(f"config.init_from: {e}") from None
    return {"image_encoder": loaded.params["image_encoder"]}

  def batch_spec(self):
    c = self.config
    size = c.data.image_size
    spec = {"image": ((c.batch_size, size, size, 3), jnp.float32),
            "valid": ((c.batch_size,), jnp.int32)}
    if self.cache_dir:
      spec["target"] = ((c.batch_size, self.grid, self.grid, self.teacher.feature_dim),
                        jnp.bfloat16)
    return spec

  def make_iterator(self):
    return data.make_train_iterator(self.config)

  def abstract_teacher(self, mesh, rules, min_size):
    if self.cache_dir or self.pixels:
      return None
    return self.teacher.abstract_params(mesh, rules, min_size)

  def load_teacher(self, abstract_teacher):
    return None if abstract_teacher is None else self.teacher.load_params(abstract_teacher)

  def loss_fn(self, params, teacher_params, batch, rng):
    """Reconstruction loss of one batch: images (B, S, S, 3), valid (B,), and with a cache
    target (B, S/16, S/16, C) bfloat16."""
    loss_cfg = self.config.loss
    pred, target, masked, valid = self._outputs(params, teacher_params, batch, rng)
    loss = sami_losses.reconstruction_loss(
        pred, target, masked, valid, kind=loss_cfg.kind, masked_only=loss_cfg.masked_only,
        normalise_target=loss_cfg.normalise_target)
    return loss, {"valid_images": jnp.sum(valid)}

  def evaluate(self, params, teacher, step):
    """{"mse": mean squared error between the student's output and the teacher's features
    over every token of the held-out images} (distillation: the embedding MSE; SAMI: the
    reconstruction with step 0's mask), or None without config.eval.every."""
    del step
    if self._held_out is None:
      return None
    if self._eval_step is None:
      def sums(p, t, batch):
        step_zero = jax.random.fold_in(jax.random.key(self.config.seed), 0)
        pred, target, _, valid = self._outputs(p, t, batch, step_zero)
        per_image = sami_losses.per_token_loss(pred.astype(jnp.float32), target).mean(-1)
        return jnp.sum(per_image * valid), jnp.sum(valid)
      self._eval_step = jax.jit(sums)
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    total, count = 0.0, 0
    for batch in self._held_out:
      s, n = self._eval_step(params, teacher, sharding.host_batch_to_global(batch, mesh))
      total, count = total + float(s), count + int(n)
    return {"mse": total / max(count, 1)}

  def _held_out_batches(self):
    """This host's rows of the held-out images in global batches of config.batch_size
    (padded with valid=0), in a deterministic view; None without evaluation."""
    c, e = self.config, self.config.get("eval") or {}
    if not e.get("every"):
      return None
    if self.cache_dir:
      raise UserError("config.eval needs the live teacher: the feature cache holds the "
                      "training images only (unset teacher.cache_dir or eval.every)")
    view = ml_collections.ConfigDict(dict(c.data))
    view.update(source=e.get("source") or "demo", path=e.get("path") or "",
                demo_seed=e.get("demo_seed", 1), num_demo_images=e.get("num_images") or 16)
    try:
      source = data.make_source(view)
    except UserError as e:
      raise UserError(f"config.eval (source {view.source}, path {view.path!r}): {e}") from None
    count = min(len(source), int(e.get("num_images") or len(source)))
    crop = c.data.crop if c.data.crop in ("center", "longest_side") else "center"
    b, p, n = c.batch_size, jax.process_count(), jax.process_index()
    rows = range(n * b // p, (n + 1) * b // p)
    batches = []
    for start in range(0, count, b):
      examples = [transforms.preprocess(source[i], None, image_size=c.data.image_size,
                                        crop=crop, flip=False) if i < count else
                  {"image": np.zeros((c.data.image_size,) * 2 + (3,), np.float32),
                   "valid": np.int32(0)} for i in (start + r for r in rows)]
      batches.append({k: np.stack([x[k] for x in examples]) for k in ("image", "valid")})
    return batches

  def _outputs(self, params, teacher_params, batch, rng):
    """(student output (B, N, C), target (B, N, C) float32, masked (B, N), valid (B,))."""
    images, valid = batch["image"], batch["valid"]
    b = images.shape[0]
    if self.pixels:  # MAE: the normalised input's own patches
      target = patchify(images, self.patch_size)
    elif self.cache_dir:
      target = batch["target"]
    else:  # the teacher is data: evaluated, never differentiated
      target = jax.lax.stop_gradient(self.teacher.apply(teacher_params, images))
    target = target.astype(jnp.float32).reshape(b, self.num_tokens, -1)
    student_images = images.astype(self.student.dtype)
    if self.masked:
      ids_keep, ids_masked, ids_restore = masking.random_masking(rng, b, self.num_tokens,
                                                                 self.keep)
      masked = masking.masked_token_indicator(ids_restore, self.keep)
      pred = self.student.apply({"params": params}, student_images, ids_keep, ids_masked,
                                ids_restore)
    else:
      masked = jnp.zeros((b, self.num_tokens), jnp.float32)
      pred = self.student.apply({"params": params}, student_images)
    return pred, target, masked, valid


def train(config, workdir: str) -> dict:
  """Runs SAMI pretraining (or distillation) in `workdir`; returns the last logged metrics."""
  check_config(config)
  return loop.train(config, workdir, SamiTask(config))
