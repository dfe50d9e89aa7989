"""Training checkpoints: orbax `CheckpointManager` (async, keep-N) in `<workdir>/checkpoints/<step>/`.

Each checkpoint holds four items:
  - 'trainable': the trainable `nnx.State` (fp32),
  - 'opt_state': the optimizer state of the trainable parameters,
  - 'data': the grain iterator state of every host (so a resumed run reads the same batches),
  - 'meta': JSON with the step, the model config and the path -> shape of every trainable parameter.
The meta item is read and compared with the current run before anything else is restored, so a checkpoint
of another model config gives a clear error before any compute. A key of the current model config that the
checkpoint's lacks (it was saved before the key existed) is read as the key's default when the caller gives
the defaults (RefSAM: `refsam_jax.model.config.default_model_config()`), since a new key defaults to the
behaviour from before it; a key present with another value is still an error.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from refsam_jax import param_rules


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model being trained."""


def describe_params(state: nnx.State) -> Dict[str, list]:
    """'.'-joined path -> shape of every array of an `nnx.State` (arrays or ShapeDtypeStructs)."""
    return {param_rules.path_to_str(path): list(variable.get_value().shape)
            for path, variable in nnx.to_flat_state(state)}


def _differences(found: Mapping[str, Any], expected: Mapping[str, Any], limit: int = 10,
                 filled: Mapping[str, Any] = ()) -> str:
    """One line per key that differs; `filled`: keys absent from `found` but read as their defaults."""
    lines = []
    for key in sorted(set(found) | set(expected)):
        if key not in expected:
            lines.append(f"  {key}: {found[key]!r} in the checkpoint, absent now")
        elif key not in found:
            lines.append(f"  {key}: absent in the checkpoint, {expected[key]!r} now")
        elif found[key] != expected[key]:
            saved = (f"absent in the checkpoint (saved before the key existed: its default {found[key]!r})"
                     if key in filled else f"{found[key]!r} in the checkpoint")
            lines.append(f"  {key}: {saved}, {expected[key]!r} now")
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def _flatten_config(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def warn_filled_defaults(source: str, filled: Mapping[str, Any]) -> None:
    """Logs the model config keys (dotted, with the default each was read as) that `source` was saved without."""
    logging.warning("%s was saved before the model config keys %s existed; reading them as their defaults (%s)",
                    source, ", ".join(sorted(filled)),
                    ", ".join(f"{key}={value!r}" for key, value in sorted(filled.items())))


def check_model_config(saved: Mapping[str, Any], model_config: Mapping[str, Any], source: str,
                       defaults: Optional[Mapping[str, Any]] = None) -> None:
    """Raises CheckpointMismatchError naming every key where the model config saved in the checkpoint at
    `source` differs from `model_config`. Keys of `model_config` that the saved config lacks but `defaults` has
    are read as their defaults (logged): a run saved before a key existed ran as its default does."""
    found = _flatten_config(saved)
    expected = _flatten_config(json.loads(json.dumps(model_config)))
    filled: Dict[str, Any] = {}
    if defaults is not None:
        flat_defaults = _flatten_config(json.loads(json.dumps(defaults)))
        filled = {key: flat_defaults[key] for key in expected if key not in found and key in flat_defaults}
    if filled:
        warn_filled_defaults(source, filled)
        found.update(filled)
    if found != expected:
        raise CheckpointMismatchError(f"{source} was saved for another model config:\n"
                                      f"{_differences(found, expected, filled=filled)}")


def optimizer_structure(optim: Mapping[str, Any]) -> Dict[str, Any]:
    """The `config.optim` settings that shape the optimizer state (a checkpoint's state fits only these)."""
    return {"clip_grad_norm": bool(optim["clip_grad_norm"]), "accumulate_steps": int(optim["accumulate_steps"])}


def check_meta(meta: Mapping[str, Any], model_config: Mapping[str, Any], trainable_shapes: Mapping[str, list],
               source: str, optimizer: Optional[Mapping[str, Any]] = None,
               model_defaults: Optional[Mapping[str, Any]] = None) -> None:
    """Raises CheckpointMismatchError if the checkpoint at `source` was made for another model, groups or
    optimizer structure (`optimizer_structure`); `model_defaults`: as `check_model_config`'s `defaults`."""
    check_model_config(meta["model_config"], model_config, source, model_defaults)
    if meta["trainable_shapes"] != trainable_shapes:
        raise CheckpointMismatchError(
            f"{source} holds other trainable parameters (check the trainable rules):\n"
            f"{_differences(meta['trainable_shapes'], trainable_shapes)}")
    saved = meta.get("optimizer")
    if optimizer is not None and saved is not None and saved != dict(optimizer):
        changed = ", ".join(f"config.optim.{key} ({'on' if saved[key] else 'off'} in the checkpoint, "
                            f"{'on' if optimizer[key] else 'off'} now)" if isinstance(saved[key], bool) else
                            f"config.optim.{key} ({saved[key]} in the checkpoint, {optimizer[key]} now)"
                            for key in saved if saved[key] != optimizer.get(key))
        raise CheckpointMismatchError(f"{source}: the optimizer state was saved with other settings: {changed}; "
                                      f"resume with the checkpoint's settings, or train in a new workdir")


class TrainCheckpointer:
    """Saves and restores training checkpoints under `directory`."""

    def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
        self.directory = epath.Path(os.path.abspath(directory))  # orbax takes absolute paths only
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"trainable": ocp.StandardCheckpointHandler(),
                           "opt_state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, trainable: nnx.State, opt_state: Any, data_iterator: Any,
             meta: Mapping[str, Any]) -> None:
        """Starts an (async) save of checkpoint `step`; the previous save is finished first."""
        self._manager.save(step, args=ocp.args.Composite(
            trainable=ocp.args.StandardSave(trainable),
            opt_state=ocp.args.StandardSave(opt_state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(dict(meta, step=step))), force=True)

    def read_meta(self, step: int) -> Dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, step: int, abstract_trainable: Any, abstract_opt_state: Any, data_iterator: Any
                ) -> Tuple[nnx.State, Any]:
        """Restores checkpoint `step` onto the shardings of the abstract trees (any mesh, any number of
        processes); sets the iterator's state unless `data_iterator` is None."""
        items = {"trainable": ocp.args.StandardRestore(abstract_trainable),
                 "opt_state": ocp.args.StandardRestore(abstract_opt_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored.trainable, restored.opt_state

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def load_trained_params(model: nnx.Module, checkpoint_dir: str, model_config: Mapping[str, Any], *,
                        model_defaults: Optional[Mapping[str, Any]] = None) -> int:
    """Writes the trainable params of the latest checkpoint under `checkpoint_dir` into `model`.

    Used to start a run from another run (e.g. Ref-YTVOS from RefCOCO pre-training): the parameters the
    other run trained replace those of `model` path by path; the others keep their values. The model
    configs must agree (`check_model_config`, with `model_defaults` for keys the checkpoint's lacks).
    Returns the step of the loaded checkpoint.
    """
    directory = epath.Path(os.path.abspath(checkpoint_dir))
    if not directory.exists():
        raise FileNotFoundError(f"init checkpoint directory {directory} does not exist")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_handlers={"trainable": ocp.StandardCheckpointHandler(),
                                                   "meta": ocp.JsonCheckpointHandler()})
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    source = f"{directory}/{step}"
    check_model_config(meta["model_config"], model_config, source, model_defaults)
    model_params = {param_rules.path_to_str(path): (path, variable)
                    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    saved = meta["trainable_shapes"]
    wrong = {name: shape for name, shape in saved.items()
             if name not in model_params or list(model_params[name][1].get_value().shape) != shape}
    if wrong:
        raise CheckpointMismatchError(f"{source} has parameters the model lacks or shapes it does not have: "
                                      f"{dict(list(wrong.items())[:10])}")
    # Restored whole onto this process's first device, whatever mesh the checkpoint was saved from.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = nnx.from_flat_state({
        path: variable.replace(jax.ShapeDtypeStruct(variable.get_value().shape, variable.get_value().dtype,
                                                    sharding=device))
        for path, variable in (model_params[name] for name in saved)})
    restored = manager.restore(step, args=ocp.args.Composite(trainable=ocp.args.StandardRestore(abstract))).trainable
    nnx.update(model, restored)
    manager.close()
    return step
