"""The prompt reader refuses what a prompt cannot mean, naming the query, and a fuzz test of the
prompts JSON reader: random structures are either refused with a UserError or read exactly
as an independent reference parser reads them (never another exception, never another
meaning)."""
import json
import math
import random

import numpy as np
import pytest

from efficientsam_jax.errors import UserError
from efficientsam_jax.inference import files
from efficientsam_jax.inference.queries import Queries


@pytest.mark.parametrize("queries,message", [
    ([{"box": [10, 10, 5, 40]}], "query 0: box [10, 10, 5, 40] has x2 < x1"),
    ([{"box": [1, 2, 3, 4]}, {"box": [10, 50, 30, 20]}], "query 1: box [10, 50, 30, 20] has"),
    ([{"points": [[1, 2]], "labels": [1]}, {"box": [1, 2, 3, 4], "label": 1}],
     "query 1: unknown key 'label'"),
    ([{"points": [[True, 2]], "labels": [1]}], "query 0: coordinates and labels must be numbers"),
    ([{"points": [["1", 2]], "labels": [1]}], "query 0: coordinates and labels must be numbers"),
    ([{"points": [[1, 2]], "labels": [None]}], "query 0: coordinates and labels must be numbers"),
    ([{"points": [[1, 2], [3]], "labels": [1, 1]}], "query 0: coordinates and labels must be"),
    ([{"box": [1, 2, 10**400, 4]}], "query 0: coordinates and labels must be finite numbers"),
    ([{"box": [1, 2, 1e300, 4]}], "query 0: coordinates must be finite"),  # not in float32
    ([{"points": [[float("nan"), 2]], "labels": [1]}], "query 0: coordinates must be finite"),
    ([{"box": [0, 0, 8, 8], "mask_input": [[True] * 4] * 4}],
     "query 0: 'mask_input' values must be numbers"),
    ([{"box": [0, 0, 8, 8], "mask_input": [[1e300] * 4] * 4}],
     "query 0: 'mask_input' must hold finite numbers"),
])
def test_prompts_that_mean_nothing_are_refused_naming_the_query(queries, message):
  with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
    Queries.from_json(queries)


@pytest.mark.parametrize("query,max_points,message", [
    ({"points": [[100, 50], [-3, 20]], "labels": [1, 0]}, None,
     "query 1: point [-3, 20] lies outside the 200x100 image"),
    ({"points": [[100, 101]], "labels": [1]}, None, "point [100, 101] lies outside"),
    ({"box": [300, 10, 400, 50]}, None, "query 1: box [300, 10, 400, 50] lies outside"),
    ({"box": [-50, -40, -1, 60]}, None, "box [-50, -40, -1, 60] lies outside"),
    ({"points": [[1, 1]] * 5, "labels": [1] * 5, "box": [0, 0, 9, 9]}, 6,
     "query 1: 7 points and box corners; this model reads at most 6"),
])
def test_prompts_that_do_not_fit_the_image_or_the_model_are_refused(query, max_points, message):
  queries = Queries.from_json([{"box": [0, 0, 200, 100]}, query])
  with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
    queries.check_fits(100, 200, max_points)


def test_prompts_on_the_image_pass_including_boxes_that_reach_past_it():
  queries = Queries.from_json([{"points": [[0, 0], [200, 100]], "labels": [1, 0]},
                               {"box": [-20, -10, 250, 130]}, {"box": [5, 5, 5, 5]}])
  queries.check_fits(100, 200, max_points=6)
  padded = Queries.from_arrays(points=np.array([[[5, 5], [-1, -1]]]), labels=[[1, -1]])
  padded.check_fits(100, 200, max_points=1)  # padding is no point


def test_a_prompts_file_with_a_repeated_key_or_deep_nesting_is_one_error(tmp_path):
  path = tmp_path / "prompts.json"
  path.write_text('[{"box": [1, 2, 3, 4], "box": [5, 6, 7, 8]}]')
  with pytest.raises(UserError, match="key 'box' appears twice"):
    files.read_prompts(str(path))
  path.write_text("[" * 100_000 + "]" * 100_000)
  with pytest.raises(UserError, match="nested too deeply"):
    files.read_prompts(str(path))
  with pytest.raises(UserError, match="is a directory"):
    files.read_prompts(str(tmp_path))


# ----------------------------------------------------------------------------------------
# Fuzz test

KEYS = ("points", "labels", "box", "pts", "label", "")
NUMBERS = (0, 1, 2, 3, -1, 7, 0.5, 1e300, -1e300, 10**400, float("nan"), float("inf"), 640.0,
           -0.0, 123456789)
OTHERS = (True, False, None, "", "1", "box", [], {})


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float32(value):
  """value as the model would get it, or None when it is no finite float32."""
  try:
    with np.errstate(over="ignore"):
      number = np.float32(float(value))
  except OverflowError:
    return None
  return float(number) if math.isfinite(number) else None


