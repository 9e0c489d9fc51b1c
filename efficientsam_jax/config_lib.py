"""Building blocks of the experiment configs in `configs/` (one file per experiment).

A config file's `get_config(arg)` takes the variant string after the colon:
`configs/sami_vitb.py:demo` or `configs/sami_vitb.py:demo,teacher=vit_b`. `demo` shrinks the
same recipe to built-in data that runs anywhere in minutes; `demo,smoke` shrinks it to seconds
for tests.
"""
import ml_collections
from ml_collections import config_dict

from efficientsam_jax import data

IMAGENET_TRAIN_IMAGES = 1_281_167


def parse_variant(arg: str | None) -> dict:
  """'demo,teacher=vit_b' -> {'demo': True, 'teacher': 'vit_b'}."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    out[key.strip()] = value.strip() if sep else True
  return out


def sami_config(size: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The SAMI recipe (EfficientSAM paper) for a student of `size` (vitt / vits / vitb)."""
  variant = parse_variant(arg)
  c = ml_collections.ConfigDict()
  c.trainer = "sami"
  c.seed = 0

  c.student = dict(size=size, dtype="float32", overrides={})
  c.decoder = dict(kind="cross", width=512, depth=8, num_heads=16, mlp_ratio=4.0)
  # The teacher file is required for the real recipe: a released SAM checkpoint.
  c.teacher = dict(size=variant.get("teacher", "vit_h"), checkpoint=config_dict.placeholder(str),
                   output="neck", dtype="bfloat16", random_init=False, seed=0)
  c.mask_ratio = 0.75
  c.loss = dict(kind="mse", masked_only=False, normalise_target=False)

  c.data = data.default_data_config()  # ImageNet-1K train through tfds, 224 crops
  c.data.worker_count = 8

  c.batch_size = 4096
  epochs, warmup_epochs = 400, 40
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // c.batch_size
  c.total_steps = epochs * steps_per_epoch
  c.optimizer = dict(
      base_lr=1.5e-4,  # per 256 images: 2.4e-3 at batch 4096
      lr=config_dict.placeholder(float), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
      warmup_steps=warmup_epochs * steps_per_epoch, decay="cosine", end_lr=0.0,
      grad_clip_norm=config_dict.placeholder(float),
      # No weight decay on biases, norm scales, position tables and the mask token.
      no_decay=(r".*/bias", r".*/scale", r".*pos_embed", r".*mask_token"),
      frozen=())

  c.mesh = dict(data=-1, fsdp=1)
  c.sharding = dict(rules=(), fsdp_min_size=2**16)
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.init_from = config_dict.placeholder(str)
  c.nonfinite_policy = "stop"  # or "skip": a non-finite step leaves the state untouched
  c.compile_only = False  # compile the step from shapes, print memory/FLOPs, exit

  if variant.get("demo"):
    # Same recipe, shrunk: generated images, a tiny fixed-seed teacher, a shallow student of
    # the same width, a few hundred steps on a laptop CPU.
    c.teacher.update(size=variant.get("teacher", "tiny"), random_init=True, dtype="float32")
    c.student.overrides = {"depth": 4}
    c.decoder.update(width=256, depth=2, num_heads=8)
    c.data.update(source="demo", image_size=96, worker_count=0, num_demo_images=256)
    c.batch_size = 16
    c.total_steps = 300
    c.optimizer.update(lr=1e-3, warmup_steps=20)
    c.log_every = 10
    c.checkpoint_every = 100
  if variant.get("smoke"):
    # demo shrunk further for tests and CI: seconds per run, same code paths.
    c.student.overrides = {"depth": 2}
    c.decoder.update(width=64, depth=1, num_heads=2)
    c.data.update(image_size=32, num_demo_images=64)
    c.batch_size = 8
    c.total_steps = 40
    c.log_every = 1
    c.checkpoint_every = 10
  return c
