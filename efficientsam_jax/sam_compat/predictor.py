"""`SamPredictor` and `ResizeLongestSide` with segment-anything's signatures, shapes and
return values, numpy in and out (where segment-anything takes or gives torch tensors, these
take and give numpy arrays).

    predictor = SamPredictor(sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth"))
    predictor.set_image(image)                  # (H, W, 3) uint8, image_format "RGB" or "BGR"
    masks, scores, low_res = predictor.predict(point_coords=np.array([[500, 375]]),
                                               point_labels=np.array([1]))
    # masks (3, H, W) bool, scores (3,), low_res (3, 256, 256) logits

For SAM and MobileSAM `set_image` is segment-anything's: the uint8 image resized by PIL
(`ResizeLongestSide.apply_image`), normalised and padded; `predict` then equals
SamPredictor.predict (tests/test_sam_compat.py). EfficientSAM models take the same calls:
their images are stretched to 1024 x 1024 as the release does, and `transform` maps
coordinates into that frame.
"""
import numpy as np

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference.queries import BOX_LABELS, Queries
from efficientsam_jax.io import images


class ResizeLongestSide:
  """The model's input frame: SAM's longest side to `target_length` (EfficientSAM: the whole
  image stretched to target_length x target_length), for images, coordinates and boxes."""

  def __init__(self, target_length: int, resized_hw=None):
    self.target_length = target_length
    self._resized_hw = resized_hw or (
        lambda h, w: self.get_preprocess_shape(h, w, target_length))

  @staticmethod
  def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    scale = long_side_length * 1.0 / max(oldh, oldw)
    return int(oldh * scale + 0.5), int(oldw * scale + 0.5)

  def apply_image(self, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> the resized uint8 image (PIL bilinear)."""
    return images.resize_bilinear(image, *self._resized_hw(*image.shape[:2]))

  def apply_coords(self, coords: np.ndarray, original_size) -> np.ndarray:
    """(..., 2) (x, y) in original pixels -> in the resized image's pixels."""
    old_h, old_w = original_size
    new_h, new_w = self._resized_hw(old_h, old_w)
    coords = np.array(coords, dtype=float)
    coords[..., 0] *= new_w / old_w
    coords[..., 1] *= new_h / old_h
    return coords

  def apply_boxes(self, boxes: np.ndarray, original_size) -> np.ndarray:
    """(B, 4) x1, y1, x2, y2 in original pixels -> in the resized image's pixels."""
    return self.apply_coords(np.reshape(boxes, (-1, 2, 2)), original_size).reshape(-1, 4)

  # segment-anything's tensor versions: arrays here.
  apply_coords_torch = apply_coords
  apply_boxes_torch = apply_boxes


class SamPredictor:
  """segment-anything's SamPredictor on a `SamModel` (sam_model_registry's)."""

  def __init__(self, sam_model):
    self.model = sam_model
    self._predictor = sam_model.predictor
    self.transform = ResizeLongestSide(sam_model.config.image_size,
                                       self._predictor.model.resized_hw)
    self.reset_image()

  def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
    """Embeds an (H, W, 3) uint8 image given in `image_format` ("RGB" or "BGR")."""
    if image_format not in ("RGB", "BGR"):
      raise UserError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    image = np.asarray(image)
    if image_format != self.model.image_format:
      image = image[..., ::-1]
    self._predictor.set_image(np.ascontiguousarray(image))
    self.original_size = tuple(image.shape[:2])
    self.input_size = tuple(self._predictor.model.resized_hw(*self.original_size))
    self.is_image_set = True

  def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
              multimask_output: bool = True, return_logits: bool = False):
    """One prompt: point_coords (N, 2) (x, y) original pixels with point_labels (N,) (1
    foreground, 0 background), box (4,) x1, y1, x2, y2, mask_input (1, 256, 256) logits of a
    previous prediction (SAM and MobileSAM). Returns (masks (C, H, W) bool, or float logits
    with return_logits; iou_predictions (C,); low_res_masks (C, 256, 256)); C = 3 with
    multimask_output, else 1."""
    self._require_image()
    if point_coords is not None and point_labels is None:
      raise UserError("point_labels must be supplied with point_coords")
    points = np.zeros((0, 2), np.float32) if point_coords is None else (
        np.asarray(point_coords, np.float32).reshape(-1, 2))
    labels = np.zeros((0,), np.float32) if point_coords is None else (
        np.asarray(point_labels, np.float32).reshape(-1))
    boxes = None if box is None else np.asarray(box, np.float32).reshape(1, 4)
    masks = None if mask_input is None else np.asarray(mask_input, np.float32)[None]
    out = self._predict(points[None], labels[None], boxes, masks, multimask_output,
                        return_logits)
    return tuple(x[0] for x in out)

  def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                    multimask_output: bool = True, return_logits: bool = False):
    """A batch of B prompts with coordinates already in the input frame
    (`transform.apply_coords` / `apply_boxes`), as segment-anything's predict_torch:
    point_coords (B, N, 2) with point_labels (B, N), or None; boxes (B, 4) or None;
    mask_input (B, 1, 256, 256) or None. Returns numpy (masks (B, C, H, W), iou (B, C),
    low_res (B, C, 256, 256))."""
    self._require_image()
    (old_h, old_w), (new_h, new_w) = self.original_size, self.input_size
    to_original = np.asarray([old_w / new_w, old_h / new_h], np.float64)
    points = labels = None
    if point_coords is not None:
      points = (np.asarray(point_coords, np.float64) * to_original).astype(np.float32)
      labels = np.asarray(point_labels, np.float32)
    if boxes is not None:
      boxes = (np.asarray(boxes, np.float64).reshape(-1, 2, 2) * to_original).reshape(-1, 4)
    masks = None if mask_input is None else np.asarray(mask_input, np.float32)[:, 0]
    return self._predict(points, labels, boxes, masks, multimask_output, return_logits)

  def _predict(self, points, labels, boxes, masks, multimask_output, return_logits):
    """points (B, N, 2) / labels (B, N) or None, boxes (B, 4) or None: one query each."""
    count = len(points) if points is not None else len(boxes) if boxes is not None else 0
    if count == 0:
      raise UserError("give point_coords with point_labels, or a box")
    queries = Queries([], [], [] if masks is None else list(masks))
    for i in range(count):
      p = np.zeros((0, 2), np.float32) if points is None else points[i]
      l = np.zeros((0,), np.float32) if points is None else labels[i]
      if boxes is not None:  # SAM's token order: the points, then the box's two corners
        p = np.concatenate([p, np.asarray(boxes[i], np.float32).reshape(2, 2)])
        l = np.concatenate([l, BOX_LABELS])
      queries.points.append(p)
      queries.labels.append(l)
    if masks is None:
      queries.mask_input = [None] * count
    out = self._predictor.predict_queries(queries, multimask_output=multimask_output)
    masks_out = out["logits"]
    if not return_logits:
      masks_out = masks_out > self.model.mask_threshold
    return masks_out, out["iou"], out["low_res_logits"]

  def get_image_embedding(self) -> np.ndarray:
    """(1, 256, 64, 64) float32."""
    self._require_image()
    return self._predictor.image_embeddings[None]

  @property
  def device(self):
    return self.model.device

  def reset_image(self) -> None:
    self.is_image_set = False
    self.original_size = self.input_size = None

  def _require_image(self):
    if not self.is_image_set:
      raise UserError("an image must be set with set_image before mask prediction")
