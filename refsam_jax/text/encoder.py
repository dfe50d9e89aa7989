"""Text encoders by name of folder: `load_text_encoder(path)` -> tokenizer + NNX model + jitted forward.

`path` is either a converted checkpoint directory, written by `python -m convert text` (the Hugging Face
`config.json`, the tokenizer files and an orbax checkpoint of the NNX state in `nnx_state/`), or a Hugging Face
folder (`config.json`, tokenizer files, safetensors or PyTorch weights), converted on the fly.
"""

import functools
import json
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from refsam_jax.text import params
from refsam_jax.text.bert import BertConfig, BertModel
from refsam_jax.text.roberta import RobertaConfig, RobertaModel
from refsam_jax.text.t5 import MT5Config, T5Config, T5EncoderModel
from refsam_jax.text.tokenizer import TextTokenizer

CONFIG_FILE = "config.json"
STATE_DIR = "nnx_state"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")

# Hugging Face model_type -> (config class, encoder module class).
ARCHITECTURES = {
    "t5": (T5Config, T5EncoderModel),
    "mt5": (MT5Config, T5EncoderModel),
    "bert": (BertConfig, BertModel),
    "roberta": (RobertaConfig, RobertaModel),
    "xlm-roberta": (RobertaConfig, RobertaModel),
}


def read_hf_config(path: str) -> Dict[str, Any]:
    """The Hugging Face `config.json` of a folder, checked to name a supported `model_type`."""
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: a text encoder folder needs the Hugging Face config.json")
    with open(config_path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON: {e}") from e
    architecture(config, config_path)
    return config


def architecture(hf_config: Mapping, source: str = CONFIG_FILE):
    """(config class, module class) for the config's `model_type`, or an error naming the supported types."""
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{source}: unsupported text encoder model_type {model_type!r}; supported: "
                         f"{sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def build_text_encoder(hf_config: Mapping, rngs: nnx.Rngs, dtype=jnp.float32,
                       source: str = CONFIG_FILE) -> nnx.Module:
    """The NNX encoder (T5 encoder, BERT or RoBERTa) described by a Hugging Face config dict, randomly initialised.

    `dtype` is the computation dtype; parameters are float32.
    """
    config_class, module_class = architecture(hf_config, source)
    return module_class(config_class.from_hf(hf_config, source), dtype=dtype, rngs=rngs)


def abstract_text_encoder(hf_config: Mapping, dtype=jnp.float32, source: str = CONFIG_FILE) -> nnx.Module:
    """The encoder with shape-only variables, to be filled from a checkpoint without a random init."""
    return nnx.eval_shape(lambda: build_text_encoder(hf_config, nnx.Rngs(0), dtype, source))


def is_converted(path: str) -> bool:
    return os.path.isdir(os.path.join(path, STATE_DIR))


def restore_converted(path: str, abstract_model: nnx.Module) -> nnx.Module:
    """Fills `abstract_model` from the orbax checkpoint in `path/nnx_state`."""
    graphdef, abstract_state = nnx.split(abstract_model)
    state_path = os.path.abspath(os.path.join(path, STATE_DIR))
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            state = checkpointer.restore(state_path, abstract_state)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{state_path} does not match the model of {os.path.join(path, CONFIG_FILE)}: {e}") from e
    return nnx.merge(graphdef, state)


def save_text_encoder(model: nnx.Module, hf_dir: str, output: str) -> None:
    """Writes config.json, the tokenizer files of `hf_dir` and the NNX state of `model` into `output`."""
    if os.path.exists(output) and os.listdir(output):
        raise FileExistsError(f"output directory {output} exists and is not empty")
    tokenizer_files = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, name))]
    if not tokenizer_files:
        raise FileNotFoundError(f"no tokenizer files in {hf_dir}: expected some of {', '.join(TOKENIZER_FILES)}")
    os.makedirs(output, exist_ok=True)
    for name in (CONFIG_FILE, *tokenizer_files):
        shutil.copyfile(os.path.join(hf_dir, name), os.path.join(output, name))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(os.path.join(output, STATE_DIR)), nnx.state(model))
        checkpointer.wait_until_finished()


