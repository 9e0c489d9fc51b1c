"""`evaluate` against independent computations: SAM's click protocol against RITM's clicker
(cv2's distance transform), mIoU and mask AP of hand-built masks and answers by hand and by
pycocotools / the LVIS API directly, COCO and LVIS versions of the same data, a fuzzed reader,
and the command line with a tiny real model on one and on two processes."""
import copy
import itertools
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import require_module
from efficientsam_jax.data import segmentation
from efficientsam_jax.errors import UserError
from efficientsam_jax.evaluation import annotations, clicks, detections, protocols, runner
from sami_runs import REPO, env

H, W = 24, 32
# Two objects drawn by hand: a rectangle and an L (polygons with pixel-corner vertices cover
# exactly the half-open pixel ranges, as pycocotools rasterises them).
RECT = [6, 4, 20, 4, 20, 12, 6, 12]  # rows 4..11, cols 6..19: 112 px, bbox [6, 4, 14, 8]
ELL = [2, 14, 10, 14, 10, 18, 26, 18, 26, 22, 2, 22]  # 64 + 64 = 128 px, bbox [2, 14, 24, 8]


def _mask(polygon, h=H, w=W):
  return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))) > 0


def _rle(mask):
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


class FakeModel:
  """A predictor with known answers: a box prompt gets the filled box (x0 <= col < x1,
  y0 <= row < y1), clicks get (2r+1)-squares around positive clicks minus those around
  negative ones. Candidate 2 has the highest predicted IoU; its low-res logits carry the
  answer's index, which `upscale` turns back into the answer."""

  def __init__(self, supports_mask_input=False, radius=3):
    self.supports_mask_input, self.radius = supports_mask_input, radius
    self.answers, self.calls = [], []

  def embed_images(self, images):
    return [image.shape[:2] for image in images]

  def use_embedding(self, hw):
    self.hw = hw

  def answer(self, points, labels):
    out = np.zeros(self.hw, bool)
    rows, cols = np.arange(self.hw[0])[:, None], np.arange(self.hw[1])[None]
    if 2 in labels:
      (x0, y0), (x1, y1) = points[list(labels).index(2)], points[list(labels).index(3)]
      return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    for value in (1, 0):
      for (x, y), label in zip(points, labels):
        if label == value:
          out[max(0, int(y) - self.radius):int(y) + self.radius + 1,
              max(0, int(x) - self.radius):int(x) + self.radius + 1] = bool(value)
    return out

  def predict_arrays(self, points, labels, full_resolution=True, mask_input=None):
    self.calls.append((np.array(points), np.array(labels),
                       None if mask_input is None else np.array(mask_input)))
    start = len(self.answers)
    self.answers += [self.answer(p, l) for p, l in zip(points, labels)]
    q = len(points)
    low = np.full((q, 3, 4, 4), -1.0, np.float32)
    low[:, 2] = (start + np.arange(q))[:, None, None]
    return {"low_res_logits": low, "iou": np.tile([[0.1, 0.2, 0.9]], (q, 1))}

  def upscale(self, low):
    return np.stack([[self.answers[int(l[0, 0, 0])] * 2.0 - 1.0] for l in low])


# --- The click protocol -------------------------------------------------------------------

def ritm_click(gt, pred, not_clicked):
  """RITM's evaluation clicker (isegm/inference/clicker.py), written again from its
  description: cv2's exact L2 distance transform of the padded error regions."""
  cv2 = require_module("cv2")
  fn = np.pad(gt & ~pred, 1).astype(np.uint8)
  fp = np.pad(~gt & pred, 1).astype(np.uint8)
  fn_dt = cv2.distanceTransform(fn, cv2.DIST_L2, 0)[1:-1, 1:-1] * not_clicked
  fp_dt = cv2.distanceTransform(fp, cv2.DIST_L2, 0)[1:-1, 1:-1] * not_clicked
  positive = fn_dt.max() > fp_dt.max()
  ys, xs = np.where(fn_dt == fn_dt.max()) if positive else np.where(fp_dt == fp_dt.max())
  return int(xs[0]), int(ys[0]), int(positive)


