"""Data parallelism over every device of every host, with `jax.sharding`.

One 1-D mesh with axis "data" spans all devices. Batches (index arrays [B, 2]) are split along
it; parameters, optimizer state and the uint8 image arrays are replicated. The jitted steps are
the same on 1 or N devices: XLA's partitioner follows the input shardings and inserts the
all-reduces of the loss mean, the gradients and BatchNorm's batch statistics, so a global batch
gives the same numbers as on one device (up to summation order).

Several hosts: launch one process per host with the usual JAX environment
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, or a cluster JAX detects);
`initialize()` then calls `jax.distributed.initialize()`. Every host computes the same global
batch order (seeded) and hands over only its own rows.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def initialize() -> None:
  """Joins a multi-process run when the environment describes one; a no-op otherwise."""
  if os.environ.get("JAX_NUM_PROCESSES") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()


def make_mesh() -> Mesh:
  # Auto axes: the partitioner propagates the batch sharding through gathers, convs and the
  # reductions by itself, so the model code carries no sharding annotations.
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Split along the batch axis: the first, or the second of a stack [K, B, ...]."""
  return NamedSharding(mesh, PartitionSpec(None, AXIS) if stacked else PartitionSpec(AXIS))


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def shard_batch(idx: np.ndarray, mesh: Mesh) -> jax.Array:
  """Global index batch [B, 2], or a stack of them [K, B, 2] for one call of K steps (the same
  on every host) -> array split along "data" on its batch axis.

  Each process contributes only its contiguous share of rows.
  """
  stacked = idx.ndim == 3
  sharding = batch_sharding(mesh, stacked)
  if jax.process_count() == 1:
    return jax.device_put(idx, sharding)
  rows = idx.shape[1 if stacked else 0]
  per_process = rows // jax.process_count()
  start = jax.process_index() * per_process
  local = idx[:, start:start + per_process] if stacked else idx[start:start + per_process]
  return jax.make_array_from_process_local_data(sharding, local, idx.shape)


def is_main_process() -> bool:
  return jax.process_index() == 0
