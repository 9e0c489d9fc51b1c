"""SAM ViT-B image encoder: this JAX code vs segment-anything's PyTorch, same weights, same
image, same process and the same number of threads.

Random weights (perturbed so every tensor matters) are made in torch and converted with
`sam_encoder.sam_encoder_params_from_torch`; both encoders get the same normalised image.
"""
import jax
import numpy as np

from efficientsam_jax import torch_reference
from efficientsam_jax.bench import records
from efficientsam_jax.models import sam_encoder as se


def run(emitter: records.Emitter, image_size: int, repeats: int, threads: int) -> None:
  import torch
  torch.set_num_threads(threads)
  config = se.SamEncoderConfig.from_name("vit_b", pretrain_size=image_size)
  torch_model = torch_reference.sam_image_encoder(config, seed=0, perturb=0.02)
  state_dict = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  params = jax.device_put(se.sam_encoder_params_from_torch(state_dict, config, prefix=""))
  image = np.random.default_rng(0).standard_normal((1, image_size, image_size, 3),
                                                    dtype=np.float32)
  settings = dict(model="sam_vit_b", image_size=image_size, batch=1, dtype="float32",
                  threads=threads, repeats=repeats)

  encode = jax.jit(se.SamImageEncoder(config).apply)
  seconds, compiled = records.time_compile(encode, {"params": params}, image)
  emitter.emit("compile_seconds", seconds, "s", part="sam_vit_b_encoder", **settings)
  jax_out = np.asarray(compiled({"params": params}, image))
  t_jax = records.time_call(lambda: compiled({"params": params}, image), repeats)

  torch_image = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
  with torch.inference_mode():
    torch_out = torch_model(torch_image).permute(0, 2, 3, 1).numpy()
    t_torch = records.time_call(lambda: torch_model(torch_image), repeats)

  emitter.emit("sam_encoder_seconds", t_jax["median"], "s", framework="jax",
               min_seconds=t_jax["min"], **settings)
  emitter.emit("sam_encoder_seconds", t_torch["median"], "s", framework="torch",
               torch_version=torch.__version__, min_seconds=t_torch["min"], **settings)
  emitter.emit("sam_encoder_speedup_vs_torch", t_torch["median"] / t_jax["median"], "x",
               **settings)
  emitter.emit("sam_encoder_max_abs_diff_vs_torch", np.abs(jax_out - torch_out).max(), "abs",
               **settings)
