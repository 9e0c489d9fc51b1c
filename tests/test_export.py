"""`convert --format=onnx|safetensors`: the ONNX files through onnxruntime against the golden
fixture and the JAX model, SAM's decoder against segment-anything's own ONNX decoder, and the
safetensors round trip.

Exports are the slow part (tens of seconds each on 2 cores): each file is exported once per
module and shared.
"""
import functools
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import require_module
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import model_files, torch_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _convert(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "efficientsam_jax.convert", *args],
                        capture_output=True, text=True, env=env, cwd=REPO)


def _session(path):
  ort = require_module("onnxruntime")
  options = ort.SessionOptions()
  options.intra_op_num_threads = 2
  return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  return dict(np.load(fixtures_dir / "efficient_sam_vitt_random_io.npz"))


@pytest.fixture(scope="module")
def esam_onnx(fixtures_dir, tmp_path_factory):
  """The golden EfficientSAM-Ti exported by the command line: {part: path}."""
  require_module("onnxruntime")
  require_module("jax2onnx")
  out = tmp_path_factory.mktemp("onnx") / "files"
  result = _convert(f"--input={fixtures_dir / 'efficient_sam_vitt_random.pt'}",
                    f"--output={out}", "--format=onnx")
  assert result.returncode == 0, result.stderr
  return {part: out / f"efficientsam_vitt_{part}.onnx" for part in ("encoder", "decoder")}


def _interface(path):
  import onnx
  model = onnx.load(str(path), load_external_data=False)
  dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
  return ({v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input},
          {v.name: dims(v) for v in model.graph.output}, model)


def test_efficientsam_files_have_the_release_interface(esam_onnx):
  from onnx import TensorProto
  f32, i64 = TensorProto.FLOAT, TensorProto.INT64
  inputs, outputs, model = _interface(esam_onnx["encoder"])
  assert inputs == {"batched_images": (f32, ["B", 3, "H", "W"])}
  assert outputs == {"image_embeddings": ["B", 256, 64, 64]}
  assert model.ir_version == 8 and [o.version for o in model.opset_import if not o.domain] == [18]
  inputs, outputs, _ = _interface(esam_onnx["decoder"])
  assert inputs == {"image_embeddings": (f32, ["B", 256, 64, 64]),
                    "batched_point_coords": (f32, ["B", "Q", "N", 2]),
                    "batched_point_labels": (f32, ["B", "Q", "N"]),
                    "orig_im_size": (i64, [2])}
  assert list(outputs) == ["output_masks", "iou_predictions", "low_res_masks"]
  assert outputs["output_masks"] == ["B", "Q", 3, "H", "W"]


