"""Pictures of predictions: each query's best mask over the image, its prompts marked."""
import numpy as np

from efficientsam_jax.models import prompt_encoder as pe

# Distinct, saturated colours (RGB); cycled when there are more queries.
_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
            (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
            (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 225, 25), (128, 128, 128))


class MaskCanvas:
  """The image with each query's best mask drawn over it, added a chunk of queries at a time
  (the predict tool never holds every query's full-resolution logits), then its prompts
  marked by `picture`. Chunks in order give exactly `overlay_image`'s picture."""

  def __init__(self, image: np.ndarray, alpha: float = 0.45):
    self.image, self.alpha = image, alpha
    self.canvas = image.astype(np.float32)
    self.count = 0  # queries drawn so far: the next one's colour

  def add(self, logits: np.ndarray, iou: np.ndarray) -> None:
    """logits (q, M, H, W) and iou (q, M) of the next q queries."""
    best = np.argmax(iou, axis=1)
    for j in range(len(logits)):
      mask = logits[j, best[j]] > 0
      colour = np.asarray(_PALETTE[(self.count + j) % len(_PALETTE)], np.float32)
      self.canvas[mask] = (1 - self.alpha) * self.canvas[mask] + self.alpha * colour
      self.canvas[_boundary(mask)] = colour  # an opaque outline keeps overlapping masks apart
    self.count += len(logits)

  def picture(self, points: np.ndarray, labels: np.ndarray):
    """The PIL image, prompts marked: points (Q, n, 2), labels (Q, n) of the queries drawn."""
    from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

    result = Image.fromarray(self.canvas.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    radius = max(3, round(max(self.image.shape[:2]) / 150))
    for i in range(self.count):
      colour = _PALETTE[i % len(_PALETTE)]
      valid = labels[i] != pe.LABEL_PADDING
      pts, lbl = points[i][valid], labels[i][valid]
      corners = pts[(lbl == pe.LABEL_BOX_TOP_LEFT) | (lbl == pe.LABEL_BOX_BOTTOM_RIGHT)]
      if len(corners) == 2:
        (x1, y1), (x2, y2) = corners
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=colour,
                       width=max(2, radius // 2))
      for (x, y), label in zip(pts, lbl):
        if label in (pe.LABEL_BOX_TOP_LEFT, pe.LABEL_BOX_BOTTOM_RIGHT):
          continue
        # Positive clicks filled with the query colour, negative ones black; white rim.
        fill = colour if label == pe.LABEL_POSITIVE else (0, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill,
                     outline=(255, 255, 255), width=max(1, radius // 3))
    return result


def overlay_image(image: np.ndarray, logits: np.ndarray, iou: np.ndarray, points: np.ndarray,
                  labels: np.ndarray, alpha: float = 0.45):
  """Best mask (highest IoU) of each query over the image, prompts marked. Returns a PIL image.

  image (H, W, 3) uint8, logits (Q, M, H, W), iou (Q, M), points (Q, n, 2), labels (Q, n).
  """
  canvas = MaskCanvas(image, alpha)
  canvas.add(logits, iou)
  return canvas.picture(points, labels)


def _boundary(mask: np.ndarray) -> np.ndarray:
  """(H, W) bool -> pixels of the mask with a 4-neighbour outside it (or the image edge)."""
  inner = np.zeros_like(mask)
  inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2]
                       & mask[1:-1, 2:])
  return mask & ~inner


def everything_overlay(image: np.ndarray, masks: np.ndarray, iou: np.ndarray,
                       points: np.ndarray):
  """Segment everything's result over the image: every mask (K, H, W) bool in its own colour,
  best predicted IoU first, its prompt point (K, 2) marked. Returns a PIL image."""
  k = len(masks)
  logits = np.where(masks, 1.0, -1.0).astype(np.float32)[:, None]
  return overlay_image(image, logits, np.asarray(iou)[:, None],
                       np.asarray(points, np.float32).reshape(k, 1, 2),
                       np.full((k, 1), pe.LABEL_POSITIVE, np.float32))
