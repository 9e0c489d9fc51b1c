"""The model a finetuning config trains, as a ModelConfig (what task.py builds and what a
finetuning workdir's config.json describes to export.py)."""
from efficientsam_jax.models.family import ModelConfig

SIZES = {"vitt": "efficientsam_vitt", "vits": "efficientsam_vits"}


# config.model fields that reshape the encoder (unset: the released shape of `size`).
ENCODER_FIELDS = (("encoder_depth", "depth"), ("encoder_width", "width"),
                  ("encoder_heads", "num_heads"))


def model_config(model) -> ModelConfig:
  """`config.model` (size, image_size, encoder_depth / _width / _heads, dtype, remat; a
  ConfigDict or the dict of a config.json) -> the ModelConfig."""
  overrides = tuple((field, int(model[key])) for key, field in ENCODER_FIELDS
                    if model.get(key))
  return ModelConfig(name=SIZES[model["size"]], image_size=int(model["image_size"]),
                     encoder_overrides=overrides, dtype=model.get("dtype", "float32"),
                     remat=bool(model.get("remat", False)))
