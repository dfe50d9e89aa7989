"""Paths from command lines and configs, made absolute once at the boundary.

orbax accepts absolute paths only, and a run's saved `config.json` must name the same files whatever the
working directory of a later `predict`, `evaluate` or resumed run.
"""

import os
import re

import ml_collections

# Config keys that name files or folders; a value may be a comma-separated list (several datasets).
CONFIG_PATH_KEYS = ("data.data_dir", "data.manual_dir", "init.checkpoint_dir", "model.sam.checkpoint",
                    "model.text.encoder")


def natural_key(name: str) -> tuple:
    """Sort key that orders the digit runs of file names by value: '2.jpg' < '10.jpg' (frames named 0, 3,
    6, 11, ... stay in time order)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def absolute(path: str) -> str:
    """`path` made absolute against the working directory (`~` expanded); '' stays ''."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def _path_fields(config: ml_collections.ConfigDict, keys):
    """(key, parent ConfigDict, leaf name) of every non-empty `keys` entry the config has."""
    for key in keys:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if isinstance(node, ml_collections.ConfigDict) and node.get(leaf):
            yield key, node, leaf


def absolute_paths(config: ml_collections.ConfigDict, keys=CONFIG_PATH_KEYS) -> ml_collections.ConfigDict:
    """Makes every non-empty path under `keys` (those the config has) absolute, in place; returns `config`."""
    with config.unlocked():
        for _, node, leaf in _path_fields(config, keys):
            node[leaf] = ",".join(absolute(p.strip()) for p in str(node[leaf]).split(","))
    return config


def without_paths(config: ml_collections.ConfigDict, keys=CONFIG_PATH_KEYS) -> ml_collections.ConfigDict:
    """Empties every path under `keys` (a config that names no file of this machine), in place; returns it."""
    with config.unlocked():
        for _, node, leaf in _path_fields(config, keys):
            node[leaf] = ""
    return config


def check_paths_exist(config: ml_collections.ConfigDict, keys=CONFIG_PATH_KEYS) -> None:
    """Raises FileNotFoundError naming every config path under `keys` that does not exist."""
    missing = [f"config.{key}: {path} does not exist" for key, node, leaf in _path_fields(config, keys)
               for path in (p.strip() for p in str(node[leaf]).split(",")) if path and not os.path.exists(path)]
    if missing:
        raise FileNotFoundError("; ".join(missing))
