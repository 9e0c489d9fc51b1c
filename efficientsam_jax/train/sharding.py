"""Device mesh and sharding rules.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose
parameters and optimiser state are also split). The batch is split over both. Parameter
placement is data in the config: a list of (regex, rule) pairs matched against '/'-joined
parameter paths, first match wins, rule "replicate" or "fsdp"; unmatched leaves are FSDP-split
on their largest axis divisible by the fsdp size when they hold at least
`fsdp_min_size` elements, else replicated.
"""
import re

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int, fsdp: int, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over all devices (or `devices`: a TPU topology's compile-only
  devices); -1 in one axis takes the remaining devices.

  The device order follows the interconnect where jax knows it (TPU). Physical axes may be
  split: on a v4/v5p cube (4x4x4 chips) `jax.make_mesh` refuses an axis of 8, which is not a
  product of whole physical axes. Devices that jax cannot place (one per TensorCore of a v4
  chip) keep their plain order.
  """
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("at most one of mesh.data and mesh.fsdp may be -1")
  if data == -1:
    data = n // fsdp
  if fsdp == -1:
    fsdp = n // data
  if data * fsdp != n or data < 1 or fsdp < 1:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} does not use the {n} devices")
  try:
    grid = mesh_utils.create_device_mesh((data, fsdp), list(devices),
                                         allow_split_physical_axes=True)
  except (AssertionError, NotImplementedError, ValueError):
    grid = np.asarray(list(devices), dtype=object).reshape(data, fsdp)
  # Auto axes: the compiler propagates shardings through the model (FSDP style), rather
  # than the Explicit default that would require a sharding on every intermediate.
  return jax.sharding.Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, fsdp: int, min_size: int) -> P:
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  # Largest axis first, ties to the later (usually output) axis.
  for axis in sorted(range(len(shape)), key=lambda a: (shape[a], a), reverse=True):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(mesh, abstract_tree, rules=(), min_size: int = 2**16):
  """NamedSharding for every leaf of a tree of arrays/ShapeDtypeStructs (params, optimiser
  state or teacher weights) by the rules described in the module docstring."""
  compiled = [(re.compile(pattern), rule) for pattern, rule in rules]
  fsdp = mesh.shape["fsdp"]

  def leaf_sharding(path, leaf):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)
    shape = getattr(leaf, "shape", ())
    for pattern, rule in compiled:
      if pattern.fullmatch(name):
        if rule == "replicate":
          return NamedSharding(mesh, P())
        if rule == "fsdp":
          return NamedSharding(mesh, _fsdp_spec(shape, fsdp, 0))
        raise ValueError(f"unknown sharding rule {rule!r} for {pattern.pattern!r}")
    return NamedSharding(mesh, _fsdp_spec(shape, fsdp, min_size))

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_tree)


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs that carry their target shardings (restore and jit targets)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def host_batch_to_global(batch: dict, mesh) -> dict:
  """Per-process numpy batches -> global jax.Arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

