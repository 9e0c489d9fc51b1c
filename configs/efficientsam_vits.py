"""EfficientSAM-S finetuning on SA-1B: configs/efficientsam.py with size=vits (AdamW
0.9/0.999, wd 0.1, lr 4e-4 linear to 0, batch 128, 1024 input, 5 epochs). Variant words as
efficientsam.py's (demo, smoke, image_size=, depth=).

  python -m efficientsam_jax.main --config=configs/efficientsam_vits.py:demo --workdir=/tmp/esam_vits
  python -m efficientsam_jax.main --config=configs/efficientsam_vits.py --workdir=DIR \
      --config.data.path=/data/sa1b --config.init_from=SAMI_WORKDIR
"""
from configs import common, efficientsam


def get_config(arg=None):
  return efficientsam.get_config(common.with_words(arg, size="vits"))
