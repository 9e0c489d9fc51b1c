"""The model families the package knows (scenic's `model_lib` idea): model names, family
lookup, and which family a checkpoint belongs to. Adding a family: declare it in its own
module (models/family.py says what) and add it to FAMILIES.
"""
from typing import Any, Mapping

from efficientsam_jax.errors import UserError
from efficientsam_jax.models import efficient_sam, sam
from efficientsam_jax.models.family import ModelConfig, ModelFamily

# Name inference asks the families in this order.
FAMILIES: tuple[ModelFamily, ...] = (sam.FAMILY, efficient_sam.FAMILY)
MODEL_NAMES: tuple[str, ...] = tuple(sorted(
    name for f in FAMILIES for name in f.models))


def family_of(name: str) -> ModelFamily:
  """The family of a model name; UserError for an unknown name."""
  for f in FAMILIES:
    if name in f.models:
      return f
  raise UserError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")


def config(name: str, **overrides) -> ModelConfig:
  """The ModelConfig of a model name (shape settings overridable)."""
  return family_of(name).config(name, **overrides)


def build(config_: ModelConfig):
  """The flax model of a ModelConfig."""
  return family_of(config_.name).build(config_)


def infer_name(state: Mapping[str, Any]) -> str:
  """The model a state_dict (release names) holds, from its tensors; UserError if none fits."""
  for f in FAMILIES:
    name = f.infer_name(state)
    if name is not None:
      return name
  raise UserError("the tensors match no known model (no SAM, MobileSAM or EfficientSAM image "
                  "encoder found); pass --model")
