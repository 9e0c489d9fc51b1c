"""EfficientSAM finetuning for promptable segmentation (SA-1B or COCO-format data).

Encoder, prompt encoder and mask decoder are trained together. Per image, up to K masks are
prompted with a jittered box or one point inside the mask, then `prompts.refine_iters` more
rounds add a correction point from the error region of the previous prediction (up to the
6-point limit); every round is decoded against the same image embedding and adds its loss
(20 focal + dice on the best of 3 candidates + IoU MSE), averaged over rounds. The mesh,
optimiser, checkpoints, preemption, non-finite guard and metrics are the shared loop's
(`loop.py`). Resume order: the workdir's checkpoint, else `config.init_from` (a workdir of
another trainer, SAMI / MAE pretraining or classification: its encoder, the rest fresh from
`config.seed`; a released .pt, JAX checkpoint or finetuning workdir: everything), else fresh.
"""
import os

import jax
import jax.numpy as jnp
from absl import logging

from efficientsam_jax import data
from efficientsam_jax.data import demo_sa1b
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import model_files
from efficientsam_jax.models import efficient_sam, precision
from efficientsam_jax.tasks.finetune import loss as seg_losses
from efficientsam_jax.tasks.finetune import prompts
from efficientsam_jax.tasks.finetune.model import SIZES, model_config
from efficientsam_jax.train import loop

DEMO_SUBDIR = "demo_data"


