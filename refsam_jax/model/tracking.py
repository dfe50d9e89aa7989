"""Implicit Tracking Module: MOTR's QueryInteractionModule (official `refersam.py` L444-484, spec §3.9).

    q0  = o_t + tau_{t-1}   (o_t alone at the first frame)      o_t: main mask-token output of the decoder
    t1  = norm1(q0 + self_attn(q0, q0, q0))
    t2  = norm2(t1 + linear2(ReLU(linear1(t1))))                  256 -> 1024 -> 256
    tau = norm_feat(q0 + linear_feat2(ReLU(linear_feat1(t2))))    residual from the *input* q0

`self_attn` is PyTorch's `nn.MultiheadAttention(256, 8)` with its packed `in_proj_weight [3E, E]` /
`in_proj_bias [3E]` kept in the PyTorch layout, so a checkpoint loads by name. With one token per sequence
the attention weights are all 1 and it reduces to out_proj(v_proj(x)); it is computed literally anyway.
Dropout is 0 in the official module and omitted. LayerNorm eps 1e-5 (PyTorch default).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from refsam_jax.sam.common import MLPBlock, layer_norm

LAYER_NORM_EPS = 1e-5


class MultiheadAttention(nnx.Module):
    """`torch.nn.MultiheadAttention` (no dropout, no masks) on batch-first inputs `[B, N, E]`."""

    def __init__(self, embed_dim: int, num_heads: int, rngs: nnx.Rngs):
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        init = nnx.initializers.xavier_uniform()
        self.in_proj_weight = nnx.Param(init(rngs.params(), (3 * embed_dim, embed_dim)))
        self.in_proj_bias = nnx.Param(jnp.zeros((3 * embed_dim,)))
        self.out_proj = nnx.Linear(embed_dim, embed_dim, bias_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
        """`[B, Nq, E], [B, Nk, E], [B, Nk, E] -> [B, Nq, E]`."""
        w_q, w_k, w_v = jnp.split(self.in_proj_weight[...], 3, axis=0)
        b_q, b_k, b_v = jnp.split(self.in_proj_bias[...], 3, axis=0)

        def heads(x, w, b):
            y = x @ w.T + b
            return y.reshape(*y.shape[:-1], self.num_heads, -1)  # [B, N, heads, head_dim]

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


class QueryInteractionModule(nnx.Module):
    """QIM: `[B, N, dim] -> [B, N, dim]` (N = 1 for RefSAM's single track token)."""

    def __init__(self, dim: int = 256, hidden_dim: int = 1024, num_heads: int = 8, *, rngs: nnx.Rngs):
        self.self_attn = MultiheadAttention(dim, num_heads, rngs)
        self.linear1 = nnx.Linear(dim, hidden_dim, rngs=rngs)
        self.linear2 = nnx.Linear(hidden_dim, dim, rngs=rngs)
        self.linear_feat1 = nnx.Linear(dim, hidden_dim, rngs=rngs)
        self.linear_feat2 = nnx.Linear(hidden_dim, dim, rngs=rngs)
        self.norm1 = layer_norm(dim, LAYER_NORM_EPS, rngs)
        self.norm2 = layer_norm(dim, LAYER_NORM_EPS, rngs)
        self.norm_feat = layer_norm(dim, LAYER_NORM_EPS, rngs)

    def __call__(self, queries: jax.Array) -> jax.Array:
        tgt = self.norm1(queries + self.self_attn(queries, queries, queries))
        tgt = self.norm2(tgt + self.linear2(jax.nn.relu(self.linear1(tgt))))
        return self.norm_feat(queries + self.linear_feat2(jax.nn.relu(self.linear_feat1(tgt))))


class ImplicitTrackingModule(nnx.Module):
    """Turns the decoder's main mask-token output into the track token of the next frame.

    `temporal_aggregation_network` is the QIM (official attribute name). `track_token_mlp` (optional, GUESS:
    the inference scripts load a module of that name that was never released) maps the previous track token
    before it enters the decoder as an extra prompt token. `qim_previous=False` drops the previous track token
    from the QIM's input (an ablation: the token then carries no memory beyond one frame).
    """

    def __init__(self, dim: int, *, token_mlp: bool = False, qim_previous: bool = True, rngs: nnx.Rngs):
        self.temporal_aggregation_network = QueryInteractionModule(dim, 4 * dim, 8, rngs=rngs)
        self.track_token_mlp = MLPBlock(dim, dim, jax.nn.relu, rngs) if token_mlp else None
        self.qim_previous = qim_previous

    def prompt(self, track_token: jax.Array) -> jax.Array:
        """The decoder prompt for the previous track token: `[B, dim] -> [B, dim]`."""
        return track_token if self.track_token_mlp is None else self.track_token_mlp(track_token)

    def __call__(self, main_token: jax.Array, track_token: jax.Array, has_token: jax.Array) -> jax.Array:
        """`tau_t = QIM(o_t + tau_{t-1})` where `has_token [B]`, else `QIM(o_t)`; tokens `[B, dim]`."""
        if not self.qim_previous:
            return self.temporal_aggregation_network(main_token[:, None, :])[:, 0, :]
        queries = main_token + jnp.where(has_token[:, None], track_token, 0.0)
        return self.temporal_aggregation_network(queries[:, None, :])[:, 0, :]
