"""Building blocks of the experiment configs in `configs/` (one file per experiment).

A config file's `get_config(arg)` takes the variant string after the colon:
`configs/sami_vitb.py:demo` or `configs/sami_vitb.py:demo,teacher=vit_b`. `demo` shrinks the
same recipe to built-in data that runs anywhere in minutes; `demo,smoke` shrinks it to seconds
for tests.
"""
import ml_collections
from ml_collections import config_dict

from efficientsam_jax import data
from efficientsam_jax.models import tiny_vit

IMAGENET_TRAIN_IMAGES = 1_281_167


def parse_variant(arg: str | None) -> dict:
  """'demo,teacher=vit_b' -> {'demo': True, 'teacher': 'vit_b'}."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    out[key.strip()] = value.strip() if sep else True
  return out


def add_run_settings(c: ml_collections.ConfigDict) -> None:
  """Mesh, sharding, logging, checkpointing and guard settings every trainer reads."""
  c.mesh = dict(data=-1, fsdp=1)
  c.sharding = dict(rules=(), fsdp_min_size=2**16)
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.init_from = config_dict.placeholder(str)
  c.nonfinite_policy = "stop"  # or "skip": a non-finite step leaves the state untouched
  c.compile_only = False  # compile the step from shapes, print memory/FLOPs, exit


def teacher_config(variant: dict) -> ml_collections.ConfigDict:
  """`config.teacher`: the frozen SAM image encoder (size from `teacher=` in the variant)."""
  return ml_collections.ConfigDict(dict(
      size=variant.get("teacher", "vit_h"),
      # Required for the real recipes: a released SAM checkpoint (or a converted directory).
      checkpoint=config_dict.placeholder(str),
      output="neck", dtype="bfloat16", random_init=False, seed=0,
      # A directory written by `python -m efficientsam_jax.cache_teacher` for this config:
      # targets are read from it and no teacher is loaded or run.
      cache_dir=config_dict.placeholder(str)))


def shrink_to_demo(c: ml_collections.ConfigDict, variant: dict, *, image_size: int,
                   batch_size: int, total_steps: int, lr: float) -> None:
  """`demo` variants of the teacher-driven configs: the built-in generated images at
  `image_size`, a tiny fixed-seed random SAM teacher (no downloads, no weights), a short run
  logged every 10 steps."""
  c.teacher.update(size=variant.get("teacher", "tiny"), random_init=True, dtype="float32")
  c.data.update(source="demo", image_size=image_size, worker_count=0, num_demo_images=256)
  c.batch_size = batch_size
  c.total_steps = total_steps
  c.optimizer.update(lr=lr, warmup_steps=20)
  c.log_every = 10
  c.checkpoint_every = 100


def sami_config(size: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The SAMI recipe (EfficientSAM paper) for a student of `size` (vitt / vits / vitb)."""
  variant = parse_variant(arg)
  c = ml_collections.ConfigDict()
  c.trainer = "sami"
  c.seed = 0

  # dtype: compute dtype of the student's matrix products, "float32" | "bfloat16" (parameters
  # and optimiser state stay float32, models/precision.py); remat: recompute the student's
  # encoder and decoder blocks in the backward pass (less activation memory, ~1/3 more compute).
  c.student = dict(kind="vit", size=size, dtype="float32", remat=False, overrides={})
  c.decoder = dict(kind="cross", width=512, depth=8, num_heads=16, mlp_ratio=4.0)
  c.teacher = teacher_config(variant)
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

  add_run_settings(c)

  if variant.get("demo"):
    # Same recipe, shrunk: generated images, a tiny fixed-seed teacher, a shallow student of
    # the same width, a few hundred steps on a laptop CPU.
    shrink_to_demo(c, variant, image_size=96, batch_size=16, total_steps=300, lr=1e-3)
    c.student.overrides = {"depth": 4}
    c.decoder.update(width=256, depth=2, num_heads=8)
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


