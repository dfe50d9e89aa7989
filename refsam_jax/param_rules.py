"""Parameter paths and `(regex, group)` rules over them: which parameters train, in which group.

A parameter path is the `nnx.State` path joined by dots, e.g. `sam.image_encoder.blocks.7.Space_Adapter.D_fc2.kernel`.
A rule `(regex, group)` claims every `nnx.Param` whose path the regex matches with `re.search` (anchor it with
^ / $ as needed); the first matching rule wins. Parameters that no rule claims are frozen (group `FROZEN`).
"""

import re
from typing import Any, Dict, Iterable, Sequence, Tuple

import numpy as np
from flax import nnx

FROZEN = "frozen"
Rules = Sequence[Tuple[str, str]]


def path_to_str(path: Sequence[Any]) -> str:
    """('blocks', 3, 'attn', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.kernel'."""
    return ".".join(str(getattr(key, "key", key)) for key in path)


def _compile_rules(rules: Rules) -> Tuple[Tuple[re.Pattern, str], ...]:
    compiled = []
    for rule in rules:
        if len(rule) != 2 or not all(isinstance(part, str) for part in rule):
            raise ValueError(f"a trainable rule must be a (regex, group) pair of strings, got {rule!r}")
        regex, group = rule
        try:
            compiled.append((re.compile(regex), group))
        except re.error as e:
            raise ValueError(f"trainable rule {rule!r}: invalid regex: {e}") from e
    return tuple(compiled)


def assign_groups(model: nnx.Module, rules: Rules) -> Dict[str, str]:
    """Maps the path of every trainable `nnx.Param` to its group (first rule whose regex matches).

    Raises ValueError naming every rule that claims no parameter (a typo, or a module the model lacks),
    with a few parameter paths to compare against.
    """
    compiled = _compile_rules(rules)
    param_paths = [path_to_str(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    groups, used = {}, [False] * len(compiled)
    for path in param_paths:
        for i, (regex, group) in enumerate(compiled):
            if regex.search(path):
                groups[path], used[i] = group, True
                break
    unused = [rules[i] for i, hit in enumerate(used) if not hit]
    if unused:
        examples = ", ".join(param_paths[:: max(1, len(param_paths) // 8)][:8])
        raise ValueError(
            f"trainable rule(s) {unused} match no parameter of {type(model).__name__} (regexes are searched "
            f"in '.'-joined paths such as: {examples})")
    return groups


def param_groups(model: nnx.Module, rules: Rules) -> Dict[str, str]:
    """Dotted path -> group (or FROZEN) for every `nnx.Param` of `model`."""
    compiled = _compile_rules(rules)
    return {path_to_str(path): next((group for regex, group in compiled if regex.search(path_to_str(path))),
                                    FROZEN)
            for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def count_by_group(model: nnx.Module, rules: Rules, groups: Iterable[str] = ()) -> Dict[str, int]:
    """Number of parameters per group, FROZEN and every name of `groups` included (0 when absent); works on
    abstract models from `nnx.eval_shape`."""
    counts = {group: 0 for group in groups}
    counts.setdefault(FROZEN, 0)
    sizes = {path_to_str(path): int(np.prod(variable.shape))
             for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for path, group in param_groups(model, rules).items():
        counts[group] = counts.get(group, 0) + sizes[path]
    return counts
