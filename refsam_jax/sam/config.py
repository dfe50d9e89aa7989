"""Segment Anything architecture hyper-parameters (the official ViT-B/L/H values and a tiny test config)."""

import dataclasses
from typing import Any, Dict, Mapping, Tuple


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Shapes of a SAM model: ViT image encoder, prompt encoder and two-way-transformer mask decoder."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: Tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self):
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(int(i) for i in self.encoder_global_attn_indexes))
        problems = []
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                            f"encoder_num_heads {self.encoder_num_heads}")
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if not all(0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            problems.append(f"encoder_global_attn_indexes {self.encoder_global_attn_indexes} must lie in "
                            f"[0, {self.encoder_depth})")
        if self.window_size < 1:
            problems.append(f"window_size must be positive, got {self.window_size}")
        if self.prompt_embed_dim % 8 or (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            problems.append(f"prompt_embed_dim {self.prompt_embed_dim} must be divisible by 8 and "
                            f"prompt_embed_dim // 2 by decoder_num_heads {self.decoder_num_heads}")
        if problems:
            raise ValueError("invalid SamConfig: " + "; ".join(problems))

    @property
    def image_embedding_size(self) -> int:
        """Side of the image embedding grid, g."""
        return self.img_size // self.patch_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-resolution mask logits and of mask prompts, 4g."""
        return 4 * self.image_embedding_size

    def to_dict(self) -> Dict[str, Any]:
        config = dataclasses.asdict(self)
        config["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return config

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "SamConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {', '.join(unknown)}")
        return cls(**config)


SAM_CONFIGS = {
    "vit_b": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                       encoder_global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31)),
}


def tiny_config() -> SamConfig:
    """A SAM small enough for unit tests: 64 px input, 8x8 grid, window 3 (padded to 9), 2 global blocks."""
    return SamConfig(
        encoder_embed_dim=48,
        encoder_depth=4,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(1, 3),
        img_size=64,
        patch_size=8,
        window_size=3,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
    )


def small_config() -> SamConfig:
    """A SAM that learns on a CPU in minutes (the demo): 96 px input, 12 x 12 grid (48 x 48 masks), 2 x 2
    windows of 6, 2 global blocks, and a 64-wide decoder whose attention heads (16 and 8 wide) can still match a
    word to a region."""
    return SamConfig(
        encoder_embed_dim=64,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        img_size=96,
        patch_size=8,
        window_size=6,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    )


SMALL_CONFIGS = {"tiny": tiny_config, "small": small_config}


def config_for_type(model_type: str) -> SamConfig:
    """The architecture named "vit_b", "vit_l", "vit_h" (SAM_CONFIGS), "tiny" (`tiny_config`) or "small"
    (`small_config`)."""
    if model_type in SMALL_CONFIGS:
        return SMALL_CONFIGS[model_type]()
    if model_type not in SAM_CONFIGS:
        raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    return SAM_CONFIGS[model_type]


MODEL_TYPES = (*SAM_CONFIGS, *SMALL_CONFIGS)  # the names `config_for_type` knows
CUSTOM = "custom"


def model_type_of(config: SamConfig) -> str:
    """The name of `config` in SAM_CONFIGS ("vit_b", ...), or "custom" for any other config."""
    return next((name for name, known in SAM_CONFIGS.items() if known == config), CUSTOM)
