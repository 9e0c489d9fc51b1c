"""Model weights on disk, in every form the tools accept, read as a `LoadedModel` (its
ModelConfig and flax parameters as numpy arrays) and written back in each release's format.

What a path is, is told by the path alone:
- a PyTorch file (`.pt`/`.pth`): read without torch (torch_files); the model is inferred from
  the tensors (or named); its family's tables convert it key for key.
- a safetensors file (`.safetensors`): the same PyTorch-layout state_dict (`save_safetensors`
  writes the release's tensor names, shapes and dtypes; the model name is in its metadata).
- a JAX parameter checkpoint: a directory written by `save_jax` (Orbax); its metadata names
  the model and the shape settings it was saved with.
- a training workdir: a directory with `checkpoints/`; its latest parameters, made into a
  model by the trainer that wrote them (train/trainers.py: a finetuning workdir is its
  EfficientSAM, input size and depth included; a SAMI or distillation workdir is an
  EfficientSAM or MobileSAM around the trained encoder).
Every failure is a UserError naming the file or tensor. No writer replaces an existing path,
and every output is written whole or not at all. Every path may be gs://.
"""
import dataclasses
import json

import jax
import numpy as np

from efficientsam_jax.errors import UserError, in_context, one_line
from efficientsam_jax.io import checkpoints, paths, torch_files
from efficientsam_jax.models import family as family_lib
from efficientsam_jax.models import registry, state_dict

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
# metadata["format"] of our parameter checkpoints. 2 records the shape settings; 1 (the model
# name only) still loads, with the default shape.
PARAMS_FORMAT = "efficientsam_jax.params/2"


@dataclasses.dataclass
class LoadedModel:
  """A model's shape settings and its parameters (numpy arrays)."""
  config: family_lib.ModelConfig
  params: dict

  @property
  def name(self) -> str:
    return self.config.name

  @property
  def family(self) -> family_lib.ModelFamily:
    return registry.family_of(self.config.name)


def is_torch_path(path: str) -> bool:
  return str(path).lower().endswith(TORCH_SUFFIXES)


def is_safetensors_path(path: str) -> bool:
  return str(path).lower().endswith(SAFETENSORS_SUFFIX)


def checked(config: family_lib.ModelConfig, params) -> LoadedModel:
  """The parameters rebuilt strictly as `config`'s model (every tensor present, named and
  shaped right, in the model's own order); accepts trees in our naming or an older release
  naming of the same family (renames apply to both)."""
  f = registry.family_of(config.name)
  params = jax.tree.map(np.asarray, params)
  # release_dtypes: a checkpoint library may hand back 0-d buffers (BN num_batches_tracked)
  # as (1,) or int32; the family gives them their release shape and dtype.
  flat = f.release_dtypes(state_dict.flax_to_torch(params, conv_transpose=f.conv_transpose))
  return LoadedModel(config, f.params_from_torch(flat, config))


def _safetensors():
  try:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("reading or writing .safetensors needs the safetensors package: "
                    'pip install -e ".[onnx]"') from None
  return safetensors.numpy


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """A .safetensors file's tensors (in the file's order) and its metadata."""
  st = _safetensors()
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, framework="numpy") as f:
      metadata = f.metadata() or {}
    with open(path, "rb") as f:
      tensors = st.load(f.read())
  except Exception as e:  # pylint: disable=broad-except
    # safetensors raises its own SafetensorError (and OSError, ValueError) on damaged files.
    raise UserError(f"{path}: not a readable safetensors file ({one_line(e)[:200]})") from None
  order = metadata.get("order")
  if order:  # the state_dict's own key order (the header's is alphabetical)
    keys = json.loads(order)
    if sorted(keys) == sorted(tensors):
      tensors = {k: tensors[k] for k in keys}
  return tensors, metadata


