"""Model families: everything the package knows about one release line of promptable
segmenters (EfficientSAM; SAM with MobileSAM), declared in one place.

A family module (models/efficient_sam.py, models/sam.py) holds its flax model and one
`ModelFamily` instance that says: its model names and their encoders, how to build a model
from a `ModelConfig`, how to tell its checkpoints apart (name inference), how its release
names tensors (`KeyRenames`, key order, transposed convolutions), which parameters are
buffers (never optimised), and the release's file format. models/registry.py lists the
families; nothing else in the package names one. A third family is a module like those two
plus a line in the registry.

The flax models of every family expose the same inference methods, so callers never branch
on the family (inference/predictor.py):
  preprocess(images)                  (B, H, W, 3) float 0..255 -> (B, S, S, 3) encoder input
  resized_hw(h, w)                    the image's size inside the encoder input (host ints)
  encode(x) / decoder_context(emb)    once per image
  prompt_length(longest)              prompt array length for queries of `longest` points
  predict_masks(emb, points, labels, input_hw, resized_hw, mask_input=, has_mask=,
                multimask_output=, context=)  -> low-res logits (B, Q, M, 4g, 4g), iou (B, Q, M)
  predict_tokens(...) / mask_logits(state)      the same in two halves (skip upscaling)
  postprocess(low_res, input_hw, resized_hw)    low-res logits -> the original image size
  supports_mask_input                 whether predict_masks takes a mask input (SAM's)
  image_resizes, default_image_resize how the Predictor may resize a uint8 image ("pil" on the
                                      host, SamPredictor.set_image's; "torch" in `preprocess`)
"""
import dataclasses
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from efficientsam_jax.errors import UserError
from efficientsam_jax.models import precision, state_dict

