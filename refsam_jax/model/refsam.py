"""RefSAM: SAM + Cross-Modal MLP + (Hierarchical) Dense Attention + Implicit Tracking Module (spec §2).

One expression over a clip, per frame t (channels-last, static shapes):

    F_t, I_t      = image_encoder(frame_t)           [B, g, g, C], K x [B, g, g, D]   (all B*T frames at once)
    F^_t          = l2n(F_t) per pixel               (the decoder's image input when normalize_image_embedding)
    W, s          = l2n(MLP(E)), l2n(MLP(mean E))    [B, L, C], [B, C]                 (once per clip)
    dense_t       = DA / HDA(F^_t, [W; s], I_t)      [B, g, g, C]
    tokens        = [iou, mask x 4, W (L), track (1)]    (the decoder prepends iou and mask tokens)
    logits_t, o_t = mask_decoder(F^_t, pe, tokens, dense_t)      main mask [B, 4g, 4g]; o_t: main mask token
    tau_t         = QIM(o_t + tau_{t-1})  (QIM(o_t) at the first frame)

The track token is the last prompt token (GUESS, spec §3.8: the author says it is "a prompt token attached"
and used only at the next frame). To keep shapes static its slot always exists and is masked out of the
decoder's attention (`token_mask`) while there is no previous token. The track state `(token [B, C],
has_token [B] bool)` is carried by `jax.lax.scan` over frames, and can be passed back in to continue a video
chunk by chunk in constant memory.

Text handling (`text_attention_mask`): True (fixed) masks padded word tokens out of the pooled sentence
feature, Dense Attention and the decoder's attention; False reproduces the official code, where padding is
pooled, attended to and used as prompts (the text encoder must then also run without a mask: `encode_text`).
How much padding the official code has is `text.padding`: "max_length" (all of the fixed length) or
"longest" (up to the longest sentence of the per-device batch, as the official `padding=True` per GPU; the
mask then marks that prefix, made by `text_padding_mask`). The frozen text encoder is not part of RefSAM:
it takes features.
"""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from refsam_jax.model.adapters import AdapterOptions, adapted_image_encoder
from refsam_jax.model.config import validate_model_config
from refsam_jax.model.cross_modal_mlp import CrossModalMLP, l2_normalize, text_prompts
from refsam_jax.model.dense_attention import DenseAttention, HierarchicalDenseAttention
from refsam_jax.model.tracking import ImplicitTrackingModule
from refsam_jax.sam.build import build_sam, load_sam
from refsam_jax.sam.config import SamConfig, config_for_type
from refsam_jax.sam.model import Sam

TrackState = Tuple[jax.Array, jax.Array]  # (track token [B, C], has_token [B] bool)
# Frames of a clip decoded per iteration of the scan over time. Unrolled, XLA schedules and fuses across
# frames: a training step of the demo (3 frames, CPU) takes 0.71x the time of the rolled scan (docs/design.md).
UNROLL_FRAMES = 8


def initial_track_state(batch_size: int, dim: int = 256, dtype=jnp.float32) -> TrackState:
    """No track token yet: zeros and has_token False."""
    return jnp.zeros((batch_size, dim), dtype), jnp.zeros((batch_size,), bool)


def text_padding_mask(text_mask: jax.Array, *, text_attention_mask: bool, padding: str = "max_length",
                      group_size: int = 1) -> jax.Array:
    """The `[B, L]` mask that RefSAM and its text encoder apply, from the tokenizer's (True on the real
    tokens, which come first):
      text_attention_mask=True          the real tokens: padding is masked everywhere (ours);
      False, padding="max_length"       every position: padding to the fixed length is attended to;
      False, padding="longest"          the positions before the longest sentence of each group of `group_size`
                                        consecutive rows, padding included: the official code, which pads each
                                        per-GPU batch to its longest sentence, and a sentence alone not at all.
                                        The same numbers as cutting the group's tokens there.
    """
    text_mask = jnp.asarray(text_mask, bool)
    if text_attention_mask:
        return text_mask
    if padding == "max_length":
        return jnp.ones_like(text_mask)
    if padding != "longest":
        raise ValueError(f"text.padding {padding!r} is not one of 'max_length', 'longest'")
    batch, length = text_mask.shape
    if group_size < 1 or batch % group_size:
        raise ValueError(f"{batch} sentences do not split into groups of {group_size} (the per-device batch)")
    longest = jnp.sum(text_mask, axis=-1).reshape(-1, group_size).max(axis=-1)
    return jnp.arange(length)[None, :] < jnp.repeat(longest, group_size)[:, None]


def encode_text(text_encoder, input_ids: jax.Array, attention_mask: jax.Array, *, text_attention_mask: bool,
                padding: str = "max_length", group_size: int = 1,
                state: Optional[nnx.State] = None) -> Tuple[jax.Array, jax.Array]:
    """Frozen text features for RefSAM: `(features [B, L, C_t], mask [B, L])` from a `refsam_jax.text`
    encoder, which runs with the mask `text_padding_mask` makes (see there) and returns it: with
    `text_attention_mask=False` (official code) every position it marks, padding included, is valid."""
    attention_mask = text_padding_mask(attention_mask, text_attention_mask=text_attention_mask, padding=padding,
                                       group_size=group_size)
    return jax.lax.stop_gradient(text_encoder.encode_ids(input_ids, attention_mask, state)), attention_mask


