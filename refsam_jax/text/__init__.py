"""Text encoders (T5, BERT, RoBERTa) in Flax NNX, their tokenizers and the loading API."""

from refsam_jax.text.encoder import TextEncoder, build_text_encoder, load_text_encoder, masked_mean
from refsam_jax.text.tokenizer import TextTokenizer, clean_caption

__all__ = ["TextEncoder", "TextTokenizer", "build_text_encoder", "clean_caption", "load_text_encoder",
           "masked_mean"]
