"""RefSAM model configuration: every architectural switch in one `ml_collections.ConfigDict`.

Defaults are the "faithful-yet-sane" model of REFSAM_SPEC.md §0.15: SAM with zero-initialised adapters in the
second half of the ViT, a 1-hidden-layer Cross-Modal MLP, Hierarchical Dense Attention (our reconstruction),
word prompts, the track token, and the *fixed* text handling (padded tokens masked everywhere). Every place
where the official code is odd has a switch that restores its behaviour (see the comments below).
"""

import copy
from typing import Any, Dict

import ml_collections

from refsam_jax.sam.config import MODEL_TYPES

# key -> allowed values, for every key with a closed set of choices.
CHOICES = {
    "sam.model_type": MODEL_TYPES,
    "text.padding": ("max_length", "longest"),
    "adapter.placement": ("none", "half", "all"),
    "dense.mode": ("none", "origin", "da", "hda"),
    "dense.temperature": ("fixed", "learned"),
    "dense.tokens": ("words", "sentence", "both"),
    "hda.fusion": ("weighted", "conv"),
    "hda.projection": ("concat", "per_level"),
    "hda.dense_conv": ("separate", "shared"),
}


def default_model_config() -> ml_collections.ConfigDict:
    """The default RefSAM model config (ViT-B backbone, 1024-wide text features as T5-3B gives)."""
    config = ml_collections.ConfigDict()

    config.sam = ml_collections.ConfigDict()
    config.sam.model_type = "vit_b"  # vit_b | vit_l | vit_h | tiny (unit tests)
    config.sam.checkpoint = ""  # converted SAM checkpoint (`python -m convert sam`); "" = random init

    config.text = ml_collections.ConfigDict()
    config.text.encoder = ""  # converted text-encoder checkpoint or Hugging Face folder (frozen, outside RefSAM)
    config.text.width = 1024  # feature width C_t of that encoder (t5-3b / roberta-large 1024); checked at load
    config.text.max_length = 32  # tokens per expression after padding (static shapes)
    # With text_attention_mask=False, the padding the text encoder and RefSAM see: all of max_length, or only up
    # to the longest sentence of the per-device batch ("longest", the official padding=True; none at inference)
    config.text.padding = "max_length"

    # True (fixed): the text encoder gets the attention mask, the sentence feature is a masked mean, padded
    # tokens are masked out of the decoder's attention and of Dense Attention. False (faithful to the official
    # code): no mask anywhere, padded tokens are pooled, attended to and used as prompts.
    config.text_attention_mask = True

    config.adapter = ml_collections.ConfigDict()
    config.adapter.placement = "half"  # blocks i >= depth // 2 (official); "all" = the py3.10 build; "none"
    config.adapter.ratio = 0.25  # bottleneck width / D
    config.adapter.mlp_scale = 0.5  # scale of the MLP adapter, parallel to the block's MLP
    config.adapter.zero_init = True  # zero D_fc2 so training starts at SAM; False = official random init
    config.adapter.remat = True  # jax.checkpoint the blocks that hold trainable adapters/LoRA

    config.lora = ml_collections.ConfigDict()
    config.lora.rank = 0  # LoRA rank on every block's attn.proj; 0 = off

    config.mlp = ml_collections.ConfigDict()
    # Hidden layers of width C/2: 0 = one Linear(C, 256); n = C -> C/2 -> [C/2]*(n-1) -> 256 (official: 1;
    # the paper's Fig. 5 varies the depth, spec §3.5).
    config.mlp.hidden_layers = 1
    config.mlp.dropout = 0.0

    config.dense = ml_collections.ConfigDict()
    config.dense.mode = "hda"  # none: no_mask_embed | origin: F^ + s | da: Dense Attention | hda: hierarchical
    config.dense.temperature = "fixed"  # a fixed softmax scale | "learned" (exp of a learned log-scale)
    config.dense.scale = 0.0  # the scale, or its initial value when learned; 0 = 1/sqrt(C) (official: 1/16)
    config.dense.tokens = "both"  # what (H)DA attends to: the words W and the sentence s (official) | one of them

    config.hda = ml_collections.ConfigDict()
    config.hda.fusion = "weighted"  # w * DA(F^) + (1 - w) * DA(P), w learnable, init 0.5 | "conv": 1x1 on concat
    config.hda.projection = "concat"  # fpn_conv 1x1 on concat of the levels (3D -> 256) | "per_level" (sum)
    # DA on the levels: its own dense_conv2 (the official inference scripts load one) | "shared": dense_conv,
    # as the official `--multi_scale` fragment reuses it
    config.hda.dense_conv = "separate"
    config.hda.level_norm = False  # a LayerNorm per level on the ViT features before the projection

    # The decoder gets the per-pixel L2-normalised SAM embedding (official code) instead of SAM's raw one.
    config.normalize_image_embedding = True

    config.sparse = ml_collections.ConfigDict()
    config.sparse.use_words = True  # word features are the sparse prompts; False = zeros of the same shape

    config.tracking = ml_collections.ConfigDict()
    config.tracking.enabled = True  # Implicit Tracking Module and the track token
    config.tracking.token_mlp = False  # a 256 -> 256 MLP on the track token before the decoder (GUESS)
    config.tracking.qim_previous = True  # QIM(o_t + tau_{t-1}) (official); False: QIM(o_t), no memory in the QIM
    return config


