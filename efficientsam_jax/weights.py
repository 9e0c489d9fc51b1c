"""PyTorch state_dict <-> flax parameter tree, by name.

Our modules mirror the PyTorch parameter names, so a key maps mechanically:
`blocks.3.attn.qkv.weight` <-> ('blocks_3', 'attn', 'qkv', 'kernel'). Numeric segments join
the segment before them (`layers.0.0` -> `layers_0_0`); the leaf name and layout follow the
flax module that owns the tensor:

| flax leaf | torch | layout change |
|---|---|---|
| kernel, 2-D (Dense) | weight | (out, in) -> (in, out) |
| kernel, 4-D (Conv) | weight | OIHW -> HWIO |
| kernel, 4-D (ConvTranspose, names in `conv_transpose`) | weight | (in, out, kh, kw) -> (kh, kw, in, out) |
| scale (LayerNorm, GroupNorm) | weight | none |
| embedding (Embed) | weight | none |
| anything else (bias, pos_embed, rel_pos_h, buffers) | same name | none |

Every conversion checks names and shapes both ways and raises `WeightsError` naming the
first missing, unexpected or mis-shaped tensor.
"""
import re
from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util


class WeightsError(ValueError):
  """A state_dict does not fit the model: names the offending tensor."""


def torch_key_to_path(key: str) -> tuple[str, ...]:
  """'blocks.3.mlp.layers.0.0.weight' -> ('blocks_3', 'mlp', 'layers_0_0', 'weight')."""
  parts: list[str] = []
  for part in key.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  return tuple(parts)


def path_to_torch_key(path: Iterable[str], leaf: str) -> str:
  """Inverse of torch_key_to_path for a module path plus the torch leaf name."""
  segments = [re.sub(r"_(\d+)", r".\1", p) for p in path]
  return ".".join(segments + [leaf])


_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def _to_flax_layout(flax_leaf: str, value: np.ndarray, is_conv_transpose: bool) -> np.ndarray:
  if flax_leaf == "kernel":
    if value.ndim == 2:
      return value.T
    if value.ndim == 4:
      return value.transpose(2, 3, 0, 1) if is_conv_transpose else value.transpose(2, 3, 1, 0)
  return value


def _to_torch_layout(flax_leaf: str, value: np.ndarray, is_conv_transpose: bool) -> np.ndarray:
  if flax_leaf == "kernel":
    if value.ndim == 2:
      return value.T
    if value.ndim == 4:
      return value.transpose(2, 3, 0, 1) if is_conv_transpose else value.transpose(3, 2, 0, 1)
  return value


def _torch_name(path: tuple[str, ...], prefix: str) -> str:
  leaf = _TORCH_LEAF.get(path[-1], path[-1])
  return prefix + path_to_torch_key(path[:-1], leaf)


def torch_to_flax(state_dict: Mapping[str, Any], abstract_params: Mapping, prefix: str = "",
                  conv_transpose: Iterable[str] = (), ignore: Iterable[str] = ()) -> dict:
  """Builds the flax params whose shapes are `abstract_params` from `state_dict[prefix + ...]`.

  Args:
    state_dict: torch key -> array (np.ndarray or anything np.asarray takes).
    abstract_params: the flax params tree (arrays or ShapeDtypeStructs) to fill.
    prefix: e.g. "image_encoder." to read one submodule of a whole-model state_dict.
    conv_transpose: torch module names (without prefix) that are ConvTranspose layers.
    ignore: torch keys (with prefix) that may be present without a flax counterpart.
  Returns: a nested dict of np.ndarrays (dtypes as stored; bits untouched).
  """
  conv_transpose = {prefix + name for name in conv_transpose}
  wanted = set(k for k in state_dict if k.startswith(prefix)) - set(ignore)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(dict(abstract_params)).items():
    name = _torch_name(path, prefix)
    if name not in state_dict:
      raise WeightsError(f"missing tensor {name!r} (expected shape {tuple(leaf.shape)})")
    value = np.asarray(state_dict[name])
    module = name.rsplit(".", 1)[0]
    value = _to_flax_layout(path[-1], value, module in conv_transpose)
    if tuple(value.shape) != tuple(leaf.shape):
      raise WeightsError(f"tensor {name!r} has shape {tuple(np.asarray(state_dict[name]).shape)}"
                         f", which does not fit {tuple(leaf.shape)} (flax layout)")
    flat[path] = value
    wanted.discard(name)
  if wanted:
    raise WeightsError(f"unexpected tensor {sorted(wanted)[0]!r}"
                       f" ({len(wanted)} unexpected in all)")
  return traverse_util.unflatten_dict(flat)


def flax_to_torch(params: Mapping, prefix: str = "",
                  conv_transpose: Iterable[str] = ()) -> dict[str, np.ndarray]:
  """Flattens flax params into torch-named numpy arrays (layouts transposed back)."""
  conv_transpose = {prefix + name for name in conv_transpose}
  out = {}
  for path, leaf in traverse_util.flatten_dict(dict(params)).items():
    name = _torch_name(path, prefix)
    value = np.asarray(leaf)
    module = name.rsplit(".", 1)[0]
    out[name] = np.ascontiguousarray(_to_torch_layout(path[-1], value, module in conv_transpose))
  return out


def sort_torch_keys(state_dict: Mapping[str, Any], order: Iterable[str]) -> dict:
  """The same dict with keys in the order torch's `state_dict()` lists them.

  `order` names every module/leaf in the order torch registers it among its siblings; keys
  compare segment by segment, numeric segments as numbers, unknown names last. Strict loading
  does not care about the order; people diffing key lists do.
  """
  rank = {name: i for i, name in enumerate(order)}

  def key(name: str) -> tuple:
    return tuple((0, int(part)) if part.isdigit() else (1, rank.get(part, len(rank)))
                 for part in name.split("."))

  return {k: state_dict[k] for k in sorted(state_dict, key=key)}


def load_torch_file(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint into name -> numpy array.

  Accepts a plain state_dict (SAM) or {"model": state_dict} (EfficientSAM).
  """
  from efficientsam_jax import torch_io  # local: reading needs no torch, see torch_io
  obj = torch_io.load(path)
  if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
    obj = obj["model"]
  if not isinstance(obj, Mapping):
    raise WeightsError(f"{path}: not a state_dict (found {type(obj).__name__})")
  return {k: np.asarray(v) for k, v in obj.items()}
