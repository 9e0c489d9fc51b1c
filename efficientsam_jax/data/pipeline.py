"""The SAMI training input pipeline on grain: source -> shuffle -> repeat -> augment ->
host's part of each global batch -> (threads | worker processes).

The GLOBAL batch stream is a pure function of the config alone: the shuffle is seeded with
`config.seed` (reshuffled every epoch), every record's augmentation draws from an RNG grain
seeds with (augmentation seed, global position), and host p of P reads rows
[p*B/P, (p+1)*B/P) of every global batch. So 1 host with 8 devices and 2 hosts with 4 devices
each train on exactly the same images, and hosts never decode each other's records. Batching happens before the
data leaves the MapDataset stage, so worker processes split whole batches and the stream does
not depend on `worker_count`; the iterator state (`get_state`/`set_state`, or Orbax via
`grain.checkpoint.CheckpointSave/CheckpointRestore`) is a position, so resuming replays
exactly the batches an uninterrupted run would have produced.
"""
from typing import Optional

import grain
import jax
import numpy as np
from absl import flags

from efficientsam_jax.data import classification
from efficientsam_jax.data import segmentation
from efficientsam_jax.data import sources
from efficientsam_jax.data import teacher_cache
from efficientsam_jax.data import transforms
from efficientsam_jax.errors import UserError


def check_view_config(data_config) -> None:
  """UserError for crop settings `transforms.preprocess` cannot apply."""
  if data_config.crop not in transforms.CROP_MODES:
    raise UserError(f"data.crop must be one of {transforms.CROP_MODES}, got "
                            f"{data_config.crop!r}")
  if not 0.0 < data_config.min_scale <= 1.0:
    raise UserError(f"data.min_scale must be in (0, 1], got {data_config.min_scale}")


class SamiAugment(grain.transforms.RandomMap):
  """grain RandomMap wrapping `transforms.preprocess`: record -> {"image", "valid"}."""

  def __init__(self, image_size: int, crop: str, min_scale: float, flip: bool):
    self.image_size, self.crop, self.min_scale, self.flip = image_size, crop, min_scale, flip

  def random_map(self, element, rng: np.random.Generator):
    """Record (bytes or uint8 (H, W, 3)) -> image float32 (S, S, 3), valid int32 ()."""
    return transforms.preprocess(
        element, rng, image_size=self.image_size, crop=self.crop,
        min_scale=self.min_scale, flip=self.flip)


def make_source(data_config):
  """The random-access source `data_config.source` names (see the package docstring)."""
  kind = data_config.source
  if kind == "demo":
    return sources.DemoImageSource(data_config.num_demo_images, seed=data_config.demo_seed)
  if kind == "folder":
    if not data_config.path:
      raise UserError("data.source='folder' needs data.path (a folder of images)")
    return sources.ImageFolderSource(data_config.path)
  if kind == "tfds":
    return sources.TfdsImageSource(
        data_config.tfds_name, data_config.split, data_config.tfds_data_dir or None)
  raise UserError(f"data.source must be 'demo', 'folder' or 'tfds', got {kind!r}")


def num_examples(config) -> int:
  """Records in the whole source (all hosts together): steps per epoch = this // batch_size."""
  return len(make_source(config.data))


def _host_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise UserError(
        f"batch_size {batch_size} is not divisible by the {process_count} hosts")
  return batch_size // process_count


def _augment_seed(seed: int) -> int:
  """A 32-bit augmentation seed, distinct from the shuffle seed. grain seeds each record's RNG
  with (this seed, global position), so hosts draw different crops for different records."""
  return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


