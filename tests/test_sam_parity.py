"""SAM in Flax NNX equals `segment_anything` 1.0 (float32): image encoder, prompt encoder, mask decoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from refsam_jax.porting.torch_to_nnx import load_torch_state_dict
from refsam_jax.sam import SAM_CONFIGS, image_encoder, tiny_config
from refsam_jax.sam.image_encoder import Block, ImageEncoderViT, get_rel_pos
from refsam_jax.sam.params import sam_from_state_dict
from refsam_jax.sam.torch_reference import import_segment_anything

import_segment_anything()
from segment_anything.modeling import image_encoder as torch_image_encoder  # noqa: E402


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def tiny(make_torch_sam):
    """(config, torch Sam, converted Sam, torch image embedding [1, C, g, g] of `_tiny_image`)."""
    config = tiny_config()
    reference, state_dict = make_torch_sam(config, seed=0)
    with torch.no_grad():
        embedding = reference.image_encoder(torch.from_numpy(_tiny_image(config)).permute(0, 3, 1, 2))
    return config, reference, sam_from_state_dict(state_dict, config), embedding


def _tiny_image(config) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, config.img_size, config.img_size, 3)).astype(np.float32)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def _max_diff(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max(initial=0.0))


def _assert_close(got, want, tolerance: float) -> None:
    diff = _max_diff(got, want)
    assert diff <= tolerance, f"max|diff| {diff:.3g} > {tolerance:.0e}"


@pytest.mark.parametrize("q_size,k_size,length", [(5, 5, 9), (5, 5, 7), (4, 4, 13), (3, 6, 11), (6, 3, 5)])
def test_get_rel_pos_matches_torch(q_size, k_size, length):
    rel_pos = np.random.default_rng(0).normal(size=(length, 8)).astype(np.float32)
    expected = torch_image_encoder.get_rel_pos(q_size, k_size, torch.from_numpy(rel_pos)).numpy()
    _assert_close(get_rel_pos(q_size, k_size, jnp.asarray(rel_pos)), expected, 1e-5)


@pytest.mark.parametrize("loop", [True, False], ids=["cpu_loops", "batched"])
@pytest.mark.parametrize("window_size,query_chunk_tokens", [(3, 128), (0, 128), (0, 7)])
def test_block_on_non_square_grid_matches_torch(window_size, query_chunk_tokens, loop, monkeypatch):
    """A 5x7 grid with window 3 is padded to 6x9 (each axis separately); window 0 is global attention,
    in one pass or (7 query tokens per chunk) as a loop over query rows. Windows and heads are looped over
    as on CPU, or batched as on GPU and TPU."""
    monkeypatch.setattr(image_encoder, "QUERY_CHUNK_TOKENS", query_chunk_tokens)
    monkeypatch.setattr(image_encoder, "_loop_on_this_backend", lambda: loop)
    torch.manual_seed(0)
    reference = torch_image_encoder.Block(
        48, 3, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=window_size, input_size=(5, 7)).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.1 * torch.randn_like(param))
    block = Block(48, 3, 4.0, window_size, (5, 7), nnx.Rngs(0))
    load_torch_state_dict(block, {k: v.numpy() for k, v in reference.state_dict().items()})
    x = np.random.default_rng(1).normal(size=(2, 5, 7, 48)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    _assert_close(nnx.jit(lambda m, x: m(x))(block, jnp.asarray(x)), expected, 1e-5)


def test_image_encoder_matches_torch(tiny):
    config, reference, model, _ = tiny
    image = np.random.default_rng(1).normal(size=(2, config.img_size, config.img_size, 3)).astype(np.float32)
    global_blocks = [b for b in reference.image_encoder.blocks if b.window_size == 0]
    interm = []
    hooks = [b.register_forward_hook(lambda module, inputs, out: interm.append(out.numpy()))
             for b in global_blocks[:-1]]
    with torch.no_grad():
        expected = reference.image_encoder(torch.from_numpy(image).permute(0, 3, 1, 2))
    for hook in hooks:
        hook.remove()

    embedding, got_interm = nnx.jit(lambda m, x: m(x))(model.image_encoder, jnp.asarray(image))
    g = config.image_embedding_size
    assert embedding.shape == (2, g, g, config.prompt_embed_dim)
    assert len(got_interm) == len(config.encoder_global_attn_indexes) - 1 == len(interm)
    _assert_close(embedding, _nhwc(expected), 1e-4)
    for got, want in zip(got_interm, interm):
        assert got.shape == (2, g, g, config.encoder_embed_dim)
        _assert_close(got, want, 1e-4)


def test_image_encoder_in_bfloat16_stays_close(tiny):
    config, _, model, t_embedding = tiny
    fast = nnx.eval_shape(lambda: ImageEncoderViT(config, nnx.Rngs(0), dtype=jnp.bfloat16))
    nnx.update(fast, nnx.state(model.image_encoder))
    got, _ = nnx.jit(lambda m, x: m(x))(fast, jnp.asarray(_tiny_image(config)))
    assert got.dtype == jnp.float32
    expected = _nhwc(t_embedding)
    diff = _max_diff(got, expected)
    assert 0.0 < diff <= 0.05 * np.abs(expected).max()


def test_dense_pe_matches_torch(tiny):
    _, reference, model, _ = tiny
    _assert_close(model.prompt_encoder.get_dense_pe(), _nhwc(reference.prompt_encoder.get_dense_pe()), 1e-5)


def _prompts(kind: str, config, batch: int = 2):
    """Random prompts of one kind, in input-image pixels: (jax kwargs, torch kwargs)."""
    rng = np.random.default_rng(len(kind))
    size, mask_size = config.img_size, config.mask_input_size
    points = boxes = masks = None
    if "points" in kind:
        coords = rng.uniform(0, size, (batch, 3, 2)).astype(np.float32)
        labels = np.array([[1, 0, 1], [1, 1, -1]][:batch], np.int32)
        points = (coords, labels)
    if "box" in kind:
        boxes = np.sort(rng.uniform(0, size, (batch, 2, 2)), axis=1).reshape(batch, 4).astype(np.float32)
    if "mask" in kind:
        masks = rng.normal(size=(batch, mask_size, mask_size, 1)).astype(np.float32)
    ours = dict(points=points, boxes=boxes, masks=masks)
    theirs = dict(
        points=None if points is None else tuple(torch.from_numpy(a) for a in points),
        boxes=None if boxes is None else torch.from_numpy(boxes),
        masks=None if masks is None else torch.from_numpy(masks).permute(0, 3, 1, 2))
    return ours, theirs


@nnx.jit
def _prompt_and_decode(model, image_embedding, prompts):
    """Prompt encoder + mask decoder (single-mask, multimask, all outputs) for a prompt batch on one image
    embedding `[1, g, g, C]`."""
    sparse, dense = model.prompt_encoder(**prompts)
    embedding = jnp.repeat(image_embedding, sparse.shape[0], axis=0)
    image_pe = model.prompt_encoder.get_dense_pe()
    outputs = {multimask: model.mask_decoder(embedding, image_pe, sparse, dense, multimask_output=multimask)
               for multimask in (False, True)}
    return sparse, dense, outputs, model.mask_decoder.predict_masks(embedding, image_pe, sparse, dense)


@pytest.mark.parametrize("kind", ["points", "box", "points+box", "mask", "points+mask", "nothing"])
def test_prompt_encoder_and_mask_decoder_match_torch(tiny, kind):
    config, reference, model, t_embedding = tiny
    ours, theirs = _prompts(kind, config)
    sparse, dense, outputs, (all_masks, all_iou, got_tokens) = _prompt_and_decode(
        model, jnp.asarray(_nhwc(t_embedding)), ours)

    tokens_out = []
    hook = reference.mask_decoder.transformer.register_forward_hook(
        lambda module, inputs, out: tokens_out.append(out[0].numpy()))
    with torch.no_grad():
        t_sparse, t_dense = reference.prompt_encoder(**theirs)
        _assert_close(sparse, t_sparse.numpy(), 1e-5)
        _assert_close(dense, _nhwc(t_dense), 1e-5)
        for multimask, (masks, iou) in outputs.items():
            t_masks, t_iou = reference.mask_decoder(t_embedding, reference.prompt_encoder.get_dense_pe(), t_sparse,
                                                    t_dense, multimask_output=multimask)
            num_masks = 3 if multimask else 1
            assert masks.shape == (sparse.shape[0], num_masks, config.mask_input_size, config.mask_input_size)
            _assert_close(masks, t_masks.numpy(), 1e-3)
            _assert_close(iou, t_iou.numpy(), 1e-4)
    hook.remove()
    assert all_masks.shape[1] == all_iou.shape[1] == 4
    assert got_tokens.shape == (sparse.shape[0], 5 + sparse.shape[1], config.prompt_embed_dim)
    _assert_close(got_tokens, tokens_out[0], 1e-4)


_predict_masks = nnx.jit(lambda decoder, *args: decoder.predict_masks(*args))


def _decoder_inputs(tiny):
    """(jitted predict_masks, its inputs for a points+box prompt batch of 2)."""
    config, _, model, t_embedding = tiny
    ours, _ = _prompts("points+box", config)
    sparse, dense, _, _ = _prompt_and_decode(model, jnp.asarray(_nhwc(t_embedding)), ours)
    embedding = jnp.repeat(jnp.asarray(_nhwc(t_embedding)), sparse.shape[0], axis=0)
    predict = functools.partial(_predict_masks, model.mask_decoder)
    return predict, embedding, model.prompt_encoder.get_dense_pe(), sparse, dense


def test_token_mask_all_true_equals_no_mask(tiny):
    predict, embedding, image_pe, sparse, dense = _decoder_inputs(tiny)
    plain = predict(embedding, image_pe, sparse, dense)
    masked = predict(embedding, image_pe, sparse, dense, jnp.ones(sparse.shape[:2], bool))
    for got, want in zip(masked, plain):
        _assert_close(got, want, 1e-6)


def test_masked_tokens_are_ignored(tiny):
    """Invalid tokens (padding, at any position) give the outputs of SAM run on the valid tokens only, and
    their values do not matter; without the mask they would change the outputs."""
    predict, embedding, image_pe, sparse, dense = _decoder_inputs(tiny)
    batch, valid, dim = sparse.shape
    garbage = jax.random.normal(jax.random.key(0), (batch, 3, dim)) * 5.0
    padded = jnp.concatenate([sparse[:, :1], garbage, sparse[:, 1:]], axis=1)
    token_mask = jnp.array([True, False, False, False] + [True] * (valid - 1))[None].repeat(batch, axis=0)

    all_valid = jnp.ones((batch, valid), bool)  # same outputs as no mask (test above), one compile less
    reference = predict(embedding, image_pe, sparse, dense, all_valid)
    masks, iou, tokens = predict(embedding, image_pe, padded, dense, token_mask)
    _assert_close(masks, reference[0], 1e-5)
    _assert_close(iou, reference[1], 1e-5)
    keep = np.r_[0:6, 9:tokens.shape[1]]
    _assert_close(tokens[:, keep], reference[2], 1e-5)

    other = padded.at[:, 1:4].set(-garbage)
    masks2, iou2, tokens2 = predict(embedding, image_pe, other, dense, token_mask)
    _assert_close(masks2, masks, 1e-6)
    _assert_close(iou2, iou, 1e-6)
    _assert_close(tokens2[:, keep], tokens[:, keep], 1e-6)

    unmasked, _, _ = predict(embedding, image_pe, padded, dense, jnp.ones_like(token_mask))
    assert _max_diff(unmasked, reference[0]) > 1e-3


def test_full_size_vit_b_matches_torch(make_torch_sam):
    """vit_b at 1024x1024: image embedding and one point+box decoder pass."""
    config = SAM_CONFIGS["vit_b"]
    reference, state_dict = make_torch_sam(config, seed=0)
    model = sam_from_state_dict(state_dict, config)
    del state_dict
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 1024, 1024, 3)).astype(np.float32)
    coords, labels = np.array([[[300.0, 420.0]]], np.float32), np.array([[1]], np.int32)
    box = np.array([[100.0, 150.0, 700.0, 800.0]], np.float32)
    with torch.no_grad():
        t_embedding = reference.image_encoder(torch.from_numpy(image).permute(0, 3, 1, 2))
        t_sparse, t_dense = reference.prompt_encoder(
            points=(torch.from_numpy(coords), torch.from_numpy(labels)), boxes=torch.from_numpy(box), masks=None)
        t_masks, t_iou = reference.mask_decoder(t_embedding, reference.prompt_encoder.get_dense_pe(), t_sparse,
                                                t_dense, multimask_output=True)

    @nnx.jit
    def forward(model, image):
        embedding, _ = model.image_encoder(image)
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=box)
        masks, iou = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense,
                                        multimask_output=True)
        return embedding, masks, iou

    embedding, masks, iou = forward(model, jnp.asarray(image))
    assert embedding.shape == (1, 64, 64, 256) and masks.shape == (1, 3, 256, 256)
    _assert_close(embedding, _nhwc(t_embedding), 1e-4)
    _assert_close(masks, t_masks.numpy(), 1e-3)
    _assert_close(iou, t_iou.numpy(), 1e-4)
