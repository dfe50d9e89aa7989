"""Hugging Face text encoder weights (T5, mT5, BERT, RoBERTa, XLM-RoBERTa) -> our NNX encoders, and the check
against the `transformers` PyTorch model (`python -m convert text`).

Checkpoint keys the encoder does not use, and only these, are skipped:
  T5:        `decoder.*` and `lm_head.*` (full T5ForConditionalGeneration checkpoints), and
             `encoder.embed_tokens.weight`, the same table as `shared.weight` (used when `shared.weight` is absent).
  BERT-like: `pooler.*` (no pooler is built), the heads `cls.*` / `lm_head.*`, and the position/token-type id
             buffers `embeddings.position_ids` / `embeddings.token_type_ids`. A `bert.` / `roberta.` prefix
             (checkpoints of models with heads) is removed, and old `LayerNorm.gamma/beta` names are renamed.
"""

import logging
import re
from typing import Dict, Sequence

import jax
import numpy as np
from flax import nnx

from refsam_jax.porting.hf_weights import LazyStateDict, find_weight_files, read_state_dict
from refsam_jax.porting.torch_to_nnx import CheckpointMismatchError, load_torch_state_dict

logger = logging.getLogger(__name__)

VERIFY_SENTENCES = (
    "a person riding a bike on the left",
    "the dog",
    "a brown horse running in the field next to a white fence while a man watches",
    "giraffe",
)
TOLERANCE = 1e-4
# model_type -> the transformers PyTorch class of the bare encoder, for --verify.
REFERENCE_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "bert": "BertModel",
                     "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}
_BASE_PREFIXES = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta."}


def encoder_keys(keys: Sequence[str], model_type: str, source: str) -> Dict[str, str]:
    """Our torch-style key -> checkpoint key, for every checkpoint key the encoder uses (see module doc)."""
    keys = set(keys)
    mapping = {}
    for key in sorted(keys):
        if model_type in ("t5", "mt5"):
            if key.startswith(("decoder.", "lm_head.")):
                continue
            name = key
            if key == "encoder.embed_tokens.weight":
                if "shared.weight" in keys:
                    continue
                name = "shared.weight"
        else:
            prefix = _BASE_PREFIXES[model_type]
            name = key[len(prefix):] if key.startswith(prefix) else key
            if (key.startswith(("cls.", "lm_head.")) or name.startswith("pooler.")
                    or name in ("embeddings.position_ids", "embeddings.token_type_ids")):
                continue
            name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
            name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if name in mapping:
            raise CheckpointMismatchError(f"{source}: {mapping[name]} and {key} both give {name}")
        mapping[name] = key
    return mapping


def load_hf_weights(model: nnx.Module, hf_dir: str, model_type: str) -> None:
    """Fills `model` (possibly abstract, from `abstract_text_encoder`) from the weights of a Hugging Face folder."""
    files = find_weight_files(hf_dir)
    source = files[0] if len(files) == 1 else f"{hf_dir} ({len(files)} shards)"
    state_dict = read_state_dict(files)
    mapping = encoder_keys(list(state_dict), model_type, source)
    skipped = len(state_dict) - len(mapping)
    if skipped:
        logger.info("%s: %d keys not used by the encoder skipped", source, skipped)
    used = LazyStateDict({name: (lambda key=key: state_dict[key]) for name, key in mapping.items()})
    load_torch_state_dict(model, used, source=source)


def reference_hidden_states(hf_dir: str, model_type: str, input_ids: np.ndarray,
                            attention_mask: np.ndarray) -> np.ndarray:
    """Last hidden states [B, L, C] of the `transformers` PyTorch encoder, float32."""
    import torch
    import transformers

    model_class = getattr(transformers, REFERENCE_CLASSES[model_type])
    model = model_class.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(input_ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(attention_mask.astype(np.int64)))
    return out.last_hidden_state.numpy()


def verify(encoder, hf_dir: str, sentences: Sequence[str] = VERIFY_SENTENCES) -> float:
    """max|ours - transformers| of the last hidden state over real tokens of padded `sentences`."""
    input_ids, mask = encoder.tokenizer(list(sentences))
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(encoder.encode_ids(input_ids, mask))
    reference = reference_hidden_states(hf_dir, encoder.config["model_type"], input_ids, mask)
    return float(np.abs(ours - reference)[mask].max())
