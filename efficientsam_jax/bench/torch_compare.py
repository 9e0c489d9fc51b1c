"""SAM ViT-B image encoder: this JAX code vs segment-anything's PyTorch, same weights, same
image, same process and the same number of threads.

Random weights (perturbed so every tensor matters) are made in torch and converted with
`sam_encoder.sam_encoder_params_from_torch`; both encoders get the same normalised image.
With dtype=bfloat16 both sides compute in bf16: JAX with bf16 matrix products and float32
parameters/activations (models/precision.py), torch with the module and the image cast to
bfloat16 (its CPU kernels then run in bf16 end to end). The max-abs-difference records compare
each output with torch's float32 output, so they show the cost of bf16 too.

The two are timed interleaved (JAX, torch, JAX, torch, ... after one warm-up each), so that on a
shared machine both see the same load; the speed-up is the ratio of the medians.
"""
import time

import jax
import numpy as np

from efficientsam_jax.bench import torch_reference
from efficientsam_jax.bench import records
from efficientsam_jax.models import precision
from efficientsam_jax.models import sam_encoder as se


def run(emitter: records.Emitter, image_size: int, repeats: int, threads: int,
        dtype: str = "float32") -> None:
  import torch
  torch.set_num_threads(threads)
  config = se.SamEncoderConfig.from_name("vit_b", pretrain_size=image_size)
  torch_model = torch_reference.sam_image_encoder(config, seed=0, perturb=0.02)
  state_dict = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  params = jax.device_put(se.sam_encoder_params_from_torch(state_dict, config, prefix=""))
  image = np.random.default_rng(0).standard_normal((1, image_size, image_size, 3),
                                                    dtype=np.float32)
  settings = dict(model="sam_vit_b", image_size=image_size, batch=1, dtype=dtype,
                  threads=threads, repeats=repeats)

  encode = jax.jit(se.SamImageEncoder(config, dtype=precision.compute_dtype(dtype)).apply)
  seconds, compiled = records.time_compile(encode, {"params": params}, image)
  emitter.emit("compile_seconds", seconds, "s", part="sam_vit_b_encoder", **settings)
  jax_out = np.asarray(compiled({"params": params}, image), np.float32)  # also the warm-up

  torch_image = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
  with torch.inference_mode():
    reference = torch_model(torch_image).permute(0, 2, 3, 1).float().numpy().copy()
    if dtype == "bfloat16":
      torch_model, torch_image = torch_model.to(torch.bfloat16), torch_image.to(torch.bfloat16)
    torch_out = torch_model(torch_image).permute(0, 2, 3, 1).float().numpy()  # warm-up
    runs = {"jax": [], "torch": []}
    for _ in range(max(1, repeats)):
      for name, fn in (("jax", lambda: compiled({"params": params}, image)),
                       ("torch", lambda: torch_model(torch_image))):
        start = time.perf_counter()
        records.block(fn())
        runs[name].append(time.perf_counter() - start)
  t_jax, t_torch = ({"median": float(np.median(r)), "min": float(np.min(r))}
                    for r in (runs["jax"], runs["torch"]))

  emitter.emit("sam_encoder_seconds", t_jax["median"], "s", framework="jax",
               min_seconds=t_jax["min"], **settings)
  emitter.emit("sam_encoder_seconds", t_torch["median"], "s", framework="torch",
               torch_version=torch.__version__, min_seconds=t_torch["min"], **settings)
  emitter.emit("sam_encoder_speedup_vs_torch", t_torch["median"] / t_jax["median"], "x",
               **settings)
  emitter.emit("sam_encoder_max_abs_diff_vs_torch", np.abs(jax_out - reference).max(), "abs",
               reference="torch float32", **settings)
  if dtype != "float32":
    emitter.emit("sam_encoder_max_abs_diff_vs_torch", np.abs(torch_out - reference).max(),
                 "abs", framework="torch", reference="torch float32", **settings)
