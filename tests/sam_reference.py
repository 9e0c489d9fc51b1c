"""PyTorch reference modules for the SAM-family parity tests, imported without the packages'
`__init__` (segment_anything's imports torchvision; mobile_sam's TinyViT imports timm helpers,
stubbed here when timm is absent)."""
import importlib.util
import sys
import types

import numpy as np
from conftest import require_module


def _bare_package(name: str):
  """Registers an empty package object so `name.modeling` imports without `name/__init__`."""
  if name in sys.modules:
    return
  spec = importlib.util.find_spec(name)
  if spec is None:
    require_module(name)  # skips, or fails under CI=true
  package = types.ModuleType(name)
  package.__path__ = list(spec.submodule_search_locations)
  sys.modules[name] = package


def _stub_timm():
  """The three timm helpers tiny_vit_sam imports; none of them changes inference."""
  if "timm" in sys.modules or importlib.util.find_spec("timm") is not None:
    return
  import torch
  layers = types.ModuleType("timm.models.layers")

  class DropPath(torch.nn.Module):  # MobileSAM builds it with drop_path_rate 0
    def __init__(self, drop_prob=None):
      super().__init__()

    def forward(self, x):
      return x

  layers.DropPath = DropPath
  layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
  layers.trunc_normal_ = torch.nn.init.trunc_normal_
  registry = types.ModuleType("timm.models.registry")
  registry.register_model = lambda fn: fn
  models = types.ModuleType("timm.models")
  models.layers, models.registry = layers, registry
  timm = types.ModuleType("timm")
  timm.models = models
  sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers,
                      "timm.models.registry": registry})


def _stub_torchvision():
  """The two torchvision functions segment_anything.utils.transforms imports, for
  `ResizeLongestSide.apply_image` (what `SamPredictor.set_image` calls), where torchvision is
  not installed (no torchvision wheel loads against the pinned CPU torch build: measured,
  "operator torchvision::nms does not exist"), and the two box functions
  SamAutomaticMaskGenerator imports. On a PIL image, torchvision's
  `resize(img, [h, w])` with its default interpolation is `img.resize((w, h), BILINEAR)`
  (torchvision/transforms/_functional_pil.py) and `to_pil_image` of an (H, W, 3) uint8 array
  is `Image.fromarray`; box_area and batched_nms (one category) follow torchvision.ops'
  definitions: these stand-ins do exactly that, and refuse anything else."""
  if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
    return
  from PIL import Image

  def to_pil_image(pic):
    array = np.asarray(pic)
    if array.dtype != np.uint8 or array.ndim != 3:
      raise NotImplementedError("stand-in: (H, W, C) uint8 arrays only")
    return Image.fromarray(array)

  def resize(img, size):
    if not isinstance(img, Image.Image) or len(size) != 2:
      raise NotImplementedError("stand-in: a PIL image to an explicit (h, w) only")
    return img.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)

  import torch

  def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

  def batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms for one category (what SamAutomaticMaskGenerator passes):
    greedy, best score first, dropping boxes whose IoU with a kept one exceeds the threshold."""
    if len(idxs) and not bool((idxs == idxs[0]).all()):
      raise NotImplementedError("stand-in: one category only")
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].double()
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = box_area(boxes)
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in range(len(boxes)):
      if not suppressed[i]:
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]

  functional = types.ModuleType("torchvision.transforms.functional")
  functional.resize, functional.to_pil_image = resize, to_pil_image
  transforms = types.ModuleType("torchvision.transforms")
  transforms.functional = functional
  ops_boxes = types.ModuleType("torchvision.ops.boxes")
  ops_boxes.batched_nms, ops_boxes.box_area = batched_nms, box_area
  ops = types.ModuleType("torchvision.ops")
  ops.boxes = ops_boxes
  torchvision = types.ModuleType("torchvision")
  torchvision.transforms, torchvision.ops = transforms, ops
  sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms,
                      "torchvision.transforms.functional": functional,
                      "torchvision.ops": ops, "torchvision.ops.boxes": ops_boxes})


def segment_anything_modeling():
  require_module("torch")
  _bare_package("segment_anything")
  import segment_anything.modeling as modeling
  return modeling


def sam_onnx_model_class():
  """segment_anything.utils.onnx.SamOnnxModel (torch.onnx's export imports the whole package,
  whose `__init__` imports torchvision: stubbed where absent)."""
  segment_anything_modeling()
  _stub_torchvision()
  from segment_anything.utils.onnx import SamOnnxModel
  return SamOnnxModel


def sam_automatic_mask_generator(model, **kwargs):
  """segment_anything's SamAutomaticMaskGenerator on a torch Sam."""
  segment_anything_modeling()
  _stub_torchvision()
  from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
  return SamAutomaticMaskGenerator(model, **kwargs)


