"""The servable model in a classification workdir: its finetuned encoder inside EfficientSAM
(tasks/sami/export.py's rule: a released width and 12 blocks, fresh neck, prompt encoder and
mask decoder), so `convert --format=timm`, `predict` and `evaluate` take such workdirs too.
The classifier's `fc_norm` and `head` are not part of it."""
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import model_files
from efficientsam_jax.tasks.sami.export import efficientsam_from_encoder


def workdir_model(config: dict, params, workdir: str) -> model_files.LoadedModel:
  del config
  if not isinstance(params, dict) or "image_encoder" not in params:
    raise UserError(f"{workdir}: its checkpoint holds no image_encoder")
  return efficientsam_from_encoder(params["image_encoder"], source=workdir)
