"""Trainable-parameter report: `python -m refsam_jax.model.param_report [--text_width 1024]`.

Counts the parameters of every trainable group (rules in `refsam_jax.model.groups`) for ViT-B/L/H, with
abstract models from `nnx.eval_shape` (no weights are allocated), next to the paper's totals.
"""

import argparse
import sys
from typing import Dict, Sequence

from flax import nnx

from refsam_jax.model.config import default_model_config
from refsam_jax.model.groups import FROZEN, GROUP_NAMES, count_by_group
from refsam_jax.model.refsam import RefSAM, build_refsam
from refsam_jax.sam.config import SAM_CONFIGS

MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
PAPER_MILLIONS = {"vit_b": 9.9, "vit_l": 19.1, "vit_h": 33.0}  # spec §4.2 (v3 figure)

# (label, {config key: value}) variants of the prompt / dense / tracking parts whose totals are printed besides
# the default model. They reuse the default model's (abstract) SAM, so only these small parts are rebuilt.
VARIANTS = (
    ("default (HDA concat, weighted)", {}),
    ("HDA per-level projection", {"hda.projection": "per_level"}),
    ("HDA conv fusion", {"hda.fusion": "conv"}),
    ("DA instead of HDA", {"dense.mode": "da"}),
    ("DA, no tracking module", {"dense.mode": "da", "tracking.enabled": False}),
    ("MLP with 2 hidden layers", {"mlp.hidden_layers": 2}),
)

NOTES = """\
Notes (REFSAM_SPEC.md §4.2):
- The frozen column is SAM's ViT + neck + prompt encoder; the text encoder is outside RefSAM.
- Adapters in half the blocks (D^2 + 2.5 D per block) give 3.55 / 12.61 / 26.27 M; in all blocks they would
  exceed the paper's L/H totals, which confirms the half placement.
- Decoder 4.058 M + MLP 0.656 M + dense conv 0.131 M = 4.845 M reproduces v1's "4.8 M" (1024-wide text,
  one hidden layer of 512), so the MLP and DA parts are as the paper had them.
- v3's totals minus the adapters leave 6.35 / 6.49 / 6.73 M, growing with D by about 768 * D: this fits a
  projection of three D-wide levels to 256 channels (our `fpn_conv`, 3 D * 256). The constant part (~5.76 M)
  is smaller than decoder + MLP + QIM + two DA convs (6.30 M), so the paper's v3 set of modules is not exactly
  ours: some of QIM / dense_conv2 / the decoder's unused multimask heads were probably not counted or not
  trained. Our default therefore lands about 0.5 M above the paper for every backbone (DA instead of HDA lands
  0.2-0.6 M below); the HDA modules and the track-token parts are reconstructions (spec §3.7-3.8)."""


def model_config(model_type: str, text_width: int, overrides: Dict[str, object]):
    config = default_model_config()
    config.sam.model_type = model_type
    config.text.width = text_width
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def build_abstract(model_type: str, text_width: int) -> RefSAM:
    """The default RefSAM with shape-only parameters."""
    return nnx.eval_shape(lambda: build_refsam(model_config(model_type, text_width, {}), seed=0))


def variant_counts(base: RefSAM, model_type: str, text_width: int, overrides: Dict[str, object]) -> Dict[str, int]:
    """Counts of a variant that differs from `base` only outside SAM: its own small parts around base's SAM."""
    config = model_config(model_type, text_width, overrides)
    return count_by_group(RefSAM(config, base.sam, text_width, rngs=nnx.Rngs(0)))


def trainable(counts: Dict[str, int]) -> int:
    return sum(v for g, v in counts.items() if g != FROZEN)


def format_table(counts: Dict[str, Dict[str, int]], model_types: Sequence[str]) -> str:
    header = f"{'group':<16}" + "".join(f"{m:>14}" for m in model_types)
    lines = [header, "-" * len(header)]
    for group in GROUP_NAMES + (FROZEN,):
        lines.append(f"{group:<16}" + "".join(f"{counts[m].get(group, 0):>14,}" for m in model_types))
    lines.append("-" * len(header))
    lines.append(f"{'trainable':<16}" + "".join(f"{trainable(counts[m]):>14,}" for m in model_types))
    lines.append(f"{'trainable (M)':<16}" + "".join(f"{trainable(counts[m]) / 1e6:>14.2f}" for m in model_types))
    lines.append(f"{'paper (M)':<16}" + "".join(f"{PAPER_MILLIONS[m]:>14.1f}" for m in model_types))
    return "\n".join(lines)


def adapters_in_all_blocks(counts: Dict[str, int], model_type: str) -> int:
    """Trainable total with adapters in every block: each adapted block holds the same adapters, so the
    half-placement count scales by depth / (number of adapted blocks)."""
    depth = SAM_CONFIGS[model_type].encoder_depth
    adapted = depth - depth // 2
    return trainable(counts) + counts["adapter"] * (depth - adapted) // adapted


def report(text_width: int = 1024, model_types: Sequence[str] = MODEL_TYPES) -> str:
    sections = [f"Trainable parameters per group, text width {text_width} (t5-3b), default model config:"]
    models = {m: build_abstract(m, text_width) for m in model_types}
    counts = {m: count_by_group(models[m]) for m in model_types}
    sections.append(format_table(counts, model_types))
    sections.append("\nTotal trainable parameters (M) of config variants:")
    header = f"{'variant':<34}" + "".join(f"{m:>10}" for m in model_types)
    rows = [header, "-" * len(header)]
    for label, overrides in VARIANTS:
        totals = [trainable(variant_counts(models[m], m, text_width, overrides)) for m in model_types]
        rows.append(f"{label:<34}" + "".join(f"{t / 1e6:>10.2f}" for t in totals))
    totals = [adapters_in_all_blocks(counts[m], m) for m in model_types]
    rows.append(f"{'adapters in all blocks':<34}" + "".join(f"{t / 1e6:>10.2f}" for t in totals))
    rows.append(f"{'paper':<34}" + "".join(f"{PAPER_MILLIONS[m]:>10.1f}" for m in model_types))
    sections.append("\n".join(rows))
    sections.append("\n" + NOTES)
    return "\n".join(sections)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text_width", type=int, default=1024, help="text feature width (t5-3b: 1024)")
    args = parser.parse_args(argv)
    print(report(args.text_width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