def _fixed_masks():
  ring = np.zeros((20, 20), bool)
  ring[3:17, 3:17] = True
  ring[7:13, 7:13] = False
  blobs = np.zeros((18, 25), bool)
  blobs[2:8, 2:8] = blobs[9:16, 14:23] = True
  line = np.zeros((9, 30), bool)
  line[4, 1:29] = True
  full = np.ones((7, 11), bool)
  return [_mask(RECT), _mask(ELL), ring, blobs, line, full]


def test_clicks_are_ritms_on_fixed_masks_and_predictions():
  rng = np.random.default_rng(0)
  cases = 0
  for gt in _fixed_masks() + [rng.random((15, 21)) < 0.5 for _ in range(4)]:
    for answer in ("empty", "shifted", "spilled", "exact", "random"):
      pred, clicked = np.zeros_like(gt), []
      not_clicked = np.ones(gt.shape, np.float32)
      for _ in range(4):
        got = clicks.next_click(gt, pred, clicked)
        assert got == ritm_click(gt, pred, not_clicked), (cases, answer)
        clicked.append((got[1], got[0]))
        not_clicked[got[1], got[0]] = 0
        pred = {"empty": np.zeros_like(gt), "shifted": np.roll(gt, 2, axis=1),
                "spilled": gt | np.roll(gt, 3, axis=0), "exact": gt,
                "random": rng.random(gt.shape) < 0.3}[answer]
        cases += 1
  assert cases == 10 * 5 * 4


def test_click_corner_cases_by_hand():
  rect = _mask(RECT)
  # Rows 7 and 8 are 4 px from the top and bottom; the first such pixel 4 px from both sides
  # is column 9 (row-major order).
  assert clicks.next_click(rect, np.zeros_like(rect)) == (9, 7, 1)
  # The same pixel is never clicked twice: the next one at distance 4 in row order.
  assert clicks.next_click(rect, np.zeros_like(rect), [(7, 9)]) == (10, 7, 1)
  # Nothing wrong: negative at (0, 0).
  assert clicks.next_click(rect, rect) == (0, 0, 0)
  # A tie between a missed and a spilled region of the same size: negative.
  gt, pred = np.zeros((5, 12), bool), np.zeros((5, 12), bool)
  gt[1:4, 1:4] = True
  pred[1:4, 7:10] = True
  assert clicks.next_click(gt, pred) == (8, 2, 0)


def test_clicks_feed_back_the_previous_logits_only_where_the_model_takes_them():
  masks = [_mask(RECT), _mask(ELL)]
  for takes_masks in (False, True):
    model = FakeModel(supports_mask_input=takes_masks)
    model.use_embedding((H, W))
    ious = protocols.click_ious(model, masks, 3)
    assert len(model.calls) == 3
    assert model.calls[0][2] is None
    for k in (1, 2):
      if takes_masks:  # the best candidate's low-res logits of the previous click
        np.testing.assert_array_equal(model.calls[k][2][:, 0, 0],
                                      len(masks) * (k - 1) + np.arange(len(masks)))
      else:
        assert model.calls[k][2] is None
    # The clicks and IoUs of the loop, computed again with RITM's clicker.
    for i, gt in enumerate(masks):
      pred, not_clicked = np.zeros_like(gt), np.ones(gt.shape, np.float32)
      for k in range(3):
        x, y, label = ritm_click(gt, pred, not_clicked)
        not_clicked[y, x] = 0
        np.testing.assert_array_equal(model.calls[k][0][i, k], [x, y])
        assert model.calls[k][1][i, k] == label
        pred = model.answers[len(masks) * k + i]
        assert ious[i, k] == pytest.approx(np.sum(pred & gt) / np.sum(pred | gt))


# --- mIoU and AP by hand, COCO and LVIS ----------------------------------------------------

