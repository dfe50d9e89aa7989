"""BERT-style text encoders (BERT, RoBERTa) in Flax NNX.

Modules and attributes are named as in `transformers`' PyTorch `BertModel` (`embeddings.word_embeddings`,
`encoder.layer.3.attention.self.query`, `...output.LayerNorm`), so `refsam_jax.porting.torch_to_nnx` maps a Hugging
Face state dict onto them by one generic walk. Only the encoder is built: no pooler, no heads.

Architecture: absolute position and token-type embeddings, post-LN transformer layers, attention scaled by
1/sqrt(head_dim), padding keys masked out. Inputs are single sentences, so every token has type 0.
"""

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

# Hugging Face `hidden_act` / T5 `dense_act_fn` names -> functions. "gelu" is the exact (erf) GELU; "gelu_new"
# and "gelu_pytorch_tanh" are the tanh approximation.
ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str, source: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name` in a Hugging Face config; `source` names the config file."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{source}: unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def required(config: Mapping, key: str, source: str):
    """`config[key]`, or an error naming the config file."""
    if key not in config:
        raise ValueError(f"{source}: missing required field {key!r}")
    return config[key]


def hf_fields(config_class, config: Mapping, source: str) -> dict:
    """The dataclass fields of `config_class` read from a Hugging Face config dict.

    Fields without a default are required; a field that is absent or null takes its default.
    """
    values = {}
    for field in dataclasses.fields(config_class):
        if field.default is dataclasses.MISSING:
            values[field.name] = required(config, field.name, source)
        elif config.get(field.name) is not None:
            values[field.name] = config[field.name]
    return values


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT / RoBERTa `config.json` that shape the encoder."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf(cls, config: Mapping, source: str = "config.json") -> "BertConfig":
        """Reads a Hugging Face config dict; defaults are those of `transformers.BertConfig`."""
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: position_embedding_type {config['position_embedding_type']!r} is not "
                             "supported (only 'absolute')")
        if config.get("is_decoder", False):
            raise ValueError(f"{source}: is_decoder=true (causal BERT) is not supported; a text encoder is needed")
        result = cls(**hf_fields(cls, config, source))
        activation(result.hidden_act, source)
        if result.hidden_size % result.num_attention_heads:
            raise ValueError(f"{source}: hidden_size {result.hidden_size} is not a multiple of num_attention_heads "
                             f"{result.num_attention_heads}")
        return result


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """[B, L] (True = real token) -> [B, 1, 1, L], the key mask `jax.nn.dot_product_attention` broadcasts."""
    return attention_mask.astype(bool)[:, None, None, :]


def _dense(d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _layer_norm(config: BertConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """PyTorch's LayerNorm: two-pass variance, eps from the config."""
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False, dtype=dtype,
                         param_dtype=jnp.float32, rngs=rngs)


class BertEmbeddings(nnx.Module):
    """Word + absolute position + token type (0) embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.word_embeddings = nnx.Embed(config.vocab_size, config.hidden_size, **kw)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, config.hidden_size, **kw)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, config.hidden_size, **kw)
        self.LayerNorm = _layer_norm(config, dtype, rngs)

    def __call__(self, input_ids: jax.Array, position_ids: jax.Array) -> jax.Array:
        """input_ids, position_ids [B, L] int -> [B, L, C]."""
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(jnp.zeros_like(input_ids))
        return self.LayerNorm(x + self.position_embeddings(position_ids))


class BertSelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.num_heads = config.num_attention_heads
        self.query = _dense(config.hidden_size, config.hidden_size, dtype, rngs)
        self.key = _dense(config.hidden_size, config.hidden_size, dtype, rngs)
        self.value = _dense(config.hidden_size, config.hidden_size, dtype, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B, L, C], mask [B, 1, 1, L] -> [B, L, C] (heads merged, before the output projection)."""
        b, length, c = x.shape
        split = lambda t: t.reshape(b, length, self.num_heads, c // self.num_heads)
        out = jax.nn.dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           mask=mask)
        return out.reshape(b, length, c)


class BertSelfOutput(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = _dense(config.hidden_size, config.hidden_size, dtype, rngs)
        self.LayerNorm = _layer_norm(config, dtype, rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.self = BertSelfAttention(config, dtype=dtype, rngs=rngs)
        self.output = BertSelfOutput(config, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = _dense(config.hidden_size, config.intermediate_size, dtype, rngs)
        self.act = activation(config.hidden_act, "BertConfig")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.dense(x))


class BertOutput(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.dense = _dense(config.intermediate_size, config.hidden_size, dtype, rngs)
        self.LayerNorm = _layer_norm(config, dtype, rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nnx.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.attention = BertAttention(config, dtype=dtype, rngs=rngs)
        self.intermediate = BertIntermediate(config, dtype=dtype, rngs=rngs)
        self.output = BertOutput(config, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nnx.Module):
    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertModel(nnx.Module):
    """BERT encoder: (input_ids, attention_mask) [B, L] -> last hidden state [B, L, hidden_size]."""

    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.width = config.hidden_size
        self.embeddings = BertEmbeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = BertEncoder(config, dtype=dtype, rngs=rngs)

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        """[B, L] -> [B, L] absolute positions 0..L-1 (BERT)."""
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        return jnp.broadcast_to(jnp.arange(length), input_ids.shape)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids int [B, L], attention_mask [B, L] (True/1 = real token) -> [B, L, C]."""
        x = self.embeddings(input_ids, self.position_ids(input_ids))
        return self.encoder(x, padding_mask(attention_mask))
