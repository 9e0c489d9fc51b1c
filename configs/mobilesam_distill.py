"""MobileSAM's decoupled distillation: a TinyViT (or `student=vitt|vits`) encoder at 1024
regresses SAM ViT-H's 256x64x64 image embedding (MSE), no masking, no decoder, through the
SAMI trainer (config_lib.distill_config).

  python -m efficientsam_jax.main --config=configs/mobilesam_distill.py:demo --workdir=/tmp/distill
  python -m efficientsam_jax.cache_teacher --config=configs/mobilesam_distill.py \
      --config.data.path=SA1B_IMAGES --config.teacher.checkpoint=sam_vit_h_4b8939.pth \
      --output=/data/vit_h_targets
  python -m efficientsam_jax.main --config=configs/mobilesam_distill.py --workdir=/runs/distill \
      --config.data.path=SA1B_IMAGES --config.teacher.cache_dir=/data/vit_h_targets
"""
from efficientsam_jax import config_lib


def get_config(arg=None):
  return config_lib.distill_config(arg)