def _write_image(path, h=H, w=W):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(segmentation.encode_jpeg(np.zeros((h, w, 3), np.uint8)))


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
  """The same two-object image as a COCO file (RLE) and an LVIS file (polygons, coco_url;
  the image under val2017/), with hand-made detections."""
  root = tmp_path_factory.mktemp("hand")
  _write_image(str(root / "coco" / "a.jpg"))
  _write_image(str(root / "lvis" / "val2017" / "000000000007.jpg"))
  anns = []
  for i, polygon in enumerate((RECT, ELL)):
    mask = _mask(polygon)
    anns.append({"id": i + 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
                 "area": float(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(
                     mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))],
                 "segmentation": _rle(mask)})
  coco = {"images": [{"id": 7, "file_name": "a.jpg", "height": H, "width": W}],
          "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
  lvis = {"images": [{"id": 7, "height": H, "width": W, "neg_category_ids": [],
                      "not_exhaustive_category_ids": [],
                      "coco_url": "http://images.cocodataset.org/val2017/000000000007.jpg"}],
          "annotations": [dict(a, segmentation=[p]) for a, p in zip(
              copy.deepcopy(anns), (RECT, ELL))],
          "categories": [{"id": 1, "name": "thing", "frequency": "f"}]}
  for a in lvis["annotations"]:
    del a["iscrowd"]
  dets = [{"image_id": 7, "category_id": 1, "bbox": anns[0]["bbox"], "score": 0.9},
          {"image_id": 7, "category_id": 1, "bbox": [26.0, 0.0, 5.0, 3.0], "score": 0.8},
          {"image_id": 7, "category_id": 1, "bbox": anns[1]["bbox"], "score": 0.7}]
  paths = {}
  for name, value in (("coco", coco), ("lvis", lvis), ("dets", dets)):
    paths[name] = str(root / f"{name}.json")
    with open(paths[name], "w") as f:
      json.dump(value, f)
  return root, paths


# Box fill of the L: 192 px, 128 of them the L. Extremes boxes: 7 x 13 of the 8 x 14
# rectangle; the L's extremes box holds 56 + 45 = 101 of its pixels, union 128 + 161 - 101.
BOX_MIOU = (1 + 128 / 192) / 2
MASK_BOX_MIOU = (91 / 112 + 101 / 188) / 2
# First clicks (9, 7) and (5, 17), the 7 x 7 squares lie inside the objects.
POINT1_MIOU = (49 / 112 + 49 / 128) / 2
# AP: d1 matches the rectangle (IoU 1), d2 matches nothing, d3 the L with IoU 2/3, so at IoU
# thresholds 0.5..0.65 recall reaches 1 at precision 2/3, above them it stops at 1/2.
AP50 = (51 + 50 * 2 / 3) / 101
AP75 = 51 / 101
AP = (4 * AP50 + 6 * AP75) / 10


@pytest.mark.parametrize("kind", ["coco", "lvis"])
def test_miou_and_ap_of_hand_built_answers(hand_built, kind):
  if kind == "lvis":
    require_module("lvis")
  root, paths = hand_built
  gt = annotations.load(paths[kind])
  assert gt.kind == kind
  result, results = runner.evaluate(FakeModel(), gt, str(root / kind),
                                    ["box", "point1"], paths["dets"], show_progress=False)
  assert result["box"] == {"miou": pytest.approx(BOX_MIOU), "count": 2,
                           "skipped_annotations": 0}
  assert result["point1"]["miou"] == pytest.approx(POINT1_MIOU)
  ap = result["detections"]
  assert (ap["ap"], ap["ap50"], ap["ap75"]) == pytest.approx((AP, AP50, AP75))
  assert ap["ap_small"] == pytest.approx(AP) and ap["ap_large"] == -1
  if kind == "lvis":
    assert ap["ap_f"] == pytest.approx(AP) and ap["ap_r"] == ap["ap_c"] == -1
  assert [r["score"] for r in results] == [0.9, 0.8, 0.7]
  masked, _ = runner.evaluate(FakeModel(), gt, str(root / kind), ["box"], box_source="mask",
                              show_progress=False)
  assert masked["miou"] == pytest.approx(MASK_BOX_MIOU)


def test_ap_equals_pycocotools_on_the_same_results(hand_built):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  root, paths = hand_built
  result, results = runner.evaluate(FakeModel(), annotations.load(paths["coco"]),
                                    str(root / "coco"), [], paths["dets"], show_progress=False)
  truth = COCO(paths["coco"])
  evaluator = COCOeval(truth, truth.loadRes(results), "segm")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  assert result["ap"] == evaluator.stats[0] and result["ap_small"] == evaluator.stats[3]
  assert result["count"] == 3 and result["skipped_detections"] == 0


# --- The readers, fuzzed -------------------------------------------------------------------

BREAKING_SEGMENTATIONS = [
    None, 5, "abc", [], [[1, 2]], [[1, 2, 3, 4, 5]], [[1, 2, float("nan"), 4, 5, 6]],
    [[1, 2, 3, 4, True, 6]], [["a", 2, 3, 4, 5, 6]], [[1e9, 2, 3, 4, 5, 6]],
    {"size": [H + 1, W], "counts": "PPYo0"}, {"size": [H, W], "counts": "!!"},
    {"size": [H, W], "counts": ""}, {"size": [H, W], "counts": [5, 3]},
    {"size": [H, W], "counts": [-5, H * W + 5]}, {"size": [H, W], "counts": [1.5, 2]},
    {"size": [H, W]}, {"counts": "abc"}, {"size": [H, W], "counts": [H * W]}]  # last: empty
BREAKING_BOXES = ["1,2,3,4", [1, 2, 3], [1, 2, -3, 4], [1, 2, float("inf"), 4], None]
FATAL = ["drop_images", "images_not_list", "image_without_id", "string_image_id",
         "duplicate_image", "image_without_file", "annotation_without_image_id",
         "annotation_not_dict", "top_level_list"]


def _fuzz_case(rng, breakages):
  """(file contents, expected (count, skipped, miou) or None when the file must be refused)."""
  masks = [_mask(p) for p in (RECT, ELL)] + [rng.random((H, W)) < 0.4 for _ in range(2)]
  images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
  anns, kept, skipped = [], [], 0
  for n in range(int(rng.integers(1, 9))):
    mask = masks[int(rng.integers(len(masks)))]
    image_id = int(rng.choice([1, 2, 3]))  # image 3's file is missing
    ann = {"id": n, "image_id": image_id, "category_id": 1,
           "bbox": [float(v) for v in mask_utils.toBbox(
               mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))]}
    form = int(rng.integers(3))  # the same mask as compressed RLE, polygon or plain RLE
    if form == 1 and mask is masks[0]:
      ann["segmentation"] = [RECT]
    elif form == 2:
      ann["segmentation"] = {"size": [H, W], "counts": [int(c) for c in _runs(mask)]}
    else:
      ann["segmentation"] = _rle(mask)
    what = rng.choice(["keep", "keep", "no_bbox", "segmentation", "segmentation", "bbox",
                       "iscrowd", "crowd", "unknown_image"])
    if what == "no_bbox":
      del ann["bbox"]
    elif what == "segmentation":
      ann["segmentation"] = copy.deepcopy(next(breakages))  # each of them, in turn
    elif what == "bbox":
      ann["bbox"] = BREAKING_BOXES[int(rng.integers(len(BREAKING_BOXES)))]
      if ann["bbox"] is None:
        ann["bbox"] = {"x": 1}
    elif what == "iscrowd":
      ann["iscrowd"] = rng.choice([2, "0", 0.5])
    elif what == "crowd":
      ann["iscrowd"] = 1
    elif what == "unknown_image":
      ann["image_id"] = 99
    anns.append(ann)
    if what in ("iscrowd", "unknown_image"):
      skipped += 1  # known when reading, whatever the image
    elif what != "crowd" and image_id != 3:
      if what in ("segmentation", "bbox"):
        skipped += 1
      else:
        kept.append(mask)
  data = {"images": images, "annotations": anns, "extra": {"anything": [1, 2]}}
  fatal = rng.random() < 0.3
  if fatal:
    mutation = FATAL[int(rng.integers(len(FATAL)))]
    if mutation == "drop_images":
      del data["images"]
    elif mutation == "images_not_list":
      data["images"] = {"1": images[0]}
    elif mutation == "image_without_id":
      del images[0]["id"]
    elif mutation == "string_image_id":
      images[1]["id"] = "2"
    elif mutation == "duplicate_image":
      images.append(dict(images[0]))
    elif mutation == "image_without_file":
      del images[2]["file_name"]
    elif mutation == "annotation_without_image_id":
      anns.append({"id": 100, "segmentation": _rle(masks[0])})
    elif mutation == "annotation_not_dict":
      anns.append([1, 2])
    else:
      data = [data]
    return data, None
  if not kept:
    return data, "nothing"
  # The box-filling model's IoU with each kept mask, from the mask's own bbox.
  ious = []
  for mask in kept:
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    ious.append(mask.sum() / box.sum())
  return data, (len(kept), skipped, float(np.mean(ious)))


