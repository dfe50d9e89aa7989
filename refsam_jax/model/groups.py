"""Which RefSAM parameters train, and in which optimiser group: the paper's rules over parameter paths.

The first matching rule names the group (`refsam_jax.param_rules`); parameters that match no rule are
frozen (SAM's ViT, neck and prompt encoder). The training code builds its `optax.multi_transform` labels
from these rules.
"""

import re
from typing import Dict, Optional, Sequence, Tuple

import ml_collections
from flax import nnx

from refsam_jax import param_rules
from refsam_jax.param_rules import FROZEN, Rules  # noqa: F401  (FROZEN: the group of untrained parameters)

TRAINABLE_GROUPS: Tuple[Tuple[str, str], ...] = (
    (r"^sam\.image_encoder\.blocks\.\d+\.(Space_Adapter|MLP_Adapter)\.", "adapter"),
    (r"^sam\.image_encoder\.blocks\.\d+\.attn\.proj\.(w_a|w_b)\.", "lora"),
    (r"^resizer\.", "mlp"),
    (r"^dense\.", "dense"),
    (r"^sam\.mask_decoder\.", "mask_decoder"),
    (r"^tracking\.", "tracking"),
)

GROUP_NAMES = tuple(dict.fromkeys(group for _, group in TRAINABLE_GROUPS))

# The parameters RefSAM adds to SAM. They start random (or at zero), so leaving one frozen is a mistake;
# SAM's own parameters, the mask decoder included, may be frozen on purpose.
ADDED_PARAMETERS = (r"^(resizer|dense|tracking)\.|"
                    r"^sam\.image_encoder\.blocks\.\d+\.(Space_Adapter|MLP_Adapter|attn\.proj\.w_a|attn\.proj\.w_b)\.")


def trainable_rules(model_config: ml_collections.ConfigDict) -> Tuple[Tuple[str, str], ...]:
    """The (regex, group) rules for the groups this model config has parameters for."""
    present = {"mlp", "mask_decoder"}
    if model_config.adapter.placement != "none":
        present.add("adapter")
    if model_config.lora.rank > 0:
        present.add("lora")
    if model_config.dense.mode in ("da", "hda"):
        present.add("dense")
    if model_config.tracking.enabled:
        present.add("tracking")
    return tuple((regex, group) for regex, group in TRAINABLE_GROUPS if group in present)


def check_added_parameters_train(frozen_paths: Sequence[str]) -> None:
    """Raises ValueError naming the parameters RefSAM adds to SAM (`ADDED_PARAMETERS`) among `frozen_paths`."""
    untrained = [path for path in frozen_paths if re.search(ADDED_PARAMETERS, path)]
    if untrained:
        shown = ", ".join(untrained[:5]) + (f" ... and {len(untrained) - 5} more" if len(untrained) > 5 else "")
        raise ValueError(f"{len(untrained)} parameter(s) that RefSAM adds to SAM would stay frozen at their "
                         f"initialisation: no rule of config.trainable covers {shown}. Leave config.trainable "
                         f"empty for the paper's groups, add a rule, switch the module off in config.model, or "
                         f"name them in config.frozen_on_purpose")


def param_groups(model: nnx.Module, rules: Rules = TRAINABLE_GROUPS) -> Dict[str, str]:
    """Dotted path -> group (or FROZEN) for every `nnx.Param` of `model`."""
    return param_rules.param_groups(model, rules)


def count_by_group(model: nnx.Module, rules: Rules = TRAINABLE_GROUPS,
                   groups: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Number of parameters per group (FROZEN included); works on abstract models from `nnx.eval_shape`."""
    return param_rules.count_by_group(model, rules, groups or GROUP_NAMES)
