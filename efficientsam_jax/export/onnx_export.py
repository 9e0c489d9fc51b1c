"""ONNX files of a model, exported from the JAX model with jax2onnx (no PyTorch involved).

    files = export_onnx(model_files.load("efficient_sam_vitt.pt"), "out_dir")
    # {"encoder": "out_dir/efficientsam_vitt_encoder.onnx", "decoder": ".../..._decoder.onnx"}

EfficientSAM: the official release's interface, which annotation tools (labelme,
X-AnyLabeling) load; H, W, B, Q and N dynamic:
  encoder  batched_images (B, 3, H, W) float32 RGB in [0, 1] -> image_embeddings (B, 256, 64, 64)
  decoder  image_embeddings (B, 256, 64, 64), batched_point_coords (B, Q, N, 2) float32 pixels,
           batched_point_labels (B, Q, N) float32, orig_im_size (2,) int64 [H, W]
           -> output_masks (B, Q, 3, H, W), iou_predictions (B, Q, 3),
              low_res_masks (B*Q, 3, 256, 256)
  output_masks are upscaled with torch's bicubic, as the released PyTorch `forward` and our
  Predictor do (the official ONNX file uses bilinear; docs/export.md says why we do not).
SAM and MobileSAM: segment-anything's ONNX decoder (`SamOnnxModel`, return_single_mask=False,
as its export script writes by default; the point count N and the query count Bp dynamic):
  decoder  image_embeddings (1, 256, 64, 64), point_coords (Bp, N, 2) in the 1024-resized
           image's pixels (ResizeLongestSide.apply_coords), point_labels (Bp, N) float32,
           mask_input (1, 1, 256, 256), has_mask_input (1,), orig_im_size (2,) float32
           -> masks (Bp, 4, H, W), iou_predictions (Bp, 4), low_res_masks (Bp, 4, 256, 256)
  encoder  input_image (B, 3, H', W') float32 RGB 0..255, longest side 1024 (the image
           ResizeLongestSide.apply_image gives, as SamPredictor.set_image resizes it)
           -> image_embeddings (B, 256, 64, 64); normalising and padding are in the graph.

What the export must do, each learnt from a failure (docs/export.md): opset 18 and IR
version 8 (onnxruntime before 1.17 refuses IR 10; jax2onnx's opset 17 output is invalid);
float32 only; attention's CPU batch grouping off (a Python comparison on a symbolic batch);
the decoder's GroupNorm as a two-level mean (onnxruntime's float32 ReduceMean over a million
values errs 18x more than JAX's); no jnp.full / jnp.concatenate / lax.pad on symbolic shapes
(jax2onnx mis-sizes or refuses them); orig_im_size re-typed to int64; Einsum -> MatMul.
"""
import contextlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
from jax2onnx import to_onnx
from onnx import TensorProto

from efficientsam_jax.errors import UserError
from efficientsam_jax.export import onnx_graph
from efficientsam_jax.export.onnx_resize import torch_resize
from efficientsam_jax.models import attention, efficient_sam, registry, sam
from efficientsam_jax.models import mask_decoder as mask_decoder_lib

OPSET = 18
IR_VERSION = 8
# protobuf's limit for one file; larger models keep their weights in NAME.onnx.data.
_SINGLE_FILE_BYTES = 2**31 - 2**26


