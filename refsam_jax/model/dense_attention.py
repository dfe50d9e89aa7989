"""Dense prompts from image and text: Dense Attention (DA, exact) and Hierarchical Dense Attention (HDA, ours).

DA (official `refersam.py` L262-290, spec §3.6), per pixel of the L2-normalised SAM embedding F^ [B, g, g, C]:

    T     = [W; s]                                   text tokens [B, L + 1, C] (all L2-normalised)
    A     = softmax_tokens(F^ T^T * scale)           scale = 1/sqrt(C) (official), another constant, or learned
    Dense = dense_conv([F^ ; A T])                   1x1 conv 2C -> C

Padded word tokens can be masked out of the softmax (`token_mask`); the sentence token is always valid.
Since F^ and T are unit vectors, the official scale 1/16 makes A almost uniform (spec §9.2): every pixel gets
about the mean text token, so DA adds the same vector everywhere. `scale` sets another constant (a scale of
about 10 lets a pixel pick the words that match it), `learned` starts from it and lets training adjust it.

HDA (paper v3) was not released; the official code only holds fragments (a `--multi_scale` branch with a
learnable w = 0.5, and the names `fpn_conv` / `dense_conv2` loaded by the inference scripts; spec §3.7).
Our reconstruction (GUESS, every choice a config switch):

    P     = l2n(fpn_conv(N_1(I_1)..N_K(I_K)))   I_k: pre-neck outputs of the global blocks except the last
                                        [B, g, g, D]; N_k: a LayerNorm per level (`level_norm`) or identity
                                        "concat":    one 1x1 conv on the concatenation (K*D -> C)
                                        "per_level": one 1x1 conv per level (D -> C), summed
    D1    = DA(F^, T; dense_conv)
    D2    = DA(P,  T; dense_conv2)      "separate": its own conv and temperature (the names the official
                                        inference scripts load) | "shared": DA(P, T; dense_conv), the
                                        official `--multi_scale` fragment, which reuses `dense_conv`
    Dense = w * D1 + (1 - w) * D2       "weighted": w = `multi_scale_weight`, learnable, init 0.5
          | multi_scale_conv([D1; D2])  "conv":     1x1 conv 2C -> C (the official commented-out "method1")

P is L2-normalised like F^ so both attentions see unit vectors and share the same temperature semantics.
The levels are raw ViT activations whose scale grows with depth; `level_norm` puts them on one scale before
they are fused into P.
"""

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from refsam_jax.model.cross_modal_mlp import l2_normalize
from refsam_jax.sam.common import layer_norm


