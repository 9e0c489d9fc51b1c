"""The teacher-feature cache: a frozen teacher's targets for every image of a dataset, computed
once (`python -m efficientsam_jax.cache_teacher`) and read by the trainer instead of running
the teacher (`config.teacher.cache_dir`).

A cache directory holds
  cache.json  what was cached: record count and sharding, target shape and dtype, the teacher
              (size, output, dtype, weights file name), the data settings that fix each
              image's view (source, image_size, crop, min_scale, flip, view_seed) and, for
              information only, where the images were (data.path, data.tfds_data_dir).
              Written whole by process 0.
  targets-SSSSS-of-NNNNN.pP.array_record
              shard S: records [S*R, min((S+1)*R, num_records)) in source order (R =
              records_per_shard), written by process P (shard S belongs to process S mod the
              process count). A shard is written as `<name>.partial` and renamed when
              complete (in a bucket: written in a local folder and uploaded whole, since
              array_record writes local files only): a shard under its final name is whole.
              A rerun skips those and rewrites the rest; a failed write removes its partial
              file; nothing else in the directory is ever touched. The directory may be
              gs://: array_record reads shards there itself.
Each record: a 4-byte little-endian header length, a JSON header {"index", "image_crc32",
"shape", "dtype"}, then the target's raw bytes (C order; bfloat16). The index and the CRC-32
of the encoded image are checked on every read, so a target is never paired with another
image (a changed dataset is an error, not silent noise).

Each image's view is a function of (view_seed, source index) alone, so the writer and the
trainer see the same pixels. With a deterministic crop ("center" or "longest_side") and no
flip that is also the view a live-teacher run sees: cached and live training are the same
run. With random crops or flips the cache holds one random view per image, which every
epoch then reuses.

The writer and the reader of the format live in this one module (hence its length): the
record layout, the shard names and the checks must change together.
"""
import contextlib
import dataclasses
import json
import os
import struct
import time
import zlib
from typing import Callable, Optional

import grain
import ml_dtypes
import numpy as np
from absl import logging
from array_record.python import array_record_data_source, array_record_module

from efficientsam_jax.data import transforms
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import paths

FORMAT = "efficientsam_jax.teacher_cache/1"
METADATA_FILE = "cache.json"
TARGET_DTYPE = "bfloat16"
PARTIAL_SUFFIX = ".partial"
# One record per chunk: random access reads exactly the record asked for.
WRITER_OPTIONS = "group_size:1,uncompressed"
# The data settings a cached target depends on; a training config must agree on all of them.
# Where the images live (data.path, data.tfds_data_dir) is recorded but may change: every
# record's image CRC already ties it to its image.
VIEW_FIELDS = ("source", "tfds_name", "split", "num_demo_images", "demo_seed", "image_size",
               "crop", "min_scale", "flip")
LOCATION_FIELDS = ("path", "tfds_data_dir")
TEACHER_FIELDS = ("size", "output")

_HEADER_LENGTH = struct.Struct("<I")


def image_crc32(record) -> int:
  """CRC-32 of an encoded image (bytes) or of an array record's pixels."""
  if isinstance(record, np.ndarray):
    return zlib.crc32(np.ascontiguousarray(record).tobytes())
  return zlib.crc32(record)


def encode_record(index: int, crc: int, target: np.ndarray) -> bytes:
  """One target (any shape, bfloat16) with the index and image CRC it belongs to."""
  header = json.dumps({"index": int(index), "image_crc32": int(crc),
                       "shape": list(target.shape), "dtype": str(target.dtype)}).encode()
  return _HEADER_LENGTH.pack(len(header)) + header + np.ascontiguousarray(target).tobytes()


def decode_record(blob: bytes) -> tuple[dict, np.ndarray]:
  """Inverse of encode_record: (header, target array)."""
  (length,) = _HEADER_LENGTH.unpack_from(blob)
  start = _HEADER_LENGTH.size
  header = json.loads(blob[start:start + length])
  dtype = np.dtype(getattr(ml_dtypes, header["dtype"], header["dtype"]))
  target = np.frombuffer(blob, dtype, offset=start + length).reshape(header["shape"])
  return header, target


