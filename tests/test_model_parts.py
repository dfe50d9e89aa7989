"""RefSAM parts on their own: QIM vs a PyTorch transcription, DA/HDA vs numpy, Cross-Modal MLP, config checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from refsam_jax.model import config as model_config
from refsam_jax.model import groups
from refsam_jax.model.adapters import Adapter, LoRALinear
from refsam_jax.model.cross_modal_mlp import CrossModalMLP, text_prompts
from refsam_jax.model.dense_attention import DenseAttention, HierarchicalDenseAttention
from refsam_jax.model.refsam import build_refsam
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


@pytest.mark.parametrize("projection,fusion,dense_conv,level_norm", [
    ("concat", "weighted", "separate", False), ("per_level", "conv", "separate", False),
    ("concat", "weighted", "shared", True)])
def test_hda_matches_reconstruction(projection, fusion, dense_conv, level_norm):
    rng = np.random.default_rng(1)
    dim, interm_dim, levels, num_tokens = 16, 24, 3, 4
    hda = HierarchicalDenseAttention(dim, interm_dim, levels, projection=projection, fusion=fusion,
                                     temperature="learned", dense_conv=dense_conv, level_norm=level_norm,
                                     rngs=nnx.Rngs(0))
    image = unit(rng.normal(size=(1, 4, 4, dim))).astype(np.float32)
    interm = [(3 + 2 * rng.normal(size=(1, 4, 4, interm_dim))).astype(np.float32) for _ in range(levels)]
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
    levels_in = [i[0] for i in interm]
    if level_norm:  # LayerNorm at its init (scale 1, bias 0)
        levels_in = [(x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) for x in levels_in]
    if projection == "concat":
        projected = conv(hda.fpn_conv, np.concatenate(levels_in, axis=-1))
    else:
        projected = sum(conv(c, x) for c, x in zip(hda.fpn_conv, levels_in))
    d1 = da(image[0], hda.dense_conv, scale)
    d2 = da(unit(projected), hda.dense_conv if dense_conv == "shared" else hda.dense_conv2, scale)
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
    ("hda.dense_conv", "both", "hda.dense_conv='both' is not one of 'separate', 'shared'"),
    ("text.padding", "shortest", "text.padding='shortest' is not one of 'max_length', 'longest'"),
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


def test_hda_variants_parameters():
    """ViT-B widths: two 512 -> 256 convs, fpn_conv 3 x 768 -> 256 and w; "shared" drops dense_conv2,
    level_norm adds a LayerNorm (scale, bias) per level."""

    def shapes(**variant):
        hda = nnx.eval_shape(lambda: HierarchicalDenseAttention(256, 768, 3, rngs=nnx.Rngs(0), **variant))
        return {".".join(map(str, path)): v.shape for path, v in nnx.to_flat_state(nnx.state(hda, nnx.Param))}

    def count(found):
        return sum(int(np.prod(shape)) for shape in found.values())

    separate, shared, normed = shapes(), shapes(dense_conv="shared"), shapes(level_norm=True)
    assert count(separate) == 2 * 131_328 + 3 * 768 * 256 + 256 + 1 == 852_737
    assert set(separate) - set(shared) == {"dense_conv2.kernel", "dense_conv2.bias"}
    assert count(shared) == 852_737 - 131_328
    assert set(normed) - set(separate) == {f"level_norms.{k}.{p}" for k in range(3) for p in ("scale", "bias")}
    assert count(normed) == 852_737 + 3 * 2 * 768
    with pytest.raises(ValueError, match="hda.dense_conv 'both'"):
        HierarchicalDenseAttention(16, 24, 3, dense_conv="both", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("variant", [{"hda.dense_conv": "shared"}, {"hda.level_norm": True}])
def test_hda_variants_are_trained(variant):
    """The paper's rules put every HDA parameter of the variant in `dense` (abstract tiny RefSAM), and each
    gets a gradient and a step lowers a loss (HDA alone)."""
    config = model_config.default_model_config()
    config.sam.model_type = "tiny"
    for key, value in variant.items():
        section, name = key.split(".")
        config[section][name] = value
    refsam = nnx.eval_shape(lambda: build_refsam(config, seed=0))
    found = groups.param_groups(refsam, groups.trainable_rules(config))
    dense = sorted(path for path in found if path.startswith("dense."))
    assert dense and all(found[path] == "dense" for path in dense)
    assert any("level_norms" in path for path in dense) == config.hda.level_norm
    assert any("dense_conv2" in path for path in dense) == (config.hda.dense_conv == "separate")

    rng = np.random.default_rng(0)
    hda = HierarchicalDenseAttention(16, 24, 3, dense_conv=config.hda.dense_conv, level_norm=config.hda.level_norm,
                                     rngs=nnx.Rngs(0))
    image = jnp.asarray(unit(rng.normal(size=(2, 4, 4, 16))), jnp.float32)
    interm = [jnp.asarray(rng.normal(size=(2, 4, 4, 24)), jnp.float32) for _ in range(3)]
    tokens = jnp.asarray(unit(rng.normal(size=(2, 5, 16))), jnp.float32)
    target = jnp.asarray(rng.normal(size=(2, 4, 4, 16)), jnp.float32)
    graphdef, params = nnx.split(hda, nnx.Param)

    @jax.jit
    def loss_and_grads(params):
        def loss_fn(params):
            out = nnx.merge(graphdef, params)(image, tokens, jnp.ones((2, 5), bool), interm)
            return jnp.mean((out - target) ** 2)
        return jax.value_and_grad(loss_fn)(params)

    loss, grads = loss_and_grads(params)
    norms = {".".join(map(str, path)): float(jnp.abs(g[...]).max()) for path, g in nnx.to_flat_state(grads)}
    assert all(norm > 0 for norm in norms.values()), norms
    stepped = jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads)
    assert float(loss_and_grads(stepped)[0]) < float(loss)