def save_safetensors(path: str, model: LoadedModel) -> None:
  """The release's state_dict (names, shapes, dtypes, bits; EfficientSAM unwrapped) as a
  .safetensors file; the model name and the state_dict's key order go in its metadata."""
  _refuse_existing(path)
  state = model.family.params_to_torch(model.params)
  metadata = {"format": "pt", "model": model.name, "order": json.dumps(list(state))}
  _safetensors().save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path,
                           metadata=metadata)


def read_torch_state(path: str) -> dict[str, np.ndarray]:
  """A PyTorch file's state_dict: a plain one (SAM) or {"model": state_dict} (EfficientSAM)."""
  obj = torch_files.load(path)
  if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
    obj = obj["model"]
  if not isinstance(obj, dict):
    raise UserError(f"{path}: not a state_dict (found {type(obj).__name__})")
  return {k: np.asarray(v) for k, v in obj.items()}


def from_state_dict(state: dict, model: str | None = None, **overrides) -> LoadedModel:
  """A state_dict (release names) -> the model it holds (`model` names it, else inferred)."""
  name = model or registry.infer_name(state)
  f = registry.family_of(name)
  config = f.config(name, **overrides)
  return LoadedModel(config, f.params_from_torch(state, config))


def load_torch(path: str, model: str | None = None) -> LoadedModel:
  return from_state_dict(read_torch_state(path), model)


def _workdir_config(path: str) -> dict:
  """A training workdir's config.json ({} when absent or unreadable)."""
  try:
    config = json.loads(paths.read_bytes(paths.join(path, "config.json")))
  except (OSError, ValueError):
    return {}
  return config if isinstance(config, dict) else {}


def load_workdir(directory: str, model: str | None = None) -> LoadedModel:
  """The model of a training workdir's latest checkpoint (see the module docstring)."""
  from efficientsam_jax.train import trainers  # the registry: names, no trainer code

  config = _workdir_config(directory)
  if not config.get("trainer"):
    raise UserError(f"{directory}: a training workdir without a readable config.json")
  params = checkpoints.latest_workdir_params(directory)
  loaded = trainers.workdir_model(config["trainer"], config, params, directory)
  if model and model != loaded.name:
    raise UserError(f"{directory} holds {loaded.name}, not {model}")
  return loaded


def workdir_trainer(path: str) -> str | None:
  """The trainer that wrote a training workdir (its config.json), None for anything else."""
  if not paths.is_dir(path) or not checkpoints.is_training_workdir(path):
    return None
  return _workdir_config(path).get("trainer")


# Torch-named prefixes of a ViT image encoder; a timm / MAE checkpoint's other tensors (class
# token, final norm, head, MAE's decoder) have no counterpart in it.
_ENCODER_PREFIXES = ("patch_embed.", "pos_embed", "blocks.")


def encoder_params(path: str, abstract_encoder) -> dict:
  """The ViT image encoder held by any weights path, as numpy flax params shaped like
  `abstract_encoder` (an `image_encoder` tree; ShapeDtypeStructs will do).

  Accepted: a training workdir (its latest `image_encoder`: SAMI or MAE pretraining,
  finetuning, classification), a JAX parameter checkpoint, an EfficientSAM `.pt`, or a timm /
  MAE ViT checkpoint (`patch_embed.*`, `pos_embed` (1, 197, D) with the class slot first,
  `blocks.N.*`). The neck comes along when both the file and the target have one; otherwise
  the result has no `neck_*` entries (the caller initialises them). UserError names a
  missing, unexpected or misfit tensor.
  """
  if not paths.exists(path):
    paths.check_bucket(path)
    raise UserError(f"{path}: no such file or directory")
  try:
    if paths.is_dir(path):
      params = (checkpoints.latest_workdir_params(path) if checkpoints.is_training_workdir(path)
                else checkpoints.restore_params(path)[0])
      if not isinstance(params, dict) or "image_encoder" not in params:
        raise UserError("holds no image_encoder")
      state = state_dict.flax_to_torch(jax.tree.map(np.asarray, params["image_encoder"]))
    else:
      state = read_torch_state(path)
      if any(k.startswith("image_encoder.") for k in state):
        state = {k[len("image_encoder."):]: v for k, v in state.items()
                 if k.startswith("image_encoder.")}
    target = dict(abstract_encoder)
    if not any(k.startswith("neck.") for k in state):
      target = {k: v for k, v in target.items() if not k.startswith("neck_")}
    prefixes = _ENCODER_PREFIXES + (("neck.",) if any(k.startswith("neck_") for k in target)
                                    else ())
    return state_dict.torch_to_flax({k: v for k, v in state.items() if k.startswith(prefixes)},
                                    target)
  except UserError as e:
    raise in_context(e, path) from None
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{path}: cannot read checkpoint ({type(e).__name__}: "
                    f"{one_line(e)[:200]})") from None


