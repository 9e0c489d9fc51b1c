"""The EfficientSAM paper in miniature (python -m efficientsam_jax.experiments.miniature): does
SAMI pretraining give a better encoder than MAE pretraining or none, on built-in data, on 2
CPU cores? Every stage's settings; the stage configs are the project's own recipes
(configs/efficientsam.py, sami.py, imagenet_ft.py: `demo`) with the fields below changed.

1. data: generated scenes (data/scenes.py) in the SA-1B layout: an unlabelled pool (the
   teacher sees its masks, the students only its images), a small labelled subset of it for
   the students' finetuning, validation and test images of the same style, and test images
   of the held-out style (never trained on).
2. teacher: an EfficientSAM (encoder, prompt encoder, mask decoder) trained on the pool.
3. sami / mae: the same smaller student pretrained on the pool images against the teacher's
   encoder features (SAMI) or its own pixels (MAE: configs/sami.py's use_pixel_target), same
   steps, batch and optimiser.
4. finetune: scratch, MAE and SAMI students finetuned as EfficientSAM on the labelled subset,
   identical budget and hyperparameters; box and 1-click mIoU on the test images.
5. classify: the same three encoders finetuned by the classification trainer on a small
   labelled set of generated scenes (6 classes); top-1 on a disjoint test set.
Seeds: each seed reruns 3-5 (pretraining included); the teacher is trained once.

Hyperparameters are the recipes' demo settings above, fixed before any run and not searched:
no score of any split chose them. `eval_split=val` scores the validation images instead of
the test images, for whoever searches. docs/miniature.md records the runs. Variant words:
short (every stage's steps and warmup at 40% (teacher, pretraining) or 50% (finetuning,
classification), everything else as above: what fits 2 busy shared cores; docs/miniature.md),
quick (every stage shrunk to seconds, one seed: what the tests run).
"""
import ml_collections

from configs import common, efficientsam, imagenet_ft, sami

VARIANT = dict(quick=False, short=False)


def get_config(arg=None):
  v = common.parse_variant(arg, VARIANT, "configs/miniature.py")
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)
  c.eval_split = "test"  # "val" while choosing hyperparameters
  c.image_size = 96
  c.data = dict(seed=0, pool=3000, labelled=200, val=100, test=200, heldout=200)

  # The teacher: vitt width, 6 blocks; box or point prompts, no correction rounds.
  t = efficientsam.get_config("size=vitt,demo")
  t.model.update(image_size=c.image_size, encoder_depth=6)
  t.data.update(image_size=c.image_size, mask_size=c.image_size // 4)
  t.prompts.update(box_probability=0.5, refine_iters=0)
  t.total_steps = 1500
  t.checkpoint_every = 500
  t.log_every = 50
  t.eval.every = 0  # stages are scored on the miniature's own splits after training
  c.teacher = t

  # The student: narrower and shallower than the teacher.
  c.student = dict(width=128, depth=4, heads=2)
  overrides = {"width": c.student.width, "depth": c.student.depth,
               "num_heads": c.student.heads}

  # Pretraining, SAMI and MAE alike: pool images (random resized crops from 0.35), the same
  # decoder size, steps, batch and optimiser; only the target (and MAE's decoder kind) differ.
  p = sami.get_config("size=vitt,demo")
  p.student.overrides = overrides
  p.teacher.update(size="model", dtype="float32", random_init=False)
  p.data.update(source="folder", image_size=c.image_size, min_scale=0.35, read_threads=1)
  p.decoder.update(width=128, depth=2, num_heads=4)
  p.batch_size = 32
  p.total_steps = 1000
  p.optimizer.update(lr=1e-3, warmup_steps=100)
  p.log_every = 50
  p.checkpoint_every = 500
  c.sami = p
  c.mae = p.copy_and_resolve_references()
  sami.use_pixel_target(c.mae)

  # Segmentation finetuning of every arm: the labelled subset, identical settings.
  f = efficientsam.get_config("size=vitt,demo")
  f.model.update(image_size=c.image_size, encoder_depth=c.student.depth,
                 encoder_width=c.student.width, encoder_heads=c.student.heads)
  f.data.update(image_size=c.image_size, mask_size=c.image_size // 4, max_masks=3)
  f.prompts.update(box_probability=0.5, refine_iters=0)
  f.total_steps = 400
  f.optimizer.update(lr=1e-3, warmup_steps=40)
  f.eval.every = 0
  f.log_every = 20
  f.checkpoint_every = 400
  c.finetune = f

  # Classification finetuning of every arm: generated 6-class scenes.
  k = imagenet_ft.get_config("size=vitt,demo")
  k.model.overrides = overrides
  k.data.update(image_size=c.image_size)
  k.data.demo.update(num_train=500, eval_seed=2, num_eval=300, image_size=c.image_size)
  k.total_steps = 300
  k.optimizer.update(lr=1e-3, warmup_steps=30)
  k.checkpoint_every = k.eval.every = 100
  k.eval.best_metric = ""  # the final parameters are reported, nothing is selected on test
  c.classify = k
  c.classify_val_seed = 1  # eval_split=val: these images instead of the test ones

  if v["short"]:
    for stage, steps in ((c.teacher, 600), (c.sami, 400), (c.mae, 400), (c.finetune, 200),
                         (c.classify, 150)):
      stage.optimizer.warmup_steps = stage.optimizer.warmup_steps * steps // stage.total_steps
      stage.total_steps = stage.checkpoint_every = steps
    c.teacher.checkpoint_every = c.sami.checkpoint_every = c.mae.checkpoint_every = 200
    c.classify.checkpoint_every = c.classify.eval.every = 50

  if v["quick"]:
    c.seeds = (0,)
    c.image_size = 32
    c.data = dict(seed=0, pool=24, labelled=8, val=4, test=4, heldout=4)
    c.student = dict(width=32, depth=1, heads=1)
    overrides = {"width": 32, "depth": 1, "num_heads": 1}
    # The teacher has the students' shape and budget here, so both compile one step.
    for stage in (c.teacher, c.sami, c.mae, c.finetune, c.classify):
      stage.total_steps = stage.checkpoint_every = 4
      stage.log_every = 2
      stage.optimizer.warmup_steps = 1
      stage.batch_size = 4
    c.teacher.model.update(image_size=32, encoder_depth=1, encoder_width=32, encoder_heads=1)
    c.teacher.data.update(image_size=32, mask_size=8, max_masks=2)
    for pretrain in (c.sami, c.mae):
      pretrain.student.overrides = overrides
      pretrain.decoder.update(width=16, depth=1, num_heads=1)
      pretrain.data.image_size = 32
    c.finetune.model.update(image_size=32, encoder_depth=1, encoder_width=32, encoder_heads=1)
    c.finetune.data.update(image_size=32, mask_size=8, max_masks=2)
    c.classify.model.overrides = overrides
    c.classify.data.update(image_size=32, eval_batch_size=4)
    c.classify.data.demo.update(num_train=8, num_eval=4, image_size=32)
    c.classify.eval.every = 2
  return c
