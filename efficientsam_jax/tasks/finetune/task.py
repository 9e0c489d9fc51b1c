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
import jax
import jax.numpy as jnp
from absl import logging

from efficientsam_jax import data
from efficientsam_jax.data import demo_sa1b
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import model_files, paths
from efficientsam_jax.models import efficient_sam, precision
from efficientsam_jax.tasks.finetune import loss as seg_losses
from efficientsam_jax.tasks.finetune import prompts
from efficientsam_jax.tasks.finetune.model import SIZES, model_config
from efficientsam_jax.train import config_checks, loop, runtime

DEMO_SUBDIR = "demo_data"
INDEX_SUBDIR = "sa1b_index"  # stored .tar member tables (data/tar_index.py)


def check_config(config) -> None:
  """Every value of a finetuning config, before anything is built or written (one place)."""
  config_checks.run_settings(config)
  config_checks.one_of(config, "data.source", ("sa1b", "coco", "demo"))
  config_checks.one_of(config, "model.size", tuple(sorted(SIZES)))
  config_checks.one_of(config, "model.dtype", precision.DTYPES)
  config_checks.multiple_of(config, "model.image_size", 16)
  if config.data.image_size != config.model.image_size:
    raise UserError(f"config.data.image_size ({config.data.image_size}) must equal "
                    f"model.image_size ({config.model.image_size})")
  if config.data.mask_size != config.model.image_size // 4:
    raise UserError(f"config.data.mask_size must be model.image_size / 4 = "
                    f"{config.model.image_size // 4} (the decoder's low-res output), got "
                    f"{config.data.mask_size}")
  if config.model.get("encoder_depth") is not None:
    config_checks.at_least(config, 1, "model.encoder_depth")
  config_checks.at_least(config, 1, "data.max_masks")
  config_checks.in_range(config, "data.max_area_fraction", 0, 1, include_low=False)
  if config.data.source == "demo":
    config_checks.at_least(config, 1, "data.demo.num_train", "data.demo.num_val")
    config_checks.multiple_of(config, "data.demo.image_size", 16)
  config_checks.input_pipeline(config)
  config_checks.in_range(config, "prompts.box_probability", 0, 1)
  config_checks.at_least(config, 0, "prompts.box_noise_std", "prompts.box_max_noise",
                         "prompts.refine_iters", "loss.focal_weight", "loss.dice_weight",
                         "loss.iou_weight")


