"""Device meshes and multi-host start-up.

The mesh has two axes: ``"data"`` (batch parallelism) and ``"seq"`` (the sequence split over a
ring of devices). Every batch is built from process-local data with
``jax.make_array_from_process_local_data``, so the same code runs on one host or many.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "seq")


def make_mesh(data: int = 1, seq: int = -1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "seq")`` mesh; ``-1`` on one axis takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1 and seq == -1:
        raise ValueError("at most one of data, seq may be -1")
    if data == -1:
        data = n // seq
    if seq == -1:
        seq = n // data
    if data < 1 or seq < 1 or data * seq > n:
        raise ValueError(f"mesh data={data} x seq={seq} needs {data * seq} devices; {n} available")
    grid = np.asarray(devices[: data * seq], dtype=object).reshape(data, seq)
    return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding for a ``[batch, seq, ...]`` array: batch over ``"data"``, seq over ``"seq"``."""
    return NamedSharding(mesh, P("data", "seq", *([None] * (ndim - 2))))


def shard_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global arrays from this process's slice of a ``[batch, seq, ...]`` batch."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
        for key, x in local_batch.items()
    }


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Start multi-host JAX (wraps ``jax.distributed.initialize``); a no-op for one process.

    Arguments default to the ``RINGRL_COORDINATOR``, ``RINGRL_NUM_PROCESSES`` and
    ``RINGRL_PROCESS_ID`` environment variables; with neither arguments nor variables (and no
    cluster environment jax detects by itself) nothing is done. On CPU, cross-process
    collectives use gloo.
    """
    coordinator_address = coordinator_address or os.environ.get("RINGRL_COORDINATOR")
    if num_processes is None and "RINGRL_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["RINGRL_NUM_PROCESSES"])
    if process_id is None and "RINGRL_PROCESS_ID" in os.environ:
        process_id = int(os.environ["RINGRL_PROCESS_ID"])
    if coordinator_address is None and (num_processes or 1) == 1:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
