"""Sentences -> fixed-length token ids and masks (static shapes for `jit`), with `transformers` tokenizers."""

import logging
import os
from typing import Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)


def clean_caption(text: str) -> str:
    """Lower-cases and collapses whitespace, as the official RefSAM code does before tokenising."""
    return " ".join(text.lower().split())


class TextTokenizer:
    """A Hugging Face tokenizer from a local folder, padding (right) and truncating to `max_length` tokens."""

    def __init__(self, path: str, max_length: int):
        from transformers import AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer folder {path} does not exist")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"no usable tokenizer in {path}: {e}") from e
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer in {path} has no padding token")
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "right"
        special = self.tokenizer.num_special_tokens_to_add()
        if max_length <= special:
            raise ValueError(f"max_length {max_length} leaves no room for text: the tokenizer in {path} adds "
                             f"{special} special tokens")
        self.path = path
        self.max_length = max_length
        self.truncated = set()  # The distinct sentences this tokenizer had to truncate.

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def lengths(self, sentences: Sequence[str]) -> np.ndarray:
        """int `[B]`: the tokens of each sentence, special tokens included, before any truncation."""
        return np.asarray([len(ids) for ids in self.tokenizer(list(sentences), truncation=False)["input_ids"]])

    def __call__(self, sentences: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Sentences -> (input_ids int32 [B, max_length], attention_mask bool [B, max_length]).

        Special tokens are added as the tokenizer does (e.g. `</s>` for T5, `[CLS] ... [SEP]` for BERT). A
        sentence longer than `max_length` tokens is truncated, with a warning (the first time) saying how many
        tokens were dropped; `self.truncated` collects those sentences.
        """
        if isinstance(sentences, str):
            raise TypeError("sentences must be a list of strings, not one string")
        sentences = list(sentences)
        if not sentences:
            raise ValueError("no sentences to tokenize")
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"sentence {i} is a {type(sentence).__name__}, not a string")
            if not sentence.strip():
                raise ValueError(f"sentence {i} is empty or whitespace only: {sentence!r}")
        for i, (sentence, length) in enumerate(zip(sentences, self.lengths(sentences))):
            if length > self.max_length and sentence not in self.truncated:
                self.truncated.add(sentence)
                logger.warning("sentence %d (%r) has %d tokens: truncated to max_length %d, %d tokens dropped",
                               i, sentence, length, self.max_length, length - self.max_length)
        encoded = self.tokenizer(sentences, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="np")
        return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(bool)
