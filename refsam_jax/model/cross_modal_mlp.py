"""Cross-Modal MLP (official `FeatureResizer`, spec §3.5): text features -> L2-normalised prompt embeddings.

n hidden layers:  Linear(C, C/2) -> ReLU -> [Dropout] -> (n-1) x [Linear(C/2, C/2) -> ReLU -> [Dropout]]
                  -> Linear(C/2, out)               (official: n = 1)
0 hidden layers:  Linear(C, out)

The same weights map every word feature (the sparse prompts) and the pooled sentence feature. There is no
normalisation inside; the caller's outputs are L2-normalised (`prompts`). Dropout follows every ReLU when
`dropout > 0` (the official code skips the first one unless p > 0.05, an arbitrary threshold we drop).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from refsam_jax.text import masked_mean


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """`x / ||x||_2` along `axis`. The norm is clamped at 1e-12 (as `torch.nn.functional.normalize`; the official
    code has no clamp) so an all-zero vector, e.g. a padded token, stays finite and has finite gradients."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), 1e-24))


class CrossModalMLP(nnx.Module):
    """`[..., C] -> [..., out_dim]` token-wise MLP (not normalised)."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden_layers: int = 1, dropout: float = 0.0, rngs: nnx.Rngs):
        if hidden_layers < 0:
            raise ValueError(f"CrossModalMLP hidden_layers must be >= 0, got {hidden_layers}")
        dims = [in_dim] + [in_dim // 2] * hidden_layers + [out_dim]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.layers[-1](x)


def text_prompts(mlp: CrossModalMLP, features: jax.Array, mask: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Word prompts `W = l2n(MLP(E)) [B, L, out]` and sentence `s = l2n(MLP(mean E)) [B, out]`.

    `mask [B, L]` selects the positions that are pooled (pass all-True for the official unmasked mean).
    """
    words = l2_normalize(mlp(features))
    sentence = l2_normalize(mlp(masked_mean(features, mask)))
    return words, sentence