def _runs(mask):
  flat = mask.T.reshape(-1).astype(np.int8)
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  runs = np.diff(bounds)
  return np.concatenate([[0], runs]) if flat[0] else runs


def test_fuzzed_files_are_refused_in_one_line_or_evaluated_exactly(tmp_path):
  for i in (1, 2):
    _write_image(str(tmp_path / f"{i}.jpg"))
  rng = np.random.default_rng(18)
  breakages = itertools.cycle(BREAKING_SEGMENTATIONS)
  outcomes = {"refused": 0, "evaluated": 0, "nothing": 0}
  for case in range(150):
    data, expected = _fuzz_case(rng, breakages)
    data = json.loads(json.dumps(data))  # what a JSON file can hold
    try:
      gt = annotations.parse(data, "fuzz.json")
      result, _ = runner.evaluate(FakeModel(), gt, str(tmp_path), ["box"], show_progress=False)
    except UserError as e:
      assert expected in (None, "nothing"), (case, e)
      assert "\n" not in str(e)
      outcomes["refused" if expected is None else "nothing"] += 1
      continue
    count, skipped, miou = expected
    assert (result["count"], result["skipped_annotations"]) == (count, skipped), case
    assert result["miou"] == pytest.approx(miou), case
    assert result["skipped_images"] == int(any(
        a["image_id"] == 3 and not a.get("iscrowd") for a in data["annotations"]))
    outcomes["evaluated"] += 1
  assert min(outcomes.values()) > 5, outcomes


