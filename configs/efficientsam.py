"""EfficientSAM finetuning (paper recipe) on SA-1B: the SAMI-pretrained encoder with SAM's
prompt encoder and mask decoder, trained together on simulated prompts (a jittered box or a
point inside the mask, then correction points from the error region), loss 20 x focal + dice
on the best of 3 candidates plus the IoU head's MSE. AdamW (0.9, 0.999), weight decay 0.1,
lr 4e-4 linear to 0, batch 128, 1024 input, 5 epochs. The whole recipe;
`efficientsam_vit{t,s}.py` pick a size.

  python -m efficientsam_jax.main --config=configs/efficientsam_vitt.py:demo --workdir=/tmp/esam
  python -m efficientsam_jax.main --config=configs/efficientsam_vitt.py --workdir=DIR \
      --config.data.path=/data/sa1b --config.init_from=SAMI_WORKDIR

Variant words: size=vitt|vits; demo (generated SA-1B-format shapes written into
WORKDIR/demo_data, minutes on 2 CPU cores); smoke (seconds, what the tests run; the released
12-block architecture at 64 px); image_size=N and depth=N reshape the demo model.
"""
import ml_collections
from ml_collections import config_dict

from configs import common

VARIANT = dict(size=("vitt", "vits"), demo=False, smoke=False, image_size=96, depth=4)


def get_config(arg=None):
  v = common.parse_variant(arg, VARIANT, "configs/efficientsam.py")
  c = ml_collections.ConfigDict()
  c.trainer = "efficientsam"
  c.seed = 0
  # encoder_depth: None = the released 12 blocks (a shrunk demo model is not in the released
  # format). dtype: compute dtype of the matrix products, "float32" | "bfloat16" (parameters
  # and optimiser state stay float32); remat: recompute each encoder block, decoder block and
  # the mask upscaling in the backward pass (less activation memory, ~1/3 more compute).
  # encoder_width / encoder_heads: None = the size's (a demo or miniature model may be
  # narrower; such weights are not in a released format either).
  # remat on and the batch in 2 microbatches: 2 images per chip on 64 chips, 64 masks each
  # through 5 prompt rounds, need 39 GB per chip plain and 17.0 GB with remat alone; both
  # together 13.6 GB, which fits v5e's 16 GB (docs/tpu.md).
  c.model = dict(size=v["size"], image_size=1024, encoder_depth=config_dict.placeholder(int),
                 encoder_width=config_dict.placeholder(int),
                 encoder_heads=config_dict.placeholder(int), dtype="float32", remat=True)
  c.data = dict(
      source="sa1b",  # "sa1b" (path: folders and/or .tar shards) | "coco" | "demo"
      path="", annotations="",  # annotations: COCO instances JSON (source="coco")
      index_dir="",  # where .tar shards' member tables are stored; "": WORKDIR/sa1b_index
      image_size=1024, mask_size=256,  # mask_size: the decoder's low-res output, image_size/4
      max_masks=64, max_area_fraction=0.9,  # SAM: masks over 90% of the image dropped, <=64
      worker_count=8, read_threads=2, prefetch_buffer_size=2,
      # style: "plain" (the demo's shapes, what docs/finetuning.md measured) or the generated
      # scenes of data/scenes.py, "varied" (the miniature's) or "heldout".
      demo=dict(num_train=0, num_val=0, image_size=128, seed=0, style="plain"))
  c.prompts = dict(
      box_probability=0.5,  # first prompt: jittered box, else one point inside the mask
      box_noise_std=0.1, box_max_noise=20.0,  # x side of the box; pixels
      refine_iters=4,  # correction points after the first prompt (a box leaves room for 4)
      negative_points=False)  # spilled-region points as label 0 (tasks/finetune/prompts.py)
  c.loss = dict(focal_weight=20.0, dice_weight=1.0, iou_weight=1.0)

  c.batch_size = 128
  c.total_steps = 5 * common.SA1B_IMAGES // c.batch_size  # 5 epochs
  c.optimizer = common.adamw(
      lr=4e-4, weight_decay=0.1, decay="linear",
      no_decay=(r".*/bias", r".*/scale", r".*pos_embed", r"prompt_encoder/.*",
                r"mask_decoder/(iou_token|mask_tokens)/.*"))
  # init_from: a SAMI workdir (its encoder), a released EfficientSAM .pt, a JAX checkpoint or
  # a finetuning workdir; unset: fresh weights.
  common.run_settings(c)
  c.microbatches = 2
  # Held-out mIoU during training: a COCO-format set (images folder + instances JSON), the
  # `evaluate` protocols (box, pointN), on at most max_images images (0: all). The demo sets
  # the images and annotations to its own held-out split.
  c.eval.update(images="", annotations="", protocols="box,point1", max_images=0,
                best_metric="box_miou")

  if v["demo"] and not v["smoke"]:
    # Generated SA-1B-format shapes written into WORKDIR/demo_data (train + held-out val
    # with a COCO JSON); vitt width with 4 blocks at 96 px, trained from scratch. Tuned for
    # box prompts on 2 CPU cores: 9 in 10 first prompts are boxes, no correction rounds.
    image_size = v["image_size"]
    c.model.update(image_size=image_size, encoder_depth=v["depth"])
    # The generated images hold at most 4 shapes (data/demo_sa1b.py): 4 mask slots, none
    # empty. lr 1e-3 learned faster than 2e-3 and 3e-3 here (docs/finetuning.md).
    c.model.remat = False  # small enough for memory; remat would only cost time
    c.microbatches = 1
    c.data.update(source="demo", image_size=image_size, mask_size=image_size // 4,
                  max_masks=4, worker_count=0)
    c.data.demo.update(num_train=2000, num_val=40, image_size=image_size)
    c.prompts.update(refine_iters=0, box_probability=0.9)
    c.batch_size = 16
    c.total_steps = 1800
    c.optimizer.update(lr=1e-3, warmup_steps=100)
    c.log_every = 25
    c.checkpoint_every = 900
    c.eval.every = 300
  if v["smoke"]:
    # The released architecture (12 blocks), so a smoke workdir converts to the .pt format;
    # both prompt kinds and one correction round: every code path in seconds.
    c.model.update(image_size=64, encoder_depth=None, remat=False)
    c.microbatches = 1
    c.data.update(source="demo", image_size=64, mask_size=16, max_masks=4, worker_count=0)
    c.data.demo.update(num_train=24, num_val=4, image_size=64)
    c.prompts.update(refine_iters=1, box_probability=0.5)
    c.batch_size = 4
    c.total_steps = 20
    c.optimizer.update(lr=1e-3, warmup_steps=2)
    c.log_every = 1
    c.checkpoint_every = 5
    c.eval.every = 10
  return c
