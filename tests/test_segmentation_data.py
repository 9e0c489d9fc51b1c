"""SA-1B / COCO segmentation data: RLE decoding, the readers, the transform, the pipeline."""
import json
import os
import tarfile

import ml_collections
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from efficientsam_jax import data
from efficientsam_jax.data import demo_sa1b, segmentation
from efficientsam_jax.data import masks as mask_ops
from efficientsam_jax.errors import UserError

SIZE = 64


def _write_pair(directory, index, masks, image=None):
  image = np.full((SIZE, SIZE, 3), 100, np.uint8) if image is None else image
  record = demo_sa1b.annotation_record(index, f"sa_{index}.jpg", masks,
                                       np.random.default_rng(0))
  with open(os.path.join(directory, f"sa_{index}.jpg"), "wb") as f:
    f.write(segmentation.encode_jpeg(image))
  with open(os.path.join(directory, f"sa_{index}.json"), "w") as f:
    json.dump(record, f)


def _square(x0, y0, x1, y1):
  mask = np.zeros((SIZE, SIZE), bool)
  mask[y0:y1, x0:x1] = True
  return mask


def test_rle_and_polygons_decode_like_pycocotools():
  for seed in range(3):
    image, masks = demo_sa1b.demo_sample(seed, 0, SIZE)
    for mask in masks:
      rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
      compressed = {"size": rle["size"], "counts": rle["counts"].decode()}  # as in the JSON
      np.testing.assert_array_equal(mask_ops.decode_mask(compressed, SIZE, SIZE), mask)
  # Polygons (COCO) and uncompressed RLE go through pycocotools' own conversion.
  polygon = [[10.0, 10.0, 40.0, 10.0, 40.0, 30.0, 10.0, 30.0]]
  expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, SIZE, SIZE)))
  np.testing.assert_array_equal(mask_ops.decode_mask(polygon, SIZE, SIZE), expected > 0)
  assert abs(int(expected.sum()) - 31 * 21) < 60
  counts = [SIZE * 5, SIZE * 3, SIZE * (SIZE - 8)]  # column-major runs: columns 5..7 set
  np.testing.assert_array_equal(
      mask_ops.decode_mask({"size": [SIZE, SIZE], "counts": counts}, SIZE, SIZE),
      _square(5, 0, 8, SIZE))


def test_demo_shapes_are_few_large_and_do_not_overlap():
  # The finetuning demo's difficulty rests on these: at 96 px a ViT sees 6 x 6 tokens, so a
  # mask must cover several of them (an SA-1B mask covers hundreds of 64 x 64 at 1024 px).
  counts, areas = [], []
  for index in range(30):
    image, masks = demo_sa1b.demo_sample(0, index, 96, "plain")  # the demo's style
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert len(masks) <= demo_sa1b.MAX_SHAPES
    assert np.sum(masks, axis=0).max(initial=0) <= 1  # visible parts are disjoint
    counts.append(len(masks))
    areas += [m.mean() for m in masks]
  assert min(areas) >= demo_sa1b.MIN_AREA_FRACTION
  assert np.mean(counts) >= 2.0
  assert 0.08 <= np.median(areas) <= 0.2, np.median(areas)  # 3-7 of the 36 tokens


def test_bilinear_resize_matches_the_torch_matrices():
  from efficientsam_jax.models import resize
  image = np.random.default_rng(0).uniform(0, 255, (37, 53, 3)).astype(np.float32)
  expected = np.einsum("oh,hwc,pw->opc", resize.interpolation_matrix(37, 24, "linear"), image,
                       resize.interpolation_matrix(53, 40, "linear"))
  np.testing.assert_allclose(segmentation.bilinear_resize(image, 24, 40), expected, atol=1e-3)


@pytest.fixture(scope="module")
def sa1b_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("sa1b")
  # Image 0: one mask over 90% of the image (dropped) and 5 small ones.
  _write_pair(root, 0, [_square(0, 0, SIZE, 61)] + [_square(8 * i, 0, 8 * i + 8, 16)
                                                    for i in range(5)])
  _write_pair(root, 1, [_square(10, 10, 30, 40)])
  with open(root / "sa_2.jpg", "wb") as f:
    f.write(b"not a jpeg")  # corrupt image, valid json
  with open(root / "sa_2.json", "w") as f:
    json.dump({"image": {}, "annotations": []}, f)
  _write_pair(root, 3, [_square(1, 1, 9, 9)])
  with open(root / "sa_3.json", "w") as f:
    f.write("{broken")  # corrupt annotations
  return str(root)