# --- The command line, with a tiny real model ----------------------------------------------

@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
  """A tiny random EfficientSAM (64 px input, 1 encoder block) as a JAX checkpoint, 5
  generated held-out-style images with their COCO file and stand-in detections."""
  import jax
  from efficientsam_jax.data import demo_sa1b
  from efficientsam_jax.io import model_files
  from efficientsam_jax.models import registry
  root = tmp_path_factory.mktemp("demo_set")
  config = registry.config("efficientsam_vitt", image_size=64,
                           encoder_overrides=(("depth", 1),))
  model = registry.build(config)
  params = model.init(jax.random.key(0), *registry.family_of(config.name).init_args(config),
                      method=model.init_all)["params"]
  model_files.save_jax(str(root / "model"), model_files.LoadedModel(
      config, jax.tree.map(np.asarray, params)))
  demo_sa1b.write_split(str(root / "val"), 0, 100, 5, 64)
  coco = segmentation.sa1b_to_coco(str(root / "val"))
  paths = {"model": str(root / "model"), "images": str(root / "val"),
           "annotations": str(root / "instances.json"), "dets": str(root / "dets.json")}
  with open(paths["annotations"], "w") as f:
    json.dump(coco, f)
  with open(paths["dets"], "w") as f:
    json.dump(demo_sa1b.stand_in_detections(coco), f)
  return paths


