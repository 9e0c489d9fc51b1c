"""Evaluation of promptable segmenters: prompts made from ground truth or a detector's boxes,
mIoU and mask AP (`python -m efficientsam_jax.evaluate`; coco.py)."""
