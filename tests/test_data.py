"""The SAMI input pipeline: numpy transforms, sources, and the grain iterator's guarantees."""
import io
import math
import pickle

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from efficientsam_jax import data
from efficientsam_jax.data import demo_images
from efficientsam_jax.data import transforms
from efficientsam_jax.errors import UserError


def _config(**data_overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(seed=0, batch_size=8,
                                          data=common.image_data()))
  config.data.update(dict(source="demo", num_demo_images=16, image_size=32))
  config.data.update(data_overrides)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["valid"], y["valid"])


def _png_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


# ---- transforms on plain arrays -------------------------------------------------------------

def test_crop_and_resize_output_size():
  image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
  out = transforms.crop_and_resize(image, (10, 20, 50, 70), 64)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  # A constant image stays constant through the bicubic resize.
  flat = np.full((40, 60, 3), 77, np.uint8)
  np.testing.assert_array_equal(transforms.crop_and_resize(flat, (0, 0, 40, 60), 24), 77)


def test_horizontal_flip_mirrors_columns():
  image = np.arange(2 * 5 * 3).reshape(2, 5, 3)
  flipped = transforms.horizontal_flip(image)
  np.testing.assert_array_equal(flipped[:, 0], image[:, -1])
  np.testing.assert_array_equal(flipped[:, ::-1], image)


def test_preprocess_flip_happens_about_half_the_time():
  # Centre crop at the source size is the identity, so the output is the image or its mirror.
  image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  plain, mirrored = transforms.normalize(image), transforms.normalize(image[:, ::-1])
  flips = 0
  for seed in range(200):
    out = transforms.preprocess(image, np.random.default_rng(seed), image_size=16, crop="center")
    if np.array_equal(out["image"], mirrored):
      flips += 1
    else:
      np.testing.assert_array_equal(out["image"], plain)
  assert 70 < flips < 130
  never = transforms.preprocess(image, np.random.default_rng(0), image_size=16, crop="center",
                                flip=False)
  np.testing.assert_array_equal(never["image"], plain)


def test_normalize_uses_imagenet_statistics():
  image = np.zeros((2, 2, 3), np.uint8)
  image[0, 0] = 255
  out = transforms.normalize(image)
  assert out.dtype == np.float32
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out[0, 0], (1 - mean) / std, rtol=1e-6)
  np.testing.assert_allclose(out[1, 1], -mean / std, rtol=1e-6)


def test_random_resized_crop_box_bounds_and_statistics():
  height, width = 300, 400
  rng = np.random.default_rng(0)
  fractions, ratios = [], []
  for _ in range(4000):
    top, left, h, w = transforms.random_resized_crop_box(height, width, rng)
    assert 0 <= top and 0 <= left and 0 < h and 0 < w
    assert top + h <= height and left + w <= width
    fractions.append(h * w / (height * width))
    ratios.append(w / h)
  fractions, ratios = np.array(fractions), np.array(ratios)
  # Rounding to whole pixels moves the area and ratio by a little more than 1%.
  assert fractions.min() > 0.2 * 0.98 and fractions.max() <= 1.0
  assert fractions.min() < 0.22 and fractions.max() > 0.95  # the whole range is used
  # A draw (s, r) is kept iff the crop fits: s*r <= w/h and s/r <= h/w (area-normalised), so
  # E[s] is uniform(0.2, 1) weighted by the accepted share of the log-ratio interval.
  s = np.linspace(0.2, 1.0, 100001)
  lo = np.maximum(math.log(3 / 4), np.log(s * width / height))
  hi = np.minimum(math.log(4 / 3), np.log(width / height / s))
  accepted = np.clip(hi - lo, 0, None)
  assert fractions.mean() == pytest.approx((s * accepted).sum() / accepted.sum(), abs=0.01)
  assert ratios.min() > 0.75 * 0.98 and ratios.max() < 4 / 3 * 1.02
  # log-uniform ratio: for each s, the kept log r are uniform on [lo, hi] (mean (lo + hi) / 2).
  expected_log_ratio = ((lo + hi) / 2 * accepted).sum() / accepted.sum()
  assert np.mean(np.log(ratios)) == pytest.approx(expected_log_ratio, abs=0.01)


def test_random_resized_crop_box_falls_back_to_centre():
  # Nothing of area >= 20% fits a 10x1000 strip within the ratio range: torchvision's fallback.
  top, left, h, w = transforms.random_resized_crop_box(10, 1000, np.random.default_rng(0))
  assert (h, w) == (10, 13) and top == 0 and left == (1000 - 13) // 2


def test_center_crop_box():
  assert transforms.center_crop_box(100, 160) == (0, 30, 100, 100)
  assert transforms.center_crop_box(161, 100) == (30, 0, 100, 100)


