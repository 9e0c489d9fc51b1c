"""The model a finetuning config trains, as a ModelConfig (what task.py builds and what a
finetuning workdir's config.json describes to export.py)."""
from efficientsam_jax.models.family import ModelConfig

SIZES = {"vitt": "efficientsam_vitt", "vits": "efficientsam_vits"}


def model_config(model) -> ModelConfig:
  """`config.model` (size, image_size, encoder_depth, dtype, remat; a ConfigDict or the dict
  of a config.json) -> the ModelConfig."""
  depth = model.get("encoder_depth")
  return ModelConfig(name=SIZES[model["size"]], image_size=int(model["image_size"]),
                     encoder_overrides=(("depth", int(depth)),) if depth else (),
                     dtype=model.get("dtype", "float32"), remat=bool(model.get("remat", False)))
