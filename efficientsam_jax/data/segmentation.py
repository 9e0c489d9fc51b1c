"""Promptable-segmentation data (EfficientSAM finetuning): SA-1B and COCO-format sources and
the numpy transform that turns one image with its annotations into fixed-shape arrays.

Both sources yield the same record: {"image": encoded bytes, "annotations": JSON bytes of
{"image": {...}, "annotations": [{"segmentation": RLE or polygons, ...}, ...]}} (the SA-1B
per-image file; COCO entries are regrouped into it). An unreadable file yields empty bytes,
which the transform turns into an example with valid=0, never an exception.

SA-1B layout (as released): `sa_N.jpg` next to `sa_N.json`, in directories (any nesting) or
in .tar shards of such pairs. `path` may name a directory, a .tar, or several of either
separated by commas; tar shards found inside a directory are read too.
"""
import io
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from efficientsam_jax.data import masks, tar_index, transforms
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths


# --- Sources -------------------------------------------------------------------------------

class SA1BSource:
  """Random access to SA-1B pairs: `source[i]` -> {"image": bytes, "annotations": bytes}.

  Entries are sorted (directory files by relative path, shards in name order, members by
  name), so every host sees the same order. A .jpg without its .json is skipped at indexing.
  index_dir: where the .tar shards' member tables are stored and found again (tar_index.py);
  write_index: whether this process stores the ones it had to build (process 0).
  """

  def __init__(self, path: str, index_dir: str | None = None, write_index: bool = True):
    self._path = path
    self._pairs: list[tuple[str, str]] = []  # loose files: (jpg, json)
    self._shards: list[str] = []
    chunks = []  # int64 (n, 5) rows: shard (-1: loose pair), then 4 offsets/sizes or pair
    for part in filter(None, (p.strip() for p in str(path).split(","))):
      if paths.is_dir(part):
        pairs, shards = self._list_directory(part)
      elif part.lower().endswith(".tar") and paths.is_file(part):
        pairs, shards = [], [part]
      else:
        paths.check_bucket(part, "SA-1B path")
        raise UserError(f"SA-1B path {part!r} is neither a directory nor a .tar shard")
      first = len(self._pairs)
      self._pairs += pairs
      chunks.append(np.stack([np.full(len(pairs), -1), np.arange(first, first + len(pairs)),
                              *[np.zeros(len(pairs), np.int64)] * 3], 1).astype(np.int64))
      for shard, table in zip(shards, tar_index.member_tables(shards, index_dir,
                                                               write_index)):
        self._shards.append(shard)
        chunks.append(np.concatenate(
            [np.full((len(table), 1), len(self._shards) - 1, np.int64), table], 1))
    self._rows = np.concatenate(chunks) if chunks else np.zeros((0, 5), np.int64)
    if not len(self._rows):
      raise UserError(f"SA-1B path {path!r} holds no sa_*.jpg + sa_*.json pairs")

  @staticmethod
  def _list_directory(root: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(jpg, json) pairs sorted by relative path, and .tar shards in name order."""
    names = paths.walk_files(root)
    present = set(names)
    pairs, shards = [], []
    for name in names:
      stem, ext = os.path.splitext(name)
      if ext.lower() == ".jpg" and stem + ".json" in present:
        pairs.append(name)
      elif ext.lower() == ".tar":
        shards.append(paths.join(root, name))
    pairs = [(paths.join(root, n), paths.join(root, os.path.splitext(n)[0] + ".json"))
             for n in sorted(pairs)]
    return pairs, sorted(shards)

  @property
  def loose_pairs(self) -> list[tuple[str, str]]:
    """The (jpg, json) paths of the pairs stored as files (not in shards)."""
    return list(self._pairs)

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict:
    shard, a, b, c, d = (int(v) for v in self._rows[index])
    if shard < 0:
      jpg, js = self._pairs[a]
      return {"image": _read(None, jpg), "annotations": _read(None, js)}
    tar_path = self._shards[shard]
    return {"image": _read(tar_path, (a, b)), "annotations": _read(tar_path, (c, d))}

  def __repr__(self) -> str:
    return f"SA1BSource({self._path!r}, {len(self)} images)"


def _read(tar_path, ref) -> bytes:
  """A file's bytes, or a (offset, size) byte range of a tar; b"" when unreadable."""
  try:
    if tar_path is None:
      return paths.read_bytes(ref)
    offset, size = ref
    with paths.open_read(tar_path) as f:
      f.seek(offset)
      data = f.read(size)
    return data if len(data) == size else b""
  except OSError:
    return b""


class CocoSource:
  """A COCO-format dataset (images folder + instances JSON, RLE or polygon segmentations),
  regrouped per image into SA-1B-style records. Images without annotations are left out."""

  def __init__(self, images_dir: str, annotations_json: str):
    if not paths.is_dir(images_dir):
      paths.check_bucket(images_dir, "COCO images folder")
      raise UserError(f"COCO images folder {images_dir!r} does not exist")
    coco = load_coco_json(annotations_json)
    by_image = {}
    for ann in coco["annotations"]:
      if not ann.get("iscrowd", 0):
        by_image.setdefault(ann["image_id"], []).append(ann)
    self._images_dir = images_dir
    self._records = [(img, by_image[img["id"]]) for img in
                     sorted(coco["images"], key=lambda i: i["id"]) if img["id"] in by_image]
    if not self._records:
      raise UserError(f"{annotations_json}: no image has a (non-crowd) annotation")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    image, anns = self._records[index]
    data = _read(None, paths.join(self._images_dir, image["file_name"]))
    return {"image": data,
            "annotations": json.dumps({"image": image, "annotations": anns}).encode()}


def load_coco_json(path: str) -> dict:
  """A COCO instances file, checked for the fields we read; UserError on anything else."""
  coco = paths.read_json(path, "annotations file")
  if not isinstance(coco, dict) or not {"images", "annotations"} <= set(coco):
    raise UserError(f"{path}: not COCO instances (needs 'images' and 'annotations')")
  return coco


# --- Images --------------------------------------------------------------------------------

def bilinear_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """(H, W, C) -> float32 (height, width, C) like torch bilinear, align_corners=False, no
  antialias (the EfficientSAM preprocessing), by gathering the two taps per output pixel.
  The axis that shrinks more goes first (less data for the second pass), and the taps are
  gathered in the input's dtype before the float32 arithmetic (no float copy of the input)."""
  out = image
  sizes = {0: height, 1: width}
  f32 = np.float32
  for axis in sorted(sizes, key=lambda a: sizes[a] / image.shape[a]):
    n, size = out.shape[axis], sizes[axis]
    if n == size:
      continue
    src = np.maximum(f32(n) / f32(size) * (np.arange(size, dtype=f32) + f32(0.5)) - f32(0.5),
                     f32(0))
    lo = np.floor(src).astype(np.int64)
    lam = (src - lo.astype(f32)).reshape((-1,) + (1,) * (out.ndim - 1 - axis))
    hi = np.minimum(lo + 1, n - 1)
    low, high = np.take(out, lo, axis=axis).astype(f32), np.take(out, hi, axis=axis)
    low *= 1 - lam
    low += high * lam
    out = low
  return out.astype(f32, copy=False)


# --- The transform -------------------------------------------------------------------------

def empty_example(image_size: int, mask_size: int, max_masks: int) -> dict:
  """The fixed-shape example with nothing in it (valid=0): an unreadable record."""
  return {"image": np.zeros((image_size, image_size, 3), np.float32),
          "masks": np.zeros((max_masks, mask_size, mask_size), np.uint8),
          "boxes": np.zeros((max_masks, 4), np.float32),
          "mask_valid": np.zeros((max_masks,), np.int32),
          "valid": np.int32(0)}


def segmentation_example(record: dict, rng: np.random.Generator, *, image_size: int,
                         mask_size: int, max_masks: int,
                         max_area_fraction: float = 0.9) -> dict:
  """One SA-1B-style record -> fixed-shape arrays.

  Masks covering more than `max_area_fraction` of the image are dropped (as SAM does), then
  up to `max_masks` of the rest are drawn at random; unused slots have mask_valid=0. A mask
  that vanishes at mask_size (smaller than a low-res pixel) is not used.

  Returns:
    image: float32 (S, S, 3), bilinear to S x S (aspect not kept), ImageNet-normalised.
    masks: uint8 (K, M, M) targets at the decoder's low-res size M.
    boxes: float32 (K, 4) tightest boxes x0, y0, x1, y1 in S x S input pixels.
    mask_valid: int32 (K,); valid: int32 () (0 = unreadable image or annotations).
  """
  out = empty_example(image_size, mask_size, max_masks)
  image = transforms.decode_image(record["image"]) if record["image"] else None
  try:
    anns = json.loads(record["annotations"])["annotations"]
  except (ValueError, KeyError, TypeError):
    anns = None
  if image is None or not isinstance(anns, list):
    return out
  height, width = image.shape[:2]
  rles, areas = [], []
  for ann in anns:
    try:
      rle = masks.to_rle(ann["segmentation"], height, width)
      if tuple(rle["size"]) != (height, width):
        continue  # annotation for another image size: unusable
      rles.append(rle)
      areas.append(float(mask_utils.area(rle)))
    except (KeyError, TypeError, ValueError, AttributeError):
      continue  # one bad annotation costs that mask only
  areas = np.asarray(areas)
  keep = np.flatnonzero((areas > 0) & (areas <= max_area_fraction * height * width))
  scale = np.array([image_size / width, image_size / height] * 2, np.float32)
  k = 0
  for index in rng.permutation(keep):
    small = masks.low_res_mask_from_rle(rles[index], mask_size)
    if not small.any():
      continue
    out["masks"][k], out["boxes"][k], out["mask_valid"][k] = small, masks.rle_box(rles[index]) * scale, 1
    k += 1
    if k == max_masks:
      break
  out["image"] = transforms.normalize_in_place(bilinear_resize(image, image_size, image_size))
  out["valid"] = np.int32(1)
  return out


def read_image(data: bytes):
  """Encoded bytes -> uint8 (H, W, 3) or None (evaluate and tools)."""
  return transforms.decode_image(data) if data else None


def sa1b_to_coco(directory: str) -> dict:
  """A directory of sa_N.jpg + sa_N.json -> one COCO instances dict (file_name relative to
  the directory), e.g. to evaluate on a held-out SA-1B-format split."""
  source = SA1BSource(directory)
  if len(source.loose_pairs) != len(source):
    raise UserError("sa1b_to_coco reads directories, not tar shards")
  images, annotations = [], []
  for image_ref, json_ref in source.loose_pairs:
    record = json.loads(_read(None, json_ref))
    info = dict(record["image"], file_name=image_ref[len(directory):].lstrip("/"))
    info.setdefault("id", info.get("image_id"))
    images.append(info)
    for ann in record["annotations"]:
      annotations.append({"id": ann["id"], "image_id": info["id"],
                          "segmentation": ann["segmentation"], "bbox": ann["bbox"],
                          "area": ann["area"], "iscrowd": 0, "category_id": 1})
  return {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "object"}]}


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()