def _run_efficientsam(files, image, points, labels):
  """The two files as an annotation tool runs them: uint8 image -> [0, 1] NCHW -> encoder ->
  decoder with the original size as int64."""
  batched = (image.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
  embeddings = _session(files["encoder"]).run(None, {"batched_images": batched})[0]
  masks, iou, low = _session(files["decoder"]).run(None, {
      "image_embeddings": np.repeat(embeddings, len(points), axis=0),  # one per batch entry
      "batched_point_coords": points.astype(np.float32),
      "batched_point_labels": labels.astype(np.float32),
      "orig_im_size": np.asarray(image.shape[:2], np.int64)})
  return embeddings, masks, iou, low


def test_efficientsam_onnx_gives_the_golden_outputs(esam_onnx, golden):
  image = golden["image_uint8"]
  embeddings, masks, iou, low = _run_efficientsam(esam_onnx, image, golden["points"],
                                                  golden["labels"])
  want_masks = np.unpackbits(golden["full_res_masks_packed"], axis=-1)[..., :image.shape[1]]
  d_emb = np.abs(embeddings - golden["image_embeddings"]).max()
  d_low = np.abs(low - golden["low_res_logits"].reshape(low.shape)).max()
  d_iou = np.abs(iou - golden["iou_predictions"]).max()
  d_full = np.abs(masks[0, 0] - golden["full_res_logits_query0"]).max()
  agree = ((masks > 0) == want_masks.astype(bool)).mean()
  print(f"golden: embeddings {d_emb:.1e}, low-res {d_low:.1e}, iou {d_iou:.1e}, full-size "
        f"{d_full:.1e}, masks equal {agree:.7f}")
  assert masks.shape == (1, 3, 3) + image.shape[:2] and low.shape == (3, 3, 256, 256)
  assert d_emb < 1e-5 and d_low < 1e-4 and d_iou < 1e-4 and d_full < 1e-3 and agree > 0.999


def test_efficientsam_onnx_matches_jax_at_another_size_and_query_count(esam_onnx, golden,
                                                                        fixtures_dir):
  """A 480x640 view of the photo, 5 queries of 3 points (the golden case: 603x1072, 3 queries
  of 2 points), and a batch of 2 in the decoder; reference: the JAX Predictor."""
  from efficientsam_jax.inference import Predictor
  image = np.ascontiguousarray(golden["image_uint8"][60:540, 200:840])
  rng = np.random.default_rng(0)
  points = rng.uniform(0, 1, (5, 3, 2)).astype(np.float32) * [640, 480]
  labels = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, -1]], np.float32)
  predictor = Predictor.from_checkpoint(str(fixtures_dir / "efficient_sam_vitt_random.pt"))
  predictor.set_image(image)
  want = predictor.predict(points=points, labels=labels)
  batch = (np.stack([points, points[::-1]]), np.stack([labels, labels[::-1]]))
  embeddings, masks, iou, low = _run_efficientsam(esam_onnx, image, *batch)
  masks, iou, low = masks.reshape((10,) + masks.shape[2:]), iou.reshape(10, 3), low
  order = list(range(5)) + list(range(4, -1, -1))  # the second batch entry is reversed
  d_emb = np.abs(embeddings[0] - predictor.image_embeddings).max()
  d_low = np.abs(low - want["low_res_logits"][order]).max()
  d_iou = np.abs(iou - want["iou"][order]).max()
  d_full = np.abs(masks - want["logits"][order]).max()
  agree = ((masks > 0) == (want["logits"][order] > 0)).mean()
  print(f"480x640, B=2, Q=5, N=3: embeddings {d_emb:.1e}, low-res {d_low:.1e}, iou "
        f"{d_iou:.1e}, full-size {d_full:.1e}, masks equal {agree:.7f}")
  assert d_emb < 1e-4 and d_iou < 1e-4 and d_full < 1e-3 and agree > 0.999
  # The bench's onnxruntime-vs-ours timing on these files, one round (what it reports).
  import io
  from efficientsam_jax.bench import onnx_compare, records
  emitter = records.Emitter(stream=io.StringIO(), suite="onnx")
  onnx_compare.run(emitter, predictor, image, repeats=1, threads=2, files=esam_onnx)
  for r in emitter.records:
    print(f"{r['name']} {r['runtime']}: {r['value']:.3f} s (load {r['load_avg_1m']})")
  assert sorted((r["name"], r["runtime"]) for r in emitter.records) == [
      ("decoder_seconds", "jax"), ("decoder_seconds", "onnxruntime"),
      ("encoder_seconds", "jax"), ("encoder_seconds", "onnxruntime")]
  seconds = {(r["name"], r["runtime"]): r["value"] for r in emitter.records}
  # The 1024 px encoder takes seconds on a CPU: a timer that did not wait for JAX's
  # asynchronous dispatch read 0.001 s here (and charged the encoder to the decoder).
  assert seconds[("encoder_seconds", "jax")] > 0.1


# --- SAM / MobileSAM: segment-anything's ONNX decoder --------------------------------------

SMALL_SAM = (64, 2, 4, (1,))  # encoder width, depth, heads, global blocks
SAM_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input",
              "has_mask_input", "orig_im_size"]


