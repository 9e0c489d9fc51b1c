"""The config files: the typed variant parser, every recipe loading, and the one-line errors
of a bad config on the command line."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from configs import common, efficientsam_vits, efficientsam_vitt, mobilesam_distill
from configs import sami, sami_vitb, sami_vits, sami_vitt
from efficientsam_jax.errors import UserError
from efficientsam_jax.tasks.finetune import task as finetune_task
from efficientsam_jax.tasks.sami import task as sami_task
from efficientsam_jax.train import config_checks

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC = dict(size=("vitb", "vitt"), demo=False, steps=10, lr=1.0, name="x")


def test_parse_variant_types_defaults_and_flags():
  assert common.parse_variant(None, SPEC) == dict(size="vitb", demo=False, steps=10, lr=1.0,
                                                  name="x")
  got = common.parse_variant(" demo, size=vitt ,steps=7,lr=2e-3,name=y", SPEC)
  assert got == dict(size="vitt", demo=True, steps=7, lr=2e-3, name="y")
  assert common.parse_variant("demo=false", SPEC)["demo"] is False


@pytest.mark.parametrize("arg,message", [
    ("demo,somke", "unknown variant word 'somke'"),
    ("size=vits", "expected one of vitb, vitt"),
    ("steps=seven", "expected int"),
    ("steps", "needs a value"),
    ("demo=maybe", "expected true or false"),
    ("demo,demo", "given twice"),
])
def test_parse_variant_rejects(arg, message):
  with pytest.raises(common.VariantError, match=message):
    common.parse_variant(arg, SPEC)


def test_named_settings_are_the_shared_recipes():
  for module, size in ((sami_vitt, "vitt"), (sami_vits, "vits"), (sami_vitb, "vitb")):
    assert module.get_config("demo").to_dict() == sami.get_config(f"size={size},demo").to_dict()
  assert efficientsam_vits.get_config().model.size == "vits"
  with pytest.raises(common.VariantError, match="given twice"):
    sami_vitb.get_config("size=vitt")


def test_recipes_hold_the_paper_numbers():
  c = sami_vitb.get_config()
  assert (c.batch_size, c.total_steps, c.mask_ratio) == (4096, 400 * (1_281_167 // 4096), 0.75)
  assert c.optimizer.base_lr * c.batch_size / 256 == pytest.approx(2.4e-3)
  assert (c.optimizer.b2, c.optimizer.weight_decay, c.optimizer.decay) == (0.95, 0.05, "cosine")
  e = efficientsam_vitt.get_config()
  assert (e.batch_size, e.optimizer.lr, e.optimizer.weight_decay) == (128, 4e-4, 0.1)
  assert (e.optimizer.decay, e.model.image_size, e.data.max_masks) == ("linear", 1024, 64)
  d = mobilesam_distill.get_config()
  assert (d.student.kind, d.decoder.kind, d.mask_ratio, d.data.crop) == (
      "tiny_vit", "none", 0.0, "longest_side")


@pytest.mark.parametrize("module", [sami_vitt, sami_vits, sami_vitb, efficientsam_vitt,
                                    efficientsam_vits, mobilesam_distill])
@pytest.mark.parametrize("arg", [None, "demo", "demo,smoke", "smoke"])
def test_every_config_loads(module, arg):
  config = module.get_config(arg)
  assert config.trainer in ("sami", "efficientsam")
  for key in ("seed", "total_steps", "batch_size", "log_every", "checkpoint_every"):
    assert config[key] > 0 or key == "seed"
  assert set(config.mesh) == {"data", "fsdp"}


CHECKS = {"sami": sami_task.check_config, "efficientsam": finetune_task.check_config}


@pytest.mark.parametrize("module", [sami_vitt, sami_vitb, efficientsam_vitt, efficientsam_vits,
                                    mobilesam_distill])
@pytest.mark.parametrize("arg", [None, "demo", "demo,smoke"])
def test_every_recipe_passes_its_trainers_checks(module, arg):
  config = module.get_config(arg)
  CHECKS[config.trainer](config)


@pytest.mark.parametrize("module,key,value,message", [
    (sami_vitt, "batch_size", 0, "config.batch_size must be at least 1, got 0"),
    (sami_vitt, "total_steps", -5, "config.total_steps must be at least 1, got -5"),
    (sami_vitt, "mask_ratio", 1.5, "config.mask_ratio must be in [0, 1), got 1.5"),
    (sami_vitt, "mask_ratio", 1.0, "config.mask_ratio must be in [0, 1), got 1.0"),
    (sami_vitt, "log_every", 0, "config.log_every must be at least 1"),
    (sami_vitt, "checkpoint_every", -1, "config.checkpoint_every must be at least 1"),
    (sami_vitt, "keep_checkpoints", 0, "config.keep_checkpoints must be at least 1"),
    (sami_vitt, "mesh.fsdp", 0, "config.mesh.fsdp must be a device count"),
    (sami_vitt, "optimizer.lr", -1e-3, "config.optimizer.lr must be positive"),
    (sami_vitt, "optimizer.lr", float("nan"), "config.optimizer.lr must be positive"),
    (sami_vitt, "optimizer.b2", 1.0, "config.optimizer.b2 must be in [0, 1)"),
    (sami_vitt, "optimizer.weight_decay", -0.1,
     "config.optimizer.weight_decay must be at least 0"),
    (sami_vitt, "optimizer.decay", "step",
     "config.optimizer.decay must be one of 'cosine', 'linear'"),
    (sami_vitt, "nonfinite_policy", "ignore", "config.nonfinite_policy must be one of"),
    (sami_vitt, "data.image_size", 40,
     "config.data.image_size must be a positive multiple of 16"),
    (sami_vitt, "decoder.num_heads", 0, "config.decoder.num_heads must be at least 1"),
    (sami_vitt, "decoder.width", 65, "config.decoder.width (65) must be a multiple of"),
    (sami_vitt, "data.min_scale", 0.0, "data.min_scale must be in (0, 1]"),
    (sami_vitt, "data.num_demo_images", 0, "config.data.num_demo_images must be at least 1"),
    (sami_vitt, "loss.kind", "l1", "config.loss.kind must be one of 'mse', 'cosine'"),
    (mobilesam_distill, "data.read_threads", 0, "config.data.read_threads must be at least 1"),
    (efficientsam_vitt, "batch_size", 0, "config.batch_size must be at least 1, got 0"),
    (efficientsam_vitt, "total_steps", 0, "config.total_steps must be at least 1, got 0"),
    (efficientsam_vitt, "prompts.box_probability", 1.5,
     "config.prompts.box_probability must be in [0, 1], got 1.5"),
    (efficientsam_vitt, "data.max_area_fraction", 0.0,
     "config.data.max_area_fraction must be in (0, 1]"),
    (efficientsam_vitt, "data.max_masks", 0, "config.data.max_masks must be at least 1"),
    (efficientsam_vitt, "data.mask_size", 10,
     "config.data.mask_size must be model.image_size / 4"),
    (efficientsam_vitt, "prompts.refine_iters", -1,
     "config.prompts.refine_iters must be at least 0"),
])
def test_a_bad_value_is_refused_by_its_trainers_check(module, key, value, message):
  config = module.get_config("demo,smoke")
  parent, _, leaf = key.rpartition(".")
  (config_checks.value(config, parent) if parent else config)[leaf] = value
  with pytest.raises(UserError, match=re.escape(message)):
    CHECKS[config.trainer](config)


def _main(*args, cwd=REPO):
  # PYTHONPATH: this checkout's package, whatever the working directory.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, "-m", "efficientsam_jax.main", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(result, message):
  """Exit 2, one error line (log lines of the run before it may precede), no traceback."""
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("main: error: ")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert message in errors[0], errors[0]


def test_a_variant_typo_is_one_line_and_exit_2(tmp_path):
  result = _main("--config=configs/sami_vitt.py:demo,somke", f"--workdir={tmp_path}/w")
  _one_line_error(result, "unknown variant word 'somke'")
  assert not (tmp_path / "w").exists()


def test_an_unknown_config_key_is_one_line_naming_it(tmp_path):
  result = _main("--config=configs/sami_vitt.py:demo,smoke", f"--workdir={tmp_path}/w",
                 "--config.data.imag_size=64")
  _one_line_error(result, "--config.data.imag_size: the config has no key "
                  "config.data.imag_size (did you mean image_size?)")
  assert not (tmp_path / "w").exists()


def test_a_missing_config_file_is_one_line_and_exit_2(tmp_path):
  _one_line_error(_main("--config=configs/nope.py", f"--workdir={tmp_path}/w"),
                  "no such config file configs/nope.py")


def test_a_config_path_works_from_another_directory(tmp_path):
  """configs/*.py import configs.common: found from any working directory. The run stops at
  the first check that needs the config's values (a mesh that does not fit)."""
  result = _main(f"--config={REPO}/configs/sami_vitt.py:demo,smoke", f"--workdir={tmp_path}/w",
                 "--config.mesh.data=3", cwd=tmp_path)
  _one_line_error(result, "mesh data=3")
