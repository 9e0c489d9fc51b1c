"""`sam_model_registry`: segment-anything's model builders, on this package's models.

    sam = sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")

A builder takes `checkpoint=` as the tools do (a released .pt/.pth, a .safetensors file, a
JAX parameter checkpoint or a training workdir; io/model_files.py) and returns a `SamModel`.
Without a checkpoint it builds freshly initialised weights, as segment-anything's builders do.
"""
import functools

import jax

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference.predictor import Predictor
from efficientsam_jax.io import model_files
from efficientsam_jax.models import registry

# segment-anything's registry names (MobileSAM's "vit_t") and EfficientSAM's -> our models.
MODEL_NAMES = {"default": "sam_vit_h", "vit_h": "sam_vit_h", "vit_l": "sam_vit_l",
               "vit_b": "sam_vit_b", "vit_t": "mobile_sam",
               "efficientsam_vitt": "efficientsam_vitt", "efficientsam_vits": "efficientsam_vits"}


class SamModel:
  """A model ready for SamPredictor / SamAutomaticMaskGenerator: its parameters, config and
  one shared Predictor (so both compile once). `to()` and `eval()` are the no-ops a torch
  script calls; JAX places the arrays itself."""
  image_format = "RGB"
  mask_threshold = 0.0

  def __init__(self, loaded: model_files.LoadedModel, dtype: str | None = None,
               image_resize: str | None = None):
    self.name, self.config, self.params = loaded.name, loaded.config, loaded.params
    self._options = {"dtype": dtype, "image_resize": image_resize}

  @functools.cached_property
  def predictor(self) -> Predictor:
    return Predictor(self.params, self.config, **self._options)

  @property
  def device(self):
    return jax.devices()[0]

  def to(self, *args, **kwargs) -> "SamModel":
    del args, kwargs
    return self

  def eval(self) -> "SamModel":
    return self


def _builder(registry_name: str):
  name = MODEL_NAMES[registry_name]

  def build(checkpoint=None, dtype: str | None = None, image_resize: str | None = None):
    """segment-anything's build_sam_*: the model, from `checkpoint` or freshly initialised."""
    if checkpoint is None:
      config = registry.config(name)
      loaded = model_files.LoadedModel(config, registry.family_of(name).init_params(config))
    else:
      loaded = model_files.load(str(checkpoint), name)
    return SamModel(loaded, dtype=dtype, image_resize=image_resize)

  build.__name__ = f"build_{name}"
  return build


class _Registry(dict):
  def __missing__(self, key):
    raise UserError(f"unknown model {key!r}; sam_model_registry has {', '.join(self)}")


sam_model_registry = _Registry({key: _builder(key) for key in MODEL_NAMES})