def cached_view(record, index: int, view_seed: int, data_config) -> dict:
  """The one view of image `index` that its cached target describes: image float32
  (S, S, 3), valid int32 (); augmentation drawn from (view_seed, index) only."""
  return transforms.preprocess(
      record, np.random.default_rng([int(view_seed), int(index)]),
      image_size=data_config.image_size, crop=data_config.crop,
      min_scale=data_config.min_scale, flip=data_config.flip)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which records each shard holds and what it is called."""
  num_records: int
  records_per_shard: int

  @property
  def num_shards(self) -> int:
    return -(-self.num_records // self.records_per_shard)

  def records(self, shard: int) -> range:
    start = shard * self.records_per_shard
    return range(start, min(start + self.records_per_shard, self.num_records))

  def name(self, shard: int, process_index: int) -> str:
    return f"targets-{shard:05d}-of-{self.num_shards:05d}.p{process_index}.array_record"

  def complete_paths(self, directory: str) -> dict[int, str]:
    """{shard: its finished file} (whichever process wrote it), from one listing."""
    prefix, suffix = "targets-", f"-of-{self.num_shards:05d}"
    found = {}
    for name in paths.list_dir(directory) if paths.is_dir(directory) else ():
      head, _, rest = name.partition(".p")
      if (head.startswith(prefix) and head.endswith(suffix) and rest.endswith(".array_record")
          and not rest.endswith(PARTIAL_SUFFIX)):
        found.setdefault(int(head[len(prefix):-len(suffix)]), paths.join(directory, name))
    return found


def metadata_for(config, num_records: int, records_per_shard: int,
                 target_shape: tuple[int, ...]) -> dict:
  """cache.json for caching `config`'s teacher over its dataset."""
  teacher = config.teacher
  return {
      "format": FORMAT,
      "num_records": int(num_records),
      "records_per_shard": int(records_per_shard),
      "target": {"shape": [int(d) for d in target_shape], "dtype": TARGET_DTYPE},
      "teacher": {"size": teacher.size, "output": teacher.output, "dtype": teacher.dtype,
                  "checkpoint": paths.basename(teacher.checkpoint or "") or None,
                  "random_init": bool(teacher.random_init), "seed": int(teacher.seed)},
      "data": {k: config.data.get(k) for k in VIEW_FIELDS},
      "data_location": {k: config.data.get(k) for k in LOCATION_FIELDS},
      "view_seed": int(config.seed),
  }


def read_metadata(directory: str) -> dict:
  path = paths.join(directory, METADATA_FILE)
  if not paths.exists(path):
    paths.check_bucket(directory, "teacher cache")
    raise UserError(f"{directory} is not a teacher cache (no {METADATA_FILE}); write "
                    "one with `python -m efficientsam_jax.cache_teacher`")
  metadata = paths.read_json(path, "teacher cache metadata file")
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    found = metadata.get("format") if isinstance(metadata, dict) else None
    raise UserError(f"{path}: format {found!r}, expected {FORMAT!r}")
  return metadata


def _prepare_directory(directory: str, metadata: dict, process_index: int) -> None:
  """Creates the cache directory or checks that it holds a cache of the same thing. Refuses
  a directory with anything else in it: the cache never mixes with (or deletes) other files.
  Process 0 writes cache.json (whole, atomically); the others only check."""
  paths.check_bucket(directory, "--output")
  try:
    paths.makedirs(directory)
    names = paths.list_dir(directory) if paths.is_dir(directory) else []
  except OSError as e:
    raise UserError(f"cannot use {directory} as the cache directory: "
                    f"{paths.cause(e)}") from None
  if METADATA_FILE in names:
    existing = read_metadata(directory)
    differ = sorted(k for k in set(existing) | set(metadata)
                    if k != "data_location" and existing.get(k) != metadata.get(k))
    if differ:
      raise UserError(f"{directory} holds a teacher cache of something else "
                      f"(differs in {', '.join(differ)}); choose another --output")
    return
  foreign = [n for n in names if not (n.startswith("targets-") or n.startswith(METADATA_FILE)
                                      or n.startswith("." + METADATA_FILE))]
  if foreign:
    raise UserError(f"{directory} is not empty and holds no teacher cache "
                    f"({foreign[0]} ...); choose a new or empty directory")
  if process_index == 0:
    paths.write(paths.join(directory, METADATA_FILE),
                json.dumps(metadata, indent=2, sort_keys=True))


