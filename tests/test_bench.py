"""The benchmark CLI at tiny settings: every suite runs and prints well-formed records.

Timings are not asserted (CI machines vary); names, units and types are the contract.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("model", "image_size", "batch", "dtype", "device", "jax_version")


def _bench(*args, timeout=900, settings=SETTINGS) -> list[dict]:
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}  # one CPU device, as users run it
  result = subprocess.run([sys.executable, "-m", "efficientsam_jax.bench", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  records = [json.loads(line) for line in lines]  # every stdout line is one JSON object
  for record in records:
    assert isinstance(record["name"], str) and isinstance(record["unit"], str)
    assert isinstance(record["value"], float), record
    for key in settings:
      assert key in record, (key, record)
  return records


def _units(records) -> dict:
  out = {}
  for r in records:
    out.setdefault(r["name"], set()).add(r["unit"])
  return out


def test_inference_suite():
  # bf16 compute and a query chunk here; test_compare_torch runs the float32 suite.
  records = _bench("--suite=inference", "--model=efficientsam_vitt", "--image-size=64",
                   "--repeats=1", "--points-per-side=4", "--dtype=bfloat16", "--query-chunk=2")
  units = _units(records)
  for name in ("compile_seconds", "encoder_seconds", "decoder_seconds_per_query",
               "end_to_end_seconds", "everything_seconds", "everything_all_upscaled_seconds"):
    assert units[name] == {"s"}, name
  for name in ("everything_over_end_to_end", "everything_all_upscaled_over_end_to_end"):
    assert units[name] == {"x"}, name
  assert {r["dtype"] for r in records} == {"bfloat16"}
  assert {r["query_chunk"] for r in records} == {2}
  per_query = [r for r in records if r["name"] == "decoder_seconds_per_query"]
  assert sorted(r["queries"] for r in per_query) == [1, 64]
  assert {r["part"] for r in records if r["name"] == "compile_seconds"} >= {"encoder",
                                                                           "decoder"}
  assert all(r["value"] > 0 for r in records)


def test_train_suite():
  records = _bench("--suite=train", "--config=configs/sami_vitt.py:demo,smoke",
                   "--config.batch_size=4", "--repeats=1", "--data_batches=1",
                   "--matmul-size=256")
  units = _units(records)
  expected = {"compile_seconds": "s", "train_step_seconds": "s",
              "train_images_per_sec": "images/s", "model_flops_per_step": "flop",
              "achieved_flops_per_sec": "flop/s", "matmul_peak_flops_per_sec": "flop/s",
              "mfu": "fraction", "data_images_per_sec": "images/s"}
  for name, unit in expected.items():
    assert units[name] == {unit}, name
  by_name = {r["name"]: r for r in records}
  assert by_name["model_flops_per_step"]["value"] > 0
  assert by_name["mfu"]["value"] == pytest.approx(
      by_name["achieved_flops_per_sec"]["value"] / by_name["matmul_peak_flops_per_sec"]["value"])
  assert by_name["train_step_seconds"]["batch"] == 4


@pytest.mark.parametrize("config,transform", [
    ("configs/efficientsam_vitt.py", "segmentation_example"),
    ("configs/sami_vitt.py", "preprocess_random_resized")])
def test_data_suite_against_a_compile_report(tmp_path, config, transform):
  """Per-core rate of the recipe's own transform on one generated SA-1B-sized image, and the
  cores a (hand-written) compile_for report's hosts would need for it."""
  report = {"target": "v5litepod-64", "host_images_per_second_40pct_mfu": 50.0,
            "host_cores": 112}
  (tmp_path / "report.json").write_text("compile log line\n" + json.dumps(report) + "\n")
  records = _bench("--suite=data", f"--config={config}", "--data-images=1", "--repeats=2",
                   f"--report={tmp_path / 'report.json'}",
                   settings=("config", "image_size", "device", "jax_version"))
  by_name = {r["name"]: r for r in records}
  rate = by_name["images_per_second_per_core"]
  assert rate["unit"] == "images/s" and rate["transform"] == transform and rate["value"] > 0
  assert rate["input_hw"] == [1500, 2250] and rate["jpeg_kb"] > 100
  cores = by_name["cores_needed_40pct_mfu"]
  assert cores["value"] == pytest.approx(50.0 / rate["value"])
  assert cores["feeds"] == (cores["value"] <= 112) and cores["target"] == "v5litepod-64"


def test_compare_torch():
  from conftest import require_module
  require_module("torch")
  from efficientsam_jax.bench import torch_reference
  try:
    torch_reference.sam_image_encoder_class()
  except ImportError:
    require_module("segment_anything")
  records = _bench("--suite=inference", "--image-size=32", "--repeats=1",
                   "--points-per-side=2", "--compare-torch")
  torch_records = [r for r in records if r["suite"] == "compare_torch"]
  frameworks = {r.get("framework") for r in torch_records if r["name"] == "sam_encoder_seconds"}
  assert frameworks == {"jax", "torch"}
  diff = [r for r in torch_records if r["name"] == "sam_encoder_max_abs_diff_vs_torch"]
  assert diff and diff[0]["value"] < 1e-3  # same weights, same image: same features


def test_bad_flag_is_one_line_error():
  env = {**os.environ, "PYTHONPATH": ROOT}
  result = subprocess.run([sys.executable, "-m", "efficientsam_jax.bench",
                           "--suite=inference", "--image-size=30"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr  # a user mistake: exit status 2, one line
  assert "multiple of 16" in result.stderr and "Traceback" not in result.stderr
  assert result.stderr.startswith("bench: error: ") and result.stderr.count("\n") == 1
