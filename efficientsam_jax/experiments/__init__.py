"""Experiments built from the project's trainers: `python -m efficientsam_jax.experiments.miniature`
(the EfficientSAM paper in miniature: paper.py runs its stages, report.py writes its results)."""
