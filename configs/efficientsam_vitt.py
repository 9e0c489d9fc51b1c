"""EfficientSAM-Ti finetuning on SA-1B (paper recipe: AdamW 0.9/0.999, wd 0.1, lr 4e-4
linear to 0, batch 128, 1024 input, 5 epochs).

  python -m efficientsam_jax.main --config=configs/efficientsam_vitt.py:demo --workdir=/tmp/esam_vitt
  python -m efficientsam_jax.main --config=configs/efficientsam_vitt.py --workdir=DIR \
      --config.data.path=/data/sa1b --config.init_from=SAMI_WORKDIR
"""
from efficientsam_jax import config_lib


def get_config(arg=None):
  return config_lib.efficientsam_config("vitt", arg)
