"""Ground truth for evaluation: COCO and LVIS v1 instance files, checked before any model runs.

File-level problems are one-line UserErrors: not JSON, no `images`/`annotations` lists, an
image without an integer `id` or without a file (COCO's `file_name`, else LVIS's `coco_url`,
whose last path part is the file name under `--images`), a duplicate image id, an annotation
without an integer `image_id`. One bad annotation is not a bad file: it is skipped and counted
(`skipped_annotations` in every result), never silently dropped. An annotation is skipped when
its image is not in the file, its `iscrowd` is not 0/1, or, once the image's size is known,
its mask does not decode at that size, is empty, or its `bbox` is not [x, y, w, h] with w, h
>= 0 (a missing bbox is taken from the mask).

Masks are checked before pycocotools sees them: pycocotools decodes an RLE whose counts do
not add up to height x width into uninitialised memory, and hangs or exhausts memory on a
polygon with NaN coordinates.
"""
import dataclasses
import math
import posixpath
from urllib.parse import urlparse

import numpy as np
from pycocotools import mask as mask_utils

from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths

COCO, LVIS = "coco", "lvis"


@dataclasses.dataclass
class ImageRecord:
  """One image: where it is, its size if the file says, its annotations (crowd apart)."""
  id: int
  file_names: tuple[str, ...]  # relative paths under --images, tried in order
  height: int | None
  width: int | None
  info: dict  # the image's entry in the file
  annotations: list = dataclasses.field(default_factory=list)
  crowd: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class GroundTruth:
  """A checked instances file. kind: "lvis" when its categories carry LVIS's `frequency`."""
  path: str
  kind: str
  images: list[ImageRecord]  # sorted by id
  categories: list
  skipped_annotations: int  # already at reading (unknown image, bad iscrowd)

  def by_id(self) -> dict[int, ImageRecord]:
    return {image.id: image for image in self.images}


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _file_names(info: dict, where: str) -> tuple[str, ...]:
  name = info.get("file_name")
  if isinstance(name, str) and name:
    return (name,)
  url = info.get("coco_url")
  if isinstance(url, str) and url:
    parts = [p for p in posixpath.normpath(urlparse(url).path).split("/") if p]
    if parts and parts[-1] not in (".", ".."):
      # LVIS v1 mixes COCO train2017 and val2017 images: IMAGES/NAME, else IMAGES/SPLIT/NAME.
      return (parts[-1],) + ((f"{parts[-2]}/{parts[-1]}",) if len(parts) > 1 else ())
  raise UserError(f"{where} has no file_name (nor an LVIS coco_url)")


def parse(data, path: str) -> GroundTruth:
  """A loaded instances JSON -> GroundTruth; UserError naming the first bad entry."""
  if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
      data.get("annotations"), list):
    raise UserError(f"{path}: not COCO/LVIS instances (needs 'images' and 'annotations' "
                    "lists)")
  images = {}
  for i, info in enumerate(data["images"]):
    where = f"{path}: images[{i}]"
    if not isinstance(info, dict) or not _is_int(info.get("id")):
      raise UserError(f"{where} has no integer id")
    if info["id"] in images:
      raise UserError(f"{where}: image id {info['id']} appears twice")
    size = [info.get(k) for k in ("height", "width")]
    height, width = size if all(_is_int(v) and v > 0 for v in size) else (None, None)
    images[info["id"]] = ImageRecord(info["id"], _file_names(info, where), height, width, info)
  skipped = 0
  for i, ann in enumerate(data["annotations"]):
    if not isinstance(ann, dict) or not _is_int(ann.get("image_id")):
      raise UserError(f"{path}: annotations[{i}] has no integer image_id")
    image = images.get(ann["image_id"])
    crowd = ann.get("iscrowd", 0)
    if image is None or crowd not in (0, 1) or isinstance(crowd, float):
      skipped += 1
    elif crowd:
      image.crowd.append(ann)
    else:
      image.annotations.append(ann)
  categories = data.get("categories")
  categories = categories if isinstance(categories, list) else []
  kind = LVIS if any(isinstance(c, dict) and "frequency" in c for c in categories) else COCO
  return GroundTruth(path, kind, sorted(images.values(), key=lambda r: r.id), categories,
                     skipped)


