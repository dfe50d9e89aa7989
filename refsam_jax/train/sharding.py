"""Device mesh, shardings and host-to-global batches.

The mesh has a 'data' and an 'fsdp' axis (`config.mesh`, e.g. {'data': -1, 'fsdp': 1}; one -1 takes the
remaining devices). Batches are split over both axes (every device sees different clips); parameters are
replicated, except arrays with at least `config.sharding.fsdp_min_size` elements, whose largest dimension
divisible by the 'fsdp' size is split over 'fsdp' (ZeRO-3 style: XLA gathers them where they are used).
The same program runs on 1 CPU, simulated CPU devices, GPUs and TPU pods.
"""

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")


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