def _evaluate(paths, *flags, processes=1, tmp_path=None):
  command = [sys.executable, "-m", "efficientsam_jax.evaluate",
             f"--checkpoint={paths['model']}", f"--images={paths['images']}",
             f"--annotations={paths['annotations']}", *flags]
  if processes == 1:
    return [subprocess.run(command, env=env(1), cwd=REPO, capture_output=True, text=True,
                           timeout=600)]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(command + [f"--process_id={i}", f"--num_processes={processes}"],
                            env=env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  outs = [p.communicate(timeout=600) for p in procs]
  return [subprocess.CompletedProcess(p.args, p.returncode, o, e)
          for p, (o, e) in zip(procs, outs)]


def test_one_run_prints_box_clicks_and_ap_and_two_processes_agree(demo_set, tmp_path):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  flags = ("--prompt=box,point1,point3", f"--detections={demo_set['dets']}")
  single, = _evaluate(demo_set, *flags, f"--results={tmp_path / 'masks.json'}",
                      f"--output={tmp_path / 'single.json'}")
  assert single.returncode == 0, single.stderr[-3000:]
  result = json.loads(single.stdout.strip().splitlines()[-1])
  assert json.loads((tmp_path / "single.json").read_text()) == result
  with open(demo_set["annotations"]) as f:
    count = len(json.load(f)["annotations"])
  assert result["images"] == 5 and result["images_per_sec"] > 0
  for name in ("box", "point1", "point3"):
    assert result[name]["count"] == count and 0 <= result[name]["miou"] <= 1
  assert len(result["point3"]["miou_per_click"]) == 3
  assert result["point3"]["miou_per_click"][0] == result["point1"]["miou"]
  assert "images/s" in single.stderr and "ETA" in single.stderr
  # The written RLE results score to the printed AP with pycocotools directly.
  truth = COCO(demo_set["annotations"])
  evaluator = COCOeval(truth, truth.loadRes(str(tmp_path / "masks.json")), "segm")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  assert result["detections"]["ap"] == evaluator.stats[0]
  assert result["detections"]["count"] == count
  # Two processes share the images; process 0 gathers: the same numbers (box and AP; the
  # clicks run through the same per-image path).
  pair = _evaluate(demo_set, "--prompt=box", f"--detections={demo_set['dets']}",
                   processes=2)
  for proc in pair:
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert not [l for l in pair[1].stdout.splitlines() if l.startswith("{")]  # process 0 prints
  two = json.loads(pair[0].stdout.strip().splitlines()[-1])
  assert two["box"] == result["box"] and two["detections"] == result["detections"]


@pytest.mark.parametrize("case", ["output_is_input", "no_file_name", "bad_prompt"])
def test_mistakes_are_one_line_exit_2_and_inputs_stay(demo_set, tmp_path, case):
  paths = dict(demo_set)
  flags = []
  if case == "output_is_input":
    flags = [f"--output={paths['annotations']}"]
  elif case == "no_file_name":
    with open(paths["annotations"]) as f:
      coco = json.load(f)
    del coco["images"][1]["file_name"]
    paths["annotations"] = str(tmp_path / "broken.json")
    with open(paths["annotations"], "w") as f:
      json.dump(coco, f)
  else:
    flags = ["--prompt=box,point0"]
  before = open(paths["annotations"], "rb").read()
  proc, = _evaluate(paths, *flags)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("evaluate: error: ")
  assert {"output_is_input": "is also --annotations", "no_file_name": "images[1]",
          "bad_prompt": "point0"}[case] in last
  assert open(paths["annotations"], "rb").read() == before
