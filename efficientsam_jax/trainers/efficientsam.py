"""EfficientSAM finetuning for promptable segmentation (SA-1B or COCO-format data).

Encoder, prompt encoder and mask decoder are trained together. Per image, up to K masks are
prompted with a jittered box or one point inside the mask, then `prompts.refine_iters` more
rounds add a correction point from the error region of the previous prediction (up to the
6-point limit); every round is decoded against the same image embedding and adds its loss
(20 focal + dice on the best of 3 candidates + IoU MSE), averaged over rounds. The mesh,
optimiser, checkpoints, preemption, non-finite guard and metrics are the shared loop's
(`loop.py`). Resume order: the workdir's checkpoint, else `config.init_from` (a SAMI workdir:
encoder only; a released .pt, JAX checkpoint or finetuning workdir: everything), else fresh.
"""
import os

import jax
import jax.numpy as jnp
from absl import logging

from efficientsam_jax import data, model_files, prompts
from efficientsam_jax.data import demo_sa1b
from efficientsam_jax.errors import UserError
from efficientsam_jax.losses import segmentation as seg_losses
from efficientsam_jax.models import efficient_sam as es
from efficientsam_jax.models import precision
from efficientsam_jax.trainers import loop

DEMO_SUBDIR = "demo_data"


def model_config(config) -> es.EfficientSamConfig:
  m = config.model
  return es.EfficientSamConfig(encoder=m.size, image_size=m.image_size,
                               encoder_depth=m.get("encoder_depth"),
                               dtype=m.get("dtype", "float32"), remat=bool(m.get("remat", False)))


class EfficientSamTask(loop.Task):
  """EfficientSAM's model, losses, prompt simulation and data for the shared loop."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    if config.model.image_size % 16 or config.data.image_size != config.model.image_size:
      raise UserError(f"data.image_size ({config.data.image_size}) must equal model.image_size "
                      f"({config.model.image_size}), a multiple of 16")
    if config.data.mask_size != config.model.image_size // 4:
      raise UserError(f"data.mask_size must be model.image_size / 4 = "
                      f"{config.model.image_size // 4} (the decoder's low-res output)")
    if config.model.size not in es.MODELS.values():
      raise UserError(f"model.size must be one of {sorted(es.MODELS.values())}")
    if config.model.get("dtype", "float32") not in precision.DTYPES:
      raise UserError(f"model.dtype must be one of {', '.join(precision.DTYPES)}, got "
                      f"{config.model.dtype!r}")
    self.model = es.EfficientSam(model_config(config))

  def init_params(self, rng):
    s = self.config.model.image_size
    return self.model.init(rng, jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 1, 2)),
                           jnp.zeros((1, 1, 1)), scale_to_original_image_size=False)["params"]

  def batch_spec(self):
    b, d = self.config.batch_size, self.config.data
    s, m, k = d.image_size, d.mask_size, d.max_masks
    return {"image": ((b, s, s, 3), jnp.float32), "masks": ((b, k, m, m), jnp.uint8),
            "boxes": ((b, k, 4), jnp.float32), "mask_valid": ((b, k), jnp.int32),
            "valid": ((b,), jnp.int32)}

  def make_iterator(self):
    d = self.config.data
    if d.source == "demo":
      # Generated once into the workdir (every process writes the same bytes).
      train_dir, val_dir, coco = demo_sa1b.ensure_demo_dataset(
          os.path.join(self.workdir, DEMO_SUBDIR), d.demo.num_train, d.demo.num_val,
          d.demo.image_size, d.demo.seed)
      logging.info("demo data: train %s; held-out %s with %s", train_dir, val_dir, coco)
      d.source, d.path = "sa1b", train_dir  # values only: the locked config allows it
    return data.make_segmentation_iterator(self.config)

  def init_from_params(self, abstract_params):
    path = self.config.get("init_from")
    if not path:
      return None
    try:
      name, params = model_files.load(path)
    except model_files.ModelFileError as e:
      raise UserError(f"config.init_from: {e}") from None
    if es.MODELS[name] != self.config.model.size:
      raise UserError(f"config.init_from {path} holds {name}, but model.size is "
                      f"{self.config.model.size}")
    logging.info("initialised from %s (%s)", path, name)
    return params

  def loss_fn(self, params, frozen, batch, step):
    """Loss of one batch (see batch_spec); metrics of the first and the last prompt round."""
    del frozen
    c, p = self.config, self.config.prompts
    size = c.model.image_size
    apply = lambda *args, **kw: self.model.apply({"params": params}, *args, **kw)
    rng = jax.random.fold_in(jax.random.key(c.seed), step)
    masks = batch["masks"].astype(bool)
    weights = batch["mask_valid"] * batch["valid"][:, None]
    embeddings = apply(batch["image"], method=es.EfficientSam.encode)
    num_points = self.model.config.max_num_points
    points, labels, slot = prompts.initial_prompts(
        jax.random.fold_in(rng, 0), batch["boxes"], masks, size, num_points,
        p.box_probability, p.box_noise_std, p.box_max_noise)
    rounds = 1 + p.refine_iters
    total, metrics = 0.0, {}
    for r in range(rounds):
      logits, iou = apply(embeddings, points, labels.astype(jnp.float32), (size, size),
                          method=es.EfficientSam.predict_masks)
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


def train(config, workdir: str) -> dict:
  """Runs EfficientSAM finetuning in `workdir`; returns the last logged metrics."""
  task = EfficientSamTask(config, workdir)
  record = loop.train(config, workdir, task)
  if config.data.get("demo") and config.data.path.endswith(os.path.join(DEMO_SUBDIR, "train")):
    val = os.path.join(workdir, DEMO_SUBDIR, "val")
    print(f"held-out demo images: python -m efficientsam_jax.evaluate --checkpoint={workdir} "
          f"--images={val} --annotations={os.path.join(val, 'instances.json')} --prompt=box")
  return record