@functools.lru_cache(maxsize=None)
def _sam(width: int, depth: int, heads: int, global_blocks: tuple):
  """(torch Sam, our LoadedModel) with the same random, perturbed weights."""
  import sam_reference as ref
  from efficientsam_jax.models import sam
  model, config = ref.vit_sam(width, depth, heads, global_blocks)
  params = sam.FAMILY.params_from_torch(ref.state_dict_numpy(model), config)
  return model, model_files.LoadedModel(config, params)


@pytest.fixture(scope="module")
def sam_decoder_files(tmp_path_factory):
  """SAM's decoder (the same module, shapes and file for vit_b, vit_l and vit_h: the encoder
  only makes the 256-channel embeddings, here a small one): our decoder file and
  segment-anything's, SamOnnxModel exported with torch.onnx as its export script does."""
  require_module("onnxruntime")
  require_module("jax2onnx")
  import torch
  from efficientsam_jax.export import onnx_export
  import sam_reference as ref
  SamOnnxModel = ref.sam_onnx_model_class()
  model, loaded = _sam(*SMALL_SAM)
  out = tmp_path_factory.mktemp("sam_onnx")
  ours = onnx_export.export_onnx(loaded, str(out), parts=("decoder",))["decoder"]
  theirs = str(out / "segment_anything_decoder.onnx")
  feeds = _sam_feeds(np.random.default_rng(0), 1, 5, True, ORIGINAL)
  with torch.no_grad():
    # segment-anything's scripts/export_onnx_model.py: opset 17, the point count dynamic.
    torch.onnx.export(SamOnnxModel(model, return_single_mask=False).eval(),
                      tuple(torch.from_numpy(feeds[k]) for k in SAM_INPUTS), theirs,
                      input_names=SAM_INPUTS, dynamo=False, opset_version=17,
                      output_names=["masks", "iou_predictions", "low_res_masks"],
                      dynamic_axes={"point_coords": {1: "num_points"},
                                    "point_labels": {1: "num_points"}})
  return model, _session(ours), _session(theirs)


ORIGINAL = (1500, 2250)  # torch.onnx's trace keeps the crop size of the example input


def _sam_feeds(rng, queries, points, has_mask, original):
  return {"image_embeddings": rng.standard_normal((1, 256, 64, 64)).astype(np.float32) * 0.5,
          "point_coords": (rng.random((queries, points, 2)) * 1024).astype(np.float32),
          "point_labels": rng.integers(-1, 4, (queries, points)).astype(np.float32),
          "mask_input": rng.standard_normal((1, 1, 256, 256)).astype(np.float32) * 3,
          "has_mask_input": np.array([float(has_mask)], np.float32),
          "orig_im_size": np.array(original, np.float32)}


