"""Promptable segmentation with any model the package knows, for Python users and the tools.

  from efficientsam_jax.inference import Predictor
  predictor = Predictor.from_checkpoint("efficient_sam_vitt.pt")   # or sam_vit_b.pth, a workdir
  predictor.set_image(image_uint8)
  out = predictor.predict(boxes=boxes_xyxy)
  everything = automatic.generate(predictor, image_uint8)

Modules: `predictor` (the Predictor), `queries` (the JSON prompt format and its arrays),
`automatic` (segment everything), `overlay` (pictures of results). Importing this package
loads no data-pipeline library (grain, TensorFlow Datasets, pycocotools).
"""
from efficientsam_jax.inference import automatic
from efficientsam_jax.inference.automatic import EverythingConfig
from efficientsam_jax.inference.predictor import Predictor
from efficientsam_jax.inference.queries import Queries