class TwoLevelGroupNorm(nn.Module):
  """GroupNorm with one group and flax's parameter names, its statistics as a mean over
  channels then over pixels (two reductions of ~1000 values instead of one of ~1M)."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    flat = x.reshape(x.shape[0], -1, c)
    mean = lambda t: jnp.mean(jnp.mean(t, axis=2, keepdims=True), axis=1, keepdims=True)
    mu = mean(flat)
    var = mean(jnp.square(flat - mu))
    return ((flat - mu) / jnp.sqrt(var + self.epsilon) * scale + bias).reshape(x.shape)


@contextlib.contextmanager
def _export_mode():
  """The model as it must be traced for ONNX (module docstring); restored afterwards."""
  batch_chunk, upscale_norm = attention.auto_batch_chunk, mask_decoder_lib.MaskDecoder._upscale_norm

  def norm(self):
    return TwoLevelGroupNorm(1e-5) if self.upscale_norm == "group" else upscale_norm(self)

  attention.auto_batch_chunk = lambda *args, **kwargs: None
  mask_decoder_lib.MaskDecoder._upscale_norm = norm
  try:
    yield
  finally:
    attention.auto_batch_chunk = batch_chunk
    mask_decoder_lib.MaskDecoder._upscale_norm = upscale_norm


def _export(fn, inputs, input_names, output_names, name) -> onnx.ModelProto:
  with _export_mode():
    model = to_onnx(fn, inputs, model_name=name, opset=OPSET, input_names=input_names,
                    output_names=output_names, return_mode="proto")
  onnx_graph.einsum_to_matmul(model.graph)
  return model


def _float32(config):
  return config.replace(dtype="float32", remat=False)


# --- EfficientSAM ------------------------------------------------------------------------------

def efficientsam_encoder(config, params) -> onnx.ModelProto:
  model, s = efficient_sam.EfficientSam(config), config.image_size
  mean = jnp.asarray(efficient_sam.PIXEL_MEAN, jnp.float32)
  std = jnp.asarray(efficient_sam.PIXEL_STD, jnp.float32)

  def encoder(images):  # (B, 3, H, W) in [0, 1]: the release's forward, up to the embeddings
    x = torch_resize(images, (s, s), (2, 3), "linear").transpose(0, 2, 3, 1)
    embeddings = model.apply({"params": params}, (x - mean) / std, method=model.encode)
    return embeddings.transpose(0, 3, 1, 2)

  return _export(encoder, [("B", 3, "H", "W")], ["batched_images"], ["image_embeddings"],
                 f"{config.name}_encoder")


def efficientsam_decoder(config, params) -> onnx.ModelProto:
  model, n_max, g = efficient_sam.EfficientSam(config), config.max_num_points, config.grid

  def decode(m, embeddings, points, labels):
    return m.mask_decoder.decode(m.decoder_context(embeddings), m.prompt_encoder(points, labels),
                                 True, None)

  def decoder(embeddings, coords, labels, orig_hw):
    points = efficient_sam.rescale_points(coords, orig_hw, config.image_size)
    # The release pads every query with (-1, -1) / -1 to max_num_points or cuts it there: pad
    # by max_num_points, keep the first max_num_points (lax ops: see the module docstring).
    lead = points.shape[:-2]
    points = jax.lax.concatenate([points, jnp.broadcast_to(jnp.float32(-1), lead + (n_max, 2))],
                                 2)
    labels = jax.lax.concatenate([labels, jnp.broadcast_to(jnp.float32(-1), lead + (n_max,))], 2)
    points = jax.lax.slice_in_dim(points, 0, n_max, axis=2)
    labels = jax.lax.slice_in_dim(labels, 0, n_max, axis=2)
    return model.apply({"params": params}, embeddings.transpose(0, 2, 3, 1), points, labels,
                       method=decode)

  proto = _export(
      decoder, [("B", 256, g, g), ("B", "Q", "N", 2), ("B", "Q", "N"),
                jax.ShapeDtypeStruct((2,), np.int32)],
      ["image_embeddings", "batched_point_coords", "batched_point_labels", "orig_im_size"],
      ["low_res_masks_bq", "iou_predictions"], f"{config.name}_decoder")
  onnx_graph.retype_input(proto, "orig_im_size", TensorProto.INT64)
  # Sized by the runtime value orig_im_size: the reshapes and the bicubic upscale.
  nodes = onnx_graph.Nodes(proto.graph, "upscale/")
  shape = nodes.op("Shape", "low_res_masks_bq")  # [B, Q, 3, 4g, 4g]
  i64 = lambda v: nodes.const(v, np.int64)
  low = nodes.op("Reshape", "low_res_masks_bq",
                 nodes.op("Concat", i64([-1]), nodes.op("Slice", shape, i64([2]), i64([5])),
                          axis=0), output="low_res_masks")
  h = nodes.op("Gather", "orig_im_size", i64(0), axis=0)
  w = nodes.op("Gather", "orig_im_size", i64(1), axis=0)
  full = onnx_graph.bicubic(nodes, low, (4 * g, 4 * g), h, w)
  nodes.op("Reshape", full, nodes.op("Concat", nodes.op("Slice", shape, i64([0]), i64([3])),
                                     "orig_im_size", axis=0), output="output_masks")
  onnx_graph.set_output(proto.graph, [("output_masks", ["B", "Q", 3, "H", "W"]),
                                      ("iou_predictions", ["B", "Q", 3]),
                                      ("low_res_masks", ["BQ", 3, 4 * g, 4 * g])])
  return proto


# --- SAM and MobileSAM -------------------------------------------------------------------------

def sam_encoder(config, params) -> onnx.ModelProto:
  model, s = sam.Sam(config), config.image_size
  encode = lambda x: model.apply({"params": params}, x.transpose(0, 2, 3, 1),
                                 method=model.encode).transpose(0, 3, 1, 2)
  proto = _export(encode, [("B", 3, s, s)], ["padded_image"], ["image_embeddings"],
                  f"{config.name}_encoder")
  # In front: normalise, then zero-pad bottom/right to s x s (sizes known only at run time).
  graph = proto.graph
  front = onnx.GraphProto()
  nodes = onnx_graph.Nodes(front, "preprocess/")
  mean = nodes.const(np.reshape(sam.PIXEL_MEAN, (1, 3, 1, 1)))
  std = nodes.const(np.reshape(sam.PIXEL_STD, (1, 3, 1, 1)))
  x = nodes.op("Div", nodes.op("Sub", "input_image", mean), std)
  hw = nodes.op("Slice", nodes.op("Shape", "input_image"), nodes.const([2], np.int64),
                nodes.const([4], np.int64))
  pads = nodes.op("Concat", nodes.const([0, 0, 0, 0, 0, 0], np.int64),
                  nodes.op("Sub", nodes.const([s, s], np.int64), hw), axis=0)
  nodes.op("Pad", x, pads, output="padded_image")
  graph.initializer.extend(front.initializer)
  for i, node in enumerate(front.node):
    graph.node.insert(i, node)
  del graph.input[:]
  graph.input.append(onnx.helper.make_tensor_value_info("input_image", TensorProto.FLOAT,
                                                        ["B", 3, "H", "W"]))
  return proto


def _sam_decode_all(m, embeddings, coords, labels, mask_input, has_mask_input):
  """SamOnnxModel's decoder: every point is a token (label -1: the not-a-point embedding, no
  Fourier features), a dense prompt blended by has_mask_input, all 4 masks decoded.
  (1, g, g, C), (Bp, N, 2), (Bp, N), (1, 1, 4g, 4g), (1,) -> (Bp, 4, 4g, 4g), (Bp, 4)."""
  pe, md = m.prompt_encoder, m.mask_decoder
  label = labels[..., None]
  tokens = pe.pe_layer((coords + 0.5) / m.config.image_size) * (label != -1)
  tokens = tokens + pe.not_a_point_embed.embedding[0] * (label == -1)
  for i, table in enumerate(pe.point_embeddings):
    tokens = tokens + table.embedding[0] * (label == i)
  has = has_mask_input.reshape(()).astype(jnp.float32)
  downscaled = pe.embed_masks(mask_input[:, 0], jnp.ones((1,), bool))[0]
  dense = has * downscaled + (1 - has) * pe.no_mask_embed.embedding[0]
  context = md.image_context(embeddings, pe.dense_pe(), dense)
  outputs = jnp.concatenate([md.iou_token.embedding, md.mask_tokens.embedding])
  sparse = tokens[None]  # one image, Bp queries
  all_tokens = jax.lax.concatenate(
      [jnp.broadcast_to(outputs, sparse.shape[:2] + outputs.shape), sparse], 2)
  hs, image = md.transformer(context, all_tokens, None, outputs=tuple(range(1 + 4)))
  hyper = jnp.stack([md.output_hypernetworks_mlps[i](hs[:, :, 1 + i]) for i in range(4)], 2)
  g = m.config.grid
  low = md.mask_logits(image, hyper, (g, g))
  return low[0], md.iou_prediction_head(hs[:, :, 0])[0]


def sam_decoder(config, params) -> onnx.ModelProto:
  model, s, g = sam.Sam(config), config.image_size, config.grid

  def decoder(embeddings, coords, labels, mask_input, has_mask_input):
    low, iou = model.apply({"params": params}, embeddings.transpose(0, 2, 3, 1), coords, labels,
                           mask_input, has_mask_input, method=_sam_decode_all)
    return torch_resize(low, (s, s), (2, 3), "linear"), iou, low

  proto = _export(decoder, [(1, 256, g, g), ("Bp", "N", 2), ("Bp", "N"), (1, 1, 4 * g, 4 * g),
                            (1,)],
                  ["image_embeddings", "point_coords", "point_labels", "mask_input",
                   "has_mask_input"],
                  ["masks_padded", "iou_predictions", "low_res_masks"], f"{config.name}_decoder")
  graph = proto.graph
  graph.input.append(onnx.helper.make_tensor_value_info("orig_im_size", TensorProto.FLOAT, [2]))
  # mask_postprocessing's runtime part: crop to the longest-side-resized size
  # floor(s / max(H, W) * (H, W) + 0.5), then bilinear to (H, W).
  nodes = onnx_graph.Nodes(graph, "postprocess/")
  scale = nodes.op("Div", nodes.const(float(s)), nodes.op("ReduceMax", "orig_im_size",
                                                          keepdims=0))
  resized = nodes.op("Cast", nodes.op("Floor", nodes.op("Add", nodes.op("Mul", scale,
                                                                        "orig_im_size"),
                                                        nodes.const(0.5))), to=TensorProto.INT64)
  i64 = lambda v: nodes.const(v, np.int64)
  crop = nodes.op("Slice", "masks_padded", i64([0, 0]), resized, i64([2, 3]))
  sizes = nodes.op("Concat", nodes.op("Slice", nodes.op("Shape", crop), i64([0]), i64([2])),
                   nodes.op("Cast", "orig_im_size", to=TensorProto.INT64), axis=0)
  nodes.op("Resize", crop, "", "", sizes, output="masks", mode="linear",
           coordinate_transformation_mode="half_pixel")
  onnx_graph.set_output(graph, [("masks", ["Bp", 4, "H", "W"]), ("iou_predictions", ["Bp", 4]),
                                ("low_res_masks", ["Bp", 4, 4 * g, 4 * g])])
  return proto


_EXPORTERS = {efficient_sam.FAMILY.name: (efficientsam_encoder, efficientsam_decoder),
              sam.FAMILY.name: (sam_encoder, sam_decoder)}


def save(proto: onnx.ModelProto, path: str) -> None:
  """Checked (onnx's full check) and written; weights beside it when over protobuf's 2 GB."""
  proto.ir_version = IR_VERSION
  large = proto.ByteSize() > _SINGLE_FILE_BYTES
  if large:
    onnx.save(proto, path, save_as_external_data=True, location=os.path.basename(path) + ".data")
    onnx.checker.check_model(path, full_check=True)
  else:
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)


def export_onnx(loaded, directory: str, parts=("encoder", "decoder")) -> dict[str, str]:
  """Writes NAME_encoder.onnx and NAME_decoder.onnx of a `model_files.LoadedModel` into
  `directory` (created; existing files are never replaced). Returns {part: path}."""
  family = registry.family_of(loaded.name)
  exporters = dict(zip(("encoder", "decoder"), _EXPORTERS[family.name]))
  paths = {part: os.path.join(directory, f"{loaded.name}_{part}.onnx") for part in parts}
  for path in paths.values():
    if os.path.exists(path) or os.path.exists(path + ".data"):
      raise UserError(f"{path} exists; choose a new output folder")
  os.makedirs(directory, exist_ok=True)
  config = _float32(loaded.config)
  params = jax.tree.map(jnp.asarray, loaded.params)
  for part, path in paths.items():
    save(exporters[part](config, params), path)
  return paths
