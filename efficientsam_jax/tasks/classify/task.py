"""Classification finetuning of a ViT encoder (the stage the EfficientSAM paper judges a SAMI
backbone by: ImageNet-1K top-1), and MAE's linear probing, top to bottom.

Model: the encoder, the mean of its tokens, LayerNorm, a linear head (tasks/classify/model.py).
Data: MAE's training view (random resized crop, flip, RandAugment, random erasing), then in
the step mixup / CutMix with label smoothing (mixing.py), cross-entropy against the soft
targets; stochastic depth in the encoder. Layer-wise learning-rate decay and the optimiser
are train/optim.py's. Every `config.eval.every` steps and at the end the loop asks for
top-1 / top-5 on the evaluation split (`eval/top1`, `eval/top5`, `eval/loss` in
metrics.jsonl and TensorBoard) and keeps the best checkpoint by `config.eval.best_metric` in
WORKDIR/best (train/eval_schedule.py).

Resume order: the latest checkpoint in the workdir, else `config.init_from` (the image encoder
of a SAMI / MAE / finetuning / classification workdir, a JAX checkpoint, an EfficientSAM .pt,
or a timm / MAE ViT .pth: model_files.encoder_params; the head and norm fresh from
`config.seed`), else from scratch.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from efficientsam_jax import data
from efficientsam_jax.data import scenes
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import checkpoints, model_files
from efficientsam_jax.models import precision, vit
from efficientsam_jax.tasks.classify import mixing
from efficientsam_jax.tasks.classify.model import Classifier
from efficientsam_jax.train import loop, sharding

EVAL_METRICS = ("top1", "top5", "loss")  # logged as eval/NAME


def soft_cross_entropy(logits, targets):
  """(B, C) logits, (B, C) target distributions -> (B,) cross-entropy."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def count_correct(logits, labels, valid, k: int):
  """How many valid rows have their label among the k highest logits (ties: lower index)."""
  top = jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
  return jnp.sum(jnp.any(top == labels[:, None], axis=-1) * valid)


def build_model(config) -> Classifier:
  m = config.model
  if m.dtype not in precision.DTYPES:
    raise UserError(f"config.model.dtype must be one of {', '.join(precision.DTYPES)}, got "
                    f"{m.dtype!r}")
  if m.size not in vit.VIT_SIZES:
    raise UserError(f"config.model.size must be one of {sorted(vit.VIT_SIZES)}, got {m.size!r}")
  encoder = vit.ViTConfig.from_name(m.size, neck_channels=0, drop_path=float(m.drop_path),
                                    **dict(m.get("overrides", {})))
  return Classifier(encoder, int(m.num_classes), float(m.head_init_std),
                    precision.compute_dtype(m.dtype), bool(m.remat))


class ClassifyTask(loop.Task):
  """Classifier, mixed soft-target loss, labelled data and top-k evaluation."""

  def __init__(self, config):
    super().__init__(config)
    if config.data.source == "demo" and config.model.num_classes != len(scenes.VARIED_KINDS):
      raise UserError(f"the demo task has {len(scenes.VARIED_KINDS)} classes; "
                      f"config.model.num_classes is {config.model.num_classes}")
    if config.eval.best_metric and config.eval.best_metric not in EVAL_METRICS:
      raise UserError(f"config.eval.best_metric must be one of {', '.join(EVAL_METRICS)}, got "
                      f"{config.eval.best_metric!r}")
    if config.data.eval_batch_size % jax.device_count():
      raise UserError(f"data.eval_batch_size {config.data.eval_batch_size} is not divisible "
                      f"by the {jax.device_count()} devices")
    self.model = build_model(config)
    self._eval_step = None

  def init_params(self, rng):
    size = self.config.data.image_size
    return self.model.init(rng, jnp.zeros((1, size, size, 3)))["params"]

  def batch_spec(self):
    b, s = self.config.batch_size, self.config.data.image_size
    return {"image": ((b, s, s, 3), jnp.float32), "label": ((b,), jnp.int32),
            "valid": ((b,), jnp.int32)}

  def make_iterator(self):
    return data.make_classification_iterator(self.config)

  def init_from_params(self, abstract_params):
    del abstract_params
    path = self.config.get("init_from")
    if not path:
      return None
    fresh = jax.device_get(jax.jit(self.init_params)(jax.random.key(self.config.seed)))
    if model_files.workdir_trainer(path) == "classify":
      return self._whole(path, fresh)
    try:
      encoder = model_files.encoder_params(path, fresh["image_encoder"])
    except UserError as e:
      raise UserError(f"config.init_from: the image encoder does not fit the configured "
                      f"model ({self.config.model.size}): {e}") from None
    logging.info("initialised the image encoder from %s; fc_norm and head fresh", path)
    return {**fresh, "image_encoder": encoder}

  def _whole(self, path, fresh):
    """Every parameter of another classification workdir (same model and classes)."""
    params = jax.tree.map(np.asarray, checkpoints.latest_workdir_params(path))
    if jax.tree.map(np.shape, params) != jax.tree.map(np.shape, fresh):
      raise UserError(f"config.init_from {path}: a classifier of another shape (size or "
                      "number of classes)")
    return params

  def loss_fn(self, params, teacher, batch, rng):
    """Soft-target cross-entropy of one mixed batch (see batch_spec), averaged over valid
    examples."""
    del teacher
    c = self.config
    key_mix, key_drop = jax.random.split(rng)
    mix = c.mixing
    images, targets = mixing.mix_batch(
        key_mix, batch["image"], batch["label"], c.model.num_classes,
        mixup_alpha=mix.mixup_alpha, cutmix_alpha=mix.cutmix_alpha, prob=mix.prob,
        switch_prob=mix.switch_prob, smoothing=mix.label_smoothing)
    logits = self.model.apply({"params": params}, images, False, rngs={"dropout": key_drop})
    valid = batch["valid"].astype(jnp.float32)
    loss = jnp.sum(soft_cross_entropy(logits, targets) * valid) / jnp.maximum(valid.sum(), 1)
    return loss, {"valid_images": jnp.sum(batch["valid"])}

  def evaluate(self, params, teacher, step) -> dict:
    """top1, top5 (fractions) and loss (mean cross-entropy) over the whole evaluation split,
    in order, no augmentation."""
    del teacher, step
    mesh = jax.tree.leaves(params)[0].sharding.mesh  # the training mesh the loop placed
    if self._eval_step is None:
      def step(params, batch):
        logits = self.model.apply({"params": params}, batch["image"])
        labels, valid = batch["label"], batch["valid"]
        loss = jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, logits.shape[-1])
        return jnp.stack([count_correct(logits, labels, valid, 1),
                          count_correct(logits, labels, valid, 5),
                          -jnp.sum(loss.sum(-1) * valid), jnp.sum(valid)]).astype(jnp.float32)
      self._eval_step = jax.jit(step, out_shardings=sharding.replicated(mesh))
    num_batches, batches = data.classification_eval_batches(self.config)
    totals = np.zeros(4, np.float64)
    for _ in range(num_batches):
      batch = sharding.host_batch_to_global(next(batches), mesh)
      totals += np.asarray(jax.device_get(self._eval_step(params, batch)), np.float64)
    count = max(totals[3], 1.0)
    return {"top1": totals[0] / count, "top5": totals[1] / count, "loss": totals[2] / count}


def train(config, workdir: str) -> dict:
  """Runs classification finetuning (or linear probing) in `workdir`; returns the last
  logged metrics."""
  return loop.train(config, workdir, ClassifyTask(config))
