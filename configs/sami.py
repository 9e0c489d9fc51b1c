"""SAMI pretraining (EfficientSAM paper): a ViT student sees 25% of each image's patches and a
cross-attention decoder reconstructs, for every token, the features of a frozen SAM ViT-H
image encoder on the same 224 crop (MSE). The whole recipe; `sami_vit{t,s,b}.py` pick a size.

  python -m efficientsam_jax.main --config=configs/sami.py:size=vitb,demo --workdir=/tmp/sami
  python -m efficientsam_jax.main --config=configs/sami_vitb.py --workdir=gs://BUCKET/sami_vitb \
      --config.teacher.checkpoint=sam_vit_h_4b8939.pth --config.data.tfds_data_dir=gs://BUCKET/tfds

Variant words: size=vitt|vits|vitb (student), teacher=vit_h|vit_l|vit_b|tiny, demo (the same
recipe on built-in generated images with a tiny random teacher, minutes on a laptop CPU),
smoke (demo shrunk to seconds, what the tests run), target=pixels (MAE instead of SAMI: the
same student, data and budget reconstructing its own normalised pixels with MAE's decoder, the
loss on masked patches only; no teacher).
"""
import ml_collections

from configs import common

VARIANT = dict(size=("vitb", "vitt", "vits"), teacher=("", "vit_h", "vit_l", "vit_b", "tiny"),
               demo=False, smoke=False, target=("features", "pixels"))


def use_pixel_target(c: ml_collections.ConfigDict) -> None:
  """MAE instead of SAMI, in place: each masked patch's own normalised pixels as the target
  (MAE's norm_pix_loss), MAE's decoder (self-attention over every token), the loss on masked
  patches only. Everything else (student, data, steps, optimiser) stays as it is."""
  c.target = "pixels"
  c.decoder.kind = "all"
  c.loss.update(masked_only=True, normalise_target=True)


def get_config(arg=None):
  v = common.parse_variant(arg, VARIANT, "configs/sami.py")
  c = ml_collections.ConfigDict()
  c.trainer = "sami"
  c.seed = 0

  # dtype: compute dtype of the student's matrix products, "float32" | "bfloat16" (parameters
  # and optimiser state stay float32); remat: recompute the student's encoder and decoder
  # blocks in the backward pass (less activation memory, ~1/3 more compute).
  c.student = dict(kind="vit", size=v["size"], dtype="float32", remat=False, overrides={})
  c.decoder = dict(kind="cross", width=512, depth=8, num_heads=16, mlp_ratio=4.0)
  c.teacher = common.teacher(v["teacher"] or "vit_h")
  c.mask_ratio = 0.75
  c.loss = dict(kind="mse", masked_only=False, normalise_target=False)
  # "features": SAMI, the teacher's features for every token; "pixels": MAE, each patch's own
  # normalised pixels (target=pixels below also sets MAE's decoder and loss).
  c.target = "features"
  if v["target"] == "pixels":
    use_pixel_target(c)
  c.data = common.image_data(worker_count=8)  # ImageNet-1K train through TFDS, 224 crops

  # 400 epochs at batch 4096, 40 warmup epochs; AdamW (0.9, 0.95), wd 0.05,
  # lr 1.5e-4 per 256 images (2.4e-3 at 4096), cosine to 0.
  c.batch_size = 4096
  steps_per_epoch = common.IMAGENET_TRAIN_IMAGES // c.batch_size
  c.total_steps = 400 * steps_per_epoch
  c.optimizer = common.adamw(base_lr=1.5e-4, b2=0.95, weight_decay=0.05,
                             warmup_steps=40 * steps_per_epoch)
  common.run_settings(c)
  # Held-out MSE between student and teacher features (`eval/mse`) on a folder of images
  # (eval.path; at most num_images, 0: all) in a fixed view; the lowest keeps WORKDIR/best/.
  c.eval.update(source="folder", path="", num_images=0, demo_seed=1, best_metric="mse",
                best_mode="min")

  if v["demo"] or v["smoke"]:
    # Same recipe, shrunk: generated images, a tiny fixed-seed teacher, a shallow student of
    # the same width, a few hundred steps on a laptop CPU.
    common.shrink_to_demo(c, teacher_size=v["teacher"] or "tiny", image_size=96,
                          batch_size=16, total_steps=300, lr=1e-3)
    c.student.overrides = {"depth": 4}
    c.decoder.update(width=256, depth=2, num_heads=8)
  if v["smoke"]:
    # demo shrunk further for tests and CI: seconds per run, same code paths.
    c.student.overrides = {"depth": 2}
    c.decoder.update(width=64, depth=1, num_heads=2)
    c.data.update(image_size=32, num_demo_images=64)
    c.batch_size = 8
    c.total_steps = 40
    c.log_every = 1
    c.checkpoint_every = 10
  return c
