"""Device mesh, shardings and host-to-global batches.

The mesh has a 'data' and an 'fsdp' axis (`config.mesh`, e.g. {'data': -1, 'fsdp': 1}; one -1 takes the
remaining devices). Batches are split over both axes (every device sees different clips); parameters are
replicated, except arrays with at least `config.sharding.fsdp_min_size` elements, whose largest dimension
divisible by the 'fsdp' size is split over 'fsdp' (ZeRO-3 style: XLA gathers them where they are used).
The same program runs on 1 CPU, simulated CPU devices, GPUs and TPU pods.
"""

import math
import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from jax._src import distributed
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins a multi-process run; call it before any other JAX call.

    With JAX_COORDINATOR_ADDRESS set, the run is described by JAX's environment variables
    (JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID); with `config.multihost` alone,
    JAX detects it (TPU pods, SLURM). Cross-process collectives on CPU use gloo. A process that loses a peer
    fails after `config.heartbeat_timeout_s` seconds instead of waiting forever.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (config.multihost or address) or jax.distributed.is_initialized():
        return
    arguments = {}
    if address:
        missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if name not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
        arguments = {"coordinator_address": address, "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                     "process_id": int(os.environ["JAX_PROCESS_ID"])}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**arguments, heartbeat_timeout_seconds=int(config.heartbeat_timeout_s))
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())


def barrier(name: str, timeout_s: int) -> None:
    """Waits until every process reaches the barrier `name` (the coordination service's barrier, not a device
    collective: gloo gives a first collective only 30 s for a late process, e.g. one still compiling)."""
    if jax.process_count() > 1:
        distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=int(timeout_s) * 1000)


def process_zero_first(fn: Callable[[], Any], name: str, timeout_s: int = 3600) -> None:
    """Runs `fn` on process 0, then, after the barrier `name`, on the other processes: for files that process 0
    writes and the others then only locate (e.g. synthetic data)."""
    if jax.process_index() == 0:
        fn()
    barrier(name, timeout_s)
    if jax.process_index() != 0:
        fn()


def make_mesh(mesh_shape: Mapping[str, int], devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default all); one axis size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = sorted(set(mesh_shape) - set(AXES))
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {unknown}; the axes are {AXES}")
    sizes = [int(mesh_shape.get(axis, 1)) for axis in AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh sizes must be positive with at most one -1, got {dict(mesh_shape)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"config.mesh {dict(mesh_shape)}: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"config.mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"{len(devices)} are available")
    return jax.make_mesh(tuple(sizes), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis."""
    return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def array_sharding(shape, mesh: Mesh, fsdp_min_size: int) -> NamedSharding:
    """FSDP sharding of the largest dim divisible by the 'fsdp' size for big arrays, else replicated."""
    fsdp = mesh.shape["fsdp"]
    if fsdp == 1 or fsdp_min_size < 0 or math.prod(shape) < fsdp_min_size:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def tree_shardings(tree: Any, mesh: Mesh, fsdp_min_size: int) -> Any:
    """A NamedSharding for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda x: array_sharding(x.shape, mesh, fsdp_min_size), tree)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    if global_batch_size % mesh.size:
        raise ValueError(f"the global batch size {global_batch_size} is not divisible by the {mesh.size} devices "
                         f"of the mesh {dict(mesh.shape)}")


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> Mapping[str, jax.Array]:
    """This host's part of the batch -> global arrays split over the batch sharding."""
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_batch.items()}
