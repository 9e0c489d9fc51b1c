"""Evaluation of promptable segmenters as the SAM and EfficientSAM papers measure them
(`python -m efficientsam_jax.evaluate`): annotations.py (COCO / LVIS v1 ground truth, checked),
clicks.py (SAM's click protocol), protocols.py (box and N-click mIoU), detections.py
(detector boxes -> mask AP with pycocotools or the LVIS API), runner.py (one pass over the
images on one or many processes), files.py (the tool's work)."""
