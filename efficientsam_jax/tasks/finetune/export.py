"""The servable model in a finetuning workdir: the EfficientSAM it trains, with the input
size and encoder depth its config.json records (a shrunk demo model loads as what it is)."""
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import model_files
from efficientsam_jax.tasks.finetune.model import SIZES, model_config


def workdir_model(config: dict, params, workdir: str) -> model_files.LoadedModel:
  model = config.get("model")
  if not isinstance(model, dict) or model.get("size") not in SIZES or "image_size" not in model:
    raise UserError(f"{workdir}: config.json has no model.size / model.image_size")
  return model_files.checked(model_config(model).replace(dtype="float32", remat=False), params)
