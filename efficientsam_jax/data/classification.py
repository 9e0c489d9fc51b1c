"""Labelled images for classification finetuning: sources of (image, label) records and the
numpy transforms of MAE's finetuning recipe.

Sources (random access, picklable, deterministic order), each record {"image": encoded bytes
or uint8 (H, W, 3), "label": int}:
- TfdsLabelledSource: a prepared TFDS dataset (ImageNet-1K: "imagenet2012", splits "train"
  and "validation"), images left encoded.
- LabelledFolderSource: one sub-folder per class (sorted names are the labels 0..C-1).
- SceneClassesSource: generated scenes whose label is the kind of their large object
  (data/scenes.py: 6 classes), nothing downloaded.

Training view: random resized crop (bicubic), horizontal flip, RandAugment, normalisation,
random erasing (data/randaugment.py). Evaluation view: shorter side resized to
image_size / crop_pct (bicubic), centre crop, normalisation. An unreadable image yields
valid=0 (weighted out, counted).
"""

import numpy as np
from PIL import Image

from efficientsam_jax.data import randaugment, scenes, sources, transforms
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths


class TfdsLabelledSource:
  """The encoded `image` and the `label` of a prepared TFDS split (array_record)."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    self._name, self._split = name, split
    self._source = sources._open_tfds(name, split, data_dir, "image")  # pylint: disable=protected-access

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    return {"image": record["image"], "label": int(record["label"])}

  def __repr__(self) -> str:
    return f"TfdsLabelledSource({self._name!r}, split={self._split!r}, {len(self)} records)"


def class_names(root: str) -> list[str]:
  """The sorted names of the class sub-folders of `root` (UserError if there are none)."""
  if not paths.is_dir(root):
    paths.check_bucket(root, "data.path")
    raise UserError(f"image folder {root!r} does not exist or is not a directory")
  names = sorted(d for d in paths.list_dir(root) if paths.is_dir(paths.join(root, d)))
  if not names:
    raise UserError(f"image folder {root!r} has no class sub-folders (one folder per class)")
  return names


class LabelledFolderSource:
  """Images under ROOT/CLASS/ (any depth, jpg/png); `classes` fixes the label order (the
  training folder's, so an evaluation folder with fewer classes keeps the same labels)."""

  def __init__(self, root: str, classes: list[str] | None = None):
    self._root = root
    self.classes = classes or class_names(root)
    self._files = []
    for label, name in enumerate(self.classes):
      folder = paths.join(root, name)
      if paths.is_dir(folder):
        self._files += [(path, label) for path in sources.list_image_files(folder)]
    if not self._files:
      raise UserError(f"image folder {root!r} holds no images in its class sub-folders")

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict:
    path, label = self._files[index]
    try:
      return {"image": paths.read_bytes(path), "label": label}
    except OSError:
      return {"image": b"", "label": label}

  def __repr__(self) -> str:
    return f"LabelledFolderSource({self._root!r}, {len(self)} images, {len(self.classes)} classes)"


class SceneClassesSource:
  """`count` generated scenes (scenes.labelled_scene(seed, first + i, image_size))."""

  def __init__(self, count: int, seed: int, image_size: int, first: int = 0):
    if count <= 0:
      raise UserError(f"the demo classification set needs a positive size, got {count}")
    self._count, self._seed, self._size, self._first = count, seed, image_size, first

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._count:
      raise IndexError(f"scene {index} out of range [0, {self._count})")
    image, label = scenes.labelled_scene(self._seed, self._first + int(index), self._size)
    return {"image": image, "label": label}

  def __repr__(self) -> str:
    return f"SceneClassesSource({self._count} scenes, seed {self._seed})"


def make_sources(data) -> tuple:
  """(train source, evaluation source) of `config.data` (fields in configs/imagenet_ft.py)."""
  if data.source == "tfds":
    return (TfdsLabelledSource(data.tfds_name, data.split, data.tfds_data_dir or None),
            TfdsLabelledSource(data.tfds_name, data.eval_split, data.tfds_data_dir or None))
  if data.source == "folder":
    if not data.path or not data.eval_path:
      raise UserError("data.source='folder' needs data.path and data.eval_path (folders "
                      "with one sub-folder per class)")
    train = LabelledFolderSource(data.path)
    return train, LabelledFolderSource(data.eval_path, train.classes)
  if data.source == "demo":
    d = data.demo
    return (SceneClassesSource(d.num_train, d.seed, d.image_size),
            SceneClassesSource(d.num_eval, d.eval_seed, d.image_size))
  raise UserError(f"data.source must be 'tfds', 'folder' or 'demo', got {data.source!r}")


def _invalid(image_size: int, label: int = 0) -> dict:
  return {"image": np.zeros((image_size, image_size, 3), np.float32),
          "label": np.int32(label), "valid": np.int32(0)}


def train_example(record: dict, rng: np.random.Generator, *, image_size: int,
                  min_scale: float, flip: bool, randaugment_ops: int, magnitude: float,
                  magnitude_std: float, erase_prob: float) -> dict:
  """Record -> {"image": float32 (S, S, 3), "label": int32, "valid": int32} (training view)."""
  image = transforms.decode_image(record["image"])
  if image is None:
    return _invalid(image_size, record["label"])
  box = transforms.random_resized_crop_box(image.shape[0], image.shape[1], rng,
                                           scale=(min_scale, 1.0))
  image = transforms.crop_and_resize(image, box, image_size)
  if flip and rng.uniform() < 0.5:
    image = transforms.horizontal_flip(image)
  if randaugment_ops:
    image = randaugment.rand_augment(np.ascontiguousarray(image), rng, randaugment_ops,
                                     magnitude, magnitude_std)
  out = randaugment.random_erase(transforms.normalize(image), rng, erase_prob)
  return {"image": out, "label": np.int32(record["label"]), "valid": np.int32(1)}


def eval_view(image: np.ndarray, image_size: int, crop_pct: float) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (S, S, 3): shorter side to round(S / crop_pct) (bicubic), then
  the centred S x S crop (MAE's evaluation view: 224 from 256)."""
  height, width = image.shape[:2]
  short = int(round(image_size / crop_pct))
  scale = short / min(height, width)
  new_h, new_w = max(short, int(round(height * scale))), max(short, int(round(width * scale)))
  if (new_h, new_w) != (height, width):
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
  top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
  return image[top:top + image_size, left:left + image_size]


def eval_example(record: dict, *, image_size: int, crop_pct: float) -> dict:
  """Record (or PaddedSource's padding record) -> the evaluation view."""
  if record.get("padding"):
    return _invalid(image_size)
  image = transforms.decode_image(record["image"])
  if image is None:
    return _invalid(image_size, record["label"])
  return {"image": transforms.normalize(eval_view(image, image_size, crop_pct)),
          "label": np.int32(record["label"]), "valid": np.int32(1)}


class PaddedSource:
  """`source` followed by {"padding": True} records up to `length` (whole evaluation batches;
  grain drops None records, so padding is a record of its own)."""

  def __init__(self, source, length: int):
    self._source, self._length = source, length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    return self._source[index] if index < len(self._source) else {"padding": True}
