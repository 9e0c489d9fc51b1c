"""The stages of the miniature experiment (configs/miniature.py says what each one is), run
with the project's own trainers and evaluation, in this process or several at once in
processes of their own (`run(jobs=...)`), and resumable: a stage that finished (its
`done.json`) is not run again, a stage that was cut short resumes from its checkpoint, so the
same command continues an interrupted experiment.

DIR/
  data/{pool,labelled,val,test,heldout}/   generated scenes, SA-1B layout (+ instances.json)
  teacher/                                 the teacher's finetuning workdir
  seed_S/{sami,mae}/                       pretraining workdirs
  seed_S/segment_{scratch,mae,sami}/       segmentation finetuning workdirs
  seed_S/classify_{scratch,mae,sami}/      classification finetuning workdirs
  jax_cache/                               compiled steps shared by identical stages
"""
import contextlib
import json
import logging as std_logging
import multiprocessing
import os
import resource
import time
from concurrent import futures

import jax
from absl import logging

from efficientsam_jax import cli
from efficientsam_jax.data import demo_sa1b, segmentation
from efficientsam_jax.evaluation import annotations, runner
from efficientsam_jax.inference import Predictor
from efficientsam_jax.train import trainers

ARMS = ("scratch", "mae", "sami")
DONE = "done.json"


