r"""Per-device memory of the SAM ViT-H teacher forward, from XLA's compile-time analysis.

  python -m efficientsam_jax.tools.teacher_memory [--size=vit_h] [--cases=224x1,224x64,1024x1]

Compiles (never runs) the encoder forward for each (image size, batch, dtype) and prints one
JSON line per case with `memory_analysis()` in bytes: parameters (arguments), output,
temporaries (activations and workspace) and their sum. Parameters are float32 in both cases;
`bf16` is the compute dtype (SamImageEncoder's `dtype`), as SAMI runs its teacher.
"""
import json
import sys

import jax
import jax.numpy as jnp

from efficientsam_jax.models import sam_encoder as se


def teacher_memory(size: str, image: int, batch: int, dtype) -> dict:
  """Compiles the `size` encoder at (batch, image, image, 3) and returns byte counts."""
  config = se.SamEncoderConfig.from_name(size)
  model = se.SamImageEncoder(config, dtype=dtype)
  params = se.abstract_params(config)
  images = jax.ShapeDtypeStruct((batch, image, image, 3), jnp.float32)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  m = forward.lower(params, images).compile().memory_analysis()
  out = {"size": size, "image": image, "batch": batch, "dtype": jnp.dtype(dtype).name,
         "device": jax.devices()[0].device_kind, "argument_bytes": m.argument_size_in_bytes,
         "output_bytes": m.output_size_in_bytes, "temp_bytes": m.temp_size_in_bytes}
  out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
  out["total_gib"] = round(out["total_bytes"] / 2**30, 2)
  return out


def main(argv):
  args = dict(a.lstrip("-").split("=", 1) for a in argv[1:])
  size = args.get("size", "vit_h")
  cases = [tuple(map(int, c.split("x"))) for c in args.get("cases",
                                                            "224x1,224x64,1024x1").split(",")]
  for image, batch in cases:
    for dtype in (jnp.float32, jnp.bfloat16):
      print(json.dumps(teacher_memory(size, image, batch, dtype)), flush=True)


if __name__ == "__main__":
  main(sys.argv)