def load_jax(directory: str, model: str | None = None) -> LoadedModel:
  """A parameter checkpoint written by save_jax."""
  params, metadata = checkpoints.restore_params(directory)
  if not isinstance(params, dict) or not {"image_encoder", "mask_decoder"} <= set(params):
    keys = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise UserError(f"{directory}: parameters are not a whole SAM-family model "
                    f"(top level: {keys})")
  stored = metadata.get("model")
  if model and stored and model != stored:
    raise UserError(f"{directory} holds {stored}, not {model}")
  name = model or stored or registry.infer_name(
      state_dict.flax_to_torch(jax.tree.map(np.asarray, params)))
  shape = metadata.get("config", {})
  overrides = {k: shape[k] for k in ("image_size", "embed_dim", "max_num_points") if k in shape}
  if "encoder_overrides" in shape:
    overrides["encoder_overrides"] = tuple(tuple(p) for p in shape["encoder_overrides"])
  return checked(registry.config(name, **overrides), params)


def load(path: str, model: str | None = None) -> LoadedModel:
  """Any accepted weights path -> LoadedModel; UserError (one line) on any failure."""
  if model is not None:
    registry.family_of(model)  # an unknown name fails before any file is read
  if not paths.exists(path):
    paths.check_bucket(path)
    raise UserError(f"{path}: no such file or directory")
  try:
    if is_safetensors_path(path):
      state, metadata = read_safetensors(path)
      return from_state_dict(state, model or metadata.get("model"))
    if not paths.is_dir(path):
      return load_torch(path, model)
    if checkpoints.is_training_workdir(path):
      return load_workdir(path, model)
    return load_jax(path, model)
  except UserError as e:
    raise in_context(e, path) from None
  except Exception as e:  # pylint: disable=broad-except
    # Orbax / tensorstore errors on damaged directories: their text is all we have.
    raise UserError(f"{path}: cannot read checkpoint ({type(e).__name__}: "
                    f"{one_line(e)[:200]})") from None


def _refuse_existing(path: str) -> None:
  if paths.exists(path):
    raise UserError(f"{path} exists; choose a new output path")


def save_torch(path: str, model: LoadedModel, plain: bool = False) -> None:
  """Writes the model in its release's format: EfficientSAM {"model": state_dict} (a bare
  state_dict with plain); SAM and MobileSAM a bare state_dict, as they ship."""
  _refuse_existing(path)
  f = model.family
  state = f.params_to_torch(model.params)
  plain = plain or f.release_format == family_lib.PLAIN
  torch_files.save(state if plain else {"model": state}, path)


def timm_encoder_state_dict(params) -> dict[str, np.ndarray]:
  """EfficientSAM (or SAMI) encoder params -> a state_dict in the layout of timm's
  `vit_{tiny,small,base}_patch16_224`: pos_embed (1, 197, D) (slot 0 is the class slot, which
  was never trained), patch_embed.proj.*, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}.*. timm's cls_token, norm and head have no counterpart and are left out
  (load with strict=False); the EfficientSAM neck is not part of timm's ViT."""
  state = state_dict.flax_to_torch(params["image_encoder"])
  return {k: v for k, v in state.items() if not k.startswith("neck.")}


