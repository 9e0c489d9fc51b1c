"""What the recipes in `configs/` share: the typed variant string, run settings, the AdamW
block, the SAM teacher, image-data settings and the demo shrinking.

Config files import only ml_collections and this module, so loading a config is cheap and
pulls in no model or data code. A config file's `get_config(arg)` takes the variant string
after the colon, `configs/sami_vitb.py:demo,teacher=vit_b`: comma-separated words, each a
flag (`demo`) or a `key=value`. `parse_variant` checks every word against the keys the
config declares, with their types, and rejects anything else in one line, so a typo
(`:demo,somke`) never passes silently.
"""
import ml_collections
from ml_collections import config_dict

IMAGENET_TRAIN_IMAGES = 1_281_167
SA1B_IMAGES = 11_000_000  # ~11M images in SA-1B

# Weight decay never applies to biases, norm scales, position tables and learned tokens.
NO_DECAY = (r".*/bias", r".*/scale", r".*pos_embed", r".*mask_token")


class VariantError(ValueError):
  """A variant string that the config does not accept (one line)."""


def parse_variant(arg: str | None, spec: dict, config: str = "this config") -> dict:
  """'demo,teacher=vit_b' -> {'demo': True, 'teacher': 'vit_b', ...}, typed.

  spec: {key: default}. A bool key is a flag (`demo`, or `demo=true|false`); any other key
  needs `key=value` and takes the default's type (int, float or str; a tuple default lists
  the allowed strings and the first one is the default). Keys not given get their default.
  Raises VariantError for an unknown key, a missing or badly typed value, a repeated key.
  """
  out = {k: (v[0] if isinstance(v, tuple) else v) for k, v in spec.items()}
  seen = set()
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = (part.strip() for part in item.partition("="))
    if key not in spec:
      raise VariantError(f"unknown variant word {key!r} for {config}; known: "
                         f"{', '.join(sorted(spec))}")
    if key in seen:
      raise VariantError(f"variant word {key!r} given twice")
    seen.add(key)
    default = spec[key]
    if isinstance(default, bool):
      if not sep:
        out[key] = True
      elif value.lower() in ("true", "1", "yes"):
        out[key] = True
      elif value.lower() in ("false", "0", "no"):
        out[key] = False
      else:
        raise VariantError(f"variant {key}={value!r}: expected true or false")
      continue
    if not sep or not value:
      raise VariantError(f"variant word {key!r} needs a value ({key}=...)")
    if isinstance(default, tuple):
      if value not in default:
        raise VariantError(f"variant {key}={value!r}: expected one of {', '.join(default)}")
      out[key] = value
      continue
    kind = type(default) if default is not None else str
    try:
      out[key] = kind(value)
    except ValueError:
      raise VariantError(f"variant {key}={value!r}: expected {kind.__name__}") from None
  return out


def with_words(arg: str | None, **words) -> str:
  """The variant string `arg` with `key=value` words added in front (a config file that is a
  named setting of a shared recipe, e.g. sami_vitb.py = sami.py with size=vitb)."""
  fixed = [f"{k}={v}" for k, v in words.items()]
  return ",".join(fixed + ([arg] if arg else []))