def test_decode_handles_modes_and_corruption():
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
  decoded = transforms.decode_image(_png_bytes(gray))
  assert decoded.shape == (8, 8, 3)
  np.testing.assert_array_equal(decoded[..., 1], gray)
  assert transforms.decode_image(b"not an image") is None
  assert transforms.decode_image(b"") is None
  rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  jpeg = io.BytesIO()
  Image.fromarray(rgb).save(jpeg, format="JPEG")
  assert transforms.decode_image(jpeg.getvalue()).shape == (64, 64, 3)
  assert transforms.decode_image(jpeg.getvalue()[: len(jpeg.getvalue()) // 2]) is None
  out = transforms.preprocess(b"junk", np.random.default_rng(0), image_size=8)
  assert out["valid"] == 0 and out["valid"].dtype == np.int32
  np.testing.assert_array_equal(out["image"], np.zeros((8, 8, 3), np.float32))


# ---- sources ---------------------------------------------------------------------------------

def test_demo_images_deterministic_and_varied():
  a = demo_images.demo_image(0, 3)
  assert a.shape == (128, 128, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, demo_images.demo_image(0, 3))
  images = np.stack([demo_images.demo_image(0, i) for i in range(8)]).astype(np.float32)
  for i in range(8):
    for j in range(i + 1, 8):
      assert np.abs(images[i] - images[j]).mean() > 10  # different images, not near-copies
  assert not np.array_equal(demo_images.demo_image(1, 3), a)  # the seed matters
  # Structure: strong local edges and spread of colours within each image.
  edges = np.abs(np.diff(images, axis=2)).mean(axis=(1, 2, 3))
  assert np.all(images.std(axis=(1, 2)) > 20) and np.all(edges > 1)
  source = data.DemoImageSource(5)
  assert len(source) == 5
  np.testing.assert_array_equal(source[2], demo_images.demo_image(0, 2))
  with pytest.raises(IndexError):
    source[5]  # pylint: disable=pointless-statement
  # The per-process cache is not shipped to workers, and cached pixels cannot be mutated.
  copy = pickle.loads(pickle.dumps(source))
  assert not copy._cache  # pylint: disable=protected-access
  np.testing.assert_array_equal(copy[2], source[2])
  assert not source[2].flags.writeable


def _write_folder(root):
  """5 good images in nested folders (mixed suffix case), one corrupt, one ignored text file."""
  rng = np.random.default_rng(0)
  paths = ["a/x.png", "a/b/y.JPG", "c/d/e/z.jpeg", "top.PNG", "c/w.jpg"]
  for rel in paths:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    array = rng.integers(0, 256, (40 + len(rel), 50, 3), dtype=np.uint8)
    fmt = "PNG" if rel.lower().endswith("png") else "JPEG"
    Image.fromarray(array).save(path, format=fmt)
  (root / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
  (root / "notes.txt").write_text("ignored")
  return 6


def test_folder_source_nested_sorted(tmp_path):
  count = _write_folder(tmp_path)
  source = data.ImageFolderSource(tmp_path)
  assert len(source) == count
  relative = [str(p)[len(str(tmp_path)) + 1:] for p in source.files]
  assert relative == sorted(relative) and "notes.txt" not in relative
  assert isinstance(source[0], bytes)


def test_folder_source_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    data.ImageFolderSource(tmp_path / "missing")
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  with pytest.raises(UserError, match="holds no"):
    data.ImageFolderSource(tmp_path / "empty")


def test_folder_pipeline_marks_corrupt_file_invalid(tmp_path):
  count = _write_folder(tmp_path)
  config = _config(source="folder", path=str(tmp_path))
  config.batch_size = count  # one batch is exactly one epoch
  batch = next(data.make_train_iterator(config, process_index=0, process_count=1))
  assert batch["image"].shape == (count, 32, 32, 3) and batch["valid"].dtype == np.int32
  assert batch["valid"].sum() == count - 1
  bad = batch["image"][batch["valid"] == 0]
  np.testing.assert_array_equal(bad, 0.0)


def test_tfds_missing_dataset_is_a_clear_error(tmp_path):
  config = _config(source="tfds", tfds_name="imagenet2012", tfds_data_dir=str(tmp_path))
  with pytest.raises(UserError, match="tfds build imagenet2012") as info:
    data.make_train_iterator(config, process_index=0, process_count=1)
  assert "\n" not in str(info.value)
  config.data.tfds_name = "no_such_dataset_xyz"
  with pytest.raises(UserError, match="unknown TFDS dataset"):
    data.num_examples(config)


def test_bad_config_fields():
  with pytest.raises(UserError, match="divisible"):
    data.make_train_iterator(_config(), process_index=0, process_count=3)
  with pytest.raises(UserError, match="data.source"):
    data.make_train_iterator(_config(source="s3"), process_index=0, process_count=1)
  with pytest.raises(UserError, match="data.crop"):
    data.make_train_iterator(_config(crop="five"), process_index=0, process_count=1)


# ---- the iterator ----------------------------------------------------------------------------

def test_batches_shapes_and_num_examples():
  config = _config()
  batch = next(data.make_train_iterator(config))  # defaults from jax: one process
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["valid"].shape == (8,) and np.all(batch["valid"] == 1)
  assert data.num_examples(config) == 16


def test_same_seed_same_batches_other_seed_different():
  config = _config()
  first = _take(data.make_train_iterator(config, process_index=0, process_count=1), 5)
  again = _take(data.make_train_iterator(config, process_index=0, process_count=1), 5)
  _assert_same_batches(first, again)
  config.seed = 1
  other = _take(data.make_train_iterator(config, process_index=0, process_count=1), 5)
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_set_state_resumes_exactly():
  config = _config()
  reference = _take(data.make_train_iterator(config, process_index=0, process_count=1), 7)
  interrupted = data.make_train_iterator(config, process_index=0, process_count=1)
  _take(interrupted, 3)  # crosses an epoch boundary at 2 batches
  state = interrupted.get_state()
  resumed = data.make_train_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 4), reference[3:])


def _record_ids(batches, demo_config):
  """Identifies demo records in batches made with centre crops at the demo size, no flip."""
  by_bytes = {transforms.normalize(demo_images.demo_image(demo_config.demo_seed, i)).tobytes(): i
              for i in range(demo_config.num_demo_images)}
  return [by_bytes[image.tobytes()] for b in batches for image in b["image"]]


def test_hosts_read_their_rows_of_the_one_global_stream_and_epochs_reshuffle():
  config = _config(crop="center", flip=False, image_size=128)
  # 16 records, global batch 8: 2 batches are one epoch; 2 hosts read 4 rows each.
  single = _record_ids(_take(data.make_train_iterator(config, process_index=0,
                                                      process_count=1), 4), config.data)
  hosts = [_record_ids(_take(data.make_train_iterator(config, process_index=h,
                                                      process_count=2), 4), config.data)
           for h in range(2)]
  # Host h holds rows [4h, 4h + 4) of every global batch: together they are the 1-host stream.
  rebuilt = [i for step in range(4) for h in range(2) for i in hosts[h][4 * step:4 * step + 4]]
  assert rebuilt == single
  for step in range(4):
    assert not set(hosts[0][4 * step:4 * step + 4]) & set(hosts[1][4 * step:4 * step + 4])
  epoch1, epoch2 = single[:16], single[16:]
  assert sorted(epoch1) == sorted(epoch2) == list(range(16))
  assert epoch1 != epoch2  # a new order each epoch


def test_hosts_draw_different_augmentations():
  config = _config(num_demo_images=2, demo_seed=0)
  config.batch_size = 2
  # Each host augments different global positions, so its crops differ.
  boxes = []
  for host in range(2):
    boxes.append(next(data.make_train_iterator(config, process_index=host, process_count=2)))
  assert not np.array_equal(boxes[0]["image"], boxes[1]["image"])


def test_orbax_round_trip_of_iterator_state(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  config = _config()
  reference = _take(data.make_train_iterator(config, process_index=0, process_count=1), 5)
  it = data.make_train_iterator(config, process_index=0, process_count=1)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=data.iterator_save_args(it)))
    manager.wait_until_finished()
  fresh = data.make_train_iterator(config, process_index=0, process_count=1)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    restored = manager.restore(2, args=ocp.args.Composite(
        data=data.iterator_restore_args(fresh)))
  _assert_same_batches(_take(restored["data"], 3), reference[2:])


