"""Large requests: results checked against memory before any work, decoding split into calls,
and the predict tool's full-resolution logits streamed to the .npz a chunk at a time, equal
to the in-memory result (tiny random EfficientSAM at 64 px)."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import files, overlay
from efficientsam_jax.inference import predictor as predictor_lib
from efficientsam_jax.inference.queries import Queries
from efficientsam_jax.models import efficient_sam as es

H, W = 48, 80
IMAGE = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
BOXES = np.array([[2 + i, 3, 30 + 2 * i, 40] for i in range(12)], np.float32)


@pytest.fixture(scope="module")
def tiny():
  # A 4 x 4 embedding grid and 2 encoder blocks: compiled in seconds.
  config = es.FAMILY.config("efficientsam_vitt", image_size=64,
                            encoder_overrides=(("depth", 2),))
  predictor = predictor_lib.Predictor(es.FAMILY.init_params(config), config)
  predictor.set_image(IMAGE)
  return predictor


def test_results_that_do_not_fit_in_memory_are_refused_before_any_work(tiny, monkeypatch):
  need = tiny.result_bytes(10)
  assert need["logits"] == 10 * 3 * H * W * 4 and need["low_res_logits"] == 10 * 3 * 16 * 16 * 4
  monkeypatch.setattr(predictor_lib, "available_memory", lambda: need["total"] - 1)
  calls = []
  monkeypatch.setattr(tiny, "_decode_call", lambda *args: calls.append(args))
  with pytest.raises(UserError, match=r"10 queries on a 80x48 image need 0.0 GiB for their "
                     r"results \(full-resolution logits 10 x 3 x 48 x 80 x 4 bytes"):
    tiny.predict(boxes=BOXES[:10])
  assert not calls  # refused before decoding anything
  tiny.check_result_memory(10, full_resolution=False)  # the low-resolution logits fit


def test_many_queries_are_decoded_in_several_calls_with_the_same_answers(tiny, monkeypatch):
  whole = tiny.predict(boxes=BOXES, full_resolution=False)
  monkeypatch.setattr(predictor_lib, "MAX_QUERIES_PER_CALL", 8)  # calls of 8 and 4 queries
  split = tiny.predict(boxes=BOXES, full_resolution=False)
  np.testing.assert_allclose(split["low_res_logits"], whole["low_res_logits"], atol=1e-5)
  np.testing.assert_allclose(split["iou"], whole["iou"], atol=1e-6)


def _inputs(tmp_path, queries):
  Image.fromarray(IMAGE).save(tmp_path / "image.png")
  (tmp_path / "prompts.json").write_text(json.dumps(queries))
  return str(tmp_path / "image.png"), str(tmp_path / "prompts.json")


def test_predict_file_streams_the_logits_equal_to_the_in_memory_result(tiny, tmp_path,
                                                                       monkeypatch):
  queries = [{"box": box.tolist()} for box in BOXES[:5]] + [
      {"points": [[20.0, 20.0], [60.0, 30.0]], "labels": [1, 0]}]
  image_path, prompts_path = _inputs(tmp_path, queries)
  monkeypatch.setattr(files.Predictor, "from_checkpoint", lambda *args, **kwargs: tiny)
  monkeypatch.setattr(files, "STREAM_CHUNK_BYTES", 2 * 3 * H * W * 4)  # 3 chunks of 2
  output, picture = tmp_path / "out.npz", tmp_path / "overlay.png"
  written = files.predict_file("tiny", image_path, prompts_path, str(output),
                               overlay_path=str(picture))
  assert written["logits_shape"] == (6, 3, H, W)
  expected = tiny.predict_queries(Queries.from_json(queries))
  with np.load(output) as npz:
    assert sorted(npz.files) == ["image_embeddings", "iou", "logits", "low_res_logits"]
    for name in ("logits", "low_res_logits", "iou"):
      np.testing.assert_array_equal(npz[name], expected[name], err_msg=name)
    np.testing.assert_array_equal(npz["image_embeddings"], tiny.image_embeddings)
  points, labels = Queries.from_json(queries).arrays(6)
  reference = overlay.overlay_image(IMAGE, expected["logits"], expected["iou"], points, labels)
  np.testing.assert_array_equal(np.asarray(Image.open(picture)), np.asarray(reference))


def test_predict_file_refuses_an_output_the_disk_cannot_hold(tiny, tmp_path, monkeypatch):
  image_path, prompts_path = _inputs(tmp_path, [{"box": [1, 2, 30, 40]}])
  monkeypatch.setattr(files.Predictor, "from_checkpoint", lambda *args, **kwargs: tiny)
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage._replace(free=1000))
  with pytest.raises(UserError, match="out.npz would take 0.0 GiB but .* has 0.0 GiB free"):
    files.predict_file("tiny", image_path, prompts_path, str(tmp_path / "out.npz"))
  assert not (tmp_path / "out.npz").exists()


def test_prompts_outside_the_image_are_refused_before_the_encoder_runs(tiny, tmp_path,
                                                                       monkeypatch):
  image_path, prompts_path = _inputs(tmp_path, [{"box": [1, 2, 30, 40]},
                                                {"points": [[90.0, 10.0]], "labels": [1]}])
  monkeypatch.setattr(files.Predictor, "from_checkpoint", lambda *args, **kwargs: tiny)
  monkeypatch.setattr(tiny, "set_image", lambda image: pytest.fail("the encoder ran"))
  with pytest.raises(UserError, match="query 1: point .90, 10. lies outside the 80x48 image"):
    files.predict_file("tiny", image_path, prompts_path, str(tmp_path / "out.npz"))
