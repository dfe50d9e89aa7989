"""Small building blocks shared by the SAM modules."""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

# SAM uses the exact (erf) GELU; jax.nn.gelu defaults to the tanh approximation.
gelu = functools.partial(jax.nn.gelu, approximate=False)


class Buffer(nnx.Variable):
    """Non-trainable state that is part of a checkpoint (a PyTorch `register_buffer`)."""


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis, two-pass variance as PyTorch (also SAM's channels-first LayerNorm2d)."""
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def linear(in_features: int, out_features: int, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.Linear:
    """nnx.Linear whose matmul runs in `dtype` (e.g. bfloat16) and accumulates and returns float32."""
    return nnx.Linear(in_features, out_features, dtype=dtype, preferred_element_type=jnp.float32, rngs=rngs)


def matmul(subscripts: str, a: jax.Array, b: jax.Array, dtype=jnp.float32) -> jax.Array:
    """einsum of `a` and `b` cast to `dtype`, accumulated and returned in float32."""
    return jnp.einsum(subscripts, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


class MLPBlock(nnx.Module):
    """lin2(act(lin1(x))): `[..., D] -> [..., D]`; matmuls in `dtype`, the rest in float32."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: Callable, rngs: nnx.Rngs, dtype=jnp.float32):
        self.lin1 = linear(embedding_dim, mlp_dim, rngs, dtype)
        self.lin2 = linear(mlp_dim, embedding_dim, rngs, dtype)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(self.act(self.lin1(x)))
