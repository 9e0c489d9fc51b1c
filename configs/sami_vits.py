"""SAMI pretraining of a ViT-Small student (ImageNet-1K, SAM ViT-H teacher, 400 epochs).

  python -m efficientsam_jax.main --config=configs/sami_vits.py:demo --workdir=/tmp/sami_vits
  python -m efficientsam_jax.main --config=configs/sami_vits.py --workdir=gs://BUCKET/sami_vits \
      --config.teacher.checkpoint=sam_vit_h_4b8939.pth --config.data.tfds_data_dir=gs://BUCKET/tfds
"""
from efficientsam_jax import config_lib


def get_config(arg=None):
  return config_lib.sami_config("vits", arg)
