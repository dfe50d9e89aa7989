"""Pytree helpers shared by training, inference and export, and the compute dtypes they accept by name."""

from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def named_dtype(name: str, what: str = "dtype"):
    """"float32" or "bfloat16" -> the JAX dtype; an error naming `what` for anything else."""
    if name not in DTYPES:
        raise ValueError(f"{what} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def cast_floating(tree: Any, dtype) -> Any:
    """Floating-point leaves of `tree` cast to `dtype` (others unchanged)."""
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x
    return jax.tree.map(cast, tree)