@pytest.mark.parametrize("points,has_mask", [(5, True), (2, False)])
def test_sam_decoder_matches_segment_anythings_onnx_decoder(sam_decoder_files, points,
                                                            has_mask):
  _, ours, theirs = sam_decoder_files
  assert [i.name for i in ours.get_inputs()] == SAM_INPUTS
  assert [o.name for o in ours.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
  feeds = _sam_feeds(np.random.default_rng(points), 1, points, has_mask, ORIGINAL)
  got, want = ours.run(None, feeds), theirs.run(None, feeds)
  diffs = [np.abs(g - w).max() for g, w in zip(got, want)]
  flips = ((got[0] > 0) != (want[0] > 0)).mean()
  print(f"N={points} has_mask={has_mask}: masks {diffs[0]:.1e}, iou {diffs[1]:.1e}, low-res "
        f"{diffs[2]:.1e} (largest logit {np.abs(want[2]).max():.0f}), mask pixels differing "
        f"{flips:.1e}")
  assert got[0].shape == want[0].shape == (1, 4) + ORIGINAL
  # float32 noise of logits of ~20 through two transformers, as JAX vs torch (test_sam_parity)
  assert diffs[0] < 1e-3 and diffs[1] < 1e-4 and diffs[2] < 3e-4 and flips < 1e-5


def test_sam_decoder_takes_query_batches_and_any_size(sam_decoder_files):
  """Bp queries at once (segment-anything's file takes one), at a size of its own: the same as
  SamOnnxModel in torch, query by query."""
  import torch
  import sam_reference as ref
  SamOnnxModel = ref.sam_onnx_model_class()
  model, ours, _ = sam_decoder_files
  feeds = _sam_feeds(np.random.default_rng(7), 3, 4, True, (300, 410))
  masks, iou, low = ours.run(None, feeds)
  reference = SamOnnxModel(model, return_single_mask=False).eval()
  with torch.no_grad():
    want = [x.numpy() for x in reference(**{k: torch.from_numpy(v) for k, v in feeds.items()})]
  assert masks.shape == (3, 4, 300, 410)
  assert np.abs(low - want[2]).max() < 3e-4 and np.abs(iou - want[1]).max() < 1e-4
  assert np.abs(masks - want[0]).max() < 1e-3


def test_sam_encoder_file_normalises_and_pads(tmp_path):
  """input_image = ResizeLongestSide.apply_image's output (any size with longest side 1024)."""
  require_module("jax2onnx")
  import torch
  import sam_reference as ref
  from efficientsam_jax.export import onnx_export
  model, loaded = _sam(*SMALL_SAM)
  path = onnx_export.export_onnx(loaded, str(tmp_path), parts=("encoder",))["encoder"]
  image = np.random.default_rng(3).integers(0, 256, (300, 410, 3), dtype=np.uint8)
  resized, size = ref.reference_resized(image)
  got = _session(path).run(None, {"input_image": resized.numpy()})[0]
  with torch.no_grad():
    want = model.image_encoder(model.preprocess(resized)).numpy()
  print(f"SAM encoder: {np.abs(got - want).max():.1e} (largest {np.abs(want).max():.1f})")
  assert size == (749, 1024) and got.shape == (1, 256, 64, 64)
  assert np.abs(got - want).max() < 1e-4


# --- safetensors ------------------------------------------------------------------------------

def test_safetensors_round_trip_is_bit_exact(fixtures_dir, tmp_path):
  require_module("safetensors")
  released = str(fixtures_dir / "efficient_sam_vitt_random.pt")
  st = tmp_path / "vitt.safetensors"
  result = _convert(f"--input={released}", f"--output={st}", "--format=safetensors")
  assert result.returncode == 0, result.stderr
  want = torch_files.load(released)["model"]
  got, metadata = model_files.read_safetensors(str(st))
  assert metadata["model"] == "efficientsam_vitt"
  assert list(got) == list(want)  # the release's key order, kept in the metadata
  for name, value in want.items():
    assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
    assert got[name].tobytes() == value.tobytes(), name
  require_module("torch")
  back = str(tmp_path / "back.pt")
  assert model_files.convert(str(st), back + "_jax") == "efficientsam_vitt"
  model_files.convert(back + "_jax", back)
  again = torch_files.load(back)["model"]
  assert list(again) == list(want)
  assert all(again[k].tobytes() == want[k].tobytes() for k in want)


def test_format_mistakes_are_one_line(fixtures_dir, tmp_path):
  released = str(fixtures_dir / "efficient_sam_vitt_random.pt")
  with pytest.raises(UserError, match="writes a .safetensors file"):
    model_files.convert(released, str(tmp_path / "x.pt"), torch_format="safetensors")
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match="writes into a folder"):
    model_files.convert(released, str(tmp_path / "file"), torch_format="onnx")
  result = _convert(f"--input={released}", f"--output={tmp_path / 'y.pt'}",
                    "--format=safetensors")
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
  assert result.stderr.startswith("convert: error:")
