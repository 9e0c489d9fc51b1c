"""The miniature experiment's outputs: DIR/results.json and the figure DIR/miniature.png.

results.json (docs/interfaces: `arms` is the contract; the rest is added detail):
  {"arms": {ARM: {METRIC: {"mean", "std"}}},        ARM scratch | mae | sami;
                                                    METRIC box_miou | point1_miou | top1
                                                    (| heldout_box_miou)
   "per_seed": {SEED: {ARM: {METRIC: value}}}, "teacher": {box_miou, point1_miou,
   heldout_box_miou}, "eval_split", "seeds", "clock": per-stage wall/CPU seconds and load,
   "total_wall_s", "total_cpu_s" (this run's, every process's), "jobs", "cpu_count"}
std is the sample standard deviation over seeds (ddof=1; 0 for a single seed).

The figure: bars (mean, error bars one std, each seed a dot) of box mIoU, 1-click mIoU and
top-1 per arm, and the finetuning curves (training mIoU of segmentation finetuning, held-out
top-1 of classification finetuning, mean over seeds) read from the stage workdirs'
metrics.jsonl. matplotlib is optional at run time: without it the figure is skipped with a
warning and results.json is still written.
"""
import json
import os

import numpy as np
from absl import logging

ARMS = ("scratch", "mae", "sami")
METRICS = ("box_miou", "point1_miou", "top1", "heldout_box_miou")
TITLES = {"box_miou": "box mIoU", "point1_miou": "1-click mIoU", "top1": "top-1",
          "heldout_box_miou": "box mIoU, held-out style"}
FIGURE = "miniature.png"


def summarise(raw: dict, config) -> dict:
  """raw (paper.run's) -> the results.json dict."""
  per_seed = {str(s): r for s, r in raw["per_seed"].items()}
  arms = {}
  for arm in ARMS:
    arms[arm] = {}
    for metric in METRICS:
      values = [r[arm][metric] for r in per_seed.values() if metric in r[arm]]
      if values:
        arms[arm][metric] = {"mean": float(np.mean(values)),
                             "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
  clock = raw["clock"]
  return {"arms": arms, "per_seed": per_seed, "teacher": raw["teacher"],
          "eval_split": config.eval_split, "seeds": list(config.seeds), "clock": clock,
          "total_wall_s": raw["wall_s"], "total_cpu_s": raw["cpu_s"], "jobs": raw["jobs"],
          "cpu_count": os.cpu_count()}


def write_json(results: dict, path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)


def curves(workdir: str, seeds, stage: str, key: str) -> dict:
  """{arm: (steps, values (seeds, steps))} of `key` in seed_S/{stage}_{arm}/metrics.jsonl."""
  out = {}
  for arm in ARMS:
    runs = []
    for seed in seeds:
      path = os.path.join(workdir, f"seed_{seed}", f"{stage}_{arm}", "metrics.jsonl")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
      runs.append({r["step"]: r[key] for r in records if key in r})
    if runs:
      steps = sorted(set.intersection(*(set(r) for r in runs)))
      out[arm] = (np.array(steps), np.array([[r[s] for s in steps] for r in runs]))
  return out


def figure(results: dict, workdir: str, path: str) -> bool:
  """Draws the figure (module docstring) into `path`; False when matplotlib is missing."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("matplotlib is not installed: no figure (pip install matplotlib)")
    return False
  colours = {"scratch": "#888888", "mae": "#4C72B0", "sami": "#DD8452"}
  bars = ("box_miou", "point1_miou", "top1", "heldout_box_miou")
  fig, grid = plt.subplots(2, 3, figsize=(13, 7.5))
  axes = [grid[0, 0], grid[0, 1], grid[0, 2], grid[1, 0], grid[1, 1], grid[1, 2]]
  for ax, metric in zip(axes, bars):
    for i, arm in enumerate(ARMS):
      stats = results["arms"][arm].get(metric)
      if stats is None:
        continue
      ax.bar(i, stats["mean"], yerr=stats["std"], color=colours[arm], capsize=4)
      seeds = [r[arm][metric] for r in results["per_seed"].values() if metric in r[arm]]
      ax.plot([i] * len(seeds), seeds, "k.", markersize=4)
    ax.set_xticks(range(len(ARMS)), ARMS)
    split = "held-out style" if metric.startswith("heldout") else results["eval_split"]
    ax.set_title(f"{TITLES[metric].split(',')[0]} ({split})")
  seeds = results["seeds"]
  for ax, (stage, key, title) in zip(axes[len(bars):], (
      ("segment", "miou", "segmentation finetuning: training mIoU"),
      ("classify", "eval/top1", f"classification finetuning: {results['eval_split']} top-1"))):
    for arm, (steps, values) in curves(workdir, seeds, stage, key).items():
      mean, std = values.mean(0), values.std(0)
      ax.plot(steps, mean, color=colours[arm], label=arm)
      ax.fill_between(steps, mean - std, mean + std, color=colours[arm], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(loc="lower right")
  fig.suptitle(f"The paper in miniature: {len(seeds)} seed(s), mean and std")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True
