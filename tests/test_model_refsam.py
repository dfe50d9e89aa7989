"""RefSAM end to end on a tiny SAM: adapters, track-token causality, scan vs loop, gradients, text masking."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refsam_jax.configs.demo import MINILM
from refsam_jax.model.adapters import AdapterOptions, adapted_image_encoder
from refsam_jax.model.config import default_model_config
from refsam_jax.model.groups import GROUP_NAMES, param_groups
from refsam_jax.model.refsam import UNROLL_FRAMES, build_refsam, encode_text, text_padding_mask
from refsam_jax.sam.build import SamCheckpointError, build_sam, save_sam
from refsam_jax.sam.config import tiny_config
from refsam_jax.text import TextEncoder, TextTokenizer, build_text_encoder

TEXT_WIDTH, TEXT_LENGTH, NUM_FRAMES = 32, 6, 4


def tiny_model_config(overrides=()):
    """The default config on the tiny SAM, with `{dotted key: value}` overrides."""
    config = default_model_config()
    config.sam.model_type = "tiny"
    config.text.width = TEXT_WIDTH
    config.text.max_length = TEXT_LENGTH
    for key, value in dict(overrides).items():
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    return config


@functools.lru_cache(maxsize=None)
def tiny_sam():
    return build_sam("custom", config=tiny_config(), seed=0)


def make_model(overrides=()):
    """RefSAM on a copy of the shared tiny SAM (building SAM dominates the cost of these tests); tests do not
    modify models, so one model per config is shared."""
    return _cached_model(tuple(sorted(dict(overrides).items())))


@functools.lru_cache(maxsize=None)
def _cached_model(overrides):
    return build_refsam(tiny_model_config(overrides), sam=nnx.clone(tiny_sam()), seed=0)


def inputs(batch=2, seed=0, num_frames=NUM_FRAMES):
    """Frames [B, T, 64, 64, 3], text features [B, L, 32] and a mask with 2 / 0 padded tokens."""
    rng = np.random.default_rng(seed)
    size = tiny_config().img_size
    frames = jnp.asarray(rng.normal(size=(batch, num_frames, size, size, 3)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(batch, TEXT_LENGTH, TEXT_WIDTH)), jnp.float32)
    mask = jnp.asarray(np.arange(TEXT_LENGTH)[None] < np.array([[TEXT_LENGTH - 2], [TEXT_LENGTH]])[:batch])
    return frames, text, mask


@functools.lru_cache(maxsize=None)
def jitted_forward(graphdef):
    @jax.jit
    def forward(state, frames, text, mask, track_state=None):
        return nnx.merge(graphdef, state)(frames, text, mask, track_state)

    return forward


def run(model, *args):
    graphdef, state = nnx.split(model)
    with jax.default_matmul_precision("highest"):
        return jitted_forward(graphdef)(state, *args)


@functools.lru_cache(maxsize=None)
def jitted_encoder(graphdef):
    return jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))


def encoder_outputs(encoder, images):
    graphdef, state = nnx.split(encoder)
    with jax.default_matmul_precision("highest"):
        embedding, interm = jitted_encoder(graphdef)(state, images)
    return [np.asarray(embedding)] + [np.asarray(x) for x in interm]


@pytest.mark.parametrize("options", [AdapterOptions(placement="all"), AdapterOptions(placement="none", lora_rank=2),
                                     AdapterOptions(placement="half", lora_rank=3, remat=False)])
def test_zero_init_adapters_and_lora_equal_plain_sam(options):
    sam = tiny_sam()
    images = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    plain = encoder_outputs(sam.image_encoder, images)
    adapted = adapted_image_encoder(sam.config, options, nnx.Rngs(5))
    nnx.update(adapted, nnx.state(sam.image_encoder))
    for got, expected in zip(encoder_outputs(adapted, images), plain):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # The adapters are really there: a random D_fc2 / w_b changes the output.
    for block in adapted.blocks:
        for linear in (getattr(getattr(block, "Space_Adapter", None), "D_fc2", None),
                       getattr(block.attn.proj, "w_b", None)):
            if linear is not None:
                linear.kernel.set_value(jnp.full(linear.kernel.shape, 0.05))
    assert not np.allclose(encoder_outputs(adapted, images)[0], plain[0], atol=1e-4)


def test_build_refsam_from_converted_sam_checkpoint(tmp_path):
    """A converted (plain) SAM checkpoint loads into the adapted model; only adapters/LoRA stay at init."""
    sam = tiny_sam()
    save_sam(sam, str(tmp_path / "sam"))
    images = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
    plain = encoder_outputs(sam.image_encoder, images)
    config = tiny_model_config({"lora.rank": 2, "sam.checkpoint": str(tmp_path / "sam")})
    model = build_refsam(config, seed=7)
    paths = param_groups(model)
    assert any(".Space_Adapter." in p for p in paths) and any(".w_b." in p for p in paths)
    assert not any(".Space_Adapter." in p for p in paths if p.startswith("sam.image_encoder.blocks.0."))
    for got, expected in zip(encoder_outputs(model.sam.image_encoder, images), plain):
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(model.sam.mask_decoder.iou_token.embedding[...],
                                  sam.mask_decoder.iou_token.embedding[...])
    with pytest.raises(SamCheckpointError, match="was requested"):
        build_refsam(tiny_model_config({"sam.model_type": "vit_b", "sam.checkpoint": str(tmp_path / "sam")}))


def test_output_shapes_for_every_dense_mode():
    frames, text, mask = inputs()
    for overrides in ({"dense.mode": "none", "tracking.enabled": False, "sparse.use_words": False,
                       "mlp.hidden_layers": 0, "adapter.placement": "none"},
                      {"dense.mode": "origin", "normalize_image_embedding": False},
                      {"dense.mode": "da", "dense.temperature": "learned", "tracking.token_mlp": True}):
        model = make_model(overrides)
        logits, (token, has_token) = run(model, frames, text, mask)
        assert logits.shape == (2, NUM_FRAMES, 32, 32), overrides
        assert np.isfinite(np.asarray(logits)).all(), overrides
        assert token.shape == (2, 32) and has_token.shape == (2,)
        assert bool(has_token.all()) == (model.tracking is not None), overrides


def test_track_token_only_affects_later_frames():
    model = make_model()
    frames, text, mask = inputs()
    base, _ = run(model, frames, text, mask)
    # A frame changes its own and later outputs (through the track token), never earlier ones.
    changed, _ = run(model, frames.at[:, 1].add(1.0), text, mask)
    diff = np.abs(np.asarray(changed) - np.asarray(base)).max(axis=(0, 2, 3))
    assert diff[0] == 0 and diff[1] > 1e-4 and (diff[2:] > 1e-6).all(), diff
    # Without a previous token (has_token False) its value is masked out entirely.
    noise = jax.random.normal(jax.random.key(2), (2, 32))
    masked, _ = run(model, frames, text, mask, (noise, jnp.zeros((2,), bool)))
    np.testing.assert_allclose(masked, base, atol=1e-6, rtol=0)
    # With one, it changes the first frame.
    carried, _ = run(model, frames, text, mask, (noise, jnp.ones((2,), bool)))
    assert np.abs(np.asarray(carried[:, 0]) - np.asarray(base[:, 0])).max() > 1e-6
    # Without the tracking module frames are independent.
    untracked = make_model({"tracking.enabled": False})
    base, _ = run(untracked, frames, text, mask)
    changed, _ = run(untracked, frames.at[:, 1].add(1.0), text, mask)
    diff = np.abs(np.asarray(changed) - np.asarray(base)).max(axis=(0, 2, 3))
    assert diff[0] == 0 and diff[1] > 1e-4 and (diff[2:] == 0).all(), diff


def test_several_sentences_per_clip_equal_one_call_each():
    model = make_model()
    frames, text, mask = inputs()
    other_text, other_mask = text[::-1] + 0.5, mask[::-1]
    per_clip, (token, has_token) = run(model, frames, jnp.stack([text, other_text], 1),
                                       jnp.stack([mask, other_mask], 1))
    assert per_clip.shape == (2, 2, NUM_FRAMES, 32, 32) and token.shape == (4, 32) and has_token.shape == (4,)
    for k, (sentence, sentence_mask) in enumerate([(text, mask), (other_text, other_mask)]):
        alone, (alone_token, _) = run(model, frames, sentence, sentence_mask)
        np.testing.assert_allclose(per_clip[:, k], alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(token.reshape(2, 2, -1)[:, k], alone_token, atol=1e-5, rtol=0)
    assert np.abs(np.asarray(per_clip[:, 0] - per_clip[:, 1])).max() > 1e-4  # the sentences matter


@pytest.mark.parametrize("num_frames", [NUM_FRAMES, UNROLL_FRAMES + 3])
def test_scan_equals_frame_loop_and_chunks(num_frames):
    """Also for a clip longer than the scan's unrolling (UNROLL_FRAMES), which leaves a remainder."""
    model = make_model()
    frames, text, mask = inputs(num_frames=num_frames)
    logits, (token, has_token) = run(model, frames, text, mask)
    graphdef, params = nnx.split(model)

    @jax.jit
    def frame_loop(params):
        model = nnx.merge(graphdef, params)
        words, sentence = model.prompts(text, mask)
        embedding, interm = model.encode_frames(frames.reshape(-1, *frames.shape[2:]))

        def frame(x, t):  # [B*T, ...] -> frame t [B, ...]
            return x.reshape(*frames.shape[:2], *x.shape[1:])[:, t]

        state, outputs = model.initial_track_state(2), []
        for t in range(num_frames):
            frame_logits, state = model.decode_frame(frame(embedding, t), [frame(x, t) for x in interm], words,
                                                     sentence, mask, state)
            outputs.append(frame_logits)
        return jnp.stack(outputs, axis=1), state


    with jax.default_matmul_precision("highest"):
        loop_logits, state = frame_loop(params)
    np.testing.assert_allclose(loop_logits, logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(state[0], token, atol=1e-5, rtol=0)
    assert bool(has_token.all()) and bool(state[1].all())
    # Continuing from a carried state: two chunks equal one call.
    half = num_frames // 2
    first, carry = run(model, frames[:, :half], text, mask)
    second, final = run(model, frames[:, half:], text, mask, carry)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(final[0], token, atol=1e-5, rtol=0)


@pytest.mark.parametrize("text_attention_mask", [True, False])
def test_padded_text_tokens(text_attention_mask):
    model = make_model({"text_attention_mask": text_attention_mask})
    frames, text, mask = inputs()
    base, _ = run(model, frames, text, mask)
    changed, _ = run(model, frames, text.at[0, TEXT_LENGTH - 2:].set(3.0), mask)
    diff = np.abs(np.asarray(changed[0]) - np.asarray(base[0])).max()
    if text_attention_mask:  # fixed: padding does not leak into pooling, Dense Attention or the decoder
        assert diff < 1e-6, diff
    else:  # official: padded tokens are pooled, attended to and used as prompts
        assert diff > 1e-4, diff
    np.testing.assert_allclose(changed[1], base[1], atol=1e-6, rtol=0)  # the other sample is untouched


def test_longest_padding_equals_cutting_the_tokens():
    """text.padding="longest" (text_attention_mask=False): each group of rows (a device's batch) is padded to its
    longest sentence and that padding is attended to, which equals cutting the group's token arrays there; the
    padding to the fixed length ("max_length") gives other numbers. A tiny random BERT encodes the ids."""
    hf_config = {"model_type": "bert", "hidden_size": TEXT_WIDTH, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 64, "type_vocab_size": 2,
                 "pad_token_id": 0, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    encoder = TextEncoder(build_text_encoder(hf_config, nnx.Rngs(0)), hf_config, TextTokenizer(MINILM, TEXT_LENGTH),
                          "tiny-bert")
    rng = np.random.default_rng(3)
    lengths = np.array([2, 4, 3, 1])  # groups of 2 rows: padded to 4 and to 3 tokens
    mask = np.arange(TEXT_LENGTH)[None] < lengths[:, None]
    ids = np.where(mask, rng.integers(1000, 30000, mask.shape), 0).astype(np.int32)
    size = tiny_config().img_size
    frames = jnp.asarray(rng.normal(size=(4, 2, size, size, 3)), jnp.float32)
    longest = make_model({"text_attention_mask": False, "text.padding": "longest"})

    features, applied = encode_text(encoder, ids, mask, text_attention_mask=False, padding="longest", group_size=2)
    np.testing.assert_array_equal(applied, np.arange(TEXT_LENGTH)[None] < np.array([4, 4, 3, 3])[:, None])
    logits, _ = run(longest, frames, features, applied)
    for rows, cut in ((slice(0, 2), 4), (slice(2, 4), 3)):
        cut_features, cut_mask = encode_text(encoder, ids[rows, :cut], mask[rows, :cut], text_attention_mask=False)
        assert cut_mask.all()
        expected, _ = run(longest, frames[rows], cut_features, cut_mask)
        np.testing.assert_allclose(logits[rows], expected, atol=1e-6, rtol=0)

    fixed_features, fixed_mask = encode_text(encoder, ids, mask, text_attention_mask=False)
    assert fixed_mask.all()  # "max_length": every position (the same program as above: its mask is applied)
    fixed, _ = run(longest, frames, fixed_features, fixed_mask)
    assert np.abs(np.asarray(fixed) - np.asarray(logits)).max() > 1e-4
    # One sentence alone (inference) sees no padding: its real tokens, as with the mask on.
    np.testing.assert_array_equal(text_padding_mask(mask, text_attention_mask=False, padding="longest"), mask)
    with pytest.raises(ValueError, match="4 sentences do not split into groups of 3"):
        text_padding_mask(mask, text_attention_mask=False, padding="longest", group_size=3)


def test_gradients_reach_every_trainable_group():
    # adapter.zero_init=False: D_fc1 gets no gradient while D_fc2 is zero.
    model = make_model({"lora.rank": 2, "tracking.token_mlp": True, "adapter.zero_init": False})
    groups = param_groups(model)
    frames, text, mask = inputs()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        logits, _ = nnx.merge(graphdef, params, rest)(frames, text, mask)
        return jnp.mean(jax.nn.sigmoid(logits) * jnp.linspace(-1, 1, logits.shape[-1]))

    grads = jax.jit(jax.grad(loss_fn))(params)
    norms = {".".join(map(str, path)): float(jnp.abs(g[...]).max()) for path, g in nnx.to_flat_state(grads)}
    for group in GROUP_NAMES:
        assert any(norms[p] > 0 for p, g in groups.items() if g == group), group
    required = ("Space_Adapter.D_fc1.kernel", "Space_Adapter.D_fc2.kernel", "MLP_Adapter.D_fc1.kernel",
                "MLP_Adapter.D_fc2.kernel", "attn.proj.w_b.kernel", "resizer.layers.0.kernel",
                "resizer.layers.1.kernel", "dense.dense_conv.kernel", "dense.dense_conv2.kernel",
                "dense.fpn_conv.kernel", "dense.multi_scale_weight",
                "tracking.temporal_aggregation_network.linear_feat2.kernel",
                "tracking.temporal_aggregation_network.self_attn.in_proj_weight",
                "tracking.track_token_mlp.lin1.kernel", "sam.mask_decoder.output_upscaling.layers.0.kernel",
                "sam.mask_decoder.output_hypernetworks_mlps.0.layers.0.kernel")
    for suffix in required:
        matching = [p for p in norms if p.endswith(suffix)]
        assert matching and all(norms[p] > 0 for p in matching), (suffix, {p: norms[p] for p in matching})
    frozen = [p for p, g in groups.items() if g == "frozen"]
    assert any(p.startswith("sam.image_encoder.blocks.0.attn.qkv") for p in frozen)
    assert not any(p.startswith(("resizer", "dense", "tracking", "sam.mask_decoder")) for p in frozen)


def test_text_width_is_checked():
    model = make_model()
    frames, text, mask = inputs()
    with pytest.raises(ValueError, match="text.width=32"):
        model(frames, jnp.zeros((2, TEXT_LENGTH, 16)), mask)
