"""Random-access image sources: `len(source)` and `source[i]` -> encoded bytes or uint8 array.

Each source is what grain calls a RandomAccessDataSource: picklable (grain worker processes
get a copy), cheap to index, and deterministic in its order. Labels are never read: SAMI
pretraining regresses teacher features, not classes.
"""
import os
from typing import Sequence, Union

import numpy as np

from efficientsam_jax.data import demo_images
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

Record = Union[bytes, np.ndarray]


class DemoImageSource:
  """`num_images` synthetic images, uint8 (128, 128, 3), drawn from (seed, index) on access.

  Drawing one costs several times its augmentation, and the demo set is small and revisited
  every epoch, so each process keeps the images it has drawn (up to MAX_CACHED of them,
  48 KiB each at 128 px).
  """

  MAX_CACHED = 4096

  def __init__(self, num_images: int, seed: int = 0,
               image_size: int = demo_images.DEMO_IMAGE_SIZE):
    if num_images <= 0:
      raise UserError(f"data.num_demo_images must be positive, got {num_images}")
    self._num_images = num_images
    self._seed = seed
    self._image_size = image_size
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self._num_images

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < self._num_images:
      raise IndexError(f"demo image {index} out of range [0, {self._num_images})")
    index = int(index)
    image = self._cache.get(index)
    if image is None:
      image = demo_images.demo_image(self._seed, index, self._image_size)
      image.flags.writeable = False  # shared by every later read of this index
      if len(self._cache) < self.MAX_CACHED:
        self._cache[index] = image
    return image

  def __getstate__(self):
    # Worker processes get the recipe, not the pixels: pickling stays cheap.
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  def __repr__(self) -> str:
    return f"DemoImageSource(num_images={self._num_images}, seed={self._seed})"


def list_image_files(root: Union[str, os.PathLike]) -> list[str]:
  """All *.jpg/*.jpeg/*.png under `root` (any depth, any letter case; local or gs://),
  sorted by relative path.

  Sorting relative paths makes the order (and so the shuffled stream) identical on every host
  and across runs, whatever order the filesystem lists directories in.
  """
  root = str(root)
  if not paths.is_dir(root):
    paths.check_bucket(root, "image folder")
    raise UserError(f"image folder {root!r} does not exist or is not a directory")
  files = sorted(f for f in paths.walk_files(root) if f.lower().endswith(IMAGE_SUFFIXES))
  if not files:
    raise UserError(
        f"image folder {root!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
  return [paths.join(root, f) for f in files]


class ImageFolderSource:
  """The image files of a folder tree; `source[i]` is the raw file bytes (decoded later).

  A file that cannot be read (deleted, permission) yields empty bytes, which the decoder turns
  into an invalid example instead of a crash.
  """

  def __init__(self, root: Union[str, os.PathLike]):
    self._root = str(root)
    self._files = list_image_files(root)

  @property
  def files(self) -> Sequence[str]:
    return self._files

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> bytes:
    try:
      return paths.read_bytes(self._files[index])
    except OSError:
      return b""

  def __repr__(self) -> str:
    return f"ImageFolderSource({self._root!r}, {len(self._files)} files)"


class TfdsImageSource:
  """The encoded `image` feature of a prepared TFDS dataset in array_record format.

  Reads through `tfds.data_source` with image decoding skipped: we decode with PIL ourselves so
  a corrupt JPEG becomes an invalid example rather than an exception inside tfds.
  """

  def __init__(self, name: str, split: str, data_dir: Union[str, None] = None,
               image_key: str = "image"):
    self._name, self._split, self._image_key = name, split, image_key
    self._source = _open_tfds(name, split, data_dir, image_key)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> bytes:
    return self._source[index][self._image_key]

  def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
    # array_record reads a batch of keys in one call much faster than one by one.
    return [r[self._image_key] for r in self._source.__getitems__(list(indices))]

  def __repr__(self) -> str:
    return f"TfdsImageSource({self._name!r}, split={self._split!r}, {len(self)} records)"


def _open_tfds(name: str, split: str, data_dir: Union[str, None], image_key: str):
  """tfds.data_source(...) with every "not prepared" failure turned into a one-line UserError."""
  # Imported here: tfds is slow to import and only this source needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if data_dir:
    paths.check_bucket(data_dir, "data.tfds_data_dir")

  prepare_hint = (
      f"prepare it in array_record format first, e.g. `tfds build {name.split('/')[0]}"
      f" --file_format=array_record --data_dir={data_dir or '~/tensorflow_datasets'}"
      " --manual_dir=DIR_WITH_THE_DOWNLOADED_ARCHIVES`"
      " (ImageNet needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the manual dir)")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    # tfds raises DatasetNotFoundError and friends; any of them means a bad name.
    raise UserError(f"unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
  if not builder.is_prepared():
    raise UserError(f"TFDS dataset {name!r} is not prepared in data_dir "
                    f"{builder.data_dir_root!s}; {prepare_hint}")
  try:
    return tfds.data_source(
        name, split=split, data_dir=data_dir, download=False,
        decoders={image_key: tfds.decode.SkipDecoding()})
  except Exception as e:  # pylint: disable=broad-except
    # e.g. prepared as tfrecord (no random access) or an unknown split name.
    raise UserError(f"cannot open TFDS dataset {name!r} split {split!r} for random access:"
                    f" {str(e).splitlines()[0]}; {prepare_hint}") from None
