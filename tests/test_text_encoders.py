"""Text encoders (T5, RoBERTa, BERT) against the transformers PyTorch models; tokenizer and pooling."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from refsam_jax.configs.demo import MINILM
from refsam_jax.porting.torch_to_nnx import load_torch_state_dict
from refsam_jax.text import TextTokenizer, build_text_encoder, clean_caption, load_text_encoder, masked_mean
from refsam_jax.text.encoder import abstract_text_encoder
from refsam_jax.text.params import encoder_keys
from refsam_jax.text.t5 import relative_position_bucket

SENTENCES = [
    "A man is riding a white horse on an enclosed ground.",
    "the dog",
    "a small brown dog jumping over the fence on the left of the yard, next to a red ball",
    "Two zebras graze side by side",
]
LENGTHS = [24, 13, 5]  # real tokens per row of the tiny-model batches; 24 > max_distance exercises log buckets


def _randomize_norms(model: torch.nn.Module) -> None:
    """LayerNorms start at weight 1 / bias 0; perturb them so a mis-mapped norm cannot go unnoticed."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                param.add_(0.2 * torch.randn_like(param))


def _ours_from_torch(model: torch.nn.Module, model_type: str):
    ours = abstract_text_encoder(model.config.to_dict())
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    mapping = encoder_keys(list(state_dict), model_type, "torch model")
    load_torch_state_dict(ours, {name: state_dict[key] for name, key in mapping.items()})
    return ours


def _padded_batch(vocab_size: int, pad_id: int, first_id: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(LENGTHS), max(LENGTHS)), pad_id, np.int64)
    mask = np.zeros(ids.shape, bool)
    for row, length in enumerate(LENGTHS):
        ids[row, :length] = rng.integers(first_id, vocab_size, length)
        mask[row, :length] = True
    return ids, mask


def _check_parity(ours, reference: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> None:
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids),
                             attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
    # The same batch with 8 more padding columns and random token ids at every padded position.
    more_mask = np.pad(mask, ((0, 0), (0, 8)))
    more_ids = np.where(more_mask, np.pad(ids, ((0, 0), (0, 8))),
                        np.random.default_rng(1).integers(0, ids.max() + 1, more_mask.shape))
    forward = nnx.jit(lambda model, ids, mask: model(ids, mask))
    with jax.default_matmul_precision("highest"):
        got = np.asarray(forward(ours, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
        more = np.asarray(forward(ours, jnp.asarray(more_ids, jnp.int32), jnp.asarray(more_mask)))
    assert got.shape == expected.shape
    assert np.abs(got - expected)[mask].max() <= 1e-4
    np.testing.assert_allclose(more[:, :ids.shape[1]][mask], got[mask], atol=1e-5)


def test_t5_relative_position_buckets_match_transformers():
    relative = torch.arange(-300, 301)
    from transformers.models.t5.modeling_t5 import T5Attention

    for num_buckets, max_distance in [(32, 128), (32, 64), (8, 20), (64, 256)]:
        expected = T5Attention._relative_position_bucket(relative, bidirectional=True, num_buckets=num_buckets,
                                                         max_distance=max_distance).numpy()
        np.testing.assert_array_equal(relative_position_bucket(relative.numpy(), num_buckets, max_distance),
                                      expected)


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_t5_encoder_matches_transformers(feed_forward_proj):
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   feed_forward_proj=feed_forward_proj, layer_norm_epsilon=1e-5)
    reference = transformers.T5EncoderModel(config).eval()
    _randomize_norms(reference)
    ours = _ours_from_torch(reference, "t5")
    assert ours.width == 32
    _check_parity(ours, reference, *_padded_batch(99, config.pad_token_id, first_id=1))


def test_roberta_matches_transformers():
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                                        pad_token_id=1, layer_norm_eps=1e-5)
    reference = transformers.RobertaModel(config, add_pooling_layer=False).eval()
    _randomize_norms(reference)
    ours = _ours_from_torch(reference, "roberta")
    _check_parity(ours, reference, *_padded_batch(99, pad_id=1, first_id=3))


def test_roberta_rejects_sequences_past_its_positions():
    config = transformers.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=10, pad_token_id=1)
    ours = abstract_text_encoder(config.to_dict())
    assert ours.position_ids(jnp.array([[5] * 7 + [1]])).tolist() == [[2, 3, 4, 5, 6, 7, 8, 1]]
    with pytest.raises(ValueError, match="sequence length 9 exceeds the 8 positions"):
        ours(jnp.full((1, 9), 5), jnp.ones((1, 9), bool))


