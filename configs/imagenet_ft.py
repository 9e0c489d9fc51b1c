"""ImageNet-1K classification finetuning of a ViT encoder: the stage the EfficientSAM paper
judges a SAMI backbone by (SAMI-Ti / S / B 76.8 / 82.7 / 84.8 top-1, MAE 75.2 / 81.5 / 83.6).
The whole recipe; `imagenet_ft_vit{t,s,b}.py` pick a size.

  python -m efficientsam_jax.main --config=configs/imagenet_ft_vitt.py:demo --workdir=/tmp/cls
  python -m efficientsam_jax.main --config=configs/imagenet_ft_vits.py --workdir=DIR \
      --config.init_from=SAMI_WORKDIR --config.data.tfds_data_dir=gs://BUCKET/tfds

From the paper: AdamW (0.9, 0.999), weight decay 0.05, 100 epochs, lr 1e-3 at batch 1024
scaled linearly (2.5e-4 per 256 images), 5 warmup epochs then cosine, layer-wise lr decay
0.75 for S and B and none for Ti, RandAugment, mixup 0.8, label smoothing 0.1.
Not restated by the paper, taken from MAE's finetuning code (choices, each a field below):
CutMix alpha 1.0 with switch probability 0.5 (mixing every batch); stochastic depth 0.1; a
global-pool head (mean of the output tokens, LayerNorm, linear; the encoder has no class
token); RandAugment's policy rand-m9-mstd0.5-inc1 (2 ops, magnitude 9, std 0.5); random
erasing with probability 0.25; random resized crop with scale 0.08-1; cosine down to 1e-6;
evaluation on the centred 224 crop of the image resized to 256; head initialised with std
2e-5; no weight decay on biases, norms and the position table.

Variant words: size=vitb|vitt|vits; linprobe (MAE's linear probing: frozen encoder, LARS,
lr 0.1 per 256 images at batch 16384, 90 epochs, 10 warmup, no weight decay, crop and flip
only); demo (6 classes of generated scenes, data/scenes.py: the kind of the large object;
minutes on 2 CPU cores); smoke (seconds, what the tests run).
"""
import ml_collections

from configs import common

VARIANT = dict(size=("vitb", "vitt", "vits"), linprobe=False, demo=False, smoke=False)
LAYER_DECAY = {"vitt": 1.0, "vits": 0.75, "vitb": 0.75}
DEMO_CLASSES = 6  # data/scenes.py VARIED_KINDS


def get_config(arg=None):
  v = common.parse_variant(arg, VARIANT, "configs/imagenet_ft.py")
  c = ml_collections.ConfigDict()
  c.trainer = "classify"
  c.seed = 0
  # overrides: ViTConfig fields that reshape the encoder (a demo model's depth).
  c.model = dict(size=v["size"], num_classes=1000, drop_path=0.1, head_init_std=2e-5,
                 dtype="float32", remat=False, overrides={})
  c.data = dict(
      source="tfds",  # "tfds" | "folder" (path, eval_path: one sub-folder per class) | "demo"
      tfds_name="imagenet2012", tfds_data_dir="", split="train", eval_split="validation",
      path="", eval_path="", image_size=224,
      min_scale=0.08, flip=True,  # random resized crop's area range (0.08, 1)
      randaugment=dict(num_ops=2, magnitude=9.0, magnitude_std=0.5),  # 0 ops: none
      erase_prob=0.25, crop_pct=0.875, eval_batch_size=1000,
      worker_count=8, read_threads=2, prefetch_buffer_size=2,
      # source="demo": generated scenes; training images seed / 0..num_train-1, evaluation
      # images drawn with eval_seed (a disjoint set).
      demo=dict(seed=0, num_train=0, eval_seed=1, num_eval=0, image_size=96))
  c.mixing = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                  label_smoothing=0.1)

  c.batch_size = 1024
  steps_per_epoch = common.IMAGENET_TRAIN_IMAGES // c.batch_size
  c.total_steps = 100 * steps_per_epoch
  c.optimizer = common.adamw(base_lr=2.5e-4, b2=0.999, weight_decay=0.05,
                             warmup_steps=5 * steps_per_epoch)
  c.optimizer.end_lr = 1e-6
  c.optimizer.layer_decay = LAYER_DECAY[v["size"]]
  c.optimizer.kind = "adamw"
  common.run_settings(c)
  c.checkpoint_every = steps_per_epoch
  # Top-1 / top-5 on the evaluation split every epoch and at the end; the best kept.
  c.eval.update(every=steps_per_epoch, best_metric="top1", best_mode="max")

  if v["linprobe"]:
    c.model.update(drop_path=0.0, head_init_std=0.01)
    c.data.update(randaugment=dict(num_ops=0, magnitude=9.0, magnitude_std=0.5),
                  erase_prob=0.0)
    c.mixing.update(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0)
    c.batch_size = 16384
    steps_per_epoch = common.IMAGENET_TRAIN_IMAGES // c.batch_size
    c.total_steps = 90 * steps_per_epoch
    # MAE's probe puts a BatchNorm without affine before the head; the shared loop keeps no
    # batch statistics, so the features go in as fc_norm leaves them (a LayerNorm, frozen at
    # its initial identity affine, as MAE's probe freezes it too): a choice.
    c.optimizer = common.adamw(base_lr=0.1, weight_decay=0.0,
                               warmup_steps=10 * steps_per_epoch)
    c.optimizer.update(kind="lars", momentum=0.9, end_lr=0.0, layer_decay=1.0,
                       frozen=(r"image_encoder/.*", r"fc_norm/.*"))
    c.checkpoint_every = c.eval.every = steps_per_epoch

  if v["demo"] or v["smoke"]:
    # The same recipe on generated scenes: the vitt width with 4 blocks at 96 px (6 x 6
    # tokens). Crops keep at least 35% of the image (a choice: at 8% the large object whose
    # kind is the label is often cropped away).
    c.model.update(num_classes=DEMO_CLASSES, overrides={"depth": 4})
    c.data.update(source="demo", image_size=96, min_scale=0.35, worker_count=0,
                  eval_batch_size=100)
    c.data.demo.update(num_train=2000, num_eval=300, image_size=96)
    c.batch_size = 32
    c.total_steps = 600
    c.optimizer.update(base_lr=None, lr=1e-3 if not v["linprobe"] else 0.1, warmup_steps=50)
    c.log_every = 25
    c.checkpoint_every = c.eval.every = 200
  if v["smoke"]:
    c.model.overrides = {"depth": 2}
    c.data.update(image_size=32, eval_batch_size=8)
    c.data.demo.update(num_train=32, num_eval=12, image_size=32)
    c.batch_size = 8
    c.total_steps = 12
    c.optimizer.warmup_steps = 2
    c.log_every = 1
    c.checkpoint_every = c.eval.every = 6
  return c
