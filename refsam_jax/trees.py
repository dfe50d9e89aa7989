"""Pytree helpers shared by training, inference and export."""

from typing import Any

import jax
import jax.numpy as jnp


def cast_floating(tree: Any, dtype) -> Any:
    """Floating-point leaves of `tree` cast to `dtype` (others unchanged)."""
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x
    return jax.tree.map(cast, tree)
