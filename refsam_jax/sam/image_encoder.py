"""SAM's ViT image encoder (ViTDet backbone): windowed and global attention with decomposed relative positions.

Channels-last throughout: images `[B, S, S, 3]`, token grids `[B, H, W, C]`. Attribute names follow
`segment_anything.modeling.image_encoder`, so PyTorch checkpoints load by name.

`dtype` is the compute dtype of the matmuls and convolutions (e.g. bfloat16 for speed); parameters, the
residual stream, LayerNorm and softmax stay float32.

This is plain SAM. Models built on it change blocks from outside: `ImageEncoderViT(..., block_hook=f)` hands
each block to `f(index, block, rngs)` right after building it and keeps what `f` returns (e.g. RefSAM's
adapters, `refsam_jax.model.adapters`, which override `Block.attention` / `Block.mlp_residual`). A block whose
`remat` is True is rematerialised in the backward pass.
"""

import functools
from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refsam_jax.sam.common import MLPBlock, gelu, layer_norm, linear, matmul
from refsam_jax.sam.config import SamConfig

LAYER_NORM_EPS = 1e-6
# Attention over more than twice this many tokens (SAM's global blocks) loops over chunks of about this
# many queries, so the [queries, keys] logits never fill memory: 2.2x less CPU time for vit_b's global blocks.
QUERY_CHUNK_TOKENS = 128