def save_timm(path: str, model: LoadedModel) -> None:
  _refuse_existing(path)
  torch_files.save(timm_encoder_state_dict(model.params), path)


def save_jax(directory: str, model: LoadedModel, source: str = "") -> None:
  """A parameter checkpoint that load_jax reads back as the same model."""
  c = model.config
  shape = {"image_size": c.image_size, "embed_dim": c.embed_dim,
           "max_num_points": c.max_num_points,
           "encoder_overrides": [list(p) for p in c.encoder_overrides]}
  checkpoints.save_params(directory, model.params,
                          {"model": c.name, "format": PARAMS_FORMAT, "config": shape,
                           "source": paths.basename(source)})


TORCH_FORMATS = ("released", "state_dict", "timm")
# Formats for other runtimes: any accepted input, the output's kind named by the format.
OTHER_FORMATS = ("onnx", "safetensors")


def convert(input_path: str, output_path: str, model: str | None = None,
            torch_format: str = "released") -> str:
  """What `python -m efficientsam_jax.convert` does: PyTorch file -> JAX checkpoint or JAX
  checkpoint / workdir -> PyTorch file (the direction from the paths). Returns the model
  name. torch_format: "released" (as the model ships), "state_dict" (bare), "timm" (the
  image encoder alone in timm's ViT layout); "safetensors" (the released state_dict as a
  .safetensors file) or "onnx" (NAME_encoder.onnx and NAME_decoder.onnx in the output folder)
  from any accepted input."""
  if torch_format in OTHER_FORMATS:
    return _convert_other(input_path, output_path, model, torch_format)
  if torch_format not in TORCH_FORMATS:
    raise UserError(f"unknown format {torch_format!r}; use one of "
                    f"{', '.join(TORCH_FORMATS + OTHER_FORMATS)}")
  to_torch = is_torch_path(output_path)
  from_jax = paths.is_dir(input_path)
  if from_jax == (not to_torch):
    want = "a .pt/.pth output" if from_jax else "a directory output (not .pt/.pth)"
    kind = "JAX directory" if from_jax else "file"
    raise UserError(f"cannot convert {input_path} -> {output_path}: a {kind} input needs {want}")
  if torch_format == "timm" and not to_torch:
    raise UserError("--format=timm writes a .pt/.pth file")
  if paths.same_file(output_path, input_path):
    raise UserError(f"--output is the input {input_path}; choose a new output path")
  _refuse_existing(output_path)
  loaded = load(input_path, model)
  if torch_format == "timm":
    save_timm(output_path, loaded)
  elif to_torch:
    save_torch(output_path, loaded, plain=torch_format == "state_dict")
  else:
    save_jax(output_path, loaded, source=input_path)
  return loaded.name


def _convert_other(input_path: str, output_path: str, model: str | None, fmt: str) -> str:
  if paths.same_file(output_path, input_path):
    raise UserError(f"--output is the input {input_path}; choose a new output path")
  if fmt == "safetensors":
    if not is_safetensors_path(output_path):
      raise UserError("--format=safetensors writes a .safetensors file")
    _refuse_existing(output_path)
    _safetensors()  # a missing package is reported before the (slow) model load
    loaded = load(input_path, model)
    save_safetensors(output_path, loaded)
    return loaded.name
  if paths.exists(output_path) and not paths.is_dir(output_path):
    raise UserError(f"--format=onnx writes into a folder; {output_path} is a file")
  try:
    from efficientsam_jax.export import onnx_export  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f"--format=onnx needs the onnx extra ({one_line(e)}): "
                    'pip install -e ".[onnx]"') from None
  loaded = load(input_path, model)
  onnx_export.export_onnx(loaded, output_path)
  return loaded.name
