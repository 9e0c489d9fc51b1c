"""ImageNet-1K classification finetuning of a ViT-Small encoder: configs/imagenet_ft.py with
size=vits (layer-wise lr decay 0.75). Variant words as imagenet_ft.py's (linprobe, demo,
smoke).

  python -m efficientsam_jax.main --config=configs/imagenet_ft_vits.py:demo --workdir=/tmp/cls_vits
  python -m efficientsam_jax.main --config=configs/imagenet_ft_vits.py --workdir=DIR \
      --config.init_from=SAMI_WORKDIR --config.data.tfds_data_dir=gs://BUCKET/tfds
"""
from configs import common, imagenet_ft


def get_config(arg=None):
  return imagenet_ft.get_config(common.with_words(arg, size="vits"))
