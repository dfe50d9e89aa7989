"""The generic torch -> NNX loader: layer layouts (ConvTranspose pinned by a one-layer test) and errors."""

import numpy as np
import pytest
import torch
from flax import nnx

from refsam_jax.porting.torch_to_nnx import CheckpointMismatchError, load_torch_state_dict


def _sd(module: torch.nn.Module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (4, 2)])
def test_conv_transpose_matches_torch(kernel, stride):
    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose2d(5, 3, kernel_size=kernel, stride=stride)
    ours = nnx.ConvTranspose(5, 3, (kernel, kernel), strides=(stride, stride), padding="VALID",
                             rngs=nnx.Rngs(0))
    load_torch_state_dict(ours, _sd(ref))
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 6)).astype(np.float32)
    expected = ref(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    got = np.asarray(ours(x.transpose(0, 2, 3, 1)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_linear_conv_layernorm_match_torch():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.LayerNorm(4))

    class Ours(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs)
            self.norm = nnx.LayerNorm(4, epsilon=1e-5, rngs=rngs)
            self.head = nnx.Linear(4, 2, rngs=rngs)

    lin = torch.nn.Linear(4, 2)
    sd = {**{k.replace("0.", "conv.").replace("1.", "norm."): v for k, v in _sd(ref).items()},
          **{f"head.{k}": v for k, v in _sd(lin).items()}}
    ours = Ours(nnx.Rngs(1))
    load_torch_state_dict(ours, sd)
    x = np.random.default_rng(1).normal(size=(1, 3, 5, 5)).astype(np.float32)
    h = ref[0](torch.from_numpy(x)).permute(0, 2, 3, 1)
    expected = lin(ref[1](h)).detach().numpy()
    got = np.asarray(ours.head(ours.norm(ours.conv(x.transpose(0, 2, 3, 1)))))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_mismatch_lists_missing_unexpected_and_shapes():
    ours = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    sd = {"weight": np.zeros((3, 4), np.float32), "extra": np.zeros(1, np.float32)}
    with pytest.raises(CheckpointMismatchError) as err:
        load_torch_state_dict(ours, sd, source="model.pth")
    message = str(err.value)
    assert "model.pth" in message
    assert "missing keys: bias" in message
    assert "unexpected keys: extra" in message
    assert "weight: checkpoint (3, 4) vs model (4, 2) (our layout)" in message