def cpu_seconds() -> float:
  """CPU time of this process and its finished children (what the stages cost the machine)."""
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Clock:
  """Wall and CPU seconds per stage, and the load average around them."""

  def __init__(self):
    self.stages = {}

  @contextlib.contextmanager
  def stage(self, name: str):
    wall, cpu, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
    yield
    self.stages[name] = {"wall_s": round(time.perf_counter() - wall, 1),
                         "cpu_s": round(cpu_seconds() - cpu, 1),
                         "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def _read_done(directory: str):
  path = os.path.join(directory, DONE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _write_done(directory: str, record: dict) -> dict:
  tmp = os.path.join(directory, DONE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(directory, DONE))
  return record


def write_data(config, root: str) -> dict:
  """Writes (once) every split; returns {split: directory}. Index ranges of one seed: pool
  [0, P), the labelled subset = the first L pool images, val [P, P + V), test after it; the
  held-out style is a different generator, indices [0, H)."""
  d = config.data
  splits = {name: os.path.join(root, name)
            for name in ("pool", "labelled", "val", "test", "heldout")}
  if _read_done(root):
    return splits
  plan = {"pool": (0, d.pool, "varied"), "labelled": (0, d.labelled, "varied"),
          "val": (d.pool, d.val, "varied"), "test": (d.pool + d.val, d.test, "varied"),
          "heldout": (0, d.heldout, "heldout")}
  for name, (first, count, style) in plan.items():
    demo_sa1b.write_split(splits[name], d.seed, first, count, config.image_size, style)
    if name in ("val", "test", "heldout"):
      with open(os.path.join(splits[name], "instances.json"), "w") as f:
        json.dump(segmentation.sa1b_to_coco(splits[name]), f)
  _write_done(root, {"splits": {k: list(v) for k, v in plan.items()}})
  return splits


def train_stage(config, workdir: str) -> None:
  """Runs the trainer `config.trainer` in `workdir` unless it finished before."""
  if _read_done(workdir):
    return
  os.makedirs(workdir, exist_ok=True)
  logging.info("miniature: training %s in %s (%d steps)", config.trainer, workdir,
               config.total_steps)
  trainers.get_trainer(config.trainer)(config, workdir)
  _write_done(workdir, {"trainer": config.trainer, "steps": config.total_steps})


def segmentation_scores(workdir: str, splits: dict, eval_split: str) -> dict:
  """box and point1 mIoU on the evaluation split, box mIoU on the held-out style (cached in
  the workdir)."""
  cache = os.path.join(workdir, "scores.json")
  if os.path.exists(cache):
    with open(cache) as f:
      return json.load(f)
  predictor = Predictor.from_checkpoint(workdir)
  scores = {}
  for key, split, prompt in (("box_miou", eval_split, "box"), ("point1_miou", eval_split,
                                                               "point1"),
                             ("heldout_box_miou", "heldout", "box")):
    directory = splits[split]
    gt = annotations.load(os.path.join(directory, "instances.json"))
    # The papers' protocol, as `evaluate` runs it: the annotation's box, SAM's first click.
    result, _ = runner.evaluate(predictor, gt, directory, [prompt], show_progress=False)
    scores[key] = result["miou"]
  with open(cache, "w") as f:
    json.dump(scores, f)
  return scores


def classification_top1(workdir: str) -> float:
  """eval/top1 of the final step (metrics.jsonl's last record)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return float([r for r in records if "eval/top1" in r][-1]["eval/top1"])


def stage_configs(config, seed: int, splits: dict, teacher_dir: str, workdir: str) -> dict:
  """{stage name: (config, workdir)} of one seed, in running order."""
  out = {}
  for name in ("sami", "mae"):
    c = config[name].copy_and_resolve_references()
    c.seed = seed
    c.data.path = splits["pool"]
    if name == "sami":
      c.teacher.checkpoint = teacher_dir
    out[name] = (c, os.path.join(workdir, name))
  inits = {"scratch": None, "mae": out["mae"][1], "sami": out["sami"][1]}
  for arm in ARMS:
    f = config.finetune.copy_and_resolve_references()
    f.seed = seed
    f.data.update(source="sa1b", path=splits["labelled"])
    f.init_from = inits[arm]
    out[f"segment_{arm}"] = (f, os.path.join(workdir, f"segment_{arm}"))
    k = config.classify.copy_and_resolve_references()
    k.seed = seed
    k.init_from = inits[arm]
    if config.eval_split == "val":
      k.data.demo.eval_seed = config.classify_val_seed
    out[f"classify_{arm}"] = (k, os.path.join(workdir, f"classify_{arm}"))
  return out


def stage_plan(config) -> dict:
  """{stage: the stages it needs}, in the order the scheduler prefers them: the teacher, then
  what waits for it (SAMI, then its finetunings), then the rest. 'teacher' or 'seed_S/NAME'
  (NAME a key of stage_configs)."""
  seeds = list(config.seeds)
  plan = {"teacher": ()}
  for seed in seeds:
    plan[f"seed_{seed}/sami"] = ("teacher",)
  for arm in ("sami", "mae", "scratch"):
    for seed in seeds:
      if arm == "mae":
        plan[f"seed_{seed}/mae"] = ()
      needs = () if arm == "scratch" else (f"seed_{seed}/{arm}",)
      plan[f"seed_{seed}/segment_{arm}"] = needs
      plan[f"seed_{seed}/classify_{arm}"] = needs
  return plan


def run_stage(config, workdir: str, name: str) -> dict:
  """Trains (or finds done) one stage of stage_plan and scores it: {"result": scores (the
  teacher's and segmentation stages') | top-1 (classification) | None, "clock": ...}."""
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  clock = Clock()
  splits = write_data(config, os.path.join(workdir, "data"))
  teacher_dir = os.path.join(workdir, "teacher")
  with clock.stage(name):
    if name == "teacher":
      teacher = config.teacher.copy_and_resolve_references()
      teacher.data.update(source="sa1b", path=splits["pool"])
      train_stage(teacher, teacher_dir)
      result = segmentation_scores(teacher_dir, splits, config.eval_split)
    else:
      seed_name, stage = name.split("/")
      stages = stage_configs(config, int(seed_name[len("seed_"):]), splits, teacher_dir,
                             os.path.join(workdir, seed_name))
      stage_config, stage_dir = stages[stage]
      train_stage(stage_config, stage_dir)
      result = None
      if stage.startswith("segment_"):
        result = segmentation_scores(stage_dir, splits, config.eval_split)
      elif stage.startswith("classify_"):
        result = classification_top1(stage_dir)
  return {"result": result, "clock": clock.stages[name]}


def _run_stage_in_child(config, workdir: str, name: str) -> dict:
  # A spawned process has not parsed the flags: the stage logs as the miniature command does.
  logging.set_verbosity(logging.INFO)
  cli.quiet_libraries(std_logging.WARNING)
  return run_stage(config, workdir, name)


def run_all(config, workdir: str, jobs: int) -> dict:
  """{stage: run_stage's record} of every stage of stage_plan; with jobs > 1 that many stages
  at once, each in a process of its own, a stage as soon as the stages it needs are done."""
  plan = stage_plan(config)
  if jobs == 1:
    return {name: run_stage(config, workdir, name) for name in plan}
  done, running = {}, {}
  context = multiprocessing.get_context("spawn")  # a fork of a process that runs JAX may hang
  with futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
    while len(done) < len(plan):
      for name, needs in plan.items():
        if (len(running) < jobs and name not in done and name not in running.values()
            and all(n in done for n in needs)):
          running[pool.submit(_run_stage_in_child, config, workdir, name)] = name
      finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
      for future in finished:
        done[running.pop(future)] = future.result()  # a failed stage ends the experiment
  return {name: done[name] for name in plan}


def run(config, workdir: str, jobs: int = 1) -> dict:
  """Runs (or resumes) every stage, `jobs` at a time; returns the raw results: the teacher's
  scores, per seed and arm the segmentation scores and top-1, the clock per stage and in
  all."""
  if config.eval_split not in ("val", "test"):
    raise ValueError(f"eval_split must be 'val' or 'test', got {config.eval_split!r}")
  os.makedirs(workdir, exist_ok=True)
  wall, cpu = time.perf_counter(), cpu_seconds()
  clock = Clock()
  with clock.stage("data"):
    write_data(config, os.path.join(workdir, "data"))
  records = run_all(config, workdir, jobs)
  logging.info("miniature: teacher %s", records["teacher"]["result"])
  per_seed = {}
  for seed in config.seeds:
    results = {arm: {} for arm in ARMS}
    for name, record in records.items():
      if not name.startswith(f"seed_{seed}/"):
        continue
      stage = name.split("/")[1]
      if stage.startswith("segment_"):
        results[stage[len("segment_"):]].update(record["result"])
      elif stage.startswith("classify_"):
        results[stage[len("classify_"):]]["top1"] = record["result"]
    logging.info("miniature: seed %d %s", seed, results)
    per_seed[seed] = results
  stages = {**clock.stages, **{name: record["clock"] for name, record in records.items()}}
  # The processes of a pool are reaped when it closes, so their CPU time is counted here.
  return {"teacher": records["teacher"]["result"], "per_seed": per_seed, "clock": stages,
          "wall_s": round(time.perf_counter() - wall, 1),
          "cpu_s": round(cpu_seconds() - cpu, 1), "jobs": jobs}
