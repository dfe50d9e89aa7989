"""Test-session set-up and shared fixtures (random PyTorch `segment_anything` models for parity tests)."""

import os

import pytest

# Many tests (and the subprocesses some of them start) compile the same small programs, e.g. the eager
# initialisation of a tiny SAM. A persistent compilation cache, shared by the xdist workers and
# inherited by subprocesses through the environment, compiles each of them once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def make_torch_sam():
    """Returns `make(config, seed) -> (torch Sam, numpy state dict)` with no constant parameter left.

    SAM's initialisation leaves LayerNorm weights at 1 and some biases, pos_embed and rel_pos at 0;
    randomising them means a weight loaded into the wrong place (or not at all) shows in the outputs.
    """
    import torch

    from refsam_jax.sam.params import build_torch_sam

    def make(config, seed=0):
        torch.manual_seed(seed)
        model = build_torch_sam(config)
        with torch.no_grad():
            for param in model.parameters():
                if torch.all(param == param.flatten()[0]):
                    param.add_(0.1 * torch.randn_like(param))
        state_dict = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        return model, state_dict

    return make