class EfficientSamTask(loop.Task):
  """EfficientSAM's model, losses, prompt simulation and data for the shared loop."""

  def __init__(self, config):
    super().__init__(config)
    if config.data.source not in ("sa1b", "coco"):
      raise UserError(f"data.source must be 'sa1b', 'coco' or 'demo', got {config.data.source!r}")
    if config.model.image_size % 16 or config.data.image_size != config.model.image_size:
      raise UserError(f"data.image_size ({config.data.image_size}) must equal model.image_size "
                      f"({config.model.image_size}), a multiple of 16")
    if config.data.mask_size != config.model.image_size // 4:
      raise UserError(f"data.mask_size must be model.image_size / 4 = "
                      f"{config.model.image_size // 4} (the decoder's low-res output)")
    if config.model.size not in SIZES:
      raise UserError(f"model.size must be one of {sorted(SIZES)}")
    if config.model.get("dtype", "float32") not in precision.DTYPES:
      raise UserError(f"model.dtype must be one of {', '.join(precision.DTYPES)}, got "
                      f"{config.model.dtype!r}")
    self.model_config = model_config(config.model)
    self.model = efficient_sam.EfficientSam(self.model_config)

  def init_params(self, rng):
    return self.model.init(rng, *efficient_sam.FAMILY.init_args(self.model_config),
                           method=self.model.init_all)["params"]

  def frozen(self):
    return efficient_sam.FAMILY.buffers + super().frozen()

  def batch_spec(self):
    b, d = self.config.batch_size, self.config.data
    s, m, k = d.image_size, d.mask_size, d.max_masks
    return {"image": ((b, s, s, 3), jnp.float32), "masks": ((b, k, m, m), jnp.uint8),
            "boxes": ((b, k, 4), jnp.float32), "mask_valid": ((b, k), jnp.int32),
            "valid": ((b,), jnp.int32)}

  def make_iterator(self):
    return data.make_segmentation_iterator(self.config)

  def init_from_params(self, abstract_params):
    path = self.config.get("init_from")
    if not path:
      return None
    if model_files.workdir_trainer(path) not in (None, "efficientsam"):
      return self._pretrained_encoder(path)
    try:
      loaded = model_files.load(path)
    except UserError as e:
      raise UserError(f"config.init_from: {e}") from None
    if loaded.name != self.model_config.name:
      raise UserError(f"config.init_from {path} holds {loaded.name}, but model.size is "
                      f"{self.config.model.size}")
    logging.info("initialised from %s (%s)", path, loaded.name)
    return loaded.params

  def _pretrained_encoder(self, path: str):
    """Fresh parameters from config.seed with the image encoder of a pretraining (or
    classification) workdir in place (its neck too if it has one)."""
    fresh = jax.device_get(jax.jit(self.init_params)(jax.random.key(self.config.seed)))
    try:
      encoder = model_files.encoder_params(path, fresh["image_encoder"])
    except UserError as e:
      try:  # name what the workdir holds, as a released model's misfit does
        held = f" holds {model_files.load_workdir(path).name}:"
      except UserError:
        held = ":"
      raise UserError(f"config.init_from {path}{held} its image encoder does not fit "
                      f"{self.model_config.name} as configured: {e}") from None
    fresh["image_encoder"] = {**fresh["image_encoder"], **encoder}
    logging.info("initialised the image encoder from %s (%s workdir; %s fresh)", path,
                 model_files.workdir_trainer(path),
                 "prompt encoder and mask decoder" if "neck_0" in encoder
                 else "neck, prompt encoder and mask decoder")
    return fresh

  def loss_fn(self, params, teacher, batch, step):
    """Loss of one batch (see batch_spec); metrics of the first and the last prompt round."""
    del teacher
    c, p = self.config, self.config.prompts
    size = c.model.image_size
    apply = lambda *args, **kw: self.model.apply({"params": params}, *args, **kw)
    rng = jax.random.fold_in(jax.random.key(c.seed), step)
    masks = batch["masks"].astype(bool)
    weights = batch["mask_valid"] * batch["valid"][:, None]
    embeddings = apply(batch["image"], method=self.model.encode)
    # As many point slots as the rounds can fill (a box's 2, one per correction round): the
    # model pads shorter prompts itself, its padding tokens computed once and counted
    # (EfficientSam.prompt_tokens), which leaves the function unchanged and the decoder
    # fewer tokens.
    num_points = min(self.model_config.max_num_points, 2 + p.refine_iters)
    points, labels, slot = prompts.initial_prompts(
        jax.random.fold_in(rng, 0), batch["boxes"], masks, size, num_points,
        p.box_probability, p.box_noise_std, p.box_max_noise)
    rounds = 1 + p.refine_iters
    total, metrics = 0.0, {}
    for r in range(rounds):
      logits, iou = apply(embeddings, points, labels.astype(jnp.float32), (size, size),
                          method=self.model.predict_masks)
      loss, parts, best = seg_losses.multimask_loss(
          logits, iou, masks, weights, c.loss.focal_weight, c.loss.dice_weight,
          c.loss.iou_weight)
      total += loss
      if r == 0:
        metrics.update({f"{k}_first": v for k, v in parts.items()})
      if r == rounds - 1:
        metrics.update(parts)
      else:
        chosen = jnp.take_along_axis(logits, best[..., None, None, None], axis=2)[:, :, 0]
        new_point, new_label = prompts.correction_point(
            jax.random.fold_in(rng, r + 1), jax.lax.stop_gradient(chosen) > 0, masks, size,
            p.negative_points)
        points, labels, slot = prompts.add_point(points, labels, slot, new_point, new_label)
    metrics["valid_images"] = jnp.sum(batch["valid"])
    metrics["masks_per_image"] = jnp.sum(weights) / jnp.maximum(jnp.sum(batch["valid"]), 1)
    return total / rounds, metrics


def with_demo_data(config, workdir: str):
  """A `data.source="demo"` config -> a copy that reads the generated SA-1B-format set,
  written (once) into WORKDIR/demo_data (every process writes the same bytes); any other
  config unchanged. Returns (config, held-out folder or None)."""
  d = config.data
  if d.source != "demo":
    return config, None
  train_dir, val_dir, coco = demo_sa1b.ensure_demo_dataset(
      os.path.join(workdir, DEMO_SUBDIR), d.demo.num_train, d.demo.num_val, d.demo.image_size,
      d.demo.seed, d.demo.get("style", "plain"))
  logging.info("demo data: train %s; held-out %s with %s", train_dir, val_dir, coco)
  config = config.copy_and_resolve_references()
  config.data.update(source="sa1b", path=train_dir)
  return config, val_dir


def train(config, workdir: str) -> dict:
  """Runs EfficientSAM finetuning in `workdir`; returns the last logged metrics."""
  config, val_dir = with_demo_data(config, workdir)
  record = loop.train(config, workdir, EfficientSamTask(config))
  if val_dir and jax.process_index() == 0:
    print(f"held-out demo images: python -m efficientsam_jax.evaluate --checkpoint={workdir} "
          f"--images={val_dir} --annotations={os.path.join(val_dir, 'instances.json')} "
          "--prompt=box")
  return record
