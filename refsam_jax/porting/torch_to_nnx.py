"""Generic PyTorch state dict -> Flax NNX module loader.

Our NNX modules name their parts exactly as the PyTorch modules do (`blocks.3.attn.qkv`), so a state dict
is loaded by one walk over the module's variables. The torch key of a variable is its NNX path joined by
dots, with the parameter renamed and re-laid out according to the kind of layer that owns it:

  nnx.Linear         kernel [in, out]        <- weight [out, in] (transposed);  bias
  nnx.Conv           kernel [kh, kw, I, O]   <- weight [O, I, kh, kw];           bias
  nnx.ConvTranspose  kernel [kh, kw, I, O]   <- weight [I, O, kh, kw], spatially flipped;  bias
  nnx.LayerNorm      scale                   <- weight;  bias
  nnx.Embed          embedding               <- weight
  anything else      same name, same layout  (pos_embed, rel_pos_h, buffers, tokens)

Module types whose layout differs (e.g. a packed multi-head attention) register a `custom` converter.
Every variable must be filled and every torch key consumed: missing, unexpected and mis-shaped keys are
reported together in one error.
"""

from typing import Callable, Dict, Mapping, Optional, Tuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

# A custom converter receives (state_dict, torch_prefix) and returns {nnx variable name: array} plus
# the torch keys it consumed.
CustomConverter = Callable[[Mapping[str, np.ndarray], str], Tuple[Dict[str, np.ndarray], set]]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model architecture."""


def _flip_conv_transpose(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.flip(w.transpose(2, 3, 0, 1), axis=(0, 1)))


# (module type, nnx variable name) -> (torch parameter name, layout function)
_RULES = {
    (nnx.Linear, "kernel"): ("weight", lambda w: w.T),
    (nnx.Conv, "kernel"): ("weight", lambda w: w.transpose(2, 3, 1, 0)),
    (nnx.ConvTranspose, "kernel"): ("weight", _flip_conv_transpose),
    (nnx.LayerNorm, "scale"): ("weight", lambda w: w),
    (nnx.Embed, "embedding"): ("weight", lambda w: w),
}


def _rule(module: nnx.Module, name: str):
    for (kind, var_name), rule in _RULES.items():
        if isinstance(module, kind) and var_name == name:
            return rule
    return name, lambda w: w


def torch_key(path: Tuple) -> str:
    return ".".join(str(p) for p in path)


def load_torch_state_dict(
    module: nnx.Module,
    state_dict: Mapping[str, np.ndarray],
    *,
    rename: Optional[Callable[[str], str]] = None,
    custom: Optional[Mapping[type, CustomConverter]] = None,
    ignore: Tuple[str, ...] = (),
    source: str = "checkpoint",
) -> None:
    """Fills every variable of `module` in place from a torch state dict (numpy arrays).

    Args:
      module: the NNX module, named as the torch module.
      state_dict: torch key -> numpy array.
      rename: maps an NNX-derived torch key to the key used in `state_dict` (e.g. `neck.layers.0` ->
        `neck.0`).
      custom: module type -> converter for modules whose parameter layout is not covered by the rules.
      ignore: torch keys (exact) that may be present and are not used (e.g. non-parameter buffers).
      source: a name for error messages (the checkpoint path).
    Raises:
      CheckpointMismatchError: listing missing, unexpected and mis-shaped keys.
    """
    rename = rename or (lambda k: k)
    custom = dict(custom or {})
    used, missing, mismatched = set(), [], []
    owners = {path: node for path, node in nnx.iter_graph(module) if isinstance(node, nnx.Module)}

    def assign(variable: nnx.Variable, key: str, value: np.ndarray, torch_shape: Tuple) -> None:
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"{key}: checkpoint {tuple(torch_shape)} vs model {tuple(variable.shape)} (our layout)")
            return
        variable.set_value(jnp.asarray(value, dtype=variable.dtype))

    for path, owner in owners.items():
        prefix = rename(torch_key(path)) if path else ""
        variables = {name: v for name, v in vars(owner).items() if isinstance(v, nnx.Variable)}
        if not variables:
            continue
        converter = next((fn for kind, fn in custom.items() if isinstance(owner, kind)), None)
        if converter is not None:
            values, consumed = converter(state_dict, prefix)
            used |= consumed
            for name, variable in variables.items():
                key = f"{prefix}.{name}" if prefix else name
                if name not in values:
                    missing.append(key)
                else:
                    assign(variable, key, values[name], np.shape(values[name]))
            continue
        for name, variable in variables.items():
            torch_name, layout = _rule(owner, name)
            key = rename(f"{prefix}.{torch_name}" if prefix else torch_name)
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            assign(variable, key, layout(value), value.shape)

    unexpected = sorted(set(state_dict) - used - set(ignore))
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model architecture:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if keys:
                shown = ", ".join(sorted(keys)[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointMismatchError("\n".join(lines))