SA1B_IMAGES = 11_000_000  # ~11M images in SA-1B


def distill_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """MobileSAM's decoupled distillation as a SAMI config: no masking, no decoder; the
  student's encoder and neck at 1024 regress the teacher's 256x64x64 image embedding (MSE).

  Variant keys: `student=tiny_vit` (default, MobileSAM's encoder) | `vitt` | `vits`
  (EfficientSAM's), `teacher=vit_h|vit_l|vit_b`, `demo`, `smoke`.
  """
  variant = parse_variant(arg)
  student = variant.get("student", "tiny_vit")
  c = ml_collections.ConfigDict()
  c.trainer = "sami"
  c.seed = 0
  c.student = dict(kind="tiny_vit" if student == "tiny_vit" else "vit",
                   size="vitt" if student == "tiny_vit" else student, dtype="float32",
                   overrides={})
  c.decoder = dict(kind="none")
  c.teacher = teacher_config(variant)
  c.mask_ratio = 0.0
  c.loss = dict(kind="mse", masked_only=False, normalise_target=False)

  # SAM's own view of each image: longest side to 1024, zero padding, no augmentation, so the
  # targets can be cached once (teacher.cache_dir). data.path: a folder of SA-1B images.
  c.data = data.default_data_config()
  c.data.update(source="folder", image_size=1024, crop="longest_side", flip=False,
                worker_count=8)

  # MobileSAM: 8 epochs over 1% of SA-1B on one GPU. It does not publish batch size or
  # optimiser; AdamW (0.9, 0.999), weight decay 0.01, lr 1e-3 at batch 64, short warmup
  # and cosine decay are our choices.
  c.batch_size = 64
  c.total_steps = 8 * (SA1B_IMAGES // 100) // c.batch_size
  c.optimizer = dict(
      lr=1e-3, base_lr=config_dict.placeholder(float), b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.01, warmup_steps=250, decay="cosine", end_lr=0.0,
      grad_clip_norm=config_dict.placeholder(float),
      no_decay=(r".*/bias", r".*/scale", r".*pos_embed", r".*attention_biases"),
      # TinyViT's BatchNorm statistics are buffers (it runs BN with stored statistics).
      frozen=(r".*" + tiny_vit.NON_TRAINABLE[0],))

  # init_from: a model whose image encoder fits the student (mobile_sam.pt for TinyViT, an
  # EfficientSAM .pt or a SAMI workdir for a ViT); unset: fresh weights.
  add_run_settings(c)

  if variant.get("demo"):
    # Built-in images at 64 px (a 4x4 embedding grid), the tiny fixed-seed SAM teacher, a
    # few minutes on 2 CPU cores. The TinyViT keeps MobileSAM's shape (its parameters do not
    # depend on the input size), so a demo workdir converts to a mobile_sam checkpoint.
    shrink_to_demo(c, variant, image_size=64, batch_size=8, total_steps=300, lr=1e-3)
    if c.student.kind == "vit":
      c.student.overrides = {"depth": 4}
  if variant.get("smoke"):
    # demo shrunk for tests and CI: seconds per run, same code paths.
    c.data.update(image_size=32, num_demo_images=32)
    c.total_steps = 20
    c.optimizer.update(lr=2e-3, warmup_steps=5)
    c.log_every = 1
    c.checkpoint_every = 10
  return c


def efficientsam_config(size: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """EfficientSAM finetuning (paper recipe) of a `size` (vitt / vits) model on SA-1B."""
  variant = parse_variant(arg)
  c = ml_collections.ConfigDict()
  c.trainer = "efficientsam"
  c.seed = 0
  # encoder_depth: None = released 12 blocks (a shrunk demo model is not in released format)
  # dtype: compute dtype of the matrix products, "float32" | "bfloat16" (parameters and
  # optimiser state stay float32, models/precision.py); remat: recompute each encoder block in
  # the backward pass (less activation memory, ~1/3 more encoder compute).
  c.model = dict(size=size, image_size=1024, encoder_depth=config_dict.placeholder(int),
                 dtype="float32", remat=False)
  c.data = dict(
      source="sa1b",  # "sa1b" (path: folders and/or .tar shards) | "coco" | "demo"
      path="", annotations="",  # annotations: COCO instances JSON (source="coco")
      image_size=1024, mask_size=256,  # mask_size: the decoder's low-res output, image_size/4
      max_masks=64, max_area_fraction=0.9,  # SAM: masks over 90% of the image dropped, <=64
      worker_count=8, read_threads=2, prefetch_buffer_size=2,
      demo=dict(num_train=0, num_val=0, image_size=128, seed=0))
  c.prompts = dict(
      box_probability=0.5,  # first prompt: jittered box, else one point inside the mask
      box_noise_std=0.1, box_max_noise=20.0,  # x side of the box; pixels
      refine_iters=4,  # correction points after the first prompt (a box leaves room for 4)
      negative_points=False)  # spilled-region points as label 0 (see prompts.py)
  c.loss = dict(focal_weight=20.0, dice_weight=1.0, iou_weight=1.0)

  c.batch_size = 128
  c.total_steps = 5 * SA1B_IMAGES // c.batch_size  # 5 epochs
  c.optimizer = dict(
      lr=4e-4, base_lr=config_dict.placeholder(float), b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.1, warmup_steps=0, decay="linear", end_lr=0.0,
      grad_clip_norm=config_dict.placeholder(float),
      no_decay=(r".*/bias", r".*/scale", r".*pos_embed", r"prompt_encoder/.*",
                r"mask_decoder/(iou_token|mask_tokens)/.*"),
      # The prompt encoder's Fourier matrix is a buffer in the release: no update, no decay.
      frozen=(r"prompt_encoder/pe_layer/positional_encoding_gaussian_matrix",))

  # init_from: a SAMI workdir (encoder only), a released EfficientSAM .pt, a JAX checkpoint or
  # a finetuning workdir (model_files.load); unset: fresh weights.
  add_run_settings(c)

  if variant.get("demo"):
    # Generated SA-1B-format shapes written into WORKDIR/demo_data (train + held-out val
    # with a COCO JSON); vitt width with 4 blocks at 96 px, trained from scratch. Tuned for
    # box prompts on 2 CPU cores: 9 in 10 first prompts are boxes, no correction rounds.
    image_size = int(variant.get("image_size", 96))
    c.model.update(image_size=image_size, encoder_depth=int(variant.get("depth", 4)))
    # The generated images hold at most 4 shapes (demo_sa1b.MAX_SHAPES): 4 mask slots, none
    # empty. lr 1e-3 learned faster than 2e-3 and 3e-3 here (docs/finetuning.md).
    c.data.update(source="demo", image_size=image_size, mask_size=image_size // 4,
                  max_masks=4, worker_count=0)
    c.data.demo.update(num_train=2000, num_val=40, image_size=image_size)
    c.prompts.update(refine_iters=0, box_probability=0.9)
    c.batch_size = 16
    c.total_steps = 1800
    c.optimizer.update(lr=1e-3, warmup_steps=100)
    c.log_every = 25
    c.checkpoint_every = 900
  if variant.get("smoke"):
    # The released architecture (12 blocks), so a smoke workdir converts to the .pt format.
    c.model.update(image_size=64, encoder_depth=None)
    c.data.update(image_size=64, mask_size=16, max_masks=4)
    c.prompts.update(refine_iters=1, box_probability=0.5)  # both prompt kinds, one correction
    c.data.demo.update(num_train=24, num_val=4, image_size=64)
    c.batch_size = 4
    c.total_steps = 20
    c.optimizer.update(lr=1e-3, warmup_steps=2)
    c.log_every = 1
    c.checkpoint_every = 5
  return c
