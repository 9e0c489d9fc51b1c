"""segment-anything's Python API on this package's models: a script written for
segment-anything runs after changing its imports.

    from efficientsam_jax.sam_compat import (SamAutomaticMaskGenerator, SamPredictor,
                                             sam_model_registry)
    sam = sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth")
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(point_coords=..., point_labels=...)
    records = SamAutomaticMaskGenerator(sam).generate(image)

Registry names: segment-anything's `default`, `vit_h`, `vit_l`, `vit_b`, MobileSAM's `vit_t`,
and `efficientsam_vitt`, `efficientsam_vits`; `checkpoint` is any weights path the tools
accept. Arrays go in and come out as numpy (segment-anything's torch tensors).
Modules: models.py (the registry), predictor.py (SamPredictor, ResizeLongestSide),
automatic.py (SamAutomaticMaskGenerator).
"""
from efficientsam_jax.sam_compat.automatic import SamAutomaticMaskGenerator
from efficientsam_jax.sam_compat.models import SamModel, sam_model_registry
from efficientsam_jax.sam_compat.predictor import ResizeLongestSide, SamPredictor

__all__ = ["ResizeLongestSide", "SamAutomaticMaskGenerator", "SamModel", "SamPredictor",
           "sam_model_registry"]
