"""SAM's mask decoder: a two-way transformer over [iou, mask tokens, prompt tokens] and the image embedding,
then hypernetwork MLPs that turn mask tokens into per-pixel mask logits.

Channels-last: image embeddings `[B, g, g, C]`, masks `[B, M, 4g, 4g]`. Attribute names follow
`segment_anything.modeling.mask_decoder`.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from refsam_jax.sam.common import gelu, layer_norm
from refsam_jax.sam.config import SamConfig
from refsam_jax.sam.transformer import TwoWayTransformer

LAYER_NORM_EPS = 1e-6


class MLP(nnx.Module):
    """`num_layers` Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, rngs: nnx.Rngs):
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nnx.List([nnx.Linear(n, k, rngs=rngs) for n, k in zip(dims[:-1], dims[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder(nnx.Module):
    """Predicts mask logits and their IoU scores from an image embedding and prompt embeddings."""

    def __init__(self, config: SamConfig, rngs: nnx.Rngs):
        dim = config.prompt_embed_dim
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(config, rngs)
        self.iou_token = nnx.Embed(1, dim, rngs=rngs)
        self.mask_tokens = nnx.Embed(self.num_mask_tokens, dim, rngs=rngs)
        self.output_upscaling = nnx.Sequential(
            nnx.ConvTranspose(dim, dim // 4, (2, 2), strides=2, padding="VALID", rngs=rngs),
            layer_norm(dim // 4, LAYER_NORM_EPS, rngs),
            gelu,
            nnx.ConvTranspose(dim // 4, dim // 8, (2, 2), strides=2, padding="VALID", rngs=rngs),
            gelu,
        )
        self.output_hypernetworks_mlps = nnx.List([
            MLP(dim, dim, dim // 8, 3, rngs) for _ in range(self.num_mask_tokens)
        ])
        self.iou_prediction_head = MLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens,
                                       config.iou_head_depth, rngs)

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        token_mask: Optional[jax.Array] = None,
    ) -> Tuple[jax.Array, jax.Array]:
        """Predicts masks for a batch of prompts, one image embedding per prompt.

        Args:
          image_embeddings: `[B, g, g, C]`.
          image_pe: `[1 or B, g, g, C]`, from `PromptEncoder.get_dense_pe`.
          sparse_prompt_embeddings: `[B, Nt, C]`.
          dense_prompt_embeddings: `[B, g, g, C]`.
          multimask_output: return the 3 disambiguation masks instead of the single main mask.
          token_mask: `[B, Nt]`, True for valid sparse tokens; None = all valid.
        Returns:
          mask logits `[B, M, 4g, 4g]` and IoU predictions `[B, M]`, M = 3 or 1.
        """
        masks, iou_pred, _ = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                                dense_prompt_embeddings, token_mask)
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        token_mask: Optional[jax.Array] = None,
    ) -> Tuple[jax.Array, jax.Array, jax.Array]:
        """All mask outputs: logits `[B, 4, 4g, 4g]`, IoU `[B, 4]`, and the transformer's output tokens
        `[B, 5 + Nt, C]` ordered [iou, mask x4, sparse...] (index 1 is the main mask token)."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = jnp.concatenate([self.iou_token.embedding[...], self.mask_tokens.embedding[...]], axis=0)
        output_tokens = jnp.broadcast_to(output_tokens, (batch, *output_tokens.shape))
        tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings], axis=1)
        if token_mask is not None:
            token_mask = jnp.concatenate(
                [jnp.ones((batch, output_tokens.shape[1]), bool), token_mask.astype(bool)], axis=1)

        src = image_embeddings + dense_prompt_embeddings
        b, h, w, c = src.shape
        tokens_out, src = self.transformer(src, image_pe, tokens, token_mask)
        iou_token_out = tokens_out[:, 0]
        mask_tokens_out = tokens_out[:, 1:1 + self.num_mask_tokens]

        upscaled = self.output_upscaling(src.reshape(b, h, w, c))  # [B, 4g, 4g, C/8]
        hyper_in = jnp.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                             axis=1)  # [B, 4, C/8]
        masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, upscaled)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred, tokens_out