WRAPPED = "wrapped"  # torch.save({"model": state_dict}) (EfficientSAM's release)
PLAIN = "plain"  # torch.save(state_dict) (SAM's, MobileSAM's)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The shape and compute settings of one model, whatever its family.

  name: a registered model name (`efficientsam_vitt`, `sam_vit_b`, `mobile_sam`, ...).
  image_size: the encoder's input side (1024 in every release; smaller multiples of 16 make
    cheap demo and test models with an (image_size / 16)^2 embedding grid).
  encoder_overrides: (field, value) pairs that reshape the encoder, e.g. (("depth", 4),) for a
    shrunk demo model (such weights are not in a released format).
  max_num_points: EfficientSAM pads every prompt to this many points; SAM pads its prompt
    arrays to at least this many (padding takes no part there).
  dtype: compute dtype of the matrix products, "float32" | "bfloat16" (parameters and
    activations stay float32; models/precision.py). MobileSAM's TinyViT computes in float32.
  remat: recompute encoder blocks, decoder blocks and the mask upscaling in the backward pass
    (training memory; the values are the same).
  """
  name: str = "efficientsam_vitt"
  image_size: int = 1024
  embed_dim: int = 256
  max_num_points: int = 6
  encoder_overrides: tuple[tuple[str, Any], ...] = ()
  dtype: str = "float32"
  remat: bool = False

  @property
  def grid(self) -> int:
    return self.image_size // 16

  @property
  def compute_dtype(self):
    return precision.compute_dtype(self.dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


class ModelFamily:
  """One family's declaration. Subclasses set the class attributes and implement `build` and
  `infer_name`; conversion and initialisation follow from the declared tables."""

  name: str = ""
  models: Mapping[str, str] = {}  # model name -> encoder (a size name of the family)
  release_format: str = PLAIN
  renames: state_dict.KeyRenames = state_dict.KeyRenames()
  torch_order: tuple[str, ...] = ()  # module/leaf names in torch's registration order
  conv_transpose: tuple[str, ...] = ()  # our names of the ConvTranspose2d modules
  buffers: tuple[str, ...] = ()  # regexes of '/'-joined parameter paths never optimised
  ignored_keys: tuple[str, ...] = ()  # keys a release file may hold that are no parameters

  def build(self, config: ModelConfig) -> nn.Module:
    raise NotImplementedError

  def infer_name(self, state: Mapping[str, Any]) -> str | None:
    """The model name of a state_dict of this family (release names), None if not ours.
    Raises UserError for a state_dict that is ours but fits no model (e.g. a width)."""
    raise NotImplementedError

  def check_release_extras(self, state: Mapping[str, Any]) -> None:
    """Checks the values of `ignored_keys` a file holds (UserError if unusable)."""
    del state

  def release_dtypes(self, state: dict) -> dict:
    """Gives tensors the dtypes and shapes the release stores them with (in place)."""
    return state

  # --- derived -------------------------------------------------------------------------
  def config(self, name: str, **overrides) -> ModelConfig:
    if name not in self.models:
      raise UserError(f"unknown {self.name} model {name!r}; known: {sorted(self.models)}")
    return ModelConfig(name=name, **overrides)

  def init_args(self, config: ModelConfig) -> tuple:
    """Arguments of `build(config).init(rng, *args)` that create every parameter."""
    s, g = config.image_size, config.grid
    return (jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 1, 2)), jnp.ones((1, 1, 1)),
            jnp.zeros((1, 1, 4 * g, 4 * g)))

  def abstract_params(self, config: ModelConfig) -> dict:
    """ShapeDtypeStructs of the parameter tree, without computing anything."""
    model = self.build(config)
    init = lambda rng: model.init(rng, *self.init_args(config), method=model.init_all)
    return jax.eval_shape(init, jax.random.key(0))["params"]

  def init_params(self, config: ModelConfig, seed: int = 0, keep=None) -> dict:
    """Freshly initialised parameters (the modules' own initialisers), as numpy arrays.

    keep: a predicate on '/'-joined parameter paths; only those are returned. A parameter's
    value does not depend on which others are kept (each draws from a key of its own path),
    and XLA drops the draws of the rest, so initialising part of a model compiles faster."""
    model = self.build(config)

    def init(rng):
      params = model.init(rng, *self.init_args(config), method=model.init_all)["params"]
      if keep is None:
        return params
      flat = traverse_util.flatten_dict(params, sep="/")
      return traverse_util.unflatten_dict({k: v for k, v in flat.items() if keep(k)}, sep="/")

    return jax.tree.map(np.asarray, jax.jit(init)(jax.random.key(seed)))

  def init_around_encoder(self, config: ModelConfig, encoder: Mapping[str, Any],
                          seed: int = 0) -> dict:
    """Parameters of `config` with `encoder`'s entries as (part of) its image_encoder and the
    rest freshly initialised: init_params's values, only the rest drawn."""
    params = self.init_params(config, seed,
                              keep=self.all_but(f"image_encoder/{k}" for k in encoder))
    params["image_encoder"] = {**params.get("image_encoder", {}), **encoder}
    return params

  @staticmethod
  def all_but(held) -> Callable[[str], bool]:
    """The `keep` of init_params for the parameters not held: not `held` paths ('/'-joined)
    nor anything under them."""
    held = tuple(held)
    return lambda path: not any(path == h or path.startswith(h + "/") for h in held)

  def buffer_paths(self, params) -> list[str]:
    flat = traverse_util.flatten_dict(params, sep="/")
    return [k for k in flat if any(re.search(p, k) for p in self.buffers)]

  def params_from_torch(self, state: Mapping[str, Any], config: ModelConfig) -> dict:
    """A state_dict in the release's (or our) naming -> flax params of `config`'s shape;
    UserError names a missing, unexpected or misfit tensor."""
    self.check_release_extras(state)
    extras = [k for k in self.ignored_keys if k in state]
    return state_dict.torch_to_flax(state, self.abstract_params(config),
                                    conv_transpose=self.conv_transpose, ignore=extras,
                                    renames=self.renames)

  def params_to_torch(self, params) -> dict[str, np.ndarray]:
    """Flax params -> the release's state_dict: its names, layouts and key order."""
    state = state_dict.flax_to_torch(params, conv_transpose=self.conv_transpose,
                                     renames=self.renames)
    return state_dict.sort_torch_keys(self.release_dtypes(state), self.torch_order)
