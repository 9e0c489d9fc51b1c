"""Generated scenes of shapes with their masks and kinds: the built-in segmentation and
classification data, a pure function of (seed, index, size, style). No files, no downloads.

Two styles (demo_sa1b.py adds "plain", the finetuning demo's earlier generator):
- "varied" (what the demos and the miniature train on): a background of one of four kinds
  (colour gradient, blurred noise, stripes, a rotated checkerboard), then 2-4 objects of six
  kinds (ellipse, rectangle, triangle, star-shaped polygon, ring with a hole, thin cross) at
  scales from a tenth to most of the image, each filled flat (shaded), striped, with noise
  texture or a gradient; later objects occlude earlier ones and each object's VISIBLE part
  is its mask (a ring's mask has the hole; an occluded object's mask may be cut in two).
- "heldout" (never trained on: measures what transfers): other backgrounds (a Voronoi
  patchwork, concentric rings), other object kinds (smooth blobs, crescents) and other fills
  (dots, checks). Edges everywhere in the background, and outlines no trained kind has.

Coordinates are a grid over [-1, 1]^2; every random draw comes from one numpy Generator
seeded with (seed, index, style tag), so an image never depends on which others were drawn.
"""
import numpy as np
from PIL import Image

STYLES = ("varied", "heldout")
VARIED_KINDS = ("ellipse", "rectangle", "triangle", "star", "ring", "cross")
HELDOUT_KINDS = ("blob", "crescent")
MIN_OBJECTS, MAX_OBJECTS = 2, 4
SCALE_RANGE = (0.2, 0.75)  # half-extent of an object, as a fraction of half the image side
MIN_AREA_FRACTION = 0.015  # visible parts smaller than this are not annotated
_STYLE_TAG = {"varied": 11, "heldout": 13}


def _grid(size: int):
  coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
  return np.meshgrid(coords, coords, indexing="ij")  # yy, xx


def _colour(rng) -> np.ndarray:
  return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
  """(size, size) float32 in [0, 1]: a cells x cells uniform grid, bilinearly upsampled."""
  coarse = rng.uniform(0, 1, size=(cells, cells)).astype(np.float32)
  return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size),
                                                              Image.Resampling.BILINEAR))


def _rotated(rng, yy, xx, centre_range: float = 0.8):
  """Coordinates in a random frame (centre, angle): two (H, W) arrays."""
  cy, cx = rng.uniform(-centre_range, centre_range, size=2)
  angle = rng.uniform(0, np.pi)
  dy, dx = yy - cy, xx - cx
  return np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy


def _two_colour(rng, weight) -> np.ndarray:
  """(H, W, 3): two random colours blended by weight (H, W) in [0, 1]."""
  a, b = _colour(rng), _colour(rng)
  return a + (b - a) * weight[..., None]


# --- Backgrounds and fills: (H, W, 3) float colour fields ------------------------------------

def _gradient(rng, yy, xx):
  angle = rng.uniform(0, 2 * np.pi)
  t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.0) / 2.0
  wave = 0.1 * np.sin(rng.uniform(0.5, 2.0) * np.pi * (xx - yy) + rng.uniform(0, 2 * np.pi))
  return _two_colour(rng, t) + wave[..., None]