def fill_model_defaults(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """Adds to `config` (a model config, e.g. a run's saved before a key existed) every key of
    `default_model_config()` it lacks, with its default value, in place; returns {dotted key: value added}.

    A run saved before a key was added ran with the behaviour that the key's default now selects (new keys
    default to the old behaviour), so its missing keys are read as their defaults."""

    def fill(node: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, prefix: str) -> Dict[str, Any]:
        added = {}
        for key, default in defaults.items():
            if key not in node:
                node[key] = copy.deepcopy(default)
                added[f"{prefix}{key}"] = default.to_dict() if hasattr(default, "to_dict") else default
            elif isinstance(default, ml_collections.ConfigDict) and isinstance(node[key], ml_collections.ConfigDict):
                added.update(fill(node[key], default, f"{prefix}{key}."))
        return added

    with config.unlocked():
        return fill(config, default_model_config(), "")


def _get(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            raise ValueError(f"model config is missing key {key!r}")
        node = node[part]
    return node


def validate_model_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key and the allowed values for any bad setting."""
    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ValueError(f"model config {key}={value!r} is not one of {', '.join(map(repr, allowed))}")
    positive_ints = ("text.width", "text.max_length")
    for key in positive_ints:
        value = _get(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"model config {key}={value!r} must be a positive integer")
    for key in ("lora.rank", "mlp.hidden_layers"):
        value = _get(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"model config {key}={value!r} must be a non-negative integer")
    if not 0.0 < _get(config, "adapter.ratio") <= 1.0:
        raise ValueError(f"model config adapter.ratio={config.adapter.ratio!r} must lie in (0, 1]")
    if not _get(config, "dense.scale") >= 0.0:
        raise ValueError(f"model config dense.scale={config.dense.scale!r} must be >= 0 (0 = 1/sqrt(C))")
    if not 0.0 <= _get(config, "mlp.dropout") < 1.0:
        raise ValueError(f"model config mlp.dropout={config.mlp.dropout!r} must lie in [0, 1)")
    for key in ("text_attention_mask", "adapter.zero_init", "adapter.remat", "normalize_image_embedding",
                "sparse.use_words", "hda.level_norm", "tracking.enabled", "tracking.token_mlp",
                "tracking.qim_previous"):
        value = _get(config, key)
        if not isinstance(value, bool):
            raise ValueError(f"model config {key}={value!r} must be True or False")
    if config.tracking.token_mlp and not config.tracking.enabled:
        raise ValueError("model config tracking.token_mlp=True needs tracking.enabled=True")
