"""Trainer registry: `config.trainer` names one of these."""
import importlib

# name -> module with `train(config, workdir)`; imported on demand so that one trainer's
# dependencies never load for another.
TRAINERS = {
    "sami": "efficientsam_jax.trainers.sami",
    "efficientsam": "efficientsam_jax.trainers.efficientsam",
}


def get_trainer(name: str):
  if name not in TRAINERS:
    raise ValueError(f"unknown trainer {name!r}; known: {sorted(TRAINERS)}")
  return importlib.import_module(TRAINERS[name]).train