def _noise(rng, yy, xx):
  size = yy.shape[0]
  weight = 0.6 * _smooth_noise(rng, size, 4) + 0.4 * _smooth_noise(rng, size, max(size // 6, 2))
  return _two_colour(rng, weight)


def _stripes(rng, yy, xx):
  u, _ = _rotated(rng, yy, xx)
  period = rng.uniform(0.1, 0.4)
  sharpness = rng.uniform(2.0, 10.0)
  return _two_colour(rng, 1 / (1 + np.exp(-sharpness * np.sin(2 * np.pi * u / period))))


def _checker(rng, yy, xx):
  u, v = _rotated(rng, yy, xx)
  period = rng.uniform(0.15, 0.5)
  return _two_colour(rng, ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32))


def _shaded(rng, yy, xx):
  shade = 0.15 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
  return _colour(rng) + shade[..., None]


def _cells(rng, yy, xx):
  """A Voronoi patchwork: every pixel takes the colour of its nearest of 6-14 random sites."""
  sites = rng.uniform(-1.1, 1.1, size=(int(rng.integers(6, 15)), 2)).astype(np.float32)
  colours = rng.uniform(0, 1, size=(len(sites), 3)).astype(np.float32)
  distance = (yy[..., None] - sites[:, 0]) ** 2 + (xx[..., None] - sites[:, 1]) ** 2
  return colours[np.argmin(distance, axis=-1)]


def _rings(rng, yy, xx):
  cy, cx = rng.uniform(-1.0, 1.0, size=2)
  radius = np.hypot(yy - cy, xx - cx)
  return _two_colour(rng, (np.sin(2 * np.pi * radius / rng.uniform(0.15, 0.4)) > 0)
                     .astype(np.float32))


def _dots(rng, yy, xx):
  u, v = _rotated(rng, yy, xx)
  period = rng.uniform(0.12, 0.3)
  du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
  return _two_colour(rng, (np.hypot(du, dv) < rng.uniform(0.2, 0.4)).astype(np.float32))


BACKGROUNDS = {"varied": (_gradient, _noise, _stripes, _checker), "heldout": (_cells, _rings)}
FILLS = {"varied": (_shaded, _stripes, _noise, _gradient), "heldout": (_dots, _checker)}


# --- Object outlines: bool (H, W) --------------------------------------------------------------

def _convex_polygon(u, v, angles, radii):
  """Inside of the convex polygon with vertices (radii, angles) sorted by angle."""
  px, py = radii * np.cos(angles), radii * np.sin(angles)
  inside = np.ones(u.shape, bool)
  for i in range(len(angles)):
    j = (i + 1) % len(angles)
    inside &= (px[j] - px[i]) * (v - py[i]) - (py[j] - py[i]) * (u - px[i]) >= 0
  return inside


def object_mask(rng, yy, xx, kind: str, scale: float, centre_range: float = 0.7) -> np.ndarray:
  """One object of `kind` at half-extent `scale` (fraction of half the image side), centred
  within +-centre_range."""
  u, v = _rotated(rng, yy, xx, centre_range)
  u, v = u / scale, v / scale
  if kind == "ellipse":
    a, b = rng.uniform(0.5, 1.0, size=2)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0
  if kind == "rectangle":
    a, b = rng.uniform(0.4, 0.9, size=2)
    return (np.abs(u) <= a) & (np.abs(v) <= b)
  if kind == "triangle":
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(
        -0.4, 0.4, size=3)
    return _convex_polygon(u, v, np.sort(angles), rng.uniform(0.7, 1.0, size=3))
  if kind == "star":
    n = int(rng.integers(5, 10))
    vertex_angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    radius = np.interp(np.arctan2(v, u) % (2 * np.pi), vertex_angles,
                       rng.uniform(0.35, 1.0, size=n), period=2 * np.pi)
    return np.hypot(u, v) <= radius
  if kind == "ring":
    a, b = rng.uniform(0.6, 1.0, size=2)
    r = (u / a) ** 2 + (v / b) ** 2
    return (r <= 1.0) & (r >= rng.uniform(0.2, 0.5))
  if kind == "cross":
    width = rng.uniform(0.12, 0.25)
    a, b = rng.uniform(0.6, 1.0, size=2)
    return ((np.abs(u) <= a) & (np.abs(v) <= width)) | ((np.abs(v) <= b) & (np.abs(u) <= width))
  if kind == "blob":
    centres = rng.uniform(-0.6, 0.6, size=(int(rng.integers(3, 7)), 2))
    widths = rng.uniform(0.2, 0.45, size=len(centres))
    field = sum(np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / w ** 2)
                for (cu, cv), w in zip(centres, widths))
    return field >= 0.5
  if kind == "crescent":
    inner = rng.uniform(0.6, 0.9)
    shift = rng.uniform(0.3, 0.6)
    return (u ** 2 + v ** 2 <= 1.0) & ((u - shift) ** 2 + v ** 2 > inner ** 2)
  raise ValueError(f"unknown object kind {kind!r}")


# --- Scenes ------------------------------------------------------------------------------------

def _visible_parts(masks: list[np.ndarray], min_area: float) -> list[tuple[int, np.ndarray]]:
  """(object index, visible part) of every object whose visible part is large enough; the
  last drawn object is on top."""
  visible, covered = [], np.zeros(masks[0].shape, bool)
  for i in range(len(masks) - 1, -1, -1):
    part = masks[i] & ~covered
    covered |= masks[i]
    if part.mean() >= min_area:
      visible.append((i, part))
  return visible[::-1]


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def scene(seed: int, index: int, size: int, style: str = "varied"):
  """Scene `index` of the set drawn with `seed` in `style`.

  Returns image uint8 (size, size, 3), the visible masks (bool (size, size) each, disjoint,
  drawing order) and their object kinds (one name each). size: a multiple of 8.
  """
  if style not in STYLES:
    raise ValueError(f"unknown scene style {style!r}; known: {STYLES}")
  rng = np.random.default_rng([seed, index, _STYLE_TAG[style]])
  yy, xx = _grid(size)
  backgrounds, fills = BACKGROUNDS[style], FILLS[style]
  object_kinds = VARIED_KINDS if style == "varied" else HELDOUT_KINDS
  image = backgrounds[int(rng.integers(len(backgrounds)))](rng, yy, xx)
  masks, kinds = [], []
  for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
    kind = object_kinds[int(rng.integers(len(object_kinds)))]
    mask = object_mask(rng, yy, xx, kind, rng.uniform(*SCALE_RANGE))
    image[mask] = fills[int(rng.integers(len(fills)))](rng, yy, xx)[mask]
    masks.append(mask)
    kinds.append(kind)
  visible = _visible_parts(masks, MIN_AREA_FRACTION)
  return _to_uint8(image), [part for _, part in visible], [kinds[i] for i, _ in visible]


def labelled_scene(seed: int, index: int, size: int) -> tuple[np.ndarray, int]:
  """A classification example in the "varied" style: one large object whose kind is the
  label (an index into VARIED_KINDS), drawn over 0-2 small objects of any kind.

  Returns image uint8 (size, size, 3) and the label.
  """
  rng = np.random.default_rng([seed, index, 17])
  yy, xx = _grid(size)
  image = BACKGROUNDS["varied"][int(rng.integers(4))](rng, yy, xx)
  fills = FILLS["varied"]
  for _ in range(int(rng.integers(0, 3))):
    kind = VARIED_KINDS[int(rng.integers(len(VARIED_KINDS)))]
    mask = object_mask(rng, yy, xx, kind, rng.uniform(0.15, 0.3))
    image[mask] = fills[int(rng.integers(len(fills)))](rng, yy, xx)[mask]
  label = int(rng.integers(len(VARIED_KINDS)))
  mask = object_mask(rng, yy, xx, VARIED_KINDS[label], rng.uniform(0.5, 0.8), centre_range=0.3)
  image[mask] = fills[int(rng.integers(len(fills)))](rng, yy, xx)[mask]
  return _to_uint8(image), label
