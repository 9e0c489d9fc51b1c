"""onnxruntime's CPU time for the ONNX files of a model next to ours (the Predictor), in the
same interleaved rounds, on the same image and prompt.

Records (seconds, `runtime` = "onnxruntime" | "jax"): encoder_seconds (the uint8 image in
each runtime's input form -> image embeddings), decoder_seconds (one box -> full-size masks of
the 3 (EfficientSAM) or 4 (SAM's ONNX interface) outputs, low-res masks, IoU); onnx_export_seconds
when the files were exported here.
"""
import os
import tempfile
import time

import numpy as np

from efficientsam_jax.bench import records
from efficientsam_jax.io import images, model_files


def ort_session(path: str, threads: int):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def export(predictor, directory: str) -> tuple[dict, float]:
  from efficientsam_jax.export import onnx_export  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  files = onnx_export.export_onnx(model_files.LoadedModel(predictor.config, predictor.params),
                                  directory)
  return files, time.perf_counter() - start


def _feeds(predictor, image: np.ndarray, box: np.ndarray):
  """The two files' inputs for `image` and one box, as a caller of that interface builds them."""
  h, w = image.shape[:2]
  if predictor.model.supports_mask_input:  # SAM's interfaces: resized image, 1024-frame box
    new_h, new_w = predictor.model.resized_hw(h, w)
    resized = images.resize_bilinear(image, new_h, new_w)
    encoder = {"input_image": resized.transpose(2, 0, 1)[None].astype(np.float32)}
    scale = np.asarray([new_w / w, new_h / h], np.float32)
    g = 4 * predictor.config.grid
    decoder = {"point_coords": (box.reshape(1, 2, 2) * scale).astype(np.float32),
               "point_labels": np.asarray([[2, 3]], np.float32),
               "mask_input": np.zeros((1, 1, g, g), np.float32),
               "has_mask_input": np.zeros((1,), np.float32),
               "orig_im_size": np.asarray([h, w], np.float32)}
  else:  # EfficientSAM's release interface
    encoder = {"batched_images": (image.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)}
    decoder = {"batched_point_coords": box.reshape(1, 1, 2, 2).astype(np.float32),
               "batched_point_labels": np.asarray([[[2, 3]]], np.float32),
               "orig_im_size": np.asarray([h, w], np.int64)}
  return encoder, decoder


def run(emitter: records.Emitter, predictor, image: np.ndarray, repeats: int,
        threads: int | None = None, files: dict | None = None) -> None:
  """Times both runtimes; exports the files first (into a temporary folder) unless given."""
  threads = threads or os.cpu_count()
  with tempfile.TemporaryDirectory() as scratch:
    if files is None:
      files, seconds = export(predictor, scratch)
      emitter.emit("onnx_export_seconds", seconds, "s")
    encoder, decoder = (ort_session(str(files[p]), threads) for p in ("encoder", "decoder"))
    h, w = image.shape[:2]
    box = np.asarray([w * 0.25, h * 0.25, w * 0.75, h * 0.75], np.float32)
    encoder_feed, decoder_feed = _feeds(predictor, image, box)
    state = {}

    def ort_encode():
      state["embeddings"] = encoder.run(None, encoder_feed)[0]

    def ort_decode():
      return decoder.run(None, {"image_embeddings": state["embeddings"], **decoder_feed})

    calls = {("encoder_seconds", "onnxruntime"): ort_encode,
             ("encoder_seconds", "jax"): lambda: predictor.set_image(image),
             ("decoder_seconds", "onnxruntime"): ort_decode,
             ("decoder_seconds", "jax"): lambda: predictor.predict(boxes=box[None])}
    for fn in calls.values():  # warm-up (compilation) outside the rounds
      records.block(fn())
    runs = {key: [] for key in calls}
    for _ in range(repeats):
      for key, fn in calls.items():
        start = time.perf_counter()
        records.block(fn())
        runs[key].append(time.perf_counter() - start)
    for (name, runtime), times in runs.items():
      emitter.emit(name, np.median(times), "s", runtime=runtime, min=float(np.min(times)),
                   threads=threads, input_hw=[h, w])
