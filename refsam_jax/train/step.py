"""The training step: a pure function over `nnx.State` pytrees, jitted with shardings and donation.

`train_step(trainable, frozen, opt_state, batch) -> (trainable, opt_state, metrics)`:
  - `trainable`: the trainable `nnx.State` (fp32 master weights); gradients are taken w.r.t. it only.
  - `frozen`: a dict with the frozen part of the model under 'model' and any other frozen states the loss
    needs (e.g. 'text', the text encoder's state); never differentiated, never updated.
  - `opt_state`: optimizer state of the trainable parameters only.
  - `batch`: dict of global arrays.
`loss_fn(model, batch, **other_frozen) -> (scalar loss, dict of scalar metrics)` runs the merged model.
With `compute_dtype=bfloat16` the trainable weights are cast to bf16 for the forward and the backward
(gradients are cast back to the fp32 masters); frozen weights are expected to be stored in the compute dtype.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from refsam_jax.train import optimizer as optimizer_lib
from refsam_jax.trees import cast_floating

LossFn = Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]


def strong_types(tree: Any) -> Any:
    """Leaves without JAX's weak type (e.g. a Param made by `jnp.full(shape, 0.5)`): otherwise the first
    update, which returns strong types, would change the step's input types and compile it a second time."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype) if getattr(x, "weak_type", False) else x,
                        tree)


def make_train_step(graphdef: nnx.GraphDef, labels: nnx.State, optimizer: optax.GradientTransformation,
                    loss_fn: LossFn, *, compute_dtype=jnp.float32) -> Callable:
    """The pure (un-jitted) training step for the model `graphdef`; see the module docstring.

    The model is merged from both states and differentiated with `nnx.value_and_grad` restricted to the
    trainable paths (`nnx.DiffState`), so NNX transforms inside the model (e.g. `nnx.remat` of adapter blocks)
    see one coherent module. With a bf16 compute dtype the gradients come out in bf16 and are cast to the
    fp32 masters' dtype, which is what differentiating through the cast would give.
    """
    trainable_paths = frozenset(path for path, _ in nnx.to_flat_state(labels))

    def is_trainable(path, variable) -> bool:
        return isinstance(variable, nnx.Param) and tuple(path) in trainable_paths

    def train_step(trainable, frozen, opt_state, batch):
        other_frozen = {name: state for name, state in frozen.items() if name != "model"}
        model = nnx.merge(graphdef, cast_floating(trainable, compute_dtype), frozen["model"])
        value_and_grad = nnx.value_and_grad(lambda model: loss_fn(model, batch, **other_frozen),
                                            argnums=nnx.DiffState(0, is_trainable), has_aux=True)
        (loss, aux), grads = value_and_grad(model)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        sq_norms = optimizer_lib.group_sq_norms(grads, labels)
        metrics = {"loss": loss, **aux, "grad_norm/all": jnp.sqrt(sum(sq_norms.values()))}
        metrics.update({f"grad_norm/{group}": jnp.sqrt(sq) for group, sq in sq_norms.items()})
        return trainable, opt_state, metrics

    return train_step


@dataclasses.dataclass(frozen=True)
class StepShardings:
    """NamedShardings (pytrees of them, or prefixes) for the step's arguments and results."""

    trainable: Any
    frozen: Any
    opt_state: Any
    batch: Any
    metrics: Any


def jit_train_step(train_step: Callable, shardings: StepShardings) -> Callable:
    """`jax.jit` with explicit in/out shardings, donating the trainable params and the optimizer state."""
    return jax.jit(
        train_step,
        in_shardings=(shardings.trainable, shardings.frozen, shardings.opt_state, shardings.batch),
        out_shardings=(shardings.trainable, shardings.opt_state, shardings.metrics),
        donate_argnums=(0, 2))


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_opt_state: Any,
                        param_sharding: Callable[[Tuple[int, ...]], Any], replicated) -> Any:
    """Moments and accumulators get `param_sharding(shape)`, like their parameter; counters are replicated."""
    return optax.tree_map_params(optimizer, lambda leaf: param_sharding(leaf.shape), abstract_opt_state,
                                 transform_non_params=lambda _: replicated)


def metrics_to_host(metrics: Mapping[str, jax.Array]) -> Dict[str, float]:
    return {name: float(value) for name, value in jax.device_get(dict(metrics)).items()}
