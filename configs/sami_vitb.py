"""SAMI pretraining of a ViT-Base student: configs/sami.py with size=vitb (ImageNet-1K, SAM
ViT-H teacher, 400 epochs at batch 4096). Variant words as sami.py's (demo, smoke, teacher=).

  python -m efficientsam_jax.main --config=configs/sami_vitb.py:demo --workdir=/tmp/sami_vitb
  python -m efficientsam_jax.main --config=configs/sami_vitb.py --workdir=gs://BUCKET/sami_vitb \
      --config.teacher.checkpoint=sam_vit_h_4b8939.pth --config.data.tfds_data_dir=gs://BUCKET/tfds
"""
from configs import common, sami


def get_config(arg=None):
  return sami.get_config(common.with_words(arg, size="vitb"))
