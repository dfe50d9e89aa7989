"""`python -m convert text`: Hugging Face folders (safetensors and .bin) -> orbax, verified, loaded back; errors."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers

from refsam_jax.configs.demo import MINILM
from refsam_jax.convert import main
from refsam_jax.porting.torch_to_nnx import CheckpointMismatchError
from refsam_jax.text import load_text_encoder
from refsam_jax.text import params as text_params

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
VOCAB = 30522  # the MiniLM (BERT uncased) tokenizer, reused by every tiny model; its pad id is 0
SENTENCES = ["a person riding a bike on the left", "the dog"]


def _hf_folder(path, model: torch.nn.Module, bin_file: bool = False):
    """A Hugging Face folder: config.json, the MiniLM tokenizer files, and safetensors or pytorch_model.bin."""
    if bin_file:
        path.mkdir()
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    else:
        model.save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(f"{MINILM}/{name}", path)
    return str(path)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A full T5ForConditionalGeneration (decoder and lm_head keys are skipped), gated-gelu, safetensors."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   feed_forward_proj="gated-gelu")
    return _hf_folder(tmp_path_factory.mktemp("t5") / "hf", transformers.T5ForConditionalGeneration(config))


def _convert(hf: str, output: str, *extra: str) -> int:
    return main(["text", "--hf", hf, "--output", output, *extra])


def test_t5_converts_verifies_and_loads_back(t5_folder, tmp_path, capsys):
    output = str(tmp_path / "t5")
    assert _convert(t5_folder, output, "--verify", "--max_length", "16") == 0
    assert "max|Δ| vs transformers T5EncoderModel" in capsys.readouterr().out
    converted = load_text_encoder(output, max_length=16)
    on_the_fly = load_text_encoder(t5_folder, max_length=16)
    assert converted.width == 16 and converted.config["model_type"] == "t5"
    features, mask = converted(SENTENCES)
    np.testing.assert_array_equal(np.asarray(features), np.asarray(on_the_fly(SENTENCES)[0]))
    reference = transformers.T5EncoderModel.from_pretrained(t5_folder).eval()
    ids, _ = converted.tokenizer(SENTENCES)
    expected = reference(input_ids=torch.from_numpy(ids.astype(np.int64)),
                         attention_mask=torch.from_numpy(np.asarray(mask).astype(np.int64))).last_hidden_state
    with jax.default_matmul_precision("highest"):
        features, mask = converted(SENTENCES)
    mask = np.asarray(mask)
    assert np.abs(np.asarray(features) - expected.detach().numpy())[mask].max() <= 1e-4


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_bert_bin_and_roberta_checkpoints_with_heads(model_type, tmp_path, capsys):
    """BertForMaskedLM as a .bin and RobertaForMaskedLM as safetensors: prefixes and heads handled."""
    torch.manual_seed(0)
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    if model_type == "bert":
        model, bin_file = transformers.BertForMaskedLM(transformers.BertConfig(**kwargs)), True
    else:
        model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(type_vocab_size=1, **kwargs))
        bin_file = False
    hf = _hf_folder(tmp_path / "hf", model, bin_file=bin_file)
    assert _convert(hf, str(tmp_path / "out"), "--verify") == 0
    out = capsys.readouterr().out
    delta = float(out.split("max|Δ| vs transformers ")[1].split(": ")[1].split(" ")[0])
    assert delta <= 1e-4
    assert load_text_encoder(str(tmp_path / "out")).width == 32


def test_verify_failure_returns_nonzero(t5_folder, tmp_path, monkeypatch, capsys):
    reference = text_params.reference_hidden_states
    monkeypatch.setattr(text_params, "reference_hidden_states", lambda *a: reference(*a) + 1e-3)
    assert _convert(t5_folder, str(tmp_path / "out"), "--verify") == 1
    assert "verification FAILED" in capsys.readouterr().err


def test_missing_config_and_weights(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        _convert(str(empty), str(tmp_path / "out"))
    (empty / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10, "hidden_size": 8,
                                                   "num_hidden_layers": 1, "num_attention_heads": 2,
                                                   "intermediate_size": 16}))
    with pytest.raises(FileNotFoundError, match="no weights file .*model.safetensors"):
        _convert(str(empty), str(tmp_path / "out"))
    (empty / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported text encoder model_type 'gpt2'"):
        _convert(str(empty), str(tmp_path / "out"))


def test_weights_that_do_not_fit_config(t5_folder, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(t5_folder, hf)
    config = json.loads((hf / "config.json").read_text())
    config.update(d_ff=24, num_layers=3)
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError) as error:
        _convert(str(hf), str(tmp_path / "out"))
    message = str(error.value)
    assert "model.safetensors does not match" in message
    assert "missing keys: encoder.block.2." in message
    assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight: checkpoint (32, 16) vs model (16, 24)" in message


def test_width_check_and_existing_output(t5_folder, tmp_path):
    with pytest.raises(ValueError, match="text encoder at .* has width 16 but config.text.width is 1024"):
        load_text_encoder(t5_folder, expected_width=1024)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "file").write_text("")
    with pytest.raises(FileExistsError, match="is not empty"):
        _convert(t5_folder, str(tmp_path / "out"))