def test_build_rejects_unsupported_model_type():
    with pytest.raises(ValueError, match="unsupported text encoder model_type 'gpt2'.*'bert'"):
        build_text_encoder({"model_type": "gpt2"}, nnx.Rngs(0))


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(MINILM, max_length=24)


def test_minilm_matches_transformers(minilm):
    reference = transformers.BertModel.from_pretrained(MINILM, attn_implementation="eager").eval()
    ids, mask = minilm.tokenizer(SENTENCES)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (4, 24)
    expected = reference(**minilm.tokenizer.tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    expected = expected.last_hidden_state.detach().numpy()
    assert mask.sum(1).max() == expected.shape[1]  # the longest sentence fits in 24 tokens
    with jax.default_matmul_precision("highest"):
        features, mask_out = minilm(SENTENCES)
        alone = [np.asarray(minilm([s])[0][0]) for s in SENTENCES]
    features, mask_out = np.asarray(features), np.asarray(mask_out)
    np.testing.assert_array_equal(mask_out, mask)
    assert features.shape == (4, 24, 384) and features.dtype == np.float32
    valid = mask[:, :expected.shape[1]]
    assert np.abs(features[:, :expected.shape[1]] - expected)[valid].max() <= 1e-4
    for row, single in enumerate(alone):
        n = mask[row].sum()
        np.testing.assert_allclose(features[row, :n], single[:n], atol=1e-5)


def test_minilm_forward_compiles_once_per_batch_size(minilm):
    compiled = minilm._forward._cache_size()
    minilm(SENTENCES[:2])
    minilm(SENTENCES[2:])
    assert minilm._forward._cache_size() == compiled + 1
    minilm(SENTENCES[:3])
    assert minilm._forward._cache_size() == compiled + 2


def test_minilm_bfloat16_is_close_to_float32(minilm):
    bf16 = load_text_encoder(MINILM, max_length=24, dtype=jnp.bfloat16)
    full, mask = minilm(SENTENCES)
    half, _ = bf16(SENTENCES)
    error = np.abs(np.asarray(half) - np.asarray(full))[np.asarray(mask)]
    assert error.mean() < 0.02 and error.max() < 0.2


def test_masked_mean_excludes_padding():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    got = np.asarray(masked_mean(jnp.asarray(features), jnp.asarray(mask)))
    np.testing.assert_allclose(got[0], features[0, :3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[1], features[1].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[2], np.zeros(4))


def test_tokenizer_pads_to_max_length_and_rejects_empty_sentences(minilm):
    ids, mask = minilm.tokenizer(["the dog"])
    assert ids[0, :4].tolist() == [101, 1996, 3899, 102] and mask[0].tolist() == [True] * 4 + [False] * 20
    assert (ids[0, 4:] == minilm.tokenizer.pad_token_id).all()
    with pytest.raises(ValueError, match="sentence 1 is empty"):
        minilm.tokenizer(["a cat", " \t "])
    with pytest.raises(TypeError, match="list of strings"):
        minilm.tokenizer("a cat")


def test_tokenizer_warns_once_per_truncated_sentence(caplog):
    tokenizer = TextTokenizer(MINILM, max_length=8)
    with caplog.at_level(logging.WARNING, logger="refsam_jax.text.tokenizer"):
        ids, mask = tokenizer(["short one", "one two three four five six seven eight nine ten"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "refsam_jax.text.tokenizer"]
    assert len(warnings) == 1
    assert "sentence 1" in warnings[0] and "12 tokens" in warnings[0] and "4 tokens dropped" in warnings[0]
    assert mask.all(axis=1).tolist() == [False, True] and ids[1, -1] == 102  # [SEP] kept
    assert tokenizer.lengths(["short one", "a b c d e f g h i j"]).tolist() == [4, 12]
    assert tokenizer.truncated == {"one two three four five six seven eight nine ten"}
    with caplog.at_level(logging.WARNING, logger="refsam_jax.text.tokenizer"):
        tokenizer(["one two three four five six seven eight nine ten"])  # Seen before: no second warning.
    assert len([r for r in caplog.records if r.name == "refsam_jax.text.tokenizer"]) == 1


def test_clean_caption():
    assert clean_caption("  A Man\tRiding \n a Horse ") == "a man riding a horse"