def _linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out_size, in_size]` weights of PyTorch's 1-D linear interpolation with align_corners=False."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    weights = np.zeros((out_size, in_size), np.float32)
    np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), hi), frac)
    return weights


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative position embeddings `[q_size, k_size, C]` from a table `[L, C]` (resized if L != 2*max-1)."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        weights = jnp.asarray(_linear_resize_matrix(rel_pos.shape[0], max_rel_dist), rel_pos.dtype)
        rel_pos = jnp.dot(weights, rel_pos, precision=jax.lax.Precision.HIGHEST)
    # Coordinates are scaled to the longer side when q and k differ, in float32 and truncated as SAM does.
    q_coords = np.arange(q_size, dtype=np.float32)[:, None] * np.float32(max(k_size / q_size, 1.0))
    k_coords = np.arange(k_size, dtype=np.float32)[None, :] * np.float32(max(q_size / k_size, 1.0))
    relative = (q_coords - k_coords) + np.float32((k_size - 1) * max(q_size / k_size, 1.0))
    return rel_pos[relative.astype(np.int64)]


def window_partition(x: jax.Array, window_size: int,
                     pad_value: Optional[jax.Array] = None) -> Tuple[jax.Array, Tuple[int, int]]:
    """`[B, H, W, C]` -> windows `[B * nH * nW, ws, ws, C]` padded bottom/right with `pad_value` `[C]` (zeros
    by default), and the padded size (Hp, Wp)."""
    b, h, w, c = x.shape
    hp, wp = h + -h % window_size, w + -w % window_size
    # Concatenated rather than jnp.pad + where: XLA moves a pad of a matmul's output onto its input, which
    # would have qkv computed for the pad tokens after all.
    pad_value = jnp.zeros((c,), x.dtype) if pad_value is None else pad_value.astype(x.dtype)
    if wp > w:
        x = jnp.concatenate([x, jnp.broadcast_to(pad_value, (b, h, wp - w, c))], axis=2)
    if hp > h:
        x = jnp.concatenate([x, jnp.broadcast_to(pad_value, (b, hp - h, wp, c))], axis=1)
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c), (hp, wp)


def window_unpartition(windows: jax.Array, window_size: int, pad_hw: Tuple[int, int],
                       hw: Tuple[int, int]) -> jax.Array:
    """Inverse of `window_partition`: windows -> `[B, H, W, C]` with the padding removed."""
    (hp, wp), (h, w) = pad_hw, hw
    nh, nw = hp // window_size, wp // window_size
    x = windows.reshape(-1, nh, nw, window_size, window_size, windows.shape[-1])
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, windows.shape[-1])
    return x[:, :h, :w]


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, rel_h: jax.Array, rel_w: jax.Array, scale: float,
            dtype) -> jax.Array:
    """Softmax attention of the queries of r grid rows over an `[H, W]` grid, any leading dims `...`:
    q `[..., r, W, d]`, k and v `[..., H*W, d]`, relative terms rel_h `[..., r, W, H]` and rel_w
    `[..., r, W, W]` -> `[..., r, W, d]`; matmuls in `dtype`, the rest in float32."""
    *lead, r, w, d = q.shape
    h = rel_h.shape[-1]
    logits = matmul("...qd,...kd->...qk", q.reshape(*lead, r * w, d) * scale, k, dtype)
    logits = logits.reshape(*lead, r, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
    logits = logits.reshape(*lead, r * w, h * w)
    # Softmax, normalised after the value product: [r*W, d] divisions instead of [r*W, H*W], and XLA
    # computes the exponentials once.
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = matmul("...qk,...kd->...qd", weights, v, dtype) / weights.sum(axis=-1, keepdims=True)
    return out.reshape(*lead, r, w, d)


class Attention(nnx.Module):
    """Multi-head self-attention with decomposed relative position embeddings, over the whole token grid
    (`window_size` 0) or within `window_size`^2 windows."""

    def __init__(self, dim: int, num_heads: int, window_size: int, input_size: Tuple[int, int],
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.num_heads = num_heads
        self.window_size = window_size
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = linear(dim, 3 * dim, rngs, dtype)
        self.proj = linear(dim, dim, rngs, dtype)
        self.dtype = dtype
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.rel_pos_h = nnx.Param(jnp.zeros((2 * attn_size[0] - 1, head_dim)))
        self.rel_pos_w = nnx.Param(jnp.zeros((2 * attn_size[1] - 1, head_dim)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[B, H, W, C] -> [B, H, W, C]`.

        Windows are cut from `qkv(x)` rather than from `x`, and `proj` runs after they are put back: SAM's
        zero pad tokens only ever contribute `qkv(0)`, the bias, so the linear layers skip them."""
        hw = x.shape[1:3]
        qkv = self.qkv(x)
        if self.window_size > 0:
            qkv, pad_hw = window_partition(qkv, self.window_size, pad_value=self.qkv.bias[...])
        out = self._attention(qkv)
        if self.window_size > 0:
            out = window_unpartition(out, self.window_size, pad_hw, hw)
        return self.proj(out)

    def _attention(self, qkv: jax.Array) -> jax.Array:
        """Attention from the projections `[B, H, W, 3C]` -> `[B, H, W, C]` (heads concatenated).

        Each of the B grids (a window, or the whole image) is attended on its own, from splitting its heads
        to merging them. On CPU the grids are a loop (`lax.map`), so that a window's work stays in cache, and
        global attention further loops over heads. Global attention (more than 2 * QUERY_CHUNK_TOKENS tokens)
        then loops over chunks of query rows, so the `[queries, keys]` logits never fill memory (vit_b on CPU:
        128 x 64^2, in the L2 cache)."""
        b, h, w, c3 = qkv.shape
        n = self.num_heads
        d = c3 // (3 * n)
        rel_pos_h = get_rel_pos(h, h, self.rel_pos_h[...])
        rel_pos_w = get_rel_pos(w, w, self.rel_pos_w[...])
        rows = max(1, QUERY_CHUNK_TOKENS // w)
        chunked = h * w > 2 * QUERY_CHUNK_TOKENS and h % rows == 0
        loop = _loop_on_this_backend()

        def attend(q, k, v):
            """Over any leading dims `...`: q `[..., H, W, d]`, k and v `[..., H*W, d]` -> `[..., H, W, d]`."""
            # The relative terms use the unscaled query, as SAM does.
            rel_h = jnp.einsum("...yxd,ykd->...yxk", q, rel_pos_h)
            rel_w = jnp.einsum("...yxd,xkd->...yxk", q, rel_pos_w)
            if not chunked:
                return _attend(q, k, v, rel_h, rel_w, self.scale, self.dtype)
            # A loop over query rows (vit_b: 32 chunks of 2 rows).
            lead = q.shape[:-3]
            chunks = [jnp.moveaxis(a.reshape(*lead, h // rows, rows, *a.shape[-2:]), -4, 0) for a in (q, rel_h, rel_w)]
            out = jax.lax.map(lambda t: _attend(t[0], k, v, t[1], t[2], self.scale, self.dtype), chunks)
            return jnp.moveaxis(out, 0, -4).reshape(*lead, h, w, -1)

        def attend_grid(x):
            """One grid's projections `[H, W, 3C]` -> `[H, W, C]`."""
            q, k, v = x.reshape(h * w, 3, n, d).transpose(1, 2, 0, 3)  # [heads, H*W, d]
            q = q.reshape(n, h, w, d)
            out = jax.lax.map(lambda t: attend(*t), (q, k, v)) if loop and chunked else attend(q, k, v)
            return out.transpose(1, 2, 0, 3).reshape(h, w, n * d)

        return jax.lax.map(attend_grid, qkv) if loop else jax.vmap(attend_grid)(qkv)


