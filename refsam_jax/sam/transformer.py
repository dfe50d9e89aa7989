"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Attribute names follow `segment_anything.modeling.transformer`. A `token_mask` `[B, N_tokens]` (True =
valid) keeps padded tokens out of every attention that uses tokens as keys; with all tokens valid the
result is SAM's.
"""

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from refsam_jax.sam.common import MLPBlock, layer_norm
from refsam_jax.sam.config import SamConfig

LAYER_NORM_EPS = 1e-5
ATTENTION_DOWNSAMPLE_RATE = 2


class Attention(nnx.Module):
    """Multi-head attention whose q/k/v projections may downscale the channels by `downsample_rate`."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int, rngs: nnx.Rngs):
        internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nnx.Linear(embedding_dim, internal_dim, rngs=rngs)
        self.k_proj = nnx.Linear(embedding_dim, internal_dim, rngs=rngs)
        self.v_proj = nnx.Linear(embedding_dim, internal_dim, rngs=rngs)
        self.out_proj = nnx.Linear(internal_dim, embedding_dim, rngs=rngs)

    def _separate_heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array,
                 key_mask: Optional[jax.Array] = None) -> jax.Array:
        """q `[B, Nq, C]`, k and v `[B, Nk, C]`, key_mask `[B, Nk]` (True = attend) -> `[B, Nq, C]`."""
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(q.shape[-1])
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        probs = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v)
        return self.out_proj(out.reshape(*out.shape[:2], -1))


class TwoWayAttentionBlock(nnx.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool,
                 rngs: nnx.Rngs):
        self.self_attn = Attention(embedding_dim, num_heads, 1, rngs)
        self.norm1 = layer_norm(embedding_dim, LAYER_NORM_EPS, rngs)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, ATTENTION_DOWNSAMPLE_RATE, rngs)
        self.norm2 = layer_norm(embedding_dim, LAYER_NORM_EPS, rngs)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, jax.nn.relu, rngs)
        self.norm3 = layer_norm(embedding_dim, LAYER_NORM_EPS, rngs)
        self.norm4 = layer_norm(embedding_dim, LAYER_NORM_EPS, rngs)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, ATTENTION_DOWNSAMPLE_RATE, rngs)
        self.skip_first_layer_pe = skip_first_layer_pe

    def __call__(self, queries: jax.Array, keys: jax.Array, query_pe: jax.Array, key_pe: jax.Array,
                 token_mask: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
        """queries `[B, N, C]`, keys `[B, HW, C]`, PEs of the same shapes (key_pe may have batch 1)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_mask)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_mask))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    """`decoder_depth` two-way blocks and a final token->image attention."""

    def __init__(self, config: SamConfig, rngs: nnx.Rngs):
        dim, heads = config.prompt_embed_dim, config.decoder_num_heads
        self.layers = nnx.List([
            TwoWayAttentionBlock(dim, heads, config.decoder_mlp_dim, skip_first_layer_pe=(i == 0), rngs=rngs)
            for i in range(config.decoder_depth)
        ])
        self.final_attn_token_to_image = Attention(dim, heads, ATTENTION_DOWNSAMPLE_RATE, rngs)
        self.norm_final_attn = layer_norm(dim, LAYER_NORM_EPS, rngs)

    def __call__(self, image_embedding: jax.Array, image_pe: jax.Array, point_embedding: jax.Array,
                 token_mask: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
        """Runs the transformer.

        Args:
          image_embedding: `[B, h, w, C]`.
          image_pe: `[B or 1, h, w, C]`.
          point_embedding: tokens `[B, N, C]`, also their positional encoding.
          token_mask: `[B, N]`, True for tokens that may be attended to; None = all.
        Returns:
          the processed tokens `[B, N, C]` and image tokens `[B, h*w, C]`.
        """
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        key_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, token_mask)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
