"""Every command-line tool answers a user mistake the same way: exit status 2, exactly one line
`TOOL: error: ...` on stderr (any other stderr line is one of the package's own log lines),
no traceback, and nothing compiled. A sweep of bad flags, missing, unreadable and misplaced
files and bad values over main, convert, predict, evaluate, cache_teacher and bench, run as
parallel subprocesses."""
import concurrent.futures
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sami_runs import REPO, env

SMOKE = "--config=configs/sami_vitt.py:demo,smoke"
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Inputs of every kind: good ones, and the wrong ones a careless user passes."""
  root = tmp_path_factory.mktemp("inputs")
  Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "image.png")
  (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  (root / "garbage.pt").write_bytes(b"PK\x03\x04 not a zip either")
  (root / "prompts.json").write_text(json.dumps([{"box": [1, 2, 30, 20]}]))
  (root / "inverted.json").write_text(json.dumps([{"box": [1, 2, 30, 20]},
                                                   {"box": [30, 2, 1, 20]}]))
  (root / "nan.json").write_text('[{"points": [[NaN, 2]], "labels": [1]}]')
  (root / "broken.json").write_text('[{"box": [1, 2, 3')
  (root / "boolean.json").write_text('[{"points": [[true, 2]], "labels": [1]}]')
  (root / "coco.json").write_text(json.dumps({"images": [], "annotations": []}))
  (root / "a_file").write_text("not a folder")
  (root / "folder").mkdir()
  return root


def cases(f):
  """(tool, arguments, a piece of the one error line)."""
  image, prompts = f / "image.png", f / "prompts.json"
  predict = lambda expected, *more: (
      "predict", ["--checkpoint=/nonexistent/model.pt", f"--image={image}", f"--prompts={prompts}",
                  f"--output={f}/out.npz", *more], expected)
  return [
      ("main", [SMOKE], "--workdir must have a value"),
      ("main", ["--config=configs/nope.py", f"--workdir={f}/w"], "no such config file"),
      ("main", ["--config=configs/sami_vitt.py:demo,smok", f"--workdir={f}/w"],
       "unknown variant word 'smok'"),
      ("main", [SMOKE, f"--workdir={f}/w", "--config.foo=1"], "the config has no key"),
      ("main", [SMOKE, f"--workdir={f}/w", "--config.batch_size=0"],
       "config.batch_size must be at least 1, got 0"),
      ("main", [SMOKE, f"--workdir={f}/w", "--config.mask_ratio=1.5"],
       "config.mask_ratio must be in [0, 1), got 1.5"),
      ("main", [SMOKE, f"--workdir={f}/w", "--config.total_steps=-5"],
       "config.total_steps must be at least 1, got -5"),
      ("main", [SMOKE, f"--workdir={f}/w", "--config.batch_size=eight"], "batch_size"),
      ("main", [SMOKE, f"--workdir={f}/w", "--bogus=1"], "Unknown command line flag 'bogus'"),
      ("main", [SMOKE, f"--workdir={f}/w", "extra"], "unexpected arguments: extra"),
      ("main", [SMOKE, f"--workdir={f}/a_file/w"], "is not writable"),
      ("main", [SMOKE, f"--workdir={f}/w", "--config.data.source=folder",
                f"--config.data.path={f}/a_file"], "does not exist or is not a directory"),
      ("main", [SMOKE, f"--workdir={f}/w", "--config.teacher.random_init=False",
                "--config.teacher.checkpoint=/nonexistent/sam.pth"], "does not exist"),
      ("convert", [], "--input and --output are required"),
      ("convert", ["--input=/nonexistent/model.pt", f"--output={f}/out"], "no such file"),
      ("convert", [f"--input={f}/garbage.pt", f"--output={f}/out"], "garbage.pt"),
      ("convert", [f"--input={f}/folder", f"--output={f}/out.pt"], "folder"),
      ("convert", ["--input=x.pt", "--output=y", "--format=onnx2"], "--format"),
      predict("missing --prompts", "--prompts="),
      predict("is a directory, not an image", f"--image={f}/folder"),
      predict("cannot read image", f"--image={f}/garbage.png"),
      predict("no such image", f"--image={f}/nope.png"),
      predict("is a directory, not a prompts file", f"--prompts={f}/folder"),
      predict("not valid JSON", f"--prompts={f}/broken.json"),
      predict("query 1: box [30, 2, 1, 20] has x2 < x1", f"--prompts={f}/inverted.json"),
      predict("query 0: coordinates must be finite", f"--prompts={f}/nan.json"),
      predict("query 0: coordinates and labels must be", f"--prompts={f}/boolean.json"),
      predict("/nonexistent/model.pt"),
      predict("--dtype", "--dtype=float16"),
      ("evaluate", [], "missing --checkpoint"),
      ("evaluate", ["--checkpoint=/nonexistent/model.pt", f"--images={f}/folder",
                    f"--annotations={f}/nope.json"], "nope.json"),
      ("evaluate", ["--checkpoint=/nonexistent/model.pt", f"--images={f}/folder",
                    f"--annotations={f}/folder"], "folder"),
      ("cache_teacher", [SMOKE], "--output must have a value"),
      ("cache_teacher", [SMOKE, f"--output={f}/cache", "--config.batch_size=0"],
       "config.batch_size must be at least 1"),
      ("cache_teacher", [SMOKE, f"--output={f}/a_file"], "a_file"),
      ("bench", ["--suite=nope"], "--suite"),
      ("bench", ["--image_size=100"], "--image-size must be a positive multiple of 16"),
      ("bench", ["--suite=train"], "--suite=train needs --config"),
  ]


def _run(tool, args):
  module = "efficientsam_jax.bench" if tool == "bench" else f"efficientsam_jax.{tool}"
  return subprocess.run([sys.executable, "-m", module, *args], env=env(1), cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_every_tool_reports_a_user_mistake_as_one_line_and_exit_2(files):
  sweep = cases(files)
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    results = list(pool.map(lambda case: _run(case[0], case[1]), sweep))
  problems = []
  for (tool, args, expected), result in zip(sweep, results):
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{tool}: error: ")]
    others = [line for line in result.stderr.splitlines()
              if line.strip() and not line.startswith(f"{tool}: error: ")
              and not LOG_LINE.match(line)]
    if (result.returncode != 2 or len(errors) != 1 or expected not in errors[0] or others
        or "Traceback" in result.stderr or "compiled" in result.stderr):
      problems.append(f"{tool} {' '.join(args)}: exit {result.returncode}\n{result.stderr[-1500:]}")
  assert not problems, "\n\n".join(problems)
