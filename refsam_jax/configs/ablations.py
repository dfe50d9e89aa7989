"""The paper's ablations as sweep arms: `python -m refsam_jax.sweep --config configs/demo.py --preset NAME`.

Each preset maps a config to named arms, `(name, [(config key, value), ...])`, trained and evaluated one
after the other (spec §7: Table 4's components, Fig. 5's MLP depth, Fig. 6's learning rates).
  components     MLP | DA | HDA | MLP+DA | MLP+HDA (sparse word prompts and/or dense attention), then the
                 full model without the Implicit Tracking Module and without adapters
  mlp_depth      0 (linear) to 3 hidden layers in the Cross-Modal MLP
  hda_variants   our HDA reconstruction (spec §3.7) against one change each: per-level projection, conv
                 fusion, one dense conv shared by the levels, a LayerNorm per level
  learning_rates the MLP, dense-attention and mask-decoder learning rates at 0.1x and 10x the config's
"""

from typing import Any, Callable, Dict, List, Sequence, Tuple

import ml_collections

Arm = Tuple[str, Sequence[Tuple[str, Any]]]


def components(config: ml_collections.ConfigDict) -> List[Arm]:
    del config
    parts = {"MLP": (True, "none"), "DA": (False, "da"), "HDA": (False, "hda"), "MLP+DA": (True, "da"),
             "MLP+HDA": (True, "hda")}
    arms = [(name, [("model.sparse.use_words", words), ("model.dense.mode", dense)])
            for name, (words, dense) in parts.items()]
    full = list(arms[-1][1])
    arms.append(("MLP+HDA-ITM", full + [("model.tracking.enabled", False)]))
    arms.append(("MLP+HDA-adapters", full + [("model.adapter.placement", "none")]))
    return arms


def mlp_depth(config: ml_collections.ConfigDict) -> List[Arm]:
    del config
    return [(f"mlp_hidden_layers={n}", [("model.mlp.hidden_layers", n)]) for n in range(4)]


def hda_variants(config: ml_collections.ConfigDict) -> List[Arm]:
    del config
    hda = [("model.dense.mode", "hda")]
    return [("hda", hda), ("per_level", hda + [("model.hda.projection", "per_level")]),
            ("conv_fusion", hda + [("model.hda.fusion", "conv")]),
            ("shared_dense_conv", hda + [("model.hda.dense_conv", "shared")]),
            ("level_norm", hda + [("model.hda.level_norm", True)])]


def learning_rates(config: ml_collections.ConfigDict) -> List[Arm]:
    arms = [("config_lrs", [])]
    for group in ("mlp", "dense", "mask_decoder"):
        for factor in (0.1, 10.0):
            lr = float(config.optim.lr[group]) * factor
            arms.append((f"{group}_lr={lr:g}", [(f"optim.lr.{group}", lr)]))
    return arms


PRESETS: Dict[str, Callable[[ml_collections.ConfigDict], List[Arm]]] = {
    "components": components, "mlp_depth": mlp_depth, "hda_variants": hda_variants,
    "learning_rates": learning_rates}
