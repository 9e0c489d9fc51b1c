"""Trainer registry: `config.trainer` names a task package under efficientsam_jax/tasks.

Each package has `task.py` with `train(config, workdir)` and `export.py` with
`workdir_model(config, params, workdir)`, which turns the parameters of one of its workdirs
into a servable model (io/model_files.py reads workdirs through it). Modules are imported on
demand, so one trainer's dependencies never load for another, and reading a workdir never
loads a trainer.
"""
import importlib

TRAINERS = {
    "sami": "efficientsam_jax.tasks.sami",  # SAMI pretraining and MobileSAM-style distillation
    "efficientsam": "efficientsam_jax.tasks.finetune",  # EfficientSAM finetuning
    "classify": "efficientsam_jax.tasks.classify",  # classification finetuning, linear probing
}


def _package(name: str) -> str:
  from efficientsam_jax.errors import UserError
  if name not in TRAINERS:
    raise UserError(f"unknown trainer {name!r}; known: {', '.join(sorted(TRAINERS))}")
  return TRAINERS[name]


def get_trainer(name: str):
  """`train(config, workdir)` of the named trainer."""
  return importlib.import_module(_package(name) + ".task").train


def workdir_model(name: str, config: dict, params, workdir: str):
  """The servable model (io.model_files.LoadedModel) in a workdir of the named trainer;
  `config` is the workdir's config.json."""
  return importlib.import_module(_package(name) + ".export").workdir_model(config, params,
                                                                           workdir)