def check_width(source: str, width: int, expected: int, name: str = "config.text.width") -> None:
    """Raises if a text encoder's hidden size is not the one the model config expects."""
    if width != expected:
        raise ValueError(f"text encoder at {source} has width {width} but {name} is {expected}")


def masked_mean(features: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over real tokens: features [B, L, C], mask [B, L] (True = real) -> [B, C] (zeros if none)."""
    weights = mask.astype(features.dtype)[..., None]
    return (features * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)


def _apply(graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(input_ids, attention_mask).astype(jnp.float32)


class TextEncoder:
    """A tokenizer and a text encoder: sentences -> word features and mask.

    Attributes:
      config: the Hugging Face config dict.
      width: the feature size C (hidden size).
      model: the NNX module, (input_ids, attention_mask) [B, L] -> [B, L, C].
      tokenizer: the `TextTokenizer` (fixed length L = tokenizer.max_length).
      source: the folder it was loaded from.
    """

    def __init__(self, model: nnx.Module, config: Mapping, tokenizer: TextTokenizer, source: str):
        self.model = model
        self.config = dict(config)
        self.tokenizer = tokenizer
        self.source = source
        self.width = model.width
        pad_token_id = self.config.get("pad_token_id")
        if pad_token_id is not None and pad_token_id != tokenizer.pad_token_id:
            raise ValueError(f"the tokenizer in {tokenizer.path} pads with id {tokenizer.pad_token_id} but "
                             f"{os.path.join(source, CONFIG_FILE)} has pad_token_id {pad_token_id}")
        self.graphdef = nnx.graphdef(model)
        self._forward = jax.jit(functools.partial(_apply, self.graphdef))

    @property
    def state(self) -> nnx.State:
        """The model's variables, to pass to `encode_ids` as a `jit` argument."""
        return nnx.state(self.model)

    def check_width(self, expected: int, name: str = "config.text.width") -> None:
        check_width(self.source, self.width, expected, name)

    def encode_ids(self, input_ids: jax.Array, attention_mask: jax.Array,
                   state: Optional[nnx.State] = None) -> jax.Array:
        """input_ids int [B, L], attention_mask bool [B, L] -> features float32 [B, L, C]. Pure and jitted.

        Inside a jitted step pass `state` (from `self.state`) as an argument of the step, so the weights are
        inputs of the compiled program rather than constants baked into it.
        """
        return self._forward(self.state if state is None else state, input_ids, attention_mask)

    def __call__(self, sentences) -> Tuple[jax.Array, jax.Array]:
        """Sentences -> (features float32 [B, L, C], mask bool [B, L]); compiled once per batch size."""
        input_ids, mask = self.tokenizer(sentences)
        return self.encode_ids(input_ids, mask), jnp.asarray(mask)


def load_text_encoder(path: str, max_length: int = 32, expected_width: Optional[int] = None,
                      dtype=jnp.float32) -> TextEncoder:
    """Loads a converted checkpoint directory or a Hugging Face folder (converted on the fly).

    Args:
      path: the folder.
      max_length: the fixed number of tokens L per sentence.
      expected_width: if given, the hidden size the model config expects; checked before loading weights.
      dtype: computation dtype (parameters stay float32).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"text encoder folder {path} does not exist")
    hf_config = read_hf_config(path)
    model = abstract_text_encoder(hf_config, dtype, os.path.join(path, CONFIG_FILE))
    if expected_width is not None:
        check_width(path, model.width, expected_width)
    tokenizer = TextTokenizer(path, max_length)
    if is_converted(path):
        model = restore_converted(path, model)
    else:
        params.load_hf_weights(model, path, hf_config["model_type"])
    return TextEncoder(model, hf_config, tokenizer, path)
