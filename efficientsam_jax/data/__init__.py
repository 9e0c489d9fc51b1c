"""Input pipelines. grain lives only in this package; nothing outside it imports grain.

Public API:
  make_train_iterator(config, *, process_index=None, process_count=None) -> grain iterator of
      {"image": float32 (B_local, S, S, 3), "valid": int32 (B_local,)}; checkpointable.
  num_examples(config) -> records in the source (all hosts), for epochs -> steps.
  check_view_config(data_config): UserError for crop settings the transforms cannot apply.
  iterator_save_args(it), iterator_restore_args(it) -> Orbax args (grain's CheckpointSave /
      CheckpointRestore) so the checkpoint module saves the iterator without importing grain.
  Sources (DemoImageSource, ImageFolderSource, TfdsImageSource) and the numpy transforms
  (efficientsam_jax.data.transforms) for tests and tools.

Every user-fixable data problem (missing dataset, empty folder, bad field) is a one-line
efficientsam_jax.errors.UserError.

Config read by make_train_iterator: top-level `seed` (shuffle and augmentation),
`batch_size` (global; divided by the host count), and `config.data` (configs/common.py's
`image_data` gives every field its default):
  source: "demo" | "folder" | "tfds".
  path: folder of *.jpg/*.jpeg/*.png, any nesting (source="folder").
  tfds_name, tfds_data_dir, split: TFDS dataset prepared as array_record (source="tfds");
      default "imagenet2012", "" (= TFDS's default dir), "train".
  num_demo_images, demo_seed: size and content of the built-in synthetic set (source="demo").
  image_size: S, output side in pixels (224 for SAMI).
  crop: "random_resized" (torchvision RandomResizedCrop, bicubic) | "center" (largest centred
      square resized to S) | "longest_side" (whole image, longest side to S, zero-padded
      bottom/right: SAM's preprocessing). The last two are deterministic: with flip=False a
      teacher-feature cache reproduces them exactly.
  min_scale: lower end of the crop area range (upper is 1.0); 0.2 for SAMI.
  flip: random horizontal flip with p=0.5.
  worker_count: grain worker processes; 0 = decode in this process.
  read_threads: threads per process preparing batches in parallel.
  prefetch_buffer_size: batches buffered per process (each is B_local*S*S*3*4 bytes).
Unreadable images become all-zero images with valid=0 (count them; weight them out).

Teacher-feature cache (efficientsam_jax.data.teacher_cache; ArrayRecord shards):
  write_teacher_cache(directory, config, compute_targets, target_shape, ...) writes this
      process's shards; with `config.teacher.cache_dir` set, make_train_iterator's batches
      also hold "target" bfloat16 (B_local, S/16, S/16, C), read from the cache.
  TeacherCache, read_metadata: reading a cache directory back.

EfficientSAM finetuning (efficientsam_jax.data.segmentation, demo_sa1b):
  make_segmentation_iterator(config) -> batches of images, low-res target masks, boxes and
      validity flags (see its docstring); same seeding, per-host rows and checkpointing.
  SA1BSource (released sa_N.jpg/.json layout, directories or .tar shards), CocoSource.
  Fields: source "sa1b" | "coco", path, annotations (COCO JSON), image_size, mask_size
  (image_size / 4), max_masks (K), max_area_fraction (0.9).

Classification finetuning (efficientsam_jax.data.classification, randaugment, scenes):
  make_classification_iterator(config) -> batches of `image`, `label`, `valid` (MAE's
      training view: random resized crop, flip, RandAugment, random erasing); same seeding,
      per-host rows and checkpointing.
  classification_eval_batches(config) -> (global batch count, this host's padded batches of
      one in-order pass over the evaluation split).
  Fields: source "tfds" | "folder" | "demo", tfds_name, split, eval_split, path, eval_path,
  image_size, min_scale, flip, randaugment (num_ops, magnitude, magnitude_std), erase_prob,
  crop_pct, eval_batch_size, demo (seed, num_train, eval_seed, num_eval, image_size).
"""
from efficientsam_jax.data.pipeline import check_view_config, classification_eval_batches
from efficientsam_jax.data.pipeline import iterator_restore_args
from efficientsam_jax.data.pipeline import iterator_save_args
from efficientsam_jax.data.pipeline import make_classification_iterator
from efficientsam_jax.data.pipeline import make_segmentation_iterator
from efficientsam_jax.data.pipeline import make_segmentation_source
from efficientsam_jax.data.pipeline import make_source
from efficientsam_jax.data.pipeline import make_train_dataset
from efficientsam_jax.data.pipeline import make_train_iterator
from efficientsam_jax.data.pipeline import num_examples
from efficientsam_jax.data.pipeline import write_teacher_cache
from efficientsam_jax.data.sources import DemoImageSource
from efficientsam_jax.data.sources import ImageFolderSource
from efficientsam_jax.data.sources import TfdsImageSource
from efficientsam_jax.data.teacher_cache import TeacherCache
from efficientsam_jax.data.teacher_cache import read_metadata
