"""RefSAM training loss (spec §5.3): Dice + sigmoid focal per frame, 1:1, averaged over the B x T masks.

Logits are upsampled bilinearly to the padded model input size S and compared with the ground truth only
inside the valid (h, w) region of each frame (the SAM-resized image before padding), which matches the
official code's loss on logits cropped to the augmented image size.
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax


def valid_mask(image_size: jax.Array, size: int) -> jax.Array:
    """`[..., 2]` valid (h, w) -> `[..., size, size]` float mask, 1 inside the top-left h x w corner."""
    rows = jnp.arange(size) < image_size[..., 0, None]
    cols = jnp.arange(size) < image_size[..., 1, None]
    return (rows[..., :, None] & cols[..., None, :]).astype(jnp.float32)


def upsample_logits(logits: jax.Array, size: int) -> jax.Array:
    """`[B, T, h, w]` -> `[B, T, size, size]`, bilinear, no antialiasing (PyTorch `F.interpolate`)."""
    shape = logits.shape[:-2] + (size, size)
    return jax.image.resize(logits, shape, method="bilinear", antialias=False)


def dice_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, smooth: float = 1.0) -> jax.Array:
    """1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s) over the last two axes, p = sigmoid(logits)."""
    probs = jax.nn.sigmoid(logits) * weights
    targets = targets * weights
    numerator = 2.0 * jnp.sum(probs * targets, axis=(-2, -1)) + smooth
    denominator = jnp.sum(probs, axis=(-2, -1)) + jnp.sum(targets, axis=(-2, -1)) + smooth
    return 1.0 - numerator / denominator


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
    """Mean over the weighted pixels of alpha_t (1 - p_t)^gamma BCE (RetinaNet), over the last two axes."""
    probs = jax.nn.sigmoid(logits)
    bce = optax.sigmoid_binary_cross_entropy(logits, targets)
    p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    focal = alpha_t * (1.0 - p_t) ** gamma * bce
    return jnp.sum(focal * weights, axis=(-2, -1)) / jnp.maximum(jnp.sum(weights, axis=(-2, -1)), 1.0)


def refsam_loss(low_res_logits: jax.Array, masks: jax.Array, image_size: jax.Array, *, dice_weight: float = 1.0,
                focal_weight: float = 1.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0
                ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Dice + focal on every frame of every clip.

    Args:
      low_res_logits: `[B, T, 4g, 4g]` mask-decoder logits.
      masks: `[B, T, S, S]` float {0, 1} ground truth, padded like the frames.
      image_size: `[B, T, 2]` int valid (h, w) of each frame inside S x S.
    Returns:
      the scalar loss (mean over B x T of dice_weight * dice + focal_weight * focal) and its two parts.
    """
    size = masks.shape[-1]
    logits = upsample_logits(low_res_logits.astype(jnp.float32), size)
    weights = valid_mask(image_size, size)
    masks = masks.astype(jnp.float32)
    dice = dice_loss(logits, masks, weights)
    focal = sigmoid_focal_loss(logits, masks, weights, focal_alpha, focal_gamma)
    loss = jnp.mean(dice_weight * dice + focal_weight * focal)
    return loss, {"dice": jnp.mean(dice), "focal": jnp.mean(focal)}
