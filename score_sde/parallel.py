"""Data parallelism over every device of every process, on JAX's multi-controller runtime.

One copy of the program runs per host (a process); `initialize` joins them through
`jax.distributed.initialize`. The mesh has one axis, 'data', over all devices of all processes,
ordered by process, so with P processes process p holds rows [p B / P, (p + 1) B / P) of every
global batch of B examples. Each process reads only those rows (`process_rows`), and
`global_batch` assembles the global `jax.Array` from them without moving data between hosts.
Parameters, EMA and optimizer state are replicated (`P()`); a jitted step computes the global-batch
loss, so its gradients and metrics are already reduced over all processes.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto_detect: bool = False) -> None:
  """Joins this process to the others (`jax.distributed.initialize`); nothing for a single process.

  Either all of `coordinator_address` ("host:port" of process 0; else $JAX_COORDINATOR_ADDRESS),
  `num_processes` and `process_id` are given, or `auto_detect` lets JAX read them from a TPU pod,
  Slurm or Open MPI. CPU processes exchange collectives through gloo. Call it before any other JAX
  computation.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  if auto_detect:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**given)
    return
  missing = [name for name, value in given.items() if value is None]
  if len(missing) == len(given):
    return
  if missing:
    raise ValueError(f"multi-process training needs coordinator_address, num_processes and process_id; "
                     f"missing {missing} (or use auto-detection on a TPU pod, Slurm or Open MPI)")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} must lie in [0, num_processes={num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main_process() -> bool:
  """True on process 0, the one that writes logs, images and metrics."""
  return jax.process_index() == 0


def get_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh, axis 'data', over `devices` (default: all devices of all processes), by process."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id))), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays split along their leading (batch) axis over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Arrays held whole by every device of the mesh."""
  return NamedSharding(mesh, P())


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch that this process's devices hold (a contiguous slice)."""
  if global_batch_size % mesh.size:
    raise ValueError(f"the global batch of {global_batch_size} is not divisible by the {mesh.size} devices")
  rows = sorted(index[0].indices(global_batch_size)[:2]
                for index in batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,)).values())
  start, stop = rows[0][0], rows[-1][1]
  if any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
    raise ValueError(f"this process's devices hold non-contiguous rows {rows}; order the mesh by process")
  return slice(start, stop)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """The global batch (a jax.Array per leaf, split over 'data') from each process's own rows."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` (the same on every process) placed whole on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def fetch(tree: Any) -> Any:
  """Every leaf as a numpy array on every process: replicated leaves locally, sharded ones gathered."""
  def to_host(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(to_host, tree)