def _example(source, index, max_masks=3, seed=0):
  return segmentation.segmentation_example(
      source[index], np.random.default_rng(seed), image_size=32, mask_size=8,
      max_masks=max_masks)


def test_sa1b_directory_drops_large_masks_samples_k_and_flags_corrupt_files(sa1b_dir):
  source = segmentation.SA1BSource(sa1b_dir)
  assert len(source) == 4
  first = _example(source, 0)
  assert first["valid"] == 1 and first["mask_valid"].tolist() == [1, 1, 1]
  assert first["image"].shape == (32, 32, 3) and first["masks"].shape == (3, 8, 8)
  # Never the 90%+ mask: every sampled box is one of the small squares (in 32-px input).
  assert (first["boxes"][:, 3] <= 16 * 32 / SIZE).all()
  drawn = {tuple(_example(source, 0, seed=s)["boxes"][:, 0]) for s in range(8)}
  assert len(drawn) > 1  # K of 5 drawn at random
  all_five = _example(source, 0, max_masks=8)
  assert all_five["mask_valid"].tolist() == [1] * 5 + [0] * 3
  second = _example(source, 1)
  assert second["mask_valid"].tolist() == [1, 0, 0]
  np.testing.assert_allclose(second["boxes"][0], np.array([10, 10, 29, 39]) * 32 / SIZE)
  for corrupt in (2, 3):
    bad = _example(source, corrupt)
    assert bad["valid"] == 0 and bad["mask_valid"].sum() == 0


def test_sa1b_tar_shards_read_like_the_directory(sa1b_dir, tmp_path):
  shard = tmp_path / "sa_000000.tar"
  with tarfile.open(shard, "w") as tar:
    for name in sorted(os.listdir(sa1b_dir)):
      tar.add(os.path.join(sa1b_dir, name), arcname=name)
  from_tar, from_dir = segmentation.SA1BSource(str(shard)), segmentation.SA1BSource(sa1b_dir)
  assert len(from_tar) == len(from_dir) == 4
  for i in range(4):
    assert from_tar[i] == from_dir[i]
  os.makedirs(tmp_path / "nested")
  os.rename(shard, tmp_path / "nested" / "sa_000000.tar")
  assert len(segmentation.SA1BSource(f"{tmp_path / 'nested'},{sa1b_dir}")) == 8
  with pytest.raises(UserError):
    segmentation.SA1BSource(str(tmp_path / "missing"))


def test_coco_source_with_polygons(tmp_path):
  image = np.zeros((SIZE, SIZE, 3), np.uint8)
  (tmp_path / "img").mkdir()
  with open(tmp_path / "img" / "a.jpg", "wb") as f:
    f.write(segmentation.encode_jpeg(image))
  coco = {"images": [{"id": 7, "file_name": "a.jpg", "height": SIZE, "width": SIZE}],
          "annotations": [{"id": 1, "image_id": 7, "iscrowd": 0, "category_id": 1,
                           "segmentation": [[8, 8, 40, 8, 40, 24, 8, 24]], "bbox": [8, 8, 32, 16],
                           "area": 512}],
          "categories": [{"id": 1, "name": "thing"}]}
  with open(tmp_path / "coco.json", "w") as f:
    json.dump(coco, f)
  source = segmentation.CocoSource(str(tmp_path / "img"), str(tmp_path / "coco.json"))
  example = _example(source, 0)
  assert example["valid"] == 1 and example["mask_valid"].tolist() == [1, 0, 0]
  assert example["masks"][0].sum() > 0


