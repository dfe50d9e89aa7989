"""SAM's prompt encoder: points and boxes -> sparse tokens, mask prompts -> a dense embedding.

Channels-last: mask prompts are `[B, 4g, 4g, 1]`, dense embeddings `[B, g, g, C]`. Attribute names follow
`segment_anything.modeling.prompt_encoder`.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refsam_jax.sam.common import Buffer, gelu, layer_norm
from refsam_jax.sam.config import SamConfig

# Hidden channels of the mask-prompt downscaling convolutions (SAM's `mask_in_chans`).
MASK_IN_CHANS = 16
LAYER_NORM_EPS = 1e-6
NOT_A_POINT = -1


class PositionEmbeddingRandom(nnx.Module):
    """Random Fourier features of (x, y) positions: `[..., 2]` in [0, 1] -> `[..., 2 * num_pos_feats]`."""

    def __init__(self, num_pos_feats: int, rngs: nnx.Rngs):
        self.positional_encoding_gaussian_matrix = Buffer(jax.random.normal(rngs.params(), (2, num_pos_feats)))

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        coords = 2.0 * coords - 1.0
        # Full float32 precision: the products are scaled by 2*pi before sin/cos.
        coords = jnp.matmul(coords, self.positional_encoding_gaussian_matrix[...], precision=jax.lax.Precision.HIGHEST)
        coords = 2.0 * np.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def __call__(self, size: Tuple[int, int]) -> jax.Array:
        """Encoding of the centres of an `(h, w)` grid: `[h, w, C]`."""
        h, w = size
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
        return self._pe_encoding(grid)

    def forward_with_coords(self, coords: jax.Array, image_size: Tuple[int, int]) -> jax.Array:
        """Pixel coordinates (x, y) `[B, N, 2]` in an `(h, w)` image -> `[B, N, C]`."""
        h, w = image_size
        return self._pe_encoding(coords.astype(jnp.float32) / jnp.array([w, h], jnp.float32))


class PromptEncoder(nnx.Module):
    """Embeds point, box and mask prompts for the mask decoder."""

    def __init__(self, config: SamConfig, rngs: nnx.Rngs):
        dim, grid = config.prompt_embed_dim, config.image_embedding_size
        self.embed_dim = dim
        self.image_embedding_size = (grid, grid)
        self.input_image_size = (config.img_size, config.img_size)
        self.pe_layer = PositionEmbeddingRandom(dim // 2, rngs)
        # Positive point, negative point, box top-left corner, box bottom-right corner.
        self.point_embeddings = nnx.List([nnx.Embed(1, dim, rngs=rngs) for _ in range(4)])
        self.not_a_point_embed = nnx.Embed(1, dim, rngs=rngs)
        self.mask_downscaling = nnx.Sequential(
            nnx.Conv(1, MASK_IN_CHANS // 4, (2, 2), strides=2, padding="VALID", rngs=rngs),
            layer_norm(MASK_IN_CHANS // 4, LAYER_NORM_EPS, rngs),
            gelu,
            nnx.Conv(MASK_IN_CHANS // 4, MASK_IN_CHANS, (2, 2), strides=2, padding="VALID", rngs=rngs),
            layer_norm(MASK_IN_CHANS, LAYER_NORM_EPS, rngs),
            gelu,
            nnx.Conv(MASK_IN_CHANS, dim, (1, 1), rngs=rngs),
        )
        self.no_mask_embed = nnx.Embed(1, dim, rngs=rngs)

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the image embedding grid: `[1, g, g, C]`."""
        return self.pe_layer(self.image_embedding_size)[None]

    def _embed_points(self, coords: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        """`[B, N, 2]` pixel coordinates and `[B, N]` labels (1 positive, 0 negative, -1 not a point)."""
        coords = coords + 0.5  # Centre of the pixel.
        if pad:
            coords = jnp.concatenate([coords, jnp.zeros((coords.shape[0], 1, 2), coords.dtype)], axis=1)
            labels = jnp.concatenate([labels, jnp.full((labels.shape[0], 1), NOT_A_POINT, labels.dtype)], axis=1)
        embedding = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels[..., None]
        embedding = embedding + jnp.where(labels == 0, self.point_embeddings[0].embedding[0], 0.0)
        embedding = embedding + jnp.where(labels == 1, self.point_embeddings[1].embedding[0], 0.0)
        return jnp.where(labels == NOT_A_POINT, self.not_a_point_embed.embedding[0], embedding)

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """`[B, 4]` boxes (x0, y0, x1, y1) in pixels -> two corner tokens `[B, 2, C]`."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = jnp.stack([self.point_embeddings[2].embedding[0], self.point_embeddings[3].embedding[0]])
        return embedding + corner_embed

    def __call__(
        self,
        points: Optional[Tuple[jax.Array, jax.Array]] = None,
        boxes: Optional[jax.Array] = None,
        masks: Optional[jax.Array] = None,
    ) -> Tuple[jax.Array, jax.Array]:
        """Embeds prompts given in input-image pixels (the padded `img_size` frame).

        Args:
          points: coordinates `[B, N, 2]` (x, y) and labels `[B, N]`; a padding point is appended when no
            boxes are given, as in SAM.
          boxes: `[B, 4]` as (x0, y0, x1, y1).
          masks: low-resolution mask logits `[B, 4g, 4g, 1]`.
        Returns:
          sparse embeddings `[B, N_tokens, C]` and dense embeddings `[B, g, g, C]`.
        """
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        sparse = [jnp.zeros((batch, 0, self.embed_dim), jnp.float32)]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = jnp.broadcast_to(self.no_mask_embed.embedding[0],
                                     (batch, *self.image_embedding_size, self.embed_dim))
        return jnp.concatenate(sparse, axis=1), dense