def reference(parsed):
  """An independent reading of a prompts list: [(points, labels)] or None (must be refused)."""
  if not isinstance(parsed, list) or not parsed:
    return None
  out = []
  for query in parsed:
    if not isinstance(query, dict) or not ({"points", "labels", "box"} & set(query)):
      return None
    if set(query) - {"points", "labels", "box"}:
      return None
    points, labels = [], []
    if "points" in query or "labels" in query:
      given, names = query.get("points"), query.get("labels")
      if not (isinstance(given, list) and given and isinstance(names, list)
              and len(names) == len(given)):
        return None
      for point, label in zip(given, names):
        if not (isinstance(point, list) and len(point) == 2 and all(map(_is_number, point))
                and _is_number(label) and label in (-1, 0, 1, 2, 3)):
          return None
        points.append(point)
        labels.append(float(label))
    if "box" in query:
      box = query["box"]
      if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        return None
      points += [box[:2], box[2:]]
      labels += [2.0, 3.0]
    points = [[_as_float32(v) for v in point] for point in points]
    if any(v is None for point in points for v in point):
      return None
    corners = {label: [p for p, l in zip(points, labels) if l == label] for label in (2.0, 3.0)}
    if len(corners[2.0]) == 1 and len(corners[3.0]) == 1:
      (x1, y1), (x2, y2) = corners[2.0][0], corners[3.0][0]
      if x2 < x1 or y2 < y1:
        return None
    out.append((points, labels))
  return out


def _random_value(rng: random.Random, depth: int):
  kind = rng.random()
  if depth > 3 or kind < 0.45:
    return rng.choice(NUMBERS) if rng.random() < 0.7 else rng.choice(OTHERS)
  if kind < 0.8:
    return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
  return {rng.choice(KEYS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _valid_query(rng: random.Random) -> dict:
  n = rng.randint(1, 3)
  query = {}
  if rng.random() < 0.7:
    query["points"] = [[rng.uniform(0, 640), rng.uniform(0, 480)] for _ in range(n)]
    query["labels"] = [rng.choice([0, 1]) for _ in range(n)]
  if rng.random() < 0.6 or not query:
    x, y = rng.uniform(0, 300), rng.uniform(0, 200)
    query["box"] = [x, y, x + rng.uniform(0, 300), y + rng.uniform(0, 200)]
  return query


def _mutate(rng: random.Random, queries: list):
  """One random change to a valid prompts list: a value, a key, a length, a nesting."""
  targets = [q for q in queries if isinstance(q, dict) and q]
  if not targets:
    return queries + [_random_value(rng, 1)]
  target = rng.choice(targets)
  key = rng.choice(sorted(target))
  roll = rng.random()
  if roll < 0.3:
    del target[key]
  elif roll < 0.5:
    target[rng.choice(KEYS)] = _random_value(rng, 1)
  elif roll < 0.8 and isinstance(target[key], list) and target[key]:
    i = rng.randrange(len(target[key]))
    item = target[key][i]
    if isinstance(item, list) and item and rng.random() < 0.7:
      item[rng.randrange(len(item))] = _random_value(rng, 2)
    else:
      target[key][i] = _random_value(rng, 2)
  elif roll < 0.9 and isinstance(target[key], list):
    target[key] = target[key][:-1] if rng.random() < 0.5 else target[key] + [rng.choice(NUMBERS)]
  else:
    queries.append(_random_value(rng, 1))
  return queries


def test_fuzz_prompts_json_reader(tmp_path):
  rng = random.Random(20)
  path = tmp_path / "prompts.json"
  outcomes = {"read": 0, "refused": 0}
  for case in range(1500):
    if case % 4 == 0:
      parsed = _random_value(rng, 0)
    else:  # valid prompts, untouched or with 1 to 3 random changes
      parsed = [_valid_query(rng) for _ in range(rng.randint(1, 3))]
      for _ in range(0 if case % 4 == 1 else rng.randint(1, 3)):
        parsed = _mutate(rng, parsed)
    path.write_text(json.dumps(parsed))
    expected = reference(json.loads(path.read_text()))
    try:
      got = files.read_prompts(str(path))
    except UserError as e:
      assert expected is None, (parsed, str(e))
      assert "\n" not in str(e)
      outcomes["refused"] += 1
      continue
    assert expected is not None, parsed  # read, so it must mean something
    assert len(got) == len(expected)
    for (points, labels), got_points, got_labels in zip(expected, got.points, got.labels):
      np.testing.assert_array_equal(got_points, np.asarray(points, np.float32).reshape(-1, 2))
      np.testing.assert_array_equal(got_labels, np.asarray(labels, np.float32))
    outcomes["read"] += 1
  # Both sides of the reader were exercised, not just refusals.
  assert outcomes["read"] > 300 and outcomes["refused"] > 300, outcomes
