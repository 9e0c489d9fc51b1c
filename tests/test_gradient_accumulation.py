"""config.microbatches: the shared loop's step computes its batch in parts (gradient
accumulation), checked against the same loss computed part by part by hand on the 8-device
mesh, and the parts are taken without moving an example between devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientsam_jax.train import loop, sharding

BATCH, FEATURES = 32, 5


def toy_loss(params, teacher, batch, rng):
  """A linear model's squared error over the valid rows, with noise drawn from `rng` (so the
  key each part gets matters), and one metric that is a mean."""
  del teacher
  noise = jax.random.normal(rng, batch["y"].shape)
  pred = batch["x"] @ params["w"] + params["b"]
  valid = batch["valid"].astype(jnp.float32)
  loss = jnp.sum((pred - batch["y"] - noise) ** 2 * valid) / jnp.maximum(valid.sum(), 1)
  return loss, {"valid_images": jnp.sum(batch["valid"]), "mean_y": jnp.mean(batch["y"])}


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=FEATURES), jnp.float32), "b": jnp.float32(0.3)}
  batch = {"x": rng.normal(size=(BATCH, FEATURES)).astype(np.float32),
           "y": rng.normal(size=BATCH).astype(np.float32),
           "valid": (np.arange(BATCH) % 7 != 3).astype(np.int32)}  # some padded rows
  mesh = sharding.make_mesh(-1, 1)
  assert mesh.size == 8
  placed = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  return mesh, params, batch, placed, jax.random.fold_in(jax.random.key(0), 3)


def by_hand(params, batch, rng, parts):
  """Part i: every parts-th row of each device's rows (4 per device here), its key
  fold_in(rng, i); loss, gradients and metrics averaged, valid_images summed."""
  grad_fn = jax.value_and_grad(toy_loss, has_aux=True)
  results = [grad_fn(params, None, {k: v[i::parts] for k, v in batch.items()},
                     jax.random.fold_in(rng, i)) for i in range(parts)]
  loss = np.mean([r[0][0] for r in results])
  grads = jax.tree.map(lambda *g: np.mean(g, axis=0), *[r[1] for r in results])
  metrics = {"valid_images": sum(int(r[0][1]["valid_images"]) for r in results),
             "mean_y": np.mean([r[0][1]["mean_y"] for r in results])}
  return loss, metrics, grads


@pytest.mark.parametrize("parts", [2, 4])
def test_accumulated_loss_gradients_and_metrics_equal_the_parts_by_hand(problem, parts):
  mesh, params, batch, placed, rng = problem
  with jax.set_mesh(mesh):
    (loss, metrics), grads = jax.jit(loop.accumulated_value_and_grad(toy_loss, parts))(
        params, None, placed, rng)
  want_loss, want_metrics, want_grads = by_hand(params, batch, rng, parts)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert int(metrics["valid_images"]) == want_metrics["valid_images"] == batch["valid"].sum()
  np.testing.assert_allclose(metrics["mean_y"], want_metrics["mean_y"], rtol=1e-6)
  for name in params:
    np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-5, atol=1e-7)


def test_one_microbatch_is_the_loss_on_the_whole_batch_with_the_steps_key(problem):
  mesh, params, batch, placed, rng = problem
  with jax.set_mesh(mesh):
    (loss, metrics), grads = jax.jit(loop.accumulated_value_and_grad(toy_loss, 1))(
        params, None, placed, rng)
  (want, want_metrics), want_grads = jax.value_and_grad(toy_loss, has_aux=True)(
      params, None, batch, rng)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert int(metrics["valid_images"]) == int(want_metrics["valid_images"])
  np.testing.assert_allclose(grads["w"], want_grads["w"], rtol=1e-5)


def test_parts_are_taken_where_the_rows_already_are(problem):
  """No example crosses devices to form a part: with replicated parameters the compiled step
  gathers nothing (taking the parts as contiguous halves of the batch compiles to
  all-gathers)."""
  mesh, params, _, placed, rng = problem
  with jax.set_mesh(mesh):
    text = jax.jit(loop.accumulated_value_and_grad(toy_loss, 2)).lower(
        params, None, placed, rng).compile().as_text()
  assert not [op for op in ("all-gather", "all-to-all", "collective-permute") if op in text]
