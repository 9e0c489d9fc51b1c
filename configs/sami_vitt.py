"""SAMI pretraining of a ViT-Tiny student: configs/sami.py with size=vitt (ImageNet-1K, SAM
ViT-H teacher, 400 epochs at batch 4096). Variant words as sami.py's (demo, smoke, teacher=).

  python -m efficientsam_jax.main --config=configs/sami_vitt.py:demo --workdir=/tmp/sami_vitt
  python -m efficientsam_jax.main --config=configs/sami_vitt.py --workdir=gs://BUCKET/sami_vitt \
      --config.teacher.checkpoint=sam_vit_h_4b8939.pth --config.data.tfds_data_dir=gs://BUCKET/tfds
"""
from configs import common, sami


def get_config(arg=None):
  return sami.get_config(common.with_words(arg, size="vitt"))
