"""efficientsam_jax: SAMI pretraining, EfficientSAM finetuning, MobileSAM distillation and
SAM-family inference in JAX/Flax. The README's "Layout" section is the map of the package."""
