"""MobileSAM's decoupled distillation as a SAMI config: no masking, no decoder; the student's
encoder and neck at 1024 regress the teacher's 256x64x64 image embedding (MSE), through the
SAMI trainer. The student is MobileSAM's TinyViT (`student=vitt|vits` for EfficientSAM's ViT),
the teacher SAM ViT-H (`teacher=vit_l|vit_b`), on a folder of SA-1B images in SAM's own view
(longest side to 1024, zero padding, no flip), so the targets can be cached once
(teacher.cache_dir).

  python -m efficientsam_jax.main --config=configs/mobilesam_distill.py:demo --workdir=/tmp/distill
  python -m efficientsam_jax.cache_teacher --config=configs/mobilesam_distill.py \
      --config.data.path=SA1B_IMAGES --config.teacher.checkpoint=sam_vit_h_4b8939.pth \
      --output=/data/vit_h_targets
  python -m efficientsam_jax.main --config=configs/mobilesam_distill.py --workdir=/runs/distill \
      --config.data.path=SA1B_IMAGES --config.teacher.cache_dir=/data/vit_h_targets

Variant words: student=tiny_vit|vitt|vits, teacher=vit_h|vit_l|vit_b|tiny, demo (built-in
images at 64 px, the tiny random teacher, minutes on 2 CPU cores), smoke (seconds).
"""
import ml_collections

from configs import common

VARIANT = dict(student=("tiny_vit", "vitt", "vits"),
               teacher=("", "vit_h", "vit_l", "vit_b", "tiny"), demo=False, smoke=False)


def get_config(arg=None):
  v = common.parse_variant(arg, VARIANT, "configs/mobilesam_distill.py")
  student = v["student"]
  c = ml_collections.ConfigDict()
  c.trainer = "sami"
  c.seed = 0
  c.student = dict(kind="tiny_vit" if student == "tiny_vit" else "vit",
                   size="vitt" if student == "tiny_vit" else student, dtype="float32",
                   remat=False, overrides={})
  c.decoder = dict(kind="none")
  c.teacher = common.teacher(v["teacher"] or "vit_h")
  c.mask_ratio = 0.0
  c.loss = dict(kind="mse", masked_only=False, normalise_target=False)
  # SAM's own view of each image: longest side to 1024, zero padding, no augmentation, so the
  # targets can be cached once (teacher.cache_dir). data.path: a folder of SA-1B images.
  c.data = common.image_data(source="folder", image_size=1024, crop="longest_side", flip=False,
                             worker_count=8)

  # MobileSAM: 8 epochs over 1% of SA-1B on one GPU. It does not publish batch size or
  # optimiser; AdamW (0.9, 0.999), weight decay 0.01, lr 1e-3 at batch 64, short warmup
  # and cosine decay are our choices.
  c.batch_size = 64
  c.total_steps = 8 * (common.SA1B_IMAGES // 100) // c.batch_size
  c.optimizer = common.adamw(lr=1e-3, weight_decay=0.01, warmup_steps=250,
                             no_decay=(r".*/bias", r".*/scale", r".*pos_embed",
                                       r".*attention_biases"))
  # init_from: a model whose image encoder fits the student (mobile_sam.pt for TinyViT, an
  # EfficientSAM .pt or a SAMI workdir for a ViT); unset: fresh weights.
  common.run_settings(c)
  # Held-out MSE between student and teacher features (`eval/mse`) on a folder of images
  # (eval.path; at most num_images, 0: all) in a fixed view; the lowest keeps WORKDIR/best/.
  c.eval.update(source="folder", path="", num_images=0, demo_seed=1, best_metric="mse",
                best_mode="min")

  if v["demo"] or v["smoke"]:
    # Built-in images at 64 px (a 4x4 embedding grid), the tiny fixed-seed SAM teacher, a
    # few minutes on 2 CPU cores. The TinyViT keeps MobileSAM's shape (its parameters do not
    # depend on the input size), so a demo workdir converts to a mobile_sam checkpoint.
    common.shrink_to_demo(c, teacher_size=v["teacher"] or "tiny", image_size=64, batch_size=8,
                          total_steps=300, lr=1e-3)
    if c.student.kind == "vit":
      c.student.overrides = {"depth": 4}
    # Held-out: 16 generated images of another seed than the training ones.
    c.eval.update(every=100, source="demo", num_images=16)
  if v["smoke"]:
    # demo shrunk for tests and CI: seconds per run, same code paths.
    c.data.update(image_size=32, num_demo_images=32)
    c.total_steps = 20
    c.optimizer.update(lr=2e-3, warmup_steps=5)
    c.log_every = 1
    c.checkpoint_every = 10
    c.eval.update(every=10, num_images=8)
  return c