def _loop_on_this_backend() -> bool:
    """Whether attention loops over windows and heads (CPU) instead of batching them (GPU, TPU)."""
    return jax.default_backend() == "cpu"


class Block(nnx.Module):
    """Pre-norm transformer block; windowed attention when `window_size > 0`, global otherwise.

        x1 = x + attention(norm1(x))        attn per window (pad tokens included) or over the whole grid
        x2 = mlp_residual(x1) = x1 + mlp(norm2(x1))

    `attention` and `mlp_residual` are the extension points for adapted blocks; `remat` (False here) asks
    the encoder to rematerialise the block in the backward pass.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int,
                 input_size: Tuple[int, int], rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm1 = layer_norm(dim, LAYER_NORM_EPS, rngs)
        self.attn = Attention(dim, num_heads, window_size, input_size, rngs, dtype)
        self.norm2 = layer_norm(dim, LAYER_NORM_EPS, rngs)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), gelu, rngs, dtype)
        self.window_size = window_size
        self.remat = False

    def attention(self, x: jax.Array) -> jax.Array:
        """`[B, H, W, C] -> [B, H, W, C]`: `attn`, windowed or global."""
        return self.attn(x)

    def mlp_residual(self, x: jax.Array) -> jax.Array:
        """`x + mlp(norm2(x))` on tokens `[B, H, W, C]`."""
        return x + self.mlp(self.norm2(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[B, H, W, C] -> [B, H, W, C]`."""
        return self.mlp_residual(x + self.attention(self.norm1(x)))


BlockHook = Callable[[int, Block, nnx.Rngs], Block]


class PatchEmbed(nnx.Module):
    """Non-overlapping patches -> tokens: `[B, S, S, 3] -> [B, S/p, S/p, D]`."""

    def __init__(self, patch_size: int, embed_dim: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.proj = nnx.Conv(3, embed_dim, (patch_size, patch_size), strides=patch_size, padding="VALID",
                             dtype=dtype, preferred_element_type=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class ImageEncoderViT(nnx.Module):
    """SAM's image encoder: `[B, S, S, 3]` normalised image -> `[B, g, g, prompt_embed_dim]` embedding."""

    def __init__(self, config: SamConfig, rngs: nnx.Rngs, *, dtype=jnp.float32,
                 block_hook: Optional[BlockHook] = None):
        dim, grid, depth = config.encoder_embed_dim, config.image_embedding_size, config.encoder_depth
        self.dtype = dtype
        self.patch_embed = PatchEmbed(config.patch_size, dim, rngs, dtype)
        self.pos_embed = nnx.Param(jnp.zeros((1, grid, grid, dim)))
        blocks = []
        for i in range(depth):
            window = 0 if i in config.encoder_global_attn_indexes else config.window_size
            block = Block(dim, config.encoder_num_heads, config.mlp_ratio, window, (grid, grid), rngs, dtype)
            blocks.append(block_hook(i, block, rngs) if block_hook is not None else block)
        self.blocks = nnx.List(blocks)
        out = config.prompt_embed_dim
        conv = functools.partial(nnx.Conv, use_bias=False, dtype=dtype, preferred_element_type=jnp.float32,
                                 rngs=rngs)
        self.neck = nnx.Sequential(
            conv(dim, out, (1, 1)),
            layer_norm(out, LAYER_NORM_EPS, rngs),
            conv(out, out, (3, 3), padding=1),
            layer_norm(out, LAYER_NORM_EPS, rngs),
        )

    def __call__(self, x: jax.Array) -> Tuple[jax.Array, List[jax.Array]]:
        """Returns the embedding `[B, g, g, 256]` and the pre-neck outputs `[B, g, g, D]` of the global blocks
        except the last one (RefSAM's intermediate features)."""
        x = self.patch_embed(x) + self.pos_embed[...]
        global_outputs = []
        for block in self.blocks:
            x = nnx.remat(lambda b, y: b(y))(block, x) if block.remat else block(x)
            if block.window_size == 0:
                global_outputs.append(x)
        return self.neck(x), global_outputs[:-1]
