"""T5 encoder (t5-small ... t5-11b, t5 v1.1, flan-t5, mT5) in Flax NNX.

Modules and attributes are named as in `transformers`' PyTorch `T5EncoderModel` (`shared`,
`encoder.block.3.layer.0.SelfAttention.q`, `encoder.block.3.layer.1.DenseReluDense.wi_0`,
`encoder.final_layer_norm`), so `refsam_jax.porting.torch_to_nnx` maps a Hugging Face state dict onto them by one generic
walk. T5's `encoder.embed_tokens` is the same table as `shared` and is not built twice.

Architecture: pre-LN blocks with T5's RMS LayerNorm (no mean subtraction, no bias), attention logits not
scaled, no biases anywhere, and one bucketed relative position bias, owned by block 0 and added in every block.
"""

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refsam_jax.text.bert import activation, hf_fields, padding_mask


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The fields of a Hugging Face T5 `config.json` that shape the encoder (defaults: `transformers`)."""

    vocab_size: int
    d_model: int
    d_ff: int
    num_layers: int
    num_heads: int
    d_kv: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"

    @classmethod
    def from_hf(cls, config: Mapping, source: str = "config.json") -> "T5Config":
        result = cls(**hf_fields(cls, config, source))
        parts = result.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"{source}: feed_forward_proj {result.feed_forward_proj!r} is not '<act>' or "
                             "'gated-<act>'")
        activation(result.dense_act_fn, source)
        return result

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        """As `transformers.T5Config`: "gated-gelu" means the tanh GELU (gelu_new), for backward compatibility."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]


@dataclasses.dataclass(frozen=True)
class MT5Config(T5Config):
    """`T5Config` with the defaults of `transformers.MT5Config`."""

    feed_forward_proj: str = "gated-gelu"


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket of each relative position (key position - query position), as int64.

    Half of the buckets are for positive offsets; in each half, offsets below num_buckets/4 get their own
    bucket and larger ones share log-spaced buckets up to max_distance. Computed in float32 like
    `transformers` (Mesh TensorFlow), since bucket edges fall on exact powers of two.
    """
    num_buckets //= 2
    buckets = (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
    max_exact = num_buckets // 2
    scaled = (np.log(np.maximum(distance, 1).astype(np.float32) / max_exact)
              / np.float32(math.log(max_distance / max_exact)) * (num_buckets - max_exact))
    large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


class T5LayerNorm(nnx.Module):
    """RMS norm: x / sqrt(mean(x^2) + eps) * weight, statistics in float32; no mean, no bias."""

    def __init__(self, size: int, eps: float, *, dtype):
        self.weight = nnx.Param(jnp.ones((size,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (self.weight[...] * x).astype(self.dtype)


def _linear(d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class T5DenseActDense(nnx.Module):
    """wo(act(wi(x))) (feed_forward_proj "relu", original T5)."""

    def __init__(self, config: T5Config, *, dtype, rngs: nnx.Rngs):
        self.wi = _linear(config.d_model, config.d_ff, dtype, rngs)
        self.wo = _linear(config.d_ff, config.d_model, dtype, rngs)
        self.act = activation(config.dense_act_fn, "T5Config")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(self.act(self.wi(x)))


class T5DenseGatedActDense(nnx.Module):
    """wo(act(wi_0(x)) * wi_1(x)) (feed_forward_proj "gated-*", T5 v1.1, flan-T5, mT5)."""

    def __init__(self, config: T5Config, *, dtype, rngs: nnx.Rngs):
        self.wi_0 = _linear(config.d_model, config.d_ff, dtype, rngs)
        self.wi_1 = _linear(config.d_model, config.d_ff, dtype, rngs)
        self.wo = _linear(config.d_ff, config.d_model, dtype, rngs)
        self.act = activation(config.dense_act_fn, "T5Config")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class T5Attention(nnx.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        inner = config.num_heads * config.d_kv
        self.q = _linear(config.d_model, inner, dtype, rngs)
        self.k = _linear(config.d_model, inner, dtype, rngs)
        self.v = _linear(config.d_model, inner, dtype, rngs)
        self.o = _linear(inner, config.d_model, dtype, rngs)
        if has_relative_attention_bias:
            self.relative_attention_bias = nnx.Embed(config.relative_attention_num_buckets, config.num_heads,
                                                     param_dtype=jnp.float32, rngs=rngs)

    def compute_bias(self, query_length: int, key_length: int) -> jax.Array:
        """Relative position bias [1, num_heads, query_length, key_length] (float32)."""
        relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
        buckets = relative_position_bucket(relative, self.config.relative_attention_num_buckets,
                                           self.config.relative_attention_max_distance)
        return self.relative_attention_bias(jnp.asarray(buckets, jnp.int32)).transpose(2, 0, 1)[None]

    def __call__(self, x: jax.Array, mask: jax.Array, position_bias: jax.Array) -> jax.Array:
        """x [B, L, d_model], mask [B, 1, 1, L], position_bias [1, N, L, L] -> [B, L, d_model]."""
        b, length, _ = x.shape
        split = lambda t: t.reshape(b, length, self.config.num_heads, self.config.d_kv)
        out = jax.nn.dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                           bias=position_bias.astype(self.dtype), mask=mask, scale=1.0)
        return self.o(out.reshape(b, length, -1))


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, dtype=dtype, rngs=rngs)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array, position_bias: jax.Array) -> jax.Array:
        return x + self.SelfAttention(self.layer_norm(x), mask, position_bias)


class T5LayerFF(nnx.Module):
    def __init__(self, config: T5Config, *, dtype, rngs: nnx.Rngs):
        dense = T5DenseGatedActDense if config.is_gated_act else T5DenseActDense
        self.DenseReluDense = dense(config, dtype=dtype, rngs=rngs)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nnx.Module):
    """layer.0: self-attention, layer.1: feed-forward, both pre-LN with residuals."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, dtype, rngs: nnx.Rngs):
        self.layer = nnx.List([T5LayerSelfAttention(config, has_relative_attention_bias, dtype=dtype, rngs=rngs),
                               T5LayerFF(config, dtype=dtype, rngs=rngs)])

    def __call__(self, x: jax.Array, mask: jax.Array, position_bias: jax.Array) -> jax.Array:
        return self.layer[1](self.layer[0](x, mask, position_bias))


class T5Stack(nnx.Module):
    """The encoder stack over already embedded tokens."""

    def __init__(self, config: T5Config, *, dtype, rngs: nnx.Rngs):
        self.block = nnx.List([T5Block(config, i == 0, dtype=dtype, rngs=rngs) for i in range(config.num_layers)])
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)

    def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """x [B, L, d_model], attention_mask [B, L] -> [B, L, d_model]."""
        length = x.shape[1]
        position_bias = self.block[0].layer[0].SelfAttention.compute_bias(length, length)
        mask = padding_mask(attention_mask)
        for block in self.block:
            x = block(x, mask, position_bias)
        return self.final_layer_norm(x)


class T5EncoderModel(nnx.Module):
    """T5 encoder: (input_ids, attention_mask) [B, L] -> last hidden state [B, L, d_model]."""

    def __init__(self, config: T5Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.width = config.d_model
        self.shared = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.encoder = T5Stack(config, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids int [B, L], attention_mask [B, L] (True/1 = real token) -> [B, L, C]."""
        return self.encoder(self.shared(input_ids), attention_mask)
