"""Build SAM models, and save/load converted SAM checkpoints.

A converted checkpoint is a directory:
  config.json   {"model_type": "vit_b" | "vit_l" | "vit_h" | "custom", "config": SamConfig fields}
  state/        orbax checkpoint of `nnx.state(model)` (parameters and buffers)
"""

import functools
import json
import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from refsam_jax.sam.config import SAM_CONFIGS, SamConfig, model_type_of
from refsam_jax.sam.model import Sam

CONFIG_FILE = "config.json"
STATE_DIR = "state"


class SamCheckpointError(ValueError):
    """A SAM checkpoint directory is missing, corrupt, or holds another model than the one asked for."""


def _describe(model_type: str, config: SamConfig) -> str:
    return (f"{model_type} (embed dim {config.encoder_embed_dim}, depth {config.encoder_depth}, "
            f"img_size {config.img_size})")


def _config_for(model_type: Optional[str], config: Optional[SamConfig]) -> Optional[SamConfig]:
    """The config asked for: `config` if given, else the official one named by `model_type`, else None."""
    if config is not None:
        return config
    if model_type is None:
        return None
    if model_type not in SAM_CONFIGS:
        raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {', '.join(SAM_CONFIGS)}")
    return SAM_CONFIGS[model_type]


def read_checkpoint_config(directory: str) -> Tuple[str, SamConfig]:
    """(model_type, SamConfig) recorded in a checkpoint directory written by `save_sam`."""
    if not os.path.isdir(directory):
        raise SamCheckpointError(f"SAM checkpoint directory {directory} does not exist")
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
        return record["model_type"], SamConfig.from_dict(record["config"])
    except FileNotFoundError:
        raise SamCheckpointError(f"{directory} is not a SAM checkpoint: {CONFIG_FILE} is missing") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise SamCheckpointError(f"{path} is not a valid SAM checkpoint config: {e}") from e


def _restore(directory: str, config: SamConfig, dtype) -> Sam:
    abstract = nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0), dtype=dtype))
    graphdef, abstract_state = nnx.split(abstract)
    # Onto this process's first device, whatever devices or processes the checkpoint was saved from.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_state)
    path = os.path.join(os.path.abspath(directory), STATE_DIR)
    if not os.path.isdir(path):
        raise SamCheckpointError(f"{directory} is not a SAM checkpoint: {STATE_DIR}/ is missing")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(path, abstract_state)
    except Exception as e:  # orbax raises many types for damaged files
        raise SamCheckpointError(f"{path} could not be restored (corrupt or incomplete checkpoint): {e}") from e
    return nnx.merge(graphdef, state)


def load_sam(directory: str, model_type: Optional[str] = None, *, config: Optional[SamConfig] = None,
             dtype=jnp.float32) -> Sam:
    """Loads a checkpoint written by `save_sam`; `model_type` or `config`, if given, must match it.
    `dtype` is the image encoder's compute dtype (see `Sam`)."""
    saved_type, saved_config = read_checkpoint_config(directory)
    wanted = _config_for(model_type, config)
    if wanted is not None and wanted != saved_config:
        raise SamCheckpointError(
            f"{directory} holds a SAM {_describe(saved_type, saved_config)}, but a SAM "
            f"{_describe(model_type_of(wanted), wanted)} was requested (pass model_type=None to load what "
            f"the checkpoint holds)")
    return _restore(directory, saved_config, dtype)


def save_sam(model: Sam, directory: str) -> None:
    """Writes `config.json` and an orbax checkpoint of the model's full state into `directory`."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, STATE_DIR), nnx.state(model), force=True)
    record = {"model_type": model_type_of(model.config), "config": model.config.to_dict()}
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(record, f, indent=2)


def build_sam(model_type: Optional[str] = None, checkpoint: Optional[str] = None, *,
              config: Optional[SamConfig] = None, seed: int = 0, dtype=jnp.float32) -> Sam:
    """A SAM model, randomly initialised or loaded from a `save_sam` directory.

    Args:
      model_type: "vit_b", "vit_l" or "vit_h" (a check when loading); None loads whatever the checkpoint
        holds, or builds a vit_b without one.
      checkpoint: a directory written by `save_sam` (e.g. by `python -m convert sam`).
      config: an explicit architecture; overrides `model_type`.
      seed: initialisation seed (without a checkpoint).
      dtype: compute dtype of the image encoder's matmuls (parameters stay float32).
    Raises:
      SamCheckpointError: the checkpoint is missing, corrupt, or holds another architecture.
    """
    if checkpoint is not None:
        return load_sam(checkpoint, model_type, config=config, dtype=dtype)
    wanted = _config_for(model_type or ("vit_b" if config is None else None), config)
    return Sam(wanted, rngs=nnx.Rngs(seed), dtype=dtype)


# segment_anything's registry: `sam_model_registry["vit_h"](checkpoint="ckpt/sam_vit_h")` (a converted folder).
sam_model_registry = {
    **{name: functools.partial(build_sam, name) for name in SAM_CONFIGS},
    "default": functools.partial(build_sam, "vit_h"),
}