def run_settings(c: ml_collections.ConfigDict) -> None:
  """Mesh, sharding, logging, checkpointing, resume and guard settings every trainer reads."""
  c.mesh = dict(data=-1, fsdp=1)  # device counts; -1 takes the remaining devices
  # (regex, "replicate" | "fsdp") pairs; unmatched leaves of at least fsdp_min_size elements
  # are split over fsdp on their largest divisible axis.
  c.sharding = dict(rules=(), fsdp_min_size=2**16)
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  # Gradient accumulation: each step's batch goes through the model in this many equal parts
  # (each device's rows split alike) and their gradients are averaged before the one update:
  # the recipe's batch with a fraction of the activation memory.
  c.microbatches = 1
  c.async_checkpointing = True
  # A model to start from when the workdir has no checkpoint (released .pt, JAX checkpoint,
  # or another workdir).
  c.init_from = config_dict.placeholder(str)
  c.nonfinite_policy = "stop"  # or "skip": a non-finite step leaves the state untouched
  c.compile_only = False  # compile the step from shapes, print memory/FLOPs, exit
  # With compile_only: compile for this hardware instead of the local devices (v5litepod-64,
  # v4-128, v5e:8x8, h100:8, ...; train/targets.py), report fits/FLOPs/days, exit 2 if no fit.
  c.compile_for = config_dict.placeholder(str)
  # Held-out evaluation (trainers with one add their own fields): every N steps and at the end
  # (0: never), logged as eval/NAME; the parameters with the best `best_metric` ("": none
  # kept) by `best_mode` ("max" | "min") are kept in WORKDIR/best/.
  c.eval = dict(every=0, best_metric="", best_mode="max")


def adamw(*, lr=None, base_lr=None, b1=0.9, b2=0.999, weight_decay=0.05, warmup_steps=0,
          decay="cosine", no_decay=NO_DECAY) -> dict:
  """`config.optimizer`: AdamW with decoupled weight decay, linear warmup from 0, then
  cosine or linear decay to 0 at total_steps. Peak rate `lr`, or `base_lr * batch / 256`.
  `frozen`: regexes of extra parameters the optimiser must not update (the models' own
  buffers are frozen without being listed)."""
  return dict(
      lr=config_dict.placeholder(float) if lr is None else lr,
      base_lr=config_dict.placeholder(float) if base_lr is None else base_lr,
      b1=b1, b2=b2, eps=1e-8, weight_decay=weight_decay, warmup_steps=warmup_steps,
      decay=decay, end_lr=0.0, grad_clip_norm=config_dict.placeholder(float),
      no_decay=tuple(no_decay), frozen=())


def teacher(size: str = "vit_h") -> ml_collections.ConfigDict:
  """`config.teacher`: a frozen SAM image encoder whose features a student regresses."""
  return ml_collections.ConfigDict(dict(
      size=size,
      # Required for the real recipes: a released SAM checkpoint (or a converted directory).
      checkpoint=config_dict.placeholder(str),
      output="neck",  # "neck" (256 channels) | "blocks" (the last block's width)
      dtype="bfloat16", random_init=False, seed=0,
      # A directory written by `python -m efficientsam_jax.cache_teacher` for this config:
      # targets are read from it and no teacher is loaded or run.
      cache_dir=config_dict.placeholder(str)))


def image_data(**overrides) -> ml_collections.ConfigDict:
  """`config.data` of the image-only pipelines (SAMI, distillation): ImageNet-1K train through
  TFDS at 224 px by default. Fields are documented in efficientsam_jax/data/__init__.py."""
  fields = dict(source="tfds", path="", tfds_name="imagenet2012", tfds_data_dir="",
                split="train", num_demo_images=256, demo_seed=0, image_size=224,
                crop="random_resized", min_scale=0.2, flip=True, worker_count=0,
                read_threads=2, prefetch_buffer_size=2)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def shrink_to_demo(c: ml_collections.ConfigDict, *, teacher_size: str, image_size: int,
                   batch_size: int, total_steps: int, lr: float) -> None:
  """`demo` variants of the teacher-driven recipes: the built-in generated images at
  `image_size`, a fixed-seed random SAM teacher (no downloads, no weights), a short run
  logged every 10 steps."""
  c.teacher.update(size=teacher_size, random_init=True, dtype="float32")
  c.data.update(source="demo", image_size=image_size, worker_count=0, num_demo_images=256)
  c.batch_size = batch_size
  c.total_steps = total_steps
  c.optimizer.update(lr=lr, warmup_steps=20)
  c.log_every = 10
  c.checkpoint_every = 100