class _ViewWithKey(grain.transforms.Map):
  """index -> the cached view of that image plus its index and image CRC (writer side)."""

  def __init__(self, source, view_seed: int, data_config):
    self.source, self.view_seed, self.data_config = source, view_seed, data_config

  def map(self, index):
    record = self.source[index]
    out = cached_view(record, index, self.view_seed, self.data_config)
    out.update(index=np.int64(index), image_crc32=np.int64(image_crc32(record)))
    return out


class _Progress:
  """Count, rate and ETA on the log, at most every `every` seconds."""

  def __init__(self, total: int, every: float = 10.0):
    self.total, self.every, self.done = total, every, 0
    self.start = self.last = time.perf_counter()

  def add(self, n: int, force: bool = False) -> None:
    self.done += n
    now = time.perf_counter()
    if not force and now - self.last < self.every:
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    eta = (self.total - self.done) / rate if rate else float("inf")
    logging.info("teacher cache: %d/%d records (%.1f%%), %.1f records/s, ETA %s", self.done,
                 self.total, 100.0 * self.done / max(self.total, 1), rate,
                 time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?")


def write_cache(directory: str, source, config,
                compute_targets: Callable[[np.ndarray], np.ndarray],
                target_shape: tuple[int, ...], *, batch_size: int, records_per_shard: int,
                process_index: int, process_count: int) -> dict:
  """Writes this process's shards of the cache of `config`'s teacher over `source`.

  Args:
    directory: the cache directory (created; or a cache of the same config, to resume).
    source: the random-access image source of config.data (pipeline.make_source).
    config: the training config (`seed`, `data`, `teacher`).
    compute_targets: images float32 (batch_size, S, S, 3) -> targets (batch_size,
      *target_shape) (cast to bfloat16 here); always called with full batches.
    target_shape: one target's shape, e.g. (64, 64, 256).
    batch_size: images per compute_targets call.
    records_per_shard: records per shard file.
    process_index, process_count: this process and how many share the work.
  Returns: {"records": written now, "skipped_shards": found complete, "seconds": ...}.
  """
  layout = Layout(len(source), records_per_shard)
  _prepare_directory(directory, metadata_for(config, layout.num_records, records_per_shard,
                                             target_shape), process_index)
  mine = range(process_index, layout.num_shards, process_count)
  complete = layout.complete_paths(directory)
  todo = [s for s in mine if s not in complete]
  skipped = len(mine) - len(todo)
  indices = [i for s in todo for i in layout.records(s)]
  logging.info("teacher cache %s: process %d writes %d of %d shards (%d already complete), "
               "%d records", directory, process_index, len(todo), layout.num_shards, skipped,
               len(indices))
  start = time.perf_counter()
  if not indices:
    return {"records": 0, "skipped_shards": skipped, "seconds": 0.0}

  # Decoding and cropping run in grain threads, ahead of the teacher.
  data = config.data
  examples = iter(grain.MapDataset.source(indices).map(
      _ViewWithKey(source, config.seed, data)).to_iter_dataset(grain.ReadOptions(
          num_threads=max(1, data.read_threads), prefetch_buffer_size=max(2, batch_size))))
  progress = _Progress(len(indices))
  shard_iter = iter(todo)
  writer = None  # (shard, ArrayRecordWriter, partial path)
  # array_record writes local files only: a bucket's shards are written in a local folder
  # and uploaded whole when complete.
  staging = paths.is_remote(directory)
  stack = contextlib.ExitStack()
  partial_dir = stack.enter_context(paths.local_folder("esam-cache-")) if staging else directory

  def write_batch(batch: list) -> None:
    nonlocal writer
    images = np.zeros((batch_size,) + batch[0]["image"].shape, np.float32)
    images[:len(batch)] = np.stack([e["image"] for e in batch])
    targets = np.asarray(compute_targets(images)).astype(ml_dtypes.bfloat16)
    for example, target in zip(batch, targets):
      if writer is None:
        shard = next(shard_iter)
        partial = os.path.join(partial_dir, layout.name(shard, process_index) + PARTIAL_SUFFIX)
        writer = (shard, array_record_module.ArrayRecordWriter(partial, WRITER_OPTIONS),
                  partial)
      shard, records, partial = writer
      records.write(encode_record(example["index"], example["image_crc32"], target))
      if int(example["index"]) == layout.records(shard)[-1]:
        records.close()
        final = paths.join(directory, layout.name(shard, process_index))
        if staging:
          paths.upload(partial, final)
          os.remove(partial)
        else:
          os.replace(partial, final)
        writer = None
    progress.add(len(batch))

  batch = []
  with stack:
    try:
      for example in examples:
        batch.append(example)
        if len(batch) == batch_size:
          write_batch(batch)
          batch = []
      if batch:
        write_batch(batch)
    except (OSError, RuntimeError, UserError) as e:  # a full disk, a lost bucket
      # No partial shard stays behind (a rerun would rewrite it anyway).
      if writer is not None:
        with contextlib.suppress(OSError):
          os.remove(writer[2])
      if isinstance(e, UserError):
        raise
      raise UserError(f"writing the teacher cache in {directory} failed: {paths.cause(e)} "
                      "(complete shards are kept; run the same command to finish)") from None
  progress.add(0, force=True)
  return {"records": len(indices), "skipped_shards": skipped,
          "seconds": time.perf_counter() - start}


class TeacherCache:
  """Random access to a complete cache: `cache.target(index, record)` -> bfloat16 target,
  after checking that it was computed from this very image. Picklable (grain workers)."""

  def __init__(self, directory: str):
    self.directory = directory
    self.metadata = read_metadata(directory)
    layout = Layout(self.metadata["num_records"], self.metadata["records_per_shard"])
    complete = layout.complete_paths(directory)
    missing = [s for s in range(layout.num_shards) if s not in complete]
    if missing:
      raise UserError(
          f"teacher cache {directory} is incomplete: {len(missing)} of {layout.num_shards} "
          f"shards missing (first: {layout.name(missing[0], 0)}); run cache_teacher again "
          "to finish it")
    # array_record reads gs:// itself (given str paths).
    self._records = array_record_data_source.ArrayRecordDataSource(
        [complete[s] for s in range(layout.num_shards)])

  def __len__(self) -> int:
    return self.metadata["num_records"]

  def check_matches(self, config) -> None:
    """UserError unless `config` trains on the images and teacher this cache was made for."""
    want = {"data": {k: config.data.get(k) for k in VIEW_FIELDS},
            "teacher": {k: config.teacher.get(k) for k in TEACHER_FIELDS}}
    for group, fields in want.items():
      for key, value in fields.items():
        if self.metadata[group].get(key) != value:
          raise UserError(
              f"teacher cache {self.directory} was written for {group}.{key}="
              f"{self.metadata[group].get(key)!r}, but the config has {value!r}")

  def target(self, index: int, record) -> np.ndarray:
    header, target = decode_record(self._records[index])
    if header["index"] != index or header["image_crc32"] != image_crc32(record):
      raise UserError(
          f"teacher cache {self.directory}: record {index} was computed from another image "
          "(has the dataset changed since the cache was written?)")
    return target


class CachedTargetSource:
  """An image source paired with its cache: `source[i]` -> {"record", "index", "target"}."""

  def __init__(self, source, cache: TeacherCache):
    if len(source) != len(cache):
      raise UserError(f"teacher cache {cache.directory} holds {len(cache)} targets but "
                              f"the dataset has {len(source)} images")
    self._source, self._cache = source, cache

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    record = self._source[index]
    return {"record": record, "index": index, "target": self._cache.target(index, record)}

  def __repr__(self) -> str:
    return f"CachedTargetSource({self._source!r}, {self._cache.directory!r})"


class CachedView(grain.transforms.Map):
  """{"record", "index", "target"} -> {"image", "valid", "target"}: the cached view."""

  def __init__(self, view_seed: int, data_config):
    self.view_seed, self.data_config = view_seed, data_config

  def map(self, element):
    out = cached_view(element["record"], element["index"], self.view_seed, self.data_config)
    out["target"] = element["target"]
    return out
