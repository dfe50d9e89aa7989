"""RoBERTa / XLM-RoBERTa text encoder: the BERT encoder with fairseq position ids.

Weights and layers are BERT's (`roberta-base` keeps a one-row token-type table, whose row 0 is added to every
token as in `transformers`). The difference is the position ids: real tokens are numbered from
`padding_idx + 1` and padding tokens get `padding_idx`, counted from the token ids as `transformers` does.
"""

import dataclasses

import jax
import jax.numpy as jnp

from refsam_jax.text.bert import BertConfig, BertModel


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """`BertConfig` with the defaults of `transformers.RobertaConfig` (pad token id 1)."""

    pad_token_id: int = 1


class RobertaModel(BertModel):
    """RoBERTa encoder: (input_ids, attention_mask) [B, L] -> last hidden state [B, L, hidden_size]."""

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        """[B, L] -> [B, L]: padding_idx + 1, + 2, ... for real tokens, padding_idx for padding tokens."""
        pad = self.config.pad_token_id
        length = input_ids.shape[1]
        if length + pad >= self.config.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds the {self.config.max_position_embeddings - pad - 1} "
                             f"positions of this RoBERTa (max_position_embeddings "
                             f"{self.config.max_position_embeddings}, padding_idx {pad})")
        real = (input_ids != pad).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + pad