def sam_predictor(model, image_uint8: np.ndarray, torch_resize: bool = False):
  """segment_anything's SamPredictor for a torch Sam with `image_uint8` (H, W, 3) set as
  scripts set it, `set_image` (ResizeLongestSide.apply_image: PIL), or with torch_resize
  through `set_torch_image` and the antialiased float resize of `reference_resized` (our
  Predictor's image_resize="torch"); its `predict` then transforms prompts and postprocesses
  as released."""
  segment_anything_modeling()
  _stub_torchvision()
  from segment_anything.predictor import SamPredictor
  predictor = SamPredictor(model)
  if torch_resize:
    predictor.set_torch_image(reference_resized(image_uint8, model.image_encoder.img_size)[0],
                              image_uint8.shape[:2])
  else:
    predictor.set_image(image_uint8, "RGB")
  return predictor


def mobile_sam_modeling():
  require_module("torch")
  _stub_timm()
  _bare_package("mobile_sam")
  import mobile_sam.modeling as modeling
  return modeling


def build_sam(modeling, image_encoder):
  """A torch Sam with SAM's prompt encoder and decoder (as build_sam does) around an encoder."""
  import torch
  decoder = modeling.MaskDecoder(
      num_multimask_outputs=3, transformer=modeling.TwoWayTransformer(
          depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
      transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
  prompt = modeling.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                  input_image_size=(1024, 1024), mask_in_chans=16)
  model = modeling.Sam(image_encoder=image_encoder, prompt_encoder=prompt,
                       mask_decoder=decoder, pixel_mean=[123.675, 116.28, 103.53],
                       pixel_std=[58.395, 57.12, 57.375])
  perturb(model, torch.Generator().manual_seed(0))
  return model.eval()


def vit_sam(width: int, depth: int, heads: int, global_blocks: tuple):
  """A torch Sam (seeded, perturbed) with a ViT encoder of this shape at 1024 (windows of 14,
  neck 256) and SAM's prompt encoder and decoder; with our config of the same shape."""
  import functools
  import torch
  from efficientsam_jax.models import sam
  seed_torch()
  modeling = segment_anything_modeling()
  encoder = modeling.ImageEncoderViT(
      img_size=1024, patch_size=16, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4,
      out_chans=256, qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
      use_rel_pos=True, window_size=14, global_attn_indexes=global_blocks)
  config = sam.FAMILY.config("sam_vit_b", encoder_overrides=(
      ("width", width), ("depth", depth), ("num_heads", heads),
      ("global_blocks", global_blocks)))
  return build_sam(modeling, encoder), config


def seed_torch(seed: int = 0):
  require_module("torch")
  import torch
  torch.manual_seed(seed)


def perturb(model, generator, scale=0.1):
  """Moves every parameter and float buffer off its initial value (so LayerNorms, biases, BN
  statistics, embeddings all matter); BN variances stay positive."""
  import torch
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=generator))
    for name, b in model.named_buffers():
      if name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=generator))
      elif name.endswith("num_batches_tracked"):
        b.fill_(12345)
      elif b.is_floating_point() and b.numel() > 0 and "pixel" not in name:
        b.add_(scale * torch.randn(b.shape, generator=generator))


def state_dict_numpy(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def reference_resized(image_uint8: np.ndarray, image_size=1024):
  """(1, 3, H', W') float tensor, (H', W'): the antialiased bilinear longest-side resize that
  `ResizeLongestSide.apply_image_torch` means to do (it passes the batch and channel counts
  as the image size, so it is reproduced here rather than called)."""
  import torch
  import torch.nn.functional as F
  h, w = image_uint8.shape[:2]
  scale = image_size * 1.0 / max(h, w)
  size = (int(h * scale + 0.5), int(w * scale + 0.5))
  x = torch.from_numpy(np.array(image_uint8)).permute(2, 0, 1)[None].float()
  return F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True), size


def reference_input(image_uint8: np.ndarray, model, image_size=1024):
  """segment_anything's preprocessing of an (H, W, 3) uint8 image: the longest-side resize of
  `reference_resized`, then `Sam.preprocess` (normalise, pad)."""
  import torch
  x, size = reference_resized(image_uint8, image_size)
  with torch.no_grad():
    return model.preprocess(x), size


def embeddings_both(model, params, config, image_uint8: np.ndarray):
  """(reference (1, 64, 64, 256), ours (1, 64, 64, 256)) image embeddings of one image: the
  torch model's encoder on its own preprocessing, our Sam on the raw image."""
  import jax
  import torch
  from efficientsam_jax.models import sam

  x, _ = reference_input(image_uint8, model)
  with torch.no_grad():
    want = model.image_encoder(x).permute(0, 2, 3, 1).numpy()
  got = jax.jit(lambda p, im: sam.Sam(config).apply(
      {"params": p}, im, method=sam.Sam.get_image_embeddings))(params, image_uint8[None] * 1.0)
  return want, np.asarray(got)
