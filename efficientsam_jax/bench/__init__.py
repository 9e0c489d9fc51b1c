"""Benchmarks: `python -m efficientsam_jax.bench --suite=inference|train` (see __main__.py).

Modules: `records` (the JSON-lines output and timing helpers), `inference` (encoder, decoder,
end to end, segment everything), `train` (the SAMI step: time, FLOPs, MFU, input pipeline),
`torch_compare` (SAM ViT-B encoder, JAX vs segment-anything's PyTorch, same weights).
"""