def test_pipeline_gives_static_batches_and_resumes_from_its_state(sa1b_dir):
  config = ml_collections.ConfigDict(dict(seed=0, batch_size=4, data=dict(
      source="sa1b", path=sa1b_dir, annotations="", image_size=32, mask_size=8, max_masks=3,
      max_area_fraction=0.9, worker_count=0, read_threads=1, prefetch_buffer_size=1)))
  it = data.make_segmentation_iterator(config, process_index=0, process_count=1)
  batch = next(it)
  assert batch["image"].shape == (4, 32, 32, 3) and batch["masks"].shape == (4, 3, 8, 8)
  assert batch["valid"].sum() == 2  # the two corrupt records are flagged, not raised
  state = it.get_state()
  expected = next(it)
  again = data.make_segmentation_iterator(config, process_index=0, process_count=1)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["boxes"], expected["boxes"])
  # Two hosts read the two halves of the same global batch.
  halves = [next(data.make_segmentation_iterator(config, process_index=p, process_count=2))
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["boxes"] for h in halves]), batch["boxes"])


def test_low_res_mask_is_the_half_coverage_of_whole_pixel_bins():
  """Against an explicit sum over each low-res pixel's bin (source pixels whose centres fall
  in it), for bool, C- and column-major (pycocotools') masks and their compressed RLE,
  shrinking and enlarging; (11, 46, 2) has bins of 115-138 pixels (a count over 127 once
  overflowed the byte sums' comparison)."""
  rng = np.random.default_rng(0)
  for h, w, size, density in ((150, 225, 16, 0.5), (64, 64, 8, 0.3), (37, 53, 16, 0.7),
                              (8, 12, 16, 0.5), (11, 46, 2, 0.95), (11, 46, 2, 1.0)):
    mask = rng.uniform(size=(h, w)) < density
    rows = ((np.arange(h) + 0.5) * size / h).astype(int)
    cols = ((np.arange(w) + 0.5) * size / w).astype(int)
    expected = np.zeros((size, size), np.uint8)
    for i in range(size):
      for j in range(size):
        cell = mask[rows == i][:, cols == j]
        if cell.size:
          expected[i, j] = 2 * cell.sum() > cell.size
        else:  # enlarging: the nearest source pixel
          expected[i, j] = mask[min(int((i + 0.5) * h / size), h - 1),
                                min(int((j + 0.5) * w / size), w - 1)]
    column_major = np.asfortranarray(mask.astype(np.uint8))
    for variant in (mask, mask.astype(np.uint8), column_major):
      np.testing.assert_array_equal(mask_ops.low_res_mask(variant, size), expected)
    rle = mask_utils.encode(column_major)
    np.testing.assert_array_equal(mask_ops.low_res_mask_from_rle(rle, size), expected)


def test_low_res_masks_from_runs_equal_the_decoded_masks_at_sa1b_size():
  """The transform's run-based low-res masks (no full-size decode) against low_res_mask of the
  decoded mask: blobs of many sizes, and masks whose runs span whole columns, an empty and a
  full one, 1500 x 2250 -> 256 (each bin about 52 pixels)."""
  from efficientsam_jax.bench import data as bench_data
  rng = np.random.default_rng(2)
  h, w = 1500, 2250
  anns = bench_data.random_masks(rng, h, w, 12)
  rles = [mask_ops.to_rle(a["segmentation"], h, w) for a in anns]
  columns = np.zeros((h, w), np.uint8)
  columns[:, 300:1700] = 1
  columns[:700, 1700] = 1  # a run from whole columns into a partial one
  columns[900:, 299] = 1
  for mask in (columns, np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8)):
    rles.append(mask_utils.encode(np.asfortranarray(mask)))
  for rle in rles:
    np.testing.assert_array_equal(mask_ops.low_res_mask_from_rle(rle, 256),
                                  mask_ops.low_res_mask(mask_utils.decode(rle), 256))


def test_boxes_from_runs_equal_the_decoded_masks_boxes():
  rng = np.random.default_rng(1)
  for _ in range(20):
    mask = np.zeros((90, 130), np.uint8)
    y0, x0 = rng.integers(0, 80), rng.integers(0, 120)
    mask[y0:y0 + rng.integers(1, 10), x0:x0 + rng.integers(1, 10)] = 1
    mask[rng.integers(0, 90), rng.integers(0, 130)] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    np.testing.assert_array_equal(mask_ops.rle_box(rle), mask_ops.tight_box(mask > 0))
