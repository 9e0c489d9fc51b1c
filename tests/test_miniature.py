"""The paper in miniature and its parts: MAE's pixel target in the SAMI trainer, an
EfficientSAM workdir as the SAMI teacher, the generated scenes, and the `--quick` experiment
end to end (results.json as docs/interfaces says, the figure, resuming)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sami_runs import REPO, env


def test_mae_target_is_normalised_pixels_of_masked_patches():
  from configs import sami_vitt
  from efficientsam_jax.tasks.sami import masking
  from efficientsam_jax.tasks.sami import task as sami_task
  config = sami_vitt.get_config("demo,smoke,target=pixels")
  assert (config.decoder.kind, config.loss.masked_only, config.loss.normalise_target) == (
      "all", True, True)
  task = sami_task.SamiTask(config)
  assert task.teacher is None and task.abstract_teacher(None, (), 0) is None
  params = jax.jit(task.init_params)(jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  valid = jnp.array([1, 1, 0])
  rng = jax.random.fold_in(jax.random.key(config.seed), 7)  # the shared loop's key of step 7
  loss, _ = task.loss_fn(params, None, {"image": images, "valid": valid}, rng)
  # The same loss by hand: patches in token order, each normalised over its 16*16*3 values,
  # squared error averaged over the masked tokens of valid images.
  b, n = 3, 4
  keep = masking.num_kept(n, config.mask_ratio)
  ids_keep, ids_masked, ids_restore = masking.random_masking(rng, b, n, keep)
  pred = np.asarray(task.student.apply({"params": params}, images, ids_keep, ids_masked,
                                       ids_restore))
  x = np.asarray(images)
  patches = np.stack([x[:, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].reshape(b, -1)
                      for r in range(2) for c in range(2)], axis=1)
  target = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(
      patches.var(-1, keepdims=True) + 1e-6)
  masked = np.asarray(ids_restore) >= keep
  weights = masked * np.asarray(valid)[:, None]
  expected = (((pred - target) ** 2).mean(-1) * weights).sum() / weights.sum()
  assert pred.shape == (3, 4, 768)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_scenes_are_deterministic_disjoint_and_varied():
  from efficientsam_jax.data import demo_sa1b, scenes
  image, masks, kinds = scenes.scene(0, 3, 64)
  again, masks_again, _ = scenes.scene(0, 3, 64)
  np.testing.assert_array_equal(image, again)
  assert all(np.array_equal(a, b) for a, b in zip(masks, masks_again))
  seen, holes = set(), 0
  for index in range(40):
    image, masks, kinds = scenes.scene(0, index, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and len(masks) == len(kinds)
    assert np.sum(masks, axis=0).max(initial=0) <= 1  # visible parts are disjoint
    assert all(m.mean() >= scenes.MIN_AREA_FRACTION for m in masks)
    seen |= set(kinds)
    holes += sum(kind == "ring" for kind in kinds)
  assert seen == set(scenes.VARIED_KINDS)
  _, _, heldout_kinds = scenes.scene(0, 0, 64, "heldout")
  assert set(heldout_kinds) <= set(scenes.HELDOUT_KINDS)
  # "plain" is the demo's earlier generator, unchanged.
  plain, plain_masks = demo_sa1b.demo_sample(0, 5, 96, "plain")
  assert len(plain_masks) <= demo_sa1b.MAX_SHAPES
  labels = [scenes.labelled_scene(0, i, 32)[1] for i in range(60)]
  assert set(labels) == set(range(len(scenes.VARIED_KINDS)))


def _run_quick(workdir, *flags):
  proc = subprocess.run(
      [sys.executable, "-m", "efficientsam_jax.experiments.miniature", f"--workdir={workdir}",
       "--quick", *flags], env=env(1), cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f), proc


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("miniature"))
  results, _ = _run_quick(workdir)  # two stages at a time (the default --jobs)
  return workdir, results


def test_quick_miniature_writes_results_and_the_figure(quick):
  workdir, results = quick
  assert set(results["arms"]) == {"scratch", "mae", "sami"}
  for arm, metrics in results["arms"].items():
    assert {"box_miou", "point1_miou", "top1"} <= set(metrics), arm
    for stats in metrics.values():
      assert set(stats) == {"mean", "std"} and 0.0 <= stats["mean"] <= 1.0
  per_seed = results["per_seed"]["0"]
  assert results["arms"]["sami"]["box_miou"]["mean"] == per_seed["sami"]["box_miou"]
  # The numbers are those of the stage workdirs: top-1 is the classification run's last
  # evaluation, the teacher is a finetuning workdir the SAMI run read its features from.
  with open(os.path.join(workdir, "seed_0", "classify_mae", "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  assert per_seed["mae"]["top1"] == last["eval/top1"]
  with open(os.path.join(workdir, "seed_0", "sami", "config.json")) as f:
    sami = json.load(f)
  assert sami["teacher"]["checkpoint"] == os.path.join(workdir, "teacher")
  with open(os.path.join(workdir, "seed_0", "mae", "config.json")) as f:
    assert json.load(f)["target"] == "pixels"
  with open(os.path.join(workdir, "miniature.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert results["total_cpu_s"] > 0 and "teacher" in results["clock"]


def test_quick_miniature_resumes_without_retraining(quick):
  workdir, results = quick
  again, proc = _run_quick(workdir, "--jobs=1")  # and finds the same stages in one process
  assert again["arms"] == results["arms"] and again["teacher"] == results["teacher"]
  assert "training" not in proc.stderr  # every stage was done
  assert (results["jobs"], again["jobs"]) == (2, 1)


def test_an_efficientsam_workdir_teaches_sami(quick):
  from configs import sami_vitt
  from efficientsam_jax.io import model_files
  from efficientsam_jax.models import registry
  from efficientsam_jax.tasks.sami.teacher import Teacher
  from efficientsam_jax.train import sharding
  workdir, _ = quick
  config = sami_vitt.get_config("demo,smoke").teacher
  config.update(size="model", checkpoint=os.path.join(workdir, "teacher"), dtype="float32")
  teacher = Teacher(config)
  params = teacher.load_params(teacher.abstract_params(sharding.make_mesh(-1, 1)))
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  features = teacher.apply(params, images)
  # The whole EfficientSAM of that workdir encodes the same images to the same embeddings.
  loaded = model_files.load(os.path.join(workdir, "teacher"))
  model = registry.build(loaded.config)
  expected = model.apply({"params": loaded.params}, images, method=model.encode)
  np.testing.assert_allclose(features, expected, atol=1e-5)
