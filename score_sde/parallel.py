"""Data parallelism and fully-sharded parameters over every device of every process (multi-controller JAX).

One copy of the program runs per host (a process); `initialize` joins them through
`jax.distributed.initialize`. The mesh has two axes, ('data', 'fsdp'), of shape
(n_devices / fsdp_size, fsdp_size), over all devices of all processes ordered by process. Every
global batch of B examples is split over both axes (`P(('data', 'fsdp'))`), so each device holds
B / n_devices rows and, with P processes, process p holds rows [p B / P, (p + 1) B / P). Each process
reads only those rows (`process_rows`), and `global_batch` assembles the global `jax.Array` from
them without moving data between hosts.

Parameters, their EMA and the optimizer state are laid out by `fsdp_spec`: with fsdp_size = 1 all
are replicated (plain data parallelism); with fsdp_size = k each large leaf is split k ways over
'fsdp' (ZeRO-3 / FSDP), and the jitted step all-gathers it where it is used. Either way the step
computes the global-batch loss, so its gradients and metrics are already reduced over all devices.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# Leaves with fewer elements (under 64 KiB in float32: biases, norm scales, counts) stay replicated:
# gathering them at every use would cost more in latency than their copies cost in memory.
MIN_SHARDED_SIZE = 2**14


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


def get_mesh(devices: Sequence[jax.Device] | None = None, fsdp_size: int = 1) -> Mesh:
  """The ('data', 'fsdp') mesh of shape (n / fsdp_size, fsdp_size) over `devices` (default: all), by process.

  Devices are ordered by (process, id) and consecutive ones form an 'fsdp' group, so a group stays
  within one host when fsdp_size divides the devices per process.
  """
  devices = sorted(jax.devices() if devices is None else devices, key=lambda d: (d.process_index, d.id))
  if fsdp_size < 1 or len(devices) % fsdp_size:
    raise ValueError(f"fsdp_size={fsdp_size} (training.fsdp_size) must be a positive divisor of the "
                     f"{len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(-1, fsdp_size), (DATA_AXIS, FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays split along their leading (batch) axis over every device of the mesh (all its axes)."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  """Arrays held whole by every device of the mesh."""
  return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = MIN_SHARDED_SIZE) -> P:
  """How a leaf of `shape` is laid out: its largest axis divisible by fsdp_size split over 'fsdp'.

  Ties go to the last such axis (the output features of a Dense or convolution kernel). A leaf is
  replicated when fsdp_size is 1, when it has fewer than `min_size` elements, or when no axis is
  divisible by fsdp_size.
  """
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  divisible = [axis for axis, length in enumerate(shape) if length % fsdp_size == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda a: (shape[a], a))
  return P(*[None] * axis, FSDP_AXIS)


def fsdp_sharding(tree: Any, mesh: Mesh) -> Any:
  """The NamedSharding of each leaf (array or ShapeDtypeStruct) of a state pytree under `fsdp_spec`.

  The rule reads only a leaf's shape, so the EMA and the optimizer moments (shaped like the params)
  are split exactly like the params, and scalars (step, optimizer counts) are replicated.
  """
  fsdp_size = mesh.shape[FSDP_AXIS]
  return jax.tree.map(lambda leaf: NamedSharding(mesh, fsdp_spec(leaf.shape, fsdp_size)), tree)


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
  """`tree` of arrays and PRNG keys, the same on every process, held whole by every device of `mesh`.

  Leaves go through host copies (`fetch`, which also gathers leaves sharded over processes, e.g.
  FSDP parameters): a multi-process `device_put` accepts only host or uncommitted values.
  """
  def to_mesh(leaf):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      data = jax.device_put(fetch(jax.random.key_data(leaf)), replicated(mesh))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    return jax.device_put(fetch(leaf), replicated(mesh))
  return jax.tree.map(to_mesh, tree)


def fetch(tree: Any) -> Any:
  """Every leaf as a numpy array on every process: replicated leaves locally, sharded ones gathered."""
  def to_host(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(to_host, tree)

