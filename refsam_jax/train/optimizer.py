"""What trains and how: the model split by `(regex, group)` rules (`refsam_jax.param_rules`), and the
per-group AdamW optimiser.

Parameters no rule claims, and every non-`Param` variable (buffers), are frozen: `split_trainable` puts them
in a separate state, so the training step differentiates only the trainable state and the optimiser holds
state for trainable parameters only.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from refsam_jax.param_rules import Rules, assign_groups, path_to_str


@dataclasses.dataclass(frozen=True)
class TrainableSplit:
    """A model split into what trains and what does not.

    `labels` has the structure of `trainable` with the group name as every leaf (for `optax.multi_transform`).
    """

    graphdef: nnx.GraphDef
    trainable: nnx.State
    frozen: nnx.State
    labels: nnx.State

    @property
    def group_names(self) -> Tuple[str, ...]:
        return tuple(sorted(set(jax.tree.leaves(self.labels))))


def split_trainable(model: nnx.Module, rules: Rules) -> TrainableSplit:
    """`nnx.split` of `model` into (trainable params, everything else) following `rules`."""
    groups = assign_groups(model, rules)

    def is_trainable(path, variable) -> bool:
        return isinstance(variable, nnx.Param) and path_to_str(path) in groups

    graphdef, trainable, frozen = nnx.split(model, is_trainable, ...)
    labels = jax.tree.map_with_path(lambda path, _: groups[_state_path(path)], trainable)
    return TrainableSplit(graphdef, trainable, frozen, labels)


def _state_path(tree_path) -> str:
    """Pytree path of a leaf of an `nnx.State` (ending in the Variable's `.value`) -> '.'-joined state path."""
    keys = [key.key for key in tree_path if isinstance(key, jax.tree_util.DictKey)]
    return path_to_str(keys)


def group_sq_norms(tree: Any, labels: Any) -> Dict[str, jax.Array]:
    """Sum of squares of the leaves of `tree` per group (`labels` has the same structure)."""
    sums: Dict[str, jax.Array] = {}
    for leaf, group in zip(jax.tree.leaves(tree), jax.tree.leaves(labels)):
        sums[group] = sums.get(group, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return sums


def group_sizes(tree: Any, labels: Any) -> Dict[str, int]:
    """Number of elements of the leaves of `tree` per group."""
    sizes: Dict[str, int] = {}
    for leaf, group in zip(jax.tree.leaves(tree), jax.tree.leaves(labels)):
        sizes[group] = sizes.get(group, 0) + int(leaf.size)
    return sizes


def learning_rate_schedule(optim: ml_collections.ConfigDict, peak_lr: float,
                           total_updates: int) -> optax.Schedule:
    """`optim.schedule`: 'constant' (the paper's recipe) or 'warmup_cosine', both after `optim.warmup_steps`."""
    warmup = int(optim.warmup_steps)
    if optim.schedule == "constant":
        if not warmup:
            return optax.constant_schedule(peak_lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak_lr, warmup), optax.constant_schedule(peak_lr)], [warmup])
    if optim.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak_lr, warmup_steps=warmup,
            decay_steps=max(total_updates, warmup + 1), end_value=peak_lr * optim.end_lr_factor)
    raise ValueError(f"optim.schedule must be 'constant' or 'warmup_cosine', got {optim.schedule!r}")


def make_optimizer(optim: ml_collections.ConfigDict, labels: Any, total_steps: int
                   ) -> Tuple[optax.GradientTransformation, Dict[str, optax.Schedule]]:
    """Global-norm clipping, then one AdamW per group; optionally accumulated over micro-batches.

    Config keys (`optim`): lr.<group>, weight_decay.<group>, b1, b2, eps, schedule, warmup_steps,
    end_lr_factor, clip_grad_norm (0 = off), accumulate_steps (1 = off; `total_steps` counts batches, the
    schedules count optimizer updates = total_steps // accumulate_steps).
    Returns the transformation and the learning-rate schedule of every group (for logging).
    """
    groups = sorted(set(jax.tree.leaves(labels)))
    missing = [g for g in groups if g not in optim.lr or g not in optim.weight_decay]
    if missing:
        raise ValueError(f"trainable group(s) {missing} have no entry in optim.lr / optim.weight_decay "
                         f"(known: lr {sorted(optim.lr)}, weight_decay {sorted(optim.weight_decay)})")
    accumulate = int(optim.accumulate_steps)
    if accumulate < 1:
        raise ValueError(f"optim.accumulate_steps must be >= 1, got {accumulate}")
    total_updates = max(1, total_steps // accumulate)
    schedules = {g: learning_rate_schedule(optim, float(optim.lr[g]), total_updates) for g in groups}
    per_group = {
        g: optax.adamw(schedules[g], b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=float(optim.weight_decay[g]))
        for g in groups
    }
    transforms = [optax.multi_transform(per_group, labels)]
    if optim.clip_grad_norm:
        transforms.insert(0, optax.clip_by_global_norm(optim.clip_grad_norm))
    optimizer = optax.chain(*transforms)
    if accumulate > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=accumulate)
    return optimizer, schedules


def learning_rates(schedules: Mapping[str, Callable], step: int, accumulate_steps: int) -> Dict[str, float]:
    """Learning rate of every group used by batch `step` (0-based)."""
    return {g: float(schedule(step // accumulate_steps)) for g, schedule in schedules.items()}


def tree_bytes(tree: Any) -> int:
    """Bytes of all array leaves of `tree` (arrays or ShapeDtypeStructs)."""
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
               if hasattr(leaf, "dtype"))
