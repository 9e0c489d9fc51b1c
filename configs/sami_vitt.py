"""SAMI pretraining of a ViT-Tiny student (ImageNet-1K, SAM ViT-H teacher, 400 epochs).

  python -m efficientsam_jax.main --config=configs/sami_vitt.py:demo --workdir=/tmp/sami_vitt
  python -m efficientsam_jax.main --config=configs/sami_vitt.py --workdir=gs://BUCKET/sami_vitt \
      --config.teacher.checkpoint=sam_vit_h_4b8939.pth --config.data.tfds_data_dir=gs://BUCKET/tfds
"""
from efficientsam_jax import config_lib


def get_config(arg=None):
  return config_lib.sami_config("vitt", arg)