class EfficientSamTask(loop.Task):
  """EfficientSAM's model, losses, prompt simulation and data for the shared loop."""

  def __init__(self, config):
    super().__init__(config)
    self.model_config = model_config(config.model)
    self.model = efficient_sam.EfficientSam(self.model_config)
    self._held_out = self._check_eval(config.get("eval") or {})
    self._predictor = None

  @staticmethod
  def _check_eval(e):
    """(ground truth, protocol names) of config.eval, read now (mistakes before compiling);
    None when the run does not evaluate."""
    if not e.get("every"):
      return None
    from efficientsam_jax.evaluation import annotations, protocols  # pycocotools: only here
    if not e.get("images") or not e.get("annotations"):
      raise UserError("config.eval.every needs config.eval.images and config.eval.annotations "
                      "(a held-out COCO-format set)")
    names = protocols.parse_protocols(e.get("protocols") or "box")
    gt = annotations.load(e.annotations)
    if e.get("max_images"):
      gt.images = gt.images[:int(e.max_images)]
    return gt, names

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
      return self._pretrained_encoder(path, abstract_params)
    try:
      loaded = model_files.load(path)
    except UserError as e:
      raise UserError(f"config.init_from: {e}") from None
    if loaded.name != self.model_config.name:
      raise UserError(f"config.init_from {path} holds {loaded.name}, but model.size is "
                      f"{self.config.model.size}")
    logging.info("initialised from %s (%s)", path, loaded.name)
    return loaded.params

  def evaluate(self, params, teacher, step):
    """mIoU of each config.eval protocol on the held-out set (`NAME_miou`), as `evaluate`
    computes it; the processes share the images."""
    del teacher, step
    if self._held_out is None:
      return None
    from efficientsam_jax.evaluation import runner  # pylint: disable=import-outside-toplevel
    from efficientsam_jax.inference import Predictor  # pylint: disable=import-outside-toplevel
    host = runtime.host_copy(params)
    if self._predictor is None:  # compiled once; later evaluations swap the parameters in
      self._predictor = Predictor(host, self.model_config.replace(remat=False))
    else:
      self._predictor.params = jax.device_put(host)
    gt, names = self._held_out
    result, _ = runner.evaluate(self._predictor, gt, self.config.eval.images, names,
                                show_progress=False, process_index=jax.process_index(),
                                process_count=jax.process_count())
    sections = result if len(names) > 1 else {names[0]: result}
    return {f"{name}_miou": sections[name]["miou"] for name in names}

  def _pretrained_encoder(self, path: str, abstract_params=None):
    """Fresh parameters from config.seed with the image encoder of a pretraining (or
    classification) workdir in place (its neck too if it has one)."""
    key = jax.random.key(self.config.seed)
    abstract = abstract_params or jax.eval_shape(self.init_params, key)
    try:  # read and checked against the shapes first: a misfit is reported before compiling
      encoder = model_files.encoder_params(path, abstract["image_encoder"])
    except UserError as e:
      try:  # name what the workdir holds, as a released model's misfit does
        held = f" holds {model_files.load_workdir(path).name}:"
      except UserError:
        held = ":"
      raise UserError(f"config.init_from {path}{held} its image encoder does not fit "
                      f"{self.model_config.name} as configured: {e}") from None
    # Only what the workdir does not hold is initialised, which compiles in half the time.
    params = efficient_sam.FAMILY.init_around_encoder(self.model_config, encoder,
                                                      self.config.seed)
    logging.info("initialised the image encoder from %s (%s workdir; %s fresh)", path,
                 model_files.workdir_trainer(path),
                 "prompt encoder and mask decoder" if "neck_0" in encoder
                 else "neck, prompt encoder and mask decoder")
    return params

  def loss_fn(self, params, teacher, batch, rng):
    """Loss of one batch (see batch_spec); metrics of the first and the last prompt round."""
    del teacher
    c, p = self.config, self.config.prompts
    size = c.model.image_size
    apply = lambda *args, **kw: self.model.apply({"params": params}, *args, **kw)
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
      paths.join(workdir, DEMO_SUBDIR), d.demo.num_train, d.demo.num_val, d.demo.image_size,
      d.demo.seed, d.demo.get("style", "plain"))
  logging.info("demo data: train %s; held-out %s with %s", train_dir, val_dir, coco)
  config = config.copy_and_resolve_references()
  config.data.update(source="sa1b", path=train_dir)
  if config.get("eval") and not config.eval.get("annotations"):  # held-out mIoU on its split
    config.eval.update(images=val_dir, annotations=coco)
  return config, val_dir


def train(config, workdir: str) -> dict:
  """Runs EfficientSAM finetuning in `workdir`; returns the last logged metrics."""
  check_config(config)
  runtime.check_same_trainer(config, workdir)  # before the demo data goes into the workdir
  config, val_dir = with_demo_data(config, workdir)
  if not config.data.get("index_dir"):
    config = config.copy_and_resolve_references()
    config.data.index_dir = paths.join(workdir, INDEX_SUBDIR)
  record = loop.train(config, workdir, EfficientSamTask(config))
  if val_dir and not config.compile_only and jax.process_index() == 0:
    print(f"held-out demo images: python -m efficientsam_jax.evaluate --checkpoint={workdir} "
          f"--images={val_dir} --annotations={paths.join(val_dir, 'instances.json')} "
          f"--prompt=box,point1,point3 --detections={paths.join(val_dir, 'detections.json')}")
  return record