def conv1x1(in_dim: int, out_dim: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(in_dim, out_dim, (1, 1), rngs=rngs)


def attend_text(image: jax.Array, tokens: jax.Array, token_mask: jax.Array, scale) -> jax.Array:
    """Per-pixel softmax attention over text tokens.

    Args:
      image: `[B, g, g, C]` (L2-normalised per pixel).
      tokens: `[B, N, C]`.
      token_mask: `[B, N]` bool, False for tokens that must get zero weight (at least one True per row).
      scale: softmax scale (scalar).
    Returns:
      `[B, g, g, C]`: the attention-weighted mean of the tokens at every pixel.
    """
    logits = jnp.einsum("byxc,bnc->byxn", image, tokens) * scale
    logits = jnp.where(token_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    return jnp.einsum("byxn,bnc->byxc", jax.nn.softmax(logits, axis=-1), tokens)


class _Scale(nnx.Module):
    """Softmax scale: fixed at `scale` (0: 1/sqrt(dim), official), or exp of a learned log-scale initialised
    there."""

    def __init__(self, dim: int, temperature: str, scale: float = 0.0):
        if temperature not in ("fixed", "learned"):
            raise ValueError(f"dense attention temperature {temperature!r} is not one of 'fixed', 'learned'")
        initial = float(scale) or 1.0 / math.sqrt(dim)
        self.fixed = initial if temperature == "fixed" else None
        self.log_scale = nnx.Param(jnp.full((), math.log(initial))) if temperature == "learned" else None

    def __call__(self):
        return self.fixed if self.log_scale is None else jnp.exp(self.log_scale[...])


class DenseAttention(nnx.Module):
    """DA: `(F^ [B, g, g, C], T [B, N, C], mask [B, N]) -> dense prompt [B, g, g, C]`."""

    def __init__(self, dim: int, *, temperature: str = "fixed", scale: float = 0.0, rngs: nnx.Rngs):
        self.dense_conv = conv1x1(2 * dim, dim, rngs)
        self.scale = _Scale(dim, temperature, scale)

    def __call__(self, image: jax.Array, tokens: jax.Array, token_mask: jax.Array,
                 interm: Optional[Sequence[jax.Array]] = None) -> jax.Array:
        del interm  # DA uses the final embedding only.
        language = attend_text(image, tokens, token_mask, self.scale())
        return self.dense_conv(jnp.concatenate([image, language], axis=-1))


class HierarchicalDenseAttention(nnx.Module):
    """HDA (our reconstruction, see the module docstring): DA on F^ and on projected intermediate features."""

    def __init__(self, dim: int, interm_dim: int, num_levels: int, *, projection: str = "concat",
                 fusion: str = "weighted", temperature: str = "fixed", scale: float = 0.0,
                 dense_conv: str = "separate", level_norm: bool = False, rngs: nnx.Rngs):
        if num_levels < 1:
            raise ValueError("HierarchicalDenseAttention needs at least one intermediate level; the SAM config "
                             "has fewer than two global-attention blocks")
        if dense_conv not in ("separate", "shared"):
            raise ValueError(f"hda.dense_conv {dense_conv!r} is not one of 'separate', 'shared'")
        self.num_levels = num_levels
        self.projection = projection
        self.fusion = fusion
        self.dense_conv = conv1x1(2 * dim, dim, rngs)
        self.dense_conv2 = conv1x1(2 * dim, dim, rngs) if dense_conv == "separate" else None
        self.level_norms = (nnx.List([layer_norm(interm_dim, 1e-6, rngs) for _ in range(num_levels)])
                            if level_norm else None)
        if projection == "concat":
            self.fpn_conv = conv1x1(num_levels * interm_dim, dim, rngs)
        elif projection == "per_level":
            self.fpn_conv = nnx.List([conv1x1(interm_dim, dim, rngs) for _ in range(num_levels)])
        else:
            raise ValueError(f"hda.projection {projection!r} is not one of 'concat', 'per_level'")
        if fusion == "weighted":
            self.multi_scale_weight = nnx.Param(jnp.full((1,), 0.5))
        elif fusion == "conv":
            self.multi_scale_conv = conv1x1(2 * dim, dim, rngs)
        else:
            raise ValueError(f"hda.fusion {fusion!r} is not one of 'weighted', 'conv'")
        self.scale = _Scale(dim, temperature, scale)
        self.scale2 = _Scale(dim, temperature, scale) if dense_conv == "separate" else None

    def project(self, interm: Sequence[jax.Array]) -> jax.Array:
        """`K x [B, g, g, D] -> P [B, g, g, C]`, L2-normalised per pixel."""
        if interm is None or len(interm) != self.num_levels:
            raise ValueError(f"HDA expects {self.num_levels} intermediate feature maps, "
                             f"got {0 if interm is None else len(interm)}")
        if self.level_norms is not None:
            interm = [norm(level) for norm, level in zip(self.level_norms, interm)]
        if self.projection == "concat":
            projected = self.fpn_conv(jnp.concatenate(list(interm), axis=-1))
        else:
            projected = sum(conv(level) for conv, level in zip(self.fpn_conv, interm))
        return l2_normalize(projected)

    def __call__(self, image: jax.Array, tokens: jax.Array, token_mask: jax.Array,
                 interm: Optional[Sequence[jax.Array]] = None) -> jax.Array:
        """`image`: F^ `[B, g, g, C]`; `interm`: K x `[B, g, g, D]` -> `[B, g, g, C]`."""
        final = self.dense_conv(jnp.concatenate(
            [image, attend_text(image, tokens, token_mask, self.scale())], axis=-1))
        levels = self.project(interm)
        conv, scale = (self.dense_conv, self.scale) if self.dense_conv2 is None else (self.dense_conv2, self.scale2)
        hierarchical = conv(jnp.concatenate([levels, attend_text(levels, tokens, token_mask, scale())], axis=-1))
        if self.fusion == "weighted":
            w = self.multi_scale_weight[...]
            return w * final + (1.0 - w) * hierarchical
        return self.multi_scale_conv(jnp.concatenate([final, hierarchical], axis=-1))
