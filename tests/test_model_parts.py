"""RefSAM parts on their own: QIM vs a PyTorch transcription, DA/HDA vs numpy, Cross-Modal MLP, config checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from refsam_jax.model import config as model_config
from refsam_jax.model.adapters import Adapter, LoRALinear
from refsam_jax.model.cross_modal_mlp import CrossModalMLP, text_prompts
from refsam_jax.model.dense_attention import DenseAttention, HierarchicalDenseAttention
from refsam_jax.model.tracking import QueryInteractionModule
from refsam_jax.porting.torch_to_nnx import load_torch_state_dict
from refsam_jax.text import masked_mean


class TorchQIM(torch.nn.Module):
    """Spec §3.9 transcribed in PyTorch (dropout 0)."""

    def __init__(self, dim_in=256, hidden_dim=1024):
        super().__init__()
        self.self_attn = torch.nn.MultiheadAttention(dim_in, num_heads=8)
        self.linear1 = torch.nn.Linear(dim_in, hidden_dim)
        self.linear2 = torch.nn.Linear(hidden_dim, dim_in)
        self.linear_feat1 = torch.nn.Linear(dim_in, hidden_dim)
        self.linear_feat2 = torch.nn.Linear(hidden_dim, dim_in)
        self.norm_feat = torch.nn.LayerNorm(dim_in)
        self.norm1 = torch.nn.LayerNorm(dim_in)
        self.norm2 = torch.nn.LayerNorm(dim_in)

    def forward(self, q):
        tgt = self.norm1(q + self.self_attn(q, q, q)[0])
        tgt = self.norm2(tgt + self.linear2(torch.relu(self.linear1(tgt))))
        return self.norm_feat(q + self.linear_feat2(torch.relu(self.linear_feat1(tgt))))


@pytest.mark.parametrize("num_tokens", [1, 3])
def test_qim_matches_torch(num_tokens):
    torch.manual_seed(0)
    reference = TorchQIM().eval()
    with torch.no_grad():  # LayerNorm affine params away from (1, 0) so their mapping is exercised.
        for norm in (reference.norm1, reference.norm2, reference.norm_feat):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    qim = QueryInteractionModule(256, 1024, 8, rngs=nnx.Rngs(1))
    load_torch_state_dict(qim, state)
    x = np.random.default_rng(0).normal(size=(2, num_tokens, 256)).astype(np.float32)
    with torch.no_grad():  # torch MHA is sequence-first: [N, B, E].
        expected = reference(torch.from_numpy(x).transpose(0, 1)).transpose(0, 1).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(qim(jnp.asarray(x)))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def numpy_dense_attention(image, words, sentence, conv_w, conv_b, scale):
    """Spec §3.6 for one sample: image [g, g, C], words [L, C], sentence [C], conv_w torch [C, 2C, 1, 1]."""
    tokens = np.concatenate([words, sentence[None]], axis=0)
    logits = image @ tokens.T * scale
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    fused = np.concatenate([image, attn @ tokens], axis=-1)
    return fused @ conv_w[:, :, 0, 0].T + conv_b


def unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def test_dense_attention_matches_spec():
    rng = np.random.default_rng(0)
    dim, num_words = 32, 5
    image = unit(rng.normal(size=(2, 4, 4, dim))).astype(np.float32)
    words = unit(rng.normal(size=(2, num_words, dim))).astype(np.float32)
    sentence = unit(rng.normal(size=(2, dim))).astype(np.float32)
    conv_w = rng.normal(size=(dim, 2 * dim, 1, 1)).astype(np.float32) * 0.1
    conv_b = rng.normal(size=(dim,)).astype(np.float32)
    da = DenseAttention(dim, rngs=nnx.Rngs(0))
    load_torch_state_dict(da, {"dense_conv.weight": conv_w, "dense_conv.bias": conv_b})
    tokens = np.concatenate([words, sentence[:, None]], axis=1)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(da(jnp.asarray(image), jnp.asarray(tokens), jnp.ones((2, num_words + 1), bool)))
    for b in range(2):
        expected = numpy_dense_attention(image[b], words[b], sentence[b], conv_w, conv_b, 1 / np.sqrt(dim))
        np.testing.assert_allclose(got[b], expected, atol=1e-5, rtol=1e-5)

    # Masked (padded) words get no weight: the result equals DA over the valid tokens only.
    mask = np.ones((2, num_words + 1), bool)
    mask[:, 3:num_words] = False
    perturbed = tokens.copy()
    perturbed[:, 3:num_words] = 100.0
    with jax.default_matmul_precision("highest"):
        got = np.asarray(da(jnp.asarray(image), jnp.asarray(perturbed), jnp.asarray(mask)))
    for b in range(2):
        expected = numpy_dense_attention(image[b], words[b, :3], sentence[b], conv_w, conv_b, 1 / np.sqrt(dim))
        np.testing.assert_allclose(got[b], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("projection,fusion", [("concat", "weighted"), ("per_level", "conv")])
def test_hda_matches_reconstruction(projection, fusion):
    rng = np.random.default_rng(1)
    dim, interm_dim, levels, num_tokens = 16, 24, 3, 4
    hda = HierarchicalDenseAttention(dim, interm_dim, levels, projection=projection, fusion=fusion,
                                     temperature="learned", rngs=nnx.Rngs(0))
    image = unit(rng.normal(size=(1, 4, 4, dim))).astype(np.float32)
    interm = [rng.normal(size=(1, 4, 4, interm_dim)).astype(np.float32) for _ in range(levels)]
    tokens = unit(rng.normal(size=(1, num_tokens, dim))).astype(np.float32)
    mask = jnp.ones((1, num_tokens), bool)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(hda(jnp.asarray(image), jnp.asarray(tokens), mask, [jnp.asarray(i) for i in interm]))

    def conv(module, x):
        return x @ np.asarray(module.kernel[...])[0, 0] + np.asarray(module.bias[...])

    def da(feature, module, scale):
        logits = feature @ tokens[0].T * scale
        attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return conv(module, np.concatenate([feature, attn @ tokens[0]], axis=-1))

    scale = 1 / np.sqrt(dim)
    if projection == "concat":
        projected = conv(hda.fpn_conv, np.concatenate([i[0] for i in interm], axis=-1))
    else:
        projected = sum(conv(c, i[0]) for c, i in zip(hda.fpn_conv, interm))
    d1 = da(image[0], hda.dense_conv, scale)
    d2 = da(unit(projected), hda.dense_conv2, scale)
    if fusion == "weighted":
        expected = 0.5 * d1 + 0.5 * d2
    else:
        expected = conv(hda.multi_scale_conv, np.concatenate([d1, d2], axis=-1))
    np.testing.assert_allclose(got[0], expected, atol=1e-5, rtol=1e-5)


def test_cross_modal_mlp_shapes_and_pooling():
    mlp = CrossModalMLP(32, 16, hidden_layers=2, rngs=nnx.Rngs(0))
    assert [(l.in_features, l.out_features) for l in mlp.layers] == [(32, 16), (16, 16), (16, 16)]
    assert [(l.in_features, l.out_features) for l in CrossModalMLP(32, 16, hidden_layers=0, rngs=nnx.Rngs(0)).layers
            ] == [(32, 16)]
    features = jax.random.normal(jax.random.key(0), (2, 5, 32))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    words, sentence = text_prompts(mlp, features, mask)
    assert words.shape == (2, 5, 16) and sentence.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(words, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(sentence, axis=-1), 1.0, atol=1e-5)
    # Same weights for tokens and sentence; masked positions do not enter the mean.
    np.testing.assert_allclose(masked_mean(features, mask)[0], features[0, :3].mean(0), atol=1e-6)
    changed = features.at[0, 3:].set(7.0)
    np.testing.assert_allclose(text_prompts(mlp, changed, mask)[1], sentence, atol=1e-6)


def test_adapter_and_lora_init():
    adapter = Adapter(16, rngs=nnx.Rngs(0))
    assert adapter.D_fc1.out_features == 4
    x = jax.random.normal(jax.random.key(1), (3, 16))
    np.testing.assert_array_equal(adapter(x), x)  # zero-init D_fc2: identity
    random_adapter = Adapter(16, skip_connect=False, zero_init=False, rngs=nnx.Rngs(0))
    assert float(jnp.abs(random_adapter(x)).max()) > 0
    lora = LoRALinear(16, 8, 2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(lora(x), x @ lora.kernel[...] + lora.bias[...])
    assert float(jnp.abs(lora.w_a.kernel[...]).max()) <= 1 / 4  # Kaiming-uniform(a=sqrt(5)): U(+-1/sqrt(16))


def test_default_config_is_valid():
    model_config.validate_model_config(model_config.default_model_config())


@pytest.mark.parametrize("key,value,message", [
    ("dense.mode", "hdaa", "dense.mode='hdaa' is not one of 'none', 'origin', 'da', 'hda'"),
    ("adapter.placement", "some", "adapter.placement='some'"),
    ("hda.fusion", "sum", "hda.fusion='sum'"),
    ("sam.model_type", "vit_x", "sam.model_type='vit_x'"),
    ("lora.rank", -1, "lora.rank=-1 must be a non-negative integer"),
    ("text.width", 0, "text.width=0 must be a positive integer"),
    ("mlp.dropout", 1.5, "mlp.dropout=1.5 must lie in [0, 1)"),
])
def test_config_validation_errors(key, value, message):
    config = model_config.default_model_config()
    section, name = key.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        model_config.validate_model_config(config)


def test_parameter_counts_match_spec():
    """Spec §4.2: QIM 1,315,840; MLP 1024 -> 512 -> 256 656,128; DA conv 131,328; adapters D^2 + 2.5 D."""

    def count(make):
        return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(nnx.eval_shape(make), nnx.Param)))

    assert count(lambda: QueryInteractionModule(256, 1024, 8, rngs=nnx.Rngs(0))) == 1_315_840
    assert count(lambda: CrossModalMLP(1024, 256, rngs=nnx.Rngs(0))) == 656_128
    assert count(lambda: CrossModalMLP(1024, 256, hidden_layers=0, rngs=nnx.Rngs(0))) == 262_400
    assert count(lambda: DenseAttention(256, rngs=nnx.Rngs(0))) == 131_328
    pair = count(lambda: Adapter(768, rngs=nnx.Rngs(0))) + count(lambda: Adapter(768, skip_connect=False,
                                                                                rngs=nnx.Rngs(0)))
    assert pair == 768 ** 2 + 2.5 * 768 == 591_744
