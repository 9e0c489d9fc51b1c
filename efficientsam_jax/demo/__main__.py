r"""A demo in the browser: open an image (or pick a built-in one), click points or drag a box,
see the mask; segment everything; download the mask (PNG) and the result (COCO JSON).

  python -m efficientsam_jax.demo --checkpoint=efficient_sam_vitt.pt [--port=7860]

--checkpoint takes what `predict` takes: a released .pt/.pth (EfficientSAM, SAM, MobileSAM), a
.safetensors file, a JAX parameter checkpoint or a training workdir. The page and its server
use nothing outside this machine (standard-library HTTP server, one self-contained page). The
model embeds each image once; clicks are then answered by the decoder alone. Mistakes print
one line and exit with status 2.
"""
from absl import flags

from efficientsam_jax import cli

flags.DEFINE_string("checkpoint", None, "Released .pt/.pth, .safetensors, JAX parameter "
                    "checkpoint, or training workdir.")
flags.DEFINE_string("model", None, "efficientsam_vitt | efficientsam_vits | sam_vit_b | "
                    "sam_vit_l | sam_vit_h | mobile_sam; inferred when omitted.")
flags.DEFINE_integer("port", 7860, "Port to listen on (0: any free port).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from efficientsam_jax.errors import UserError
  from efficientsam_jax.demo import server, session  # after flag parsing: --help stays fast
  from efficientsam_jax.inference.predictor import Predictor

  if not FLAGS.checkpoint:
    raise UserError("--checkpoint is required (see --help)")
  if not 0 <= FLAGS.port < 65536:
    raise UserError(f"--port must be 0..65535, got {FLAGS.port}")
  predictor = Predictor.from_checkpoint(FLAGS.checkpoint, FLAGS.model, dtype=FLAGS.dtype)
  demo = session.DemoSession(predictor, predictor.config.name)
  try:
    server.serve(demo, FLAGS.host, FLAGS.port,
                 ready=lambda url: print(f"serving {predictor.config.name} on {url}", flush=True))
  except OSError as e:
    raise UserError(f"cannot listen on {FLAGS.host}:{FLAGS.port} ({e.strerror or e})") from None
  except KeyboardInterrupt:
    pass


if __name__ == "__main__":
  cli.run(main, "demo")
