"""Parameter-efficient tuning of SAM's ViT: AIM-style bottleneck adapters and LoRA on `attn.proj`.

Adapter (spec §3.2, official `modeling/common.py`): `D_fc2(GELU(D_fc1(x)))`, bottleneck `int(ratio * D)`,
plus `x` when `skip_connect`. The official code keeps PyTorch's default Linear init for both layers (so the
adapters perturb SAM from the start and, being untrained there, forever); AIM zero-initialises `D_fc2`, which
makes an adapter block equal the plain SAM block at init. Both are available (`zero_init`).

LoRA (spec §3.3, official `_LoRALayer`): `proj(x) + w_b(w_a(x))` with `w_a` Kaiming-uniform(a=sqrt(5)),
`w_b` zeros, no bias and no alpha/r scaling. `LoRALinear` *is* an `nnx.Linear` (same `kernel`/`bias`
paths), so a plain SAM state loads into it unchanged and only `w_a`/`w_b` are new.

SAM knows nothing of this: `adapted_image_encoder` builds SAM's encoder with a block hook that, right after
each block is built, swaps `attn.proj` for a `LoRALinear` and replaces the block by an `AdaptedBlock` that
takes over its layers (parameter surgery at construction; doing it then rather than on a finished encoder
keeps the random draws, and so the initial adapter weights for a seed, those of one pass over the blocks).
Every SAM parameter keeps its path, so a plain SAM state loads with `nnx.update`.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from refsam_jax.sam.common import gelu
from refsam_jax.sam.config import SamConfig
from refsam_jax.sam.image_encoder import Block, ImageEncoderViT


def torch_default_init(in_features: int, zero: bool = False):
    """The init of `torch.nn.Linear` weights and biases (Kaiming-uniform a=sqrt(5): U(+-1/sqrt(in))), or zeros."""
    bound = 1.0 / math.sqrt(in_features)

    def uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.initializers.zeros if zero else uniform


def torch_default_linear(in_features: int, out_features: int, *, use_bias: bool = True, zero: bool = False,
                         dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Linear:
    """`nnx.Linear` with its matmul in `dtype` and float32 out (as `sam.common.linear`), initialised as
    `torch.nn.Linear`, or all zeros when `zero`."""
    init = torch_default_init(in_features, zero)
    return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=init, bias_init=init, dtype=dtype,
                      preferred_element_type=jnp.float32, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class AdapterOptions:
    """How the ViT blocks are adapted. `placement`: which blocks get adapters ('none' | 'half' | 'all')."""

    placement: str = "half"
    ratio: float = 0.25
    mlp_scale: float = 0.5
    zero_init: bool = True
    lora_rank: int = 0
    remat: bool = True

    def __post_init__(self):
        if self.placement not in ("none", "half", "all"):
            raise ValueError(f"adapter placement {self.placement!r} is not one of 'none', 'half', 'all'")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")

    def has_adapter(self, block_index: int, depth: int) -> bool:
        """Official placement: `Block` (with adapters) for i >= depth // 2, `Block_no_adapter` before."""
        return self.placement == "all" or (self.placement == "half" and block_index >= depth // 2)

    def is_trainable(self, block_index: int, depth: int) -> bool:
        """Whether block `block_index` holds trainable parameters (and so is rematerialised)."""
        return self.lora_rank > 0 or self.has_adapter(block_index, depth)


class Adapter(nnx.Module):
    """Bottleneck adapter `[..., D] -> [..., D]`: `x + D_fc2(GELU(D_fc1(x)))`, or the branch alone."""

    def __init__(self, dim: int, *, ratio: float = 0.25, skip_connect: bool = True, zero_init: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = int(dim * ratio)
        self.skip_connect = skip_connect
        self.D_fc1 = torch_default_linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.D_fc2 = torch_default_linear(hidden, dim, zero=zero_init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch = self.D_fc2(gelu(self.D_fc1(x)))
        return x + branch if self.skip_connect else branch


class AdaptedBlock(Block):
    """A SAM ViT block with AIM adapters (spec §3.2, official `Block`), over the layers of `block`:

        a  = Space_Adapter(attn(norm1(x)))           per token: a + D_fc2(GELU(D_fc1(a)))
        x1 = x + a
        x2 = x1 + mlp(norm2(x1)) + mlp_scale * MLP_Adapter(norm2(x1))
    """

    def __init__(self, block: Block, options: AdapterOptions, *, dtype=jnp.float32, rngs: nnx.Rngs):
        # Takes over the block's layers (same paths) instead of building new ones.
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size, self.remat = block.window_size, block.remat
        dim = block.norm1.num_features
        self.Space_Adapter = Adapter(dim, ratio=options.ratio, zero_init=options.zero_init, dtype=dtype, rngs=rngs)
        self.MLP_Adapter = Adapter(dim, ratio=options.ratio, skip_connect=False, zero_init=options.zero_init,
                                   dtype=dtype, rngs=rngs)
        self.scale = options.mlp_scale

    def attention(self, x: jax.Array) -> jax.Array:
        return self.Space_Adapter(self.attn(x))

    def mlp_residual(self, x: jax.Array) -> jax.Array:
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.scale * self.MLP_Adapter(normed)


class LoRALinear(nnx.Linear):
    """`nnx.Linear` (as `sam.common.linear`: matmul in `dtype`, float32 out) plus a low-rank update:
    `x W + b + w_b(w_a(x))`, `w_a` random, `w_b` zeros."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(in_features, out_features, dtype=dtype, preferred_element_type=jnp.float32, rngs=rngs)
        self.w_a = torch_default_linear(in_features, rank, use_bias=False, dtype=dtype, rngs=rngs)
        self.w_b = torch_default_linear(rank, out_features, use_bias=False, zero=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x) + self.w_b(self.w_a(x))


def adapted_image_encoder(config: SamConfig, options: AdapterOptions, rngs: nnx.Rngs, *,
                          dtype=jnp.float32) -> ImageEncoderViT:
    """SAM's image encoder with the adapters and LoRA of `options` (see the module docstring). Blocks holding
    trainable parameters are rematerialised in the backward pass (`options.remat`), as the official code
    checkpoints their attention and MLP; frozen blocks store nothing for it anyway."""
    depth = config.encoder_depth

    def adapt(index: int, block: Block, block_rngs: nnx.Rngs) -> Block:
        if options.lora_rank:
            proj = block.attn.proj
            lora = LoRALinear(proj.in_features, proj.out_features, options.lora_rank, dtype=dtype, rngs=block_rngs)
            lora.kernel, lora.bias = proj.kernel, proj.bias
            block.attn.proj = lora
        if options.has_adapter(index, depth):
            block = AdaptedBlock(block, options, dtype=dtype, rngs=block_rngs)
        block.remat = options.remat and options.is_trainable(index, depth)
        return block

    return ImageEncoderViT(config, rngs, dtype=dtype, block_hook=adapt)