def _ensure_absl_flags_parsed():
  """Lets grain read its absl flags when called from a program that never ran `app.run`.

  grain reads flags (e.g. debug mode) when it starts worker processes; unparsed flags raise
  UnparsedFlagAccessError. Parsing with only the program name sets every flag to its default
  and leaves a real absl program's already-parsed flags alone.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["efficientsam_jax"], known_only=True)


def make_train_dataset(config, *, process_index: int, process_count: int) -> grain.IterDataset:
  """The per-host infinite stream of SAMI batches as a grain IterDataset (see
  make_train_iterator). With `config.teacher.cache_dir` each example also carries its cached
  teacher target and its view is the one the cache was computed from."""
  data = config.data
  check_view_config(data)
  source = make_source(data)
  cache_dir = config.get("teacher", {}).get("cache_dir")
  if cache_dir:
    cache = teacher_cache.TeacherCache(cache_dir)
    cache.check_matches(config)
    source = teacher_cache.CachedTargetSource(source, cache)
    transform = teacher_cache.CachedView(cache.metadata["view_seed"], data)
  else:
    transform = SamiAugment(data.image_size, data.crop, data.min_scale, data.flip)
  return host_batch_stream(source, transform, config, process_index=process_index,
                           process_count=process_count)


def write_teacher_cache(directory: str, config, compute_targets, target_shape, *,
                        batch_size: int, records_per_shard: int, process_index: int,
                        process_count: int) -> dict:
  """Writes this process's shards of the teacher cache of `config` (teacher_cache.write_cache
  over the config's dataset)."""
  check_view_config(config.data)
  return teacher_cache.write_cache(
      directory, make_source(config.data), config, compute_targets, target_shape,
      batch_size=batch_size, records_per_shard=records_per_shard, process_index=process_index,
      process_count=process_count)


def host_batch_stream(source, transform: grain.transforms.RandomMap | grain.transforms.Map,
                      config, *, process_index: int, process_count: int) -> grain.IterDataset:
  """Any random-access source -> this host's rows of every global batch (any trainer).

  source -> shuffle(config.seed) -> repeat -> transform (a RandomMap is seeded per global
  position; a Map draws nothing or seeds itself) ->
  global batches of config.batch_size, of which host p takes rows [p*B/P, (p+1)*B/P) ->
  threads / worker processes from config.data (read_threads, prefetch_buffer_size,
  worker_count).
  """
  data = config.data
  host_batch = _host_batch_size(config.batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise UserError(f"process_index {process_index} not in [0, {process_count})")
  if len(source) < process_count:
    raise UserError(
        f"{len(source)} records cannot be shared among {process_count} hosts")
  seed = int(config.seed) % 2**32
  ds = grain.MapDataset.source(source)
  # shuffle before repeat: grain's shuffle folds the epoch (index // len) into its seed, so an
  # infinite repeat reshuffles every epoch.
  ds = ds.shuffle(seed=seed).repeat(None)
  if isinstance(transform, grain.transforms.RandomMap):
    ds = ds.random_map(transform, seed=_augment_seed(seed))
  else:
    ds = ds.map(transform)
  # Chunks of host_batch consecutive global positions; global batch s is chunks
  # s*P .. s*P+P-1, so host p takes every P-th chunk from p. MapDataset is lazy: only the
  # chosen chunks are ever decoded.
  ds = ds.batch(host_batch, drop_remainder=True)[process_index::process_count]
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data.read_threads, prefetch_buffer_size=data.prefetch_buffer_size))
  if data.worker_count > 0:
    _ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.worker_count, per_worker_buffer_size=data.prefetch_buffer_size))
  return ds


def make_train_iterator(
    config,
    *,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of this host's batches.

  Each `next(it)` is {"image": float32 (B_local, S, S, 3), "valid": int32 (B_local,)} with
  B_local = config.batch_size // process_count and S = config.data.image_size. The iterator
  supports `get_state()` / `set_state(state)` and grain's Orbax args
  (`grain.checkpoint.CheckpointSave(it)`, `CheckpointRestore(it)`). Call `it.close()` when done
  if worker_count > 0, to stop the worker processes promptly.

  Args:
    config: ConfigDict with `seed`, `batch_size` (global) and `data` (see package docstring).
    process_index, process_count: this host and the host count; default to JAX's.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  ds = make_train_dataset(config, process_index=process_index, process_count=process_count)
  return iter(ds)


def iterator_save_args(iterator: grain.DatasetIterator):
  """Orbax save args for the iterator's position (one JSON file per host in the checkpoint).

  Returned from here so the Orbax checkpoint module never imports grain.
  """
  return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: grain.DatasetIterator):
  """Orbax restore args: restoring sets `iterator` to the saved position and returns it."""
  return grain.checkpoint.CheckpointRestore(iterator)


class SegmentationExamples(grain.transforms.RandomMap):
  """grain RandomMap wrapping `segmentation.segmentation_example` (EfficientSAM finetuning)."""

  def __init__(self, image_size: int, mask_size: int, max_masks: int, max_area_fraction: float):
    self.kwargs = dict(image_size=image_size, mask_size=mask_size, max_masks=max_masks,
                       max_area_fraction=max_area_fraction)

  def random_map(self, element, rng: np.random.Generator):
    return segmentation.segmentation_example(element, rng, **self.kwargs)