def sam_config_for(config: ml_collections.ConfigDict) -> SamConfig:
    """The SAM architecture named by `config.sam.model_type`."""
    validate_model_config(config)
    return config_for_type(config.sam.model_type)


def adapter_options(config: ml_collections.ConfigDict) -> AdapterOptions:
    return AdapterOptions(placement=config.adapter.placement, ratio=config.adapter.ratio,
                          mlp_scale=config.adapter.mlp_scale, zero_init=config.adapter.zero_init,
                          lora_rank=config.lora.rank, remat=config.adapter.remat)


class RefSAM(nnx.Module):
    """Referring video segmentation model over pre-computed text features (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, sam: Sam, text_width: int, *, rngs: nnx.Rngs):
        validate_model_config(config)
        sam_config = sam.config
        dim = sam_config.prompt_embed_dim
        self.sam = sam
        self.dim = dim
        self.text_width = int(text_width)
        self.text_attention_mask = bool(config.text_attention_mask)
        self.text_padding = str(config.text.padding)
        self.normalize_image_embedding = bool(config.normalize_image_embedding)
        self.use_words = bool(config.sparse.use_words)
        self.dense_mode = str(config.dense.mode)
        self.dense_tokens = str(config.dense.tokens)
        self.resizer = CrossModalMLP(self.text_width, dim, hidden_layers=config.mlp.hidden_layers,
                                     dropout=config.mlp.dropout,
                                     rngs=rngs)
        if self.dense_mode == "da":
            self.dense = DenseAttention(dim, temperature=config.dense.temperature, scale=config.dense.scale,
                                        rngs=rngs)
        elif self.dense_mode == "hda":
            self.dense = HierarchicalDenseAttention(
                dim, sam_config.encoder_embed_dim, len(sam_config.encoder_global_attn_indexes) - 1,
                projection=config.hda.projection, fusion=config.hda.fusion, temperature=config.dense.temperature,
                dense_conv=config.hda.dense_conv, level_norm=config.hda.level_norm, scale=config.dense.scale,
                rngs=rngs)
        else:
            self.dense = None
        self.tracking = (ImplicitTrackingModule(dim, token_mlp=config.tracking.token_mlp,
                                                qim_previous=config.tracking.qim_previous, rngs=rngs)
                         if config.tracking.enabled else None)

    def _text_mask(self, text_mask: jax.Array) -> jax.Array:
        """The mask actually applied: the given one (fixed, or the official padding to the longest sentence,
        which `text_padding_mask` made) or all True (official, padded to the fixed length)."""
        text_mask = text_mask.astype(bool)
        return text_mask if self.text_attention_mask or self.text_padding == "longest" else jnp.ones_like(text_mask)

    def initial_track_state(self, batch_size: int) -> TrackState:
        return initial_track_state(batch_size, self.dim)

    def encode_frames(self, frames: jax.Array) -> Tuple[jax.Array, Sequence[jax.Array]]:
        """`[N, S, S, 3]` SAM-normalised frames -> image embedding `[N, g, g, C]` (F^ when
        normalize_image_embedding, else SAM's F) and the intermediate features (HDA only, else empty)."""
        embedding, interm = self.sam.image_encoder(frames)
        if self.normalize_image_embedding:
            embedding = l2_normalize(embedding)
        return embedding, (list(interm) if self.dense_mode == "hda" else [])

    def prompts(self, text_features: jax.Array, text_mask: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """`[B, L, C_t], [B, L] -> (word prompts [B, L, C], sentence [B, C])`, L2-normalised."""
        if text_features.shape[-1] != self.text_width:
            raise ValueError(f"text features have width {text_features.shape[-1]} but the model was built for "
                             f"text.width={self.text_width}")
        return text_prompts(self.resizer, text_features, self._text_mask(text_mask))

    def dense_prompt(self, image_embedding: jax.Array, interm: Sequence[jax.Array], words: jax.Array,
                     sentence: jax.Array, text_mask: jax.Array) -> jax.Array:
        """Dense prompt `[B, g, g, C]` for the configured `dense.mode`."""
        normalized = image_embedding if self.normalize_image_embedding else l2_normalize(image_embedding)
        if self.dense_mode == "none":
            no_mask = self.sam.prompt_encoder.no_mask_embed.embedding[...]
            return jnp.broadcast_to(no_mask.reshape(1, 1, 1, -1), normalized.shape)
        if self.dense_mode == "origin":
            return normalized + sentence[:, None, None, :]
        tokens, token_mask = {
            "words": (words, text_mask),
            "sentence": (sentence[:, None, :], jnp.ones_like(text_mask[:, :1])),
            "both": (jnp.concatenate([words, sentence[:, None, :]], axis=1),
                     jnp.concatenate([text_mask, jnp.ones_like(text_mask[:, :1])], axis=1)),
        }[self.dense_tokens]
        return self.dense(normalized, tokens, token_mask, interm)

    def decode_frame(self, image_embedding: jax.Array, interm: Sequence[jax.Array], words: jax.Array,
                     sentence: jax.Array, text_mask: jax.Array,
                     track_state: TrackState) -> Tuple[jax.Array, TrackState]:
        """One frame: `image_embedding [B, g, g, C]`, prompts from `prompts` -> (main-mask low-res logits
        `[B, 4g, 4g]`, the track state for the next frame)."""
        text_mask = self._text_mask(text_mask)
        dense = self.dense_prompt(image_embedding, interm, words, sentence, text_mask)
        sparse = words if self.use_words else jnp.zeros_like(words)
        token_mask = text_mask
        if self.tracking is not None:
            track_token, has_token = track_state
            sparse = jnp.concatenate([sparse, self.tracking.prompt(track_token)[:, None, :]], axis=1)
            token_mask = jnp.concatenate([token_mask, has_token[:, None]], axis=1)
        masks, _, tokens_out = self.sam.mask_decoder.predict_masks(
            image_embedding, self.sam.prompt_encoder.get_dense_pe(), sparse, dense, token_mask=token_mask)
        if self.tracking is not None:
            new_token = self.tracking(tokens_out[:, 1], track_token, has_token)
            track_state = (new_token, jnp.ones_like(has_token))
        return masks[:, 0], track_state

    def __call__(self, frames: jax.Array, text_features: jax.Array, text_mask: jax.Array,
                 track_state: Optional[TrackState] = None) -> Tuple[jax.Array, TrackState]:
        """A clip: `frames [B, T, S, S, 3]`, text `[B, L, C_t]` + mask `[B, L]` -> (low-res logits
        `[B, T, 4g, 4g]`, final track state). Pass the returned state back in to continue the video.

        K sentences per clip: text `[B, K, L, C_t]` + mask `[B, K, L]` -> logits `[B, K, T, 4g, 4g]`; the frames
        are encoded once and decoded for each sentence (track state batch B*K, rows clip-major)."""
        batch, num_frames = frames.shape[:2]
        per_clip = text_features.shape[1] if text_features.ndim == 4 else 0
        if per_clip:
            text_features = text_features.reshape(batch * per_clip, *text_features.shape[2:])
            text_mask = text_mask.reshape(batch * per_clip, text_mask.shape[-1])
        words, sentence = self.prompts(text_features, text_mask)
        embedding, interm = self.encode_frames(frames.reshape(batch * num_frames, *frames.shape[2:]))

        def time_major(x):  # [B*T, ...] -> [T, B*K, ...]
            x = jnp.swapaxes(x.reshape(batch, num_frames, *x.shape[1:]), 0, 1)
            return jnp.repeat(x, per_clip, axis=1) if per_clip else x

        if track_state is None:
            track_state = self.initial_track_state(batch * max(per_clip, 1))

        def step(state, inputs):
            frame_embedding, frame_interm = inputs
            logits, state = self.decode_frame(frame_embedding, frame_interm, words, sentence, text_mask, state)
            return state, logits

        track_state, logits = jax.lax.scan(step, track_state,
                                           (time_major(embedding), [time_major(x) for x in interm]),
                                           unroll=min(num_frames, UNROLL_FRAMES))
        logits = jnp.swapaxes(logits, 0, 1)
        return (logits.reshape(batch, per_clip, *logits.shape[1:]) if per_clip else logits), track_state


def build_refsam(config: ml_collections.ConfigDict, *, sam: Optional[Sam] = None, seed: int = 0,
                 dtype=jnp.float32) -> RefSAM:
    """RefSAM from a model config. SAM comes from `sam`, else from `config.sam.checkpoint` (a converted
    checkpoint), else is randomly initialised with `config.sam.model_type`. When adapters or LoRA are on, the
    image encoder is rebuilt with them and the SAM encoder's state is copied in: every SAM parameter keeps its
    path in the adapted encoder, so only the adapter/LoRA parameters stay at their initialisation. `dtype`:
    the compute dtype of the image encoder's matmuls when SAM is built here (parameters stay float32)."""
    validate_model_config(config)
    if sam is None:
        if config.sam.checkpoint:
            sam = load_sam(config.sam.checkpoint, config=sam_config_for(config), dtype=dtype)
        else:
            sam = build_sam(config.sam.model_type, config=sam_config_for(config), seed=seed, dtype=dtype)
    options = adapter_options(config)
    rngs = nnx.Rngs(seed + 1)
    if options.placement != "none" or options.lora_rank > 0:
        encoder = adapted_image_encoder(sam.config, options, rngs, dtype=sam.image_encoder.dtype)
        nnx.update(encoder, nnx.state(sam.image_encoder))
        sam.image_encoder = encoder
    return RefSAM(config, sam, config.text.width, rngs=rngs)
