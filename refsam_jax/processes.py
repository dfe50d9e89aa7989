"""The processes of a multi-process run (one per host): joining it, meeting at barriers, splitting work and
gathering results.

Barriers and gathers go through JAX's coordination service (a key-value store), not device collectives:
they carry small host values (scores, names), work the same on every platform, and a late process (still
compiling, still reading data) gets the timeout given here, not gloo's 30 s. In a one-process run every
function here is a no-op or the identity.
"""

import itertools
import json
import os
from typing import Any, Callable, List

import jax
from absl import logging
from jax._src import distributed

_calls = itertools.count()  # Every process makes the same calls in the same order: unique, matching keys.


def initialize(multihost: bool = False, heartbeat_timeout_s: int = 60) -> None:
    """Joins a multi-process run; call it before any other JAX call.

    With JAX_COORDINATOR_ADDRESS set, the run is described by JAX's environment variables
    (JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID); with `multihost` alone, JAX
    detects it (TPU pods, SLURM). Cross-process collectives on CPU use gloo. A process that loses a peer
    fails after `heartbeat_timeout_s` seconds instead of waiting forever.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (multihost or address) or jax.distributed.is_initialized():
        return
    arguments = {}
    if address:
        missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if name not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
        arguments = {"coordinator_address": address, "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                     "process_id": int(os.environ["JAX_PROCESS_ID"])}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**arguments, heartbeat_timeout_seconds=int(heartbeat_timeout_s))
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())


def barrier(name: str, timeout_s: int) -> None:
    """Waits until every process reaches the barrier `name`."""
    if jax.process_count() > 1:
        distributed.global_state.client.wait_at_barrier(f"{name}#{next(_calls)}", timeout_in_ms=int(timeout_s) * 1000)


def allgather(name: str, value: Any, timeout_s: int = 3600) -> List[Any]:
    """Every process's JSON-able `value`, in process order, on every process (`[value]` in one process).
    Floats come back bit-identical (JSON writes the shortest repr that round-trips)."""
    if jax.process_count() == 1:
        return [value]
    client = distributed.global_state.client
    key = f"refsam_jax/{name}#{next(_calls)}"
    client.key_value_set(f"{key}/{jax.process_index()}", json.dumps(value))
    return [json.loads(client.blocking_key_value_get(f"{key}/{p}", int(timeout_s) * 1000))
            for p in range(jax.process_count())]


def process_zero_first(fn: Callable[[], Any], name: str, timeout_s: int = 3600) -> None:
    """Runs `fn` on process 0, then, after the barrier `name`, on the other processes: for files that process 0
    writes and the others then only locate (e.g. synthetic data)."""
    if jax.process_index() == 0:
        fn()
    barrier(name, timeout_s)
    if jax.process_index() != 0:
        fn()
