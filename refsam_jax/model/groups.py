"""Which RefSAM parameters are trained, and in which optimiser group: regex rules over parameter paths.

A parameter path is the NNX path joined by dots, e.g. `sam.image_encoder.blocks.7.Space_Adapter.D_fc2.kernel`.
The first matching rule names the group; parameters that match no rule are frozen (SAM's ViT, neck and
prompt encoder). The training code builds its `optax.multi_transform` labels from these rules.
"""

import re
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from flax import nnx

FROZEN = "frozen"

TRAINABLE_GROUPS: Tuple[Tuple[str, str], ...] = (
    (r"^sam\.image_encoder\.blocks\.\d+\.(Space_Adapter|MLP_Adapter)\.", "adapter"),
    (r"^sam\.image_encoder\.blocks\.\d+\.attn\.proj\.(w_a|w_b)\.", "lora"),
    (r"^resizer\.", "mlp"),
    (r"^dense\.", "dense"),
    (r"^sam\.mask_decoder\.", "mask_decoder"),
    (r"^tracking\.", "tracking"),
)

GROUP_NAMES = tuple(dict.fromkeys(group for _, group in TRAINABLE_GROUPS))


def path_string(path: Iterable) -> str:
    """An NNX state path (tuple of keys) as a dotted string."""
    return ".".join(str(p) for p in path)


def group_of(path: str, rules: Sequence[Tuple[str, str]] = TRAINABLE_GROUPS) -> str:
    """The group of a dotted parameter path, or FROZEN."""
    for pattern, group in rules:
        if re.search(pattern, path):
            return group
    return FROZEN


def param_groups(model: nnx.Module, rules: Sequence[Tuple[str, str]] = TRAINABLE_GROUPS) -> Dict[str, str]:
    """Dotted path -> group for every `nnx.Param` of `model`."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {path_string(path): group_of(path_string(path), rules) for path, _ in flat}


def count_by_group(model: nnx.Module, rules: Sequence[Tuple[str, str]] = TRAINABLE_GROUPS,
                   groups: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Number of parameters per group (FROZEN included); works on abstract models from `nnx.eval_shape`."""
    counts = {group: 0 for group in (groups or GROUP_NAMES)}
    counts.setdefault(FROZEN, 0)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        group = group_of(path_string(path), rules)
        counts[group] = counts.get(group, 0) + int(np.prod(variable.shape))
    return counts
