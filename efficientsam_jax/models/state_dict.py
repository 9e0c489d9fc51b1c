"""PyTorch state_dict <-> flax parameter tree, by name.

Our modules mirror the PyTorch parameter names of one naming (EfficientSAM's, where releases
differ), so a key maps mechanically:
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

Where a release names a module differently (SAM's decoder MLPs are `lin1`/`lin2` and
`layers.N`, EfficientSAM's `layers.N.0`/`fc`), a `KeyRenames` table of that family maps its
keys to ours on the way in and back on the way out (the idea of gemma's `param_remapper`):
the modules never know which release their names came from.

Every conversion checks names and shapes both ways and raises a `UserError` naming the first
missing, unexpected or mis-shaped tensor, by the name the file uses.
"""
import re
from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util

from efficientsam_jax.errors import UserError


class KeyRenames:
  """Module-path renames between a release's state_dict keys and ours, both ways.

  `pairs` are (release, ours) templates of module paths, "{i}" standing for a number, e.g.
  ("transformer.layers.{i}.mlp.lin1", "transformer.layers.{i}.mlp.layers.0.0"). A template
  matches a key's whole module path from its start, followed by exactly one leaf (`.weight`,
  `.bias`, ...), so applying a table to keys that already have the target naming changes
  nothing. `under("mask_decoder.")` puts a submodule's table under its parent's name; `+`
  joins tables.
  """

  def __init__(self, pairs: Iterable[tuple[str, str]] = ()):
    self.pairs = tuple(pairs)
    self._to_ours = [(self._regex(a), self._replacement(b)) for a, b in self.pairs]
    self._to_release = [(self._regex(b), self._replacement(a)) for a, b in self.pairs]

  @staticmethod
  def _regex(template: str) -> re.Pattern:
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile("^" + body + r"(?P<leaf>\.[A-Za-z_]+)$")

  @staticmethod
  def _replacement(template: str):
    return lambda m: template.replace("{i}", m.groupdict().get("i") or "") + m.group("leaf")

  @staticmethod
  def _apply(rules, key: str) -> str:
    for pattern, replace in rules:
      match = pattern.match(key)
      if match:
        return replace(match)
    return key

  def under(self, prefix: str) -> "KeyRenames":
    return KeyRenames((prefix + a, prefix + b) for a, b in self.pairs)

  def __add__(self, other: "KeyRenames") -> "KeyRenames":
    return KeyRenames(self.pairs + other.pairs)

  def to_ours(self, key: str) -> str:
    return self._apply(self._to_ours, key)

  def to_release(self, key: str) -> str:
    return self._apply(self._to_release, key)


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
                  conv_transpose: Iterable[str] = (), ignore: Iterable[str] = (),
                  renames: KeyRenames = KeyRenames()) -> dict:
  """Builds the flax params whose shapes are `abstract_params` from `state_dict[prefix + ...]`.

  Args:
    state_dict: torch key -> array (np.ndarray or anything np.asarray takes).
    abstract_params: the flax params tree (arrays or ShapeDtypeStructs) to fill.
    prefix: e.g. "image_encoder." to read one submodule of a whole-model state_dict.
    conv_transpose: our torch-style module names (without prefix) of ConvTranspose layers.
    ignore: torch keys (with prefix) that may be present without a flax counterpart.
    renames: the release's key names -> ours (errors name the release's keys).
  Returns: a nested dict of np.ndarrays (dtypes as stored; bits untouched).
  """
  conv_transpose = {prefix + name for name in conv_transpose}
  ours = {renames.to_ours(k): k for k in state_dict if k.startswith(prefix) and k not in ignore}
  wanted = set(ours)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(dict(abstract_params)).items():
    name = _torch_name(path, prefix)
    key = ours.get(name)
    if key is None:
      raise UserError(f"missing tensor {renames.to_release(name)!r} (expected shape "
                      f"{tuple(leaf.shape)})")
    value = np.asarray(state_dict[key])
    module = name.rsplit(".", 1)[0]
    value = _to_flax_layout(path[-1], value, module in conv_transpose)
    if tuple(value.shape) != tuple(leaf.shape):
      raise UserError(f"tensor {key!r} has shape {tuple(np.asarray(state_dict[key]).shape)}, "
                      f"which does not fit {tuple(leaf.shape)} (flax layout)")
    flat[path] = value
    wanted.discard(name)
  if wanted:
    raise UserError(f"unexpected tensor {ours[sorted(wanted)[0]]!r}"
                    f" ({len(wanted)} unexpected in all)")
  return traverse_util.unflatten_dict(flat)


def flax_to_torch(params: Mapping, prefix: str = "", conv_transpose: Iterable[str] = (),
                  renames: KeyRenames = KeyRenames()) -> dict[str, np.ndarray]:
  """Flattens flax params into torch-named numpy arrays (layouts transposed back, keys in
  the release's naming given by `renames`)."""
  conv_transpose = {prefix + name for name in conv_transpose}
  out = {}
  for path, leaf in traverse_util.flatten_dict(dict(params)).items():
    name = _torch_name(path, prefix)
    value = np.asarray(leaf)
    module = name.rsplit(".", 1)[0]
    # order="C" keeps 0-d tensors 0-d (np.ascontiguousarray makes them (1,)).
    out[renames.to_release(name)] = np.asarray(
        _to_torch_layout(path[-1], value, module in conv_transpose), order="C")
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


