"""Weights of a Hugging Face folder: safetensors or PyTorch `.bin`, single or sharded, read lazily as numpy."""

import json
import os
from typing import Callable, Dict, List, Mapping, Sequence

import numpy as np
from safetensors import safe_open

# In order of preference; an index file lists the shards of a sharded checkpoint.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

class LazyStateDict(Mapping):
    """Checkpoint key -> float32 numpy array, read from the files only when asked for."""

    def __init__(self, readers: Dict[str, Callable[[], np.ndarray]]):
        self._readers = readers

    def __getitem__(self, key: str) -> np.ndarray:
        return self._readers[key]()

    def __iter__(self):
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)


def find_weight_files(hf_dir: str) -> List[str]:
    """The weight files of a Hugging Face folder (several if sharded)."""
    for name in WEIGHT_FILES:
        path = os.path.join(hf_dir, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return [path]
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(hf_dir, s))]
        if missing:
            raise FileNotFoundError(f"{path} lists shards that are not in {hf_dir}: {missing}")
        return [os.path.join(hf_dir, s) for s in shards]
    raise FileNotFoundError(f"{hf_dir}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")


def _safetensors_readers(path: str) -> Dict[str, Callable[[], np.ndarray]]:
    handle = safe_open(path, framework="numpy")
    return {key: (lambda key=key: handle.get_tensor(key)) for key in handle.keys()}


def _torch_readers(path: str) -> Dict[str, Callable[[], np.ndarray]]:
    import torch

    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # pre-1.6 (non-zip) files cannot be memory-mapped
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(tensors, Mapping):
        raise ValueError(f"{path} holds a {type(tensors).__name__}, not a state dict")

    def read(tensor):
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()

    return {key: (lambda t=tensor: read(t)) for key, tensor in tensors.items()}


def read_state_dict(files: Sequence[str]) -> Mapping[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors or PyTorch checkpoint, read lazily."""
    readers = {}
    for path in files:
        readers.update(_safetensors_readers(path) if path.endswith(".safetensors") else _torch_readers(path))
    return LazyStateDict(readers)