def read_json(path: str, what: str):
  """The parsed JSON file at `path` (local or gs://); UserError naming it (`what`:
  "annotations", ...)."""
  return paths.read_json(path, f"{what} file")


def load(path: str) -> GroundTruth:
  """Reads and checks a COCO or LVIS v1 instances file."""
  return parse(read_json(path, "annotations"), path)


def find_image(images_dir: str, record: ImageRecord) -> str | None:
  """The first of the record's file names that exists under images_dir, else None."""
  for name in record.file_names:
    full = paths.join(images_dir, name)
    if paths.is_file(full):
      return full
  return None


# --- Masks ---------------------------------------------------------------------------------

def _string_counts(text: str) -> np.ndarray | None:
  """COCO's compressed RLE string -> run lengths (int64), or None when malformed. The format:
  each count is a little-endian run of 5-bit groups (chars from 48, 0x20 = more follows, 0x10
  of the last group = negative); counts after the third are stored as the difference from
  the count two places before."""
  try:
    raw = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48
  except UnicodeEncodeError:
    return None
  if not len(raw) or raw.min() < 0 or raw.max() > 63 or raw[-1] & 0x20:
    return None
  ends = (raw & 0x20) == 0
  group = np.concatenate([[0], np.cumsum(ends)[:-1]])
  starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
  position = np.arange(len(raw)) - starts[group]  # index of each char within its count
  if position.max() > 10:  # more than 50 bits: no real count
    return None
  values = np.zeros(group[-1] + 1, np.int64)
  np.add.at(values, group, (raw & 0x1F) << (5 * position))
  last = np.flatnonzero(ends)
  negative = (raw[last] & 0x10) != 0
  values[negative] -= np.int64(1) << (5 * (position[last][negative] + 1))
  counts = values.copy()
  for parity in (1, 0):  # counts[m] = values[m] + counts[m - 2] for m > 2
    first = 3 if parity else 4
    if len(values) > first:
      counts[first::2] = counts[first - 2] + np.cumsum(values[first::2])
  return counts


def _checked_polygons(polygons, height: int, width: int) -> list | None:
  limit = 4 * (height + width)  # a vertex farther out is no drawing of this image
  out = []
  for polygon in polygons:
    if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
      return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and abs(v) <= limit for v in polygon):
      return None
    out.append([float(v) for v in polygon])
  return out or None


def instance_rle(segmentation, height: int, width: int) -> dict | None:
  """A COCO segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE with a
  str `counts` at (height, width), or None when it is malformed, sized for another image,
  or not a partition of height x width pixels."""
  if isinstance(segmentation, list):
    polygons = _checked_polygons(segmentation, height, width)
    if polygons is None:
      return None
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  elif isinstance(segmentation, dict):
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if size != [height, width]:
      return None
    if isinstance(counts, str):
      runs = _string_counts(counts)
      rle = {"size": [height, width], "counts": counts.encode("ascii")}
    elif isinstance(counts, list) and all(_is_int(c) for c in counts):
      runs = np.asarray(counts, np.int64)
      rle = None
    else:
      return None
    if runs is None or not len(runs) or runs.min() < 0 or runs.sum() != height * width:
      return None
    if rle is None:
      rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
  else:
    return None
  counts = rle["counts"]
  return {"size": [height, width],
          "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode(rle: dict) -> np.ndarray:
  """instance_rle's output -> bool (H, W)."""
  return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}
                           ).astype(bool)


def annotation_box(ann: dict, rle: dict) -> np.ndarray | None:
  """float32 (4,) x0, y0, x1, y1 from the annotation's bbox [x, y, w, h] (the mask's bbox when
  absent), or None when the bbox is malformed."""
  box = ann.get("bbox")
  if box is None:
    box = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    box = [float(v) for v in box]
  if (not isinstance(box, list) or len(box) != 4 or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
      or box[2] < 0 or box[3] < 0):
    return None
  x, y, w, h = box
  return np.array([x, y, x + w, y + h], np.float32)

