"""The segment-anything PyTorch reference, importable without torchvision.

`segment_anything/__init__.py` imports its predictor, which needs torchvision; the image
encoder itself needs only torch. Parity tests and the benchmark both build it from here.
"""
import functools
import importlib.util
import sys
import types


def sam_image_encoder_class():
  """segment_anything.modeling.image_encoder.ImageEncoderViT; ImportError when torch or
  segment_anything is missing."""
  import torch  # noqa: F401  (a clear ImportError first)
  if "segment_anything" not in sys.modules:
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
      raise ImportError("segment_anything is not installed")
    # An empty package object: its submodules import, its __init__ does not run.
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = package
  from segment_anything.modeling.image_encoder import ImageEncoderViT
  return ImageEncoderViT


def sam_image_encoder(config, seed: int = 0, perturb: float = 0.0):
  """A torch ImageEncoderViT shaped like a `sam_encoder.SamEncoderConfig`, as build_sam
  makes it, in eval mode. perturb > 0 adds N(0, perturb^2) noise to every tensor so that
  zero-initialised ones (rel-pos tables, biases) matter in a comparison."""
  import torch
  torch.manual_seed(seed)
  model = sam_image_encoder_class()(
      img_size=config.pretrain_size, patch_size=config.patch_size, embed_dim=config.width,
      depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
      out_chans=config.out_channels, qkv_bias=True,
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
      rel_pos_zero_init=False, window_size=config.window_size,
      global_attn_indexes=config.global_blocks).eval()
  if perturb:
    with torch.no_grad():
      for p in model.parameters():
        p.add_(perturb * torch.randn_like(p))
  return model