def test_worker_processes_give_the_same_stream():
  # Also checks that grain's workers start from a program that never parsed absl flags.
  config = _config()
  in_process = _take(data.make_train_iterator(config, process_index=0, process_count=1), 3)
  config.data.worker_count = 2
  it = data.make_train_iterator(config, process_index=0, process_count=1)
  try:
    _assert_same_batches(_take(it, 3), in_process)
  finally:
    it.close()


def test_encoded_jpegs_decode_only_at_the_scale_the_view_needs():
  """Bytes take the scaled-decode path, an array the full decode: the same random crops and
  flips (the same draws from the RNG), pixels within JPEG-scaling noise, and the decode of a
  224 crop from a 1200x1800 photo runs at a fraction of its resolution."""
  import io
  from PIL import Image
  yy, xx = np.mgrid[0:1200, 0:1800]
  smooth = np.stack([xx / 1800 * 255, yy / 1200 * 255, (xx + yy) / 3000 * 255], -1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(smooth).save(buffer, format="JPEG", quality=95)
  data = buffer.getvalue()
  decoded = transforms.decode_image(data)
  for crop in transforms.CROP_MODES:
    for seed in range(3):
      kw = dict(image_size=64, crop=crop, flip=True)
      a = transforms.preprocess(data, np.random.default_rng(seed), **kw)["image"]
      b = transforms.preprocess(decoded, np.random.default_rng(seed), **kw)["image"]
      pixels = np.abs(a - b) * transforms.IMAGENET_STD * 255  # back to 0..255 levels
      assert np.median(pixels) < 2.0 and np.mean(pixels) < 3.0, (crop, seed, pixels.mean())
  pil = Image.open(io.BytesIO(data))
  image, box = transforms.decode_at_least(pil, (100, 200, 900, 900), (224, 224))
  assert image.size == (450, 300) and box == (25, 50, 225, 225)  # 1/4 scale, box scaled