def make_segmentation_source(data_config):
  """SA-1B (data.source="sa1b", data.path: dirs/.tar shards) or COCO (data.source="coco",
  data.path: images folder, data.annotations: instances JSON)."""
  kind = data_config.source
  if kind in ("sa1b", "demo"):  # demo: the trainer has written SA-1B files into data.path
    if not data_config.path:
      raise UserError("data.source='sa1b' needs data.path (SA-1B folder or .tar shards)")
    # .tar member tables: stored in data.index_dir (the trainer sets WORKDIR/sa1b_index), so
    # a resume reads them instead of every shard's headers; process 0 stores them.
    return segmentation.SA1BSource(data_config.path, data_config.get("index_dir") or None,
                                   write_index=jax.process_index() == 0)
  if kind == "coco":
    if not data_config.path or not data_config.annotations:
      raise UserError("data.source='coco' needs data.path (images folder) and "
                              "data.annotations (instances JSON)")
    return segmentation.CocoSource(data_config.path, data_config.annotations)
  raise UserError(f"data.source must be 'sa1b' or 'coco' for finetuning, got {kind!r}")


def make_segmentation_iterator(config, *, process_index: Optional[int] = None,
                               process_count: Optional[int] = None) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of this host's finetuning batches: `image` float32
  (B_local, S, S, 3), `masks` uint8 (B_local, K, M, M), `boxes` float32 (B_local, K, 4),
  `mask_valid` int32 (B_local, K), `valid` int32 (B_local,), with S = data.image_size,
  M = data.mask_size, K = data.max_masks (see segmentation.segmentation_example)."""
  data = config.data
  transform = SegmentationExamples(data.image_size, data.mask_size, data.max_masks,
                                   data.max_area_fraction)
  ds = host_batch_stream(
      make_segmentation_source(data), transform, config,
      process_index=jax.process_index() if process_index is None else process_index,
      process_count=jax.process_count() if process_count is None else process_count)
  return iter(ds)


class ClassificationAugment(grain.transforms.RandomMap):
  """grain RandomMap wrapping `classification.train_example` (classification finetuning)."""

  def __init__(self, data_config):
    ra = data_config.randaugment
    self.kwargs = dict(image_size=data_config.image_size, min_scale=data_config.min_scale,
                       flip=data_config.flip, randaugment_ops=ra.num_ops,
                       magnitude=ra.magnitude, magnitude_std=ra.magnitude_std,
                       erase_prob=data_config.erase_prob)

  def random_map(self, element, rng: np.random.Generator):
    return classification.train_example(element, rng, **self.kwargs)


class ClassificationEvalView(grain.transforms.Map):
  """grain Map wrapping `classification.eval_example` (deterministic)."""

  def __init__(self, data_config):
    self.image_size, self.crop_pct = data_config.image_size, data_config.crop_pct

  def map(self, element):
    return classification.eval_example(element, image_size=self.image_size,
                                       crop_pct=self.crop_pct)


def make_classification_iterator(config, *, process_index: Optional[int] = None,
                                 process_count: Optional[int] = None) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of this host's training batches: `image` float32
  (B_local, S, S, 3), `label` int32 (B_local,), `valid` int32 (B_local,); same seeding,
  per-host rows and checkpointing as make_train_iterator."""
  train, _ = classification.make_sources(config.data)
  ds = host_batch_stream(
      train, ClassificationAugment(config.data), config,
      process_index=jax.process_index() if process_index is None else process_index,
      process_count=jax.process_count() if process_count is None else process_count)
  return iter(ds)


def classification_eval_batches(config, *, process_index: Optional[int] = None,
                                process_count: Optional[int] = None):
  """(number of global batches, iterator over this host's rows of each) of one pass over the
  evaluation split in order: global batches of `data.eval_batch_size` images, the last one
  padded with valid=0 rows; host p takes rows [p*B/P, (p+1)*B/P) of every batch."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  data = config.data
  _, source = classification.make_sources(data)
  batch = data.eval_batch_size
  host_batch = _host_batch_size(batch, process_count)
  num_batches = -(-len(source) // batch)
  ds = grain.MapDataset.source(classification.PaddedSource(source, num_batches * batch))
  ds = ds.map(ClassificationEvalView(data)).batch(host_batch)[process_index::process_count]
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads,
                                            prefetch_buffer_size=data.prefetch_buffer_size))
  return num_batches, iter(ds)
