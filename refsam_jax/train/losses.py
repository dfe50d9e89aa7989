"""Segmentation losses: RefSAM's (spec §5.3) and SAM's.

RefSAM: Dice + sigmoid focal per frame, 1:1, averaged over the B x T masks. Logits are upsampled bilinearly to
the padded model input size S and compared with the ground truth only inside the valid (h, w) region of each
frame (the SAM-resized image before padding), which matches the official code's loss on logits cropped to the
augmented image size.

SAM (`sam_loss`): 20 focal + 1 Dice on the best of the candidate masks, plus the MSE of the predicted IoUs.
"""

from typing import Dict, Optional, Tuple

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


def refsam_loss(low_res_logits: jax.Array, masks: jax.Array, image_size: jax.Array,
                expression_valid: Optional[jax.Array] = None, *, dice_weight: float = 1.0, focal_weight: float = 1.0,
                focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Dice + focal on every frame of every clip (and every sentence of it).

    Args:
      low_res_logits: `[B, T, 4g, 4g]` mask-decoder logits, or `[B, K, T, 4g, 4g]` for K sentences per clip.
      masks: `[B, T, S, S]` (or `[B, K, T, S, S]`) float {0, 1} ground truth, padded like the frames.
      image_size: `[B, T, 2]` int valid (h, w) of each frame inside S x S.
      expression_valid: with K sentences, bool `[B, K]`: the sentences that count (others weigh 0).
    Returns:
      the scalar loss (mean over the B x T (x valid K) masks of dice_weight * dice + focal_weight * focal) and its
      two parts.
    """
    size = masks.shape[-1]
    logits = upsample_logits(low_res_logits.astype(jnp.float32), size)
    if masks.ndim == 5:
        image_size = image_size[:, None]
    weights = valid_mask(image_size, size)
    masks = masks.astype(jnp.float32)
    dice = dice_loss(logits, masks, weights)
    focal = sigmoid_focal_loss(logits, masks, weights, focal_alpha, focal_gamma)
    counts = jnp.ones(dice.shape[:-1]) if expression_valid is None else expression_valid.astype(jnp.float32)
    counts = jnp.broadcast_to(counts[..., None], dice.shape)

    def mean(x):
        return jnp.sum(x * counts) / jnp.maximum(jnp.sum(counts), 1.0)

    return mean(dice_weight * dice + focal_weight * focal), {"dice": mean(dice), "focal": mean(focal)}


def mask_iou(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """IoU of the masks `logits > 0` with the {0, 1} `targets` inside `weights`, over the last two axes (1 when
    both are empty)."""
    predicted = (logits > 0).astype(jnp.float32) * weights
    targets = targets * weights
    intersection = jnp.sum(predicted * targets, axis=(-2, -1))
    union = jnp.sum(jnp.maximum(predicted, targets), axis=(-2, -1))
    return jnp.where(union > 0, intersection / jnp.maximum(union, 1.0), 1.0)


def sam_loss(logits: jax.Array, iou_pred: jax.Array, targets: jax.Array, weights: jax.Array, *,
             focal_weight: float = 20.0, dice_weight: float = 1.0, iou_weight: float = 1.0, focal_alpha: float = 0.25,
             focal_gamma: float = 2.0) -> Tuple[jax.Array, Dict[str, jax.Array], jax.Array]:
    """SAM's loss of each target over its M candidate masks (the SAM paper, §3 and appendix A).

    The candidate with the lowest `focal_weight * focal + dice_weight * dice` is the only one whose mask is
    trained (an ambiguous prompt may mean any of them); every candidate's predicted IoU regresses to the IoU of
    its mask (`logits > 0`) with the target, weighted by `iou_weight` (mean squared error).

    Args:
      logits: `[N, M, h, w]` mask logits; iou_pred: `[N, M]` predicted IoUs.
      targets: `[N, h, w]` {0, 1} masks; weights: `[N, h, w]`, 1 where pixels count (the image, not padding).
    Returns:
      the loss of each target `[N]`, its parts `{name: [N]}` (focal, dice, iou_mse, and iou: the actual IoU of the
      chosen candidate) and the chosen candidate's index `[N]`.
    """
    logits = logits.astype(jnp.float32)
    targets, weights = targets[:, None].astype(jnp.float32), weights[:, None].astype(jnp.float32)
    focal = sigmoid_focal_loss(logits, targets, weights, focal_alpha, focal_gamma)  # [N, M]
    dice = dice_loss(logits, targets, weights)
    mask_loss = focal_weight * focal + dice_weight * dice
    best = jnp.argmin(jax.lax.stop_gradient(mask_loss), axis=1)

    def chosen(x):
        return jnp.take_along_axis(x, best[:, None], axis=1)[:, 0]

    iou = jax.lax.stop_gradient(mask_iou(logits, targets, weights))
    iou_mse = jnp.mean(jnp.square(iou_pred.astype(jnp.float32) - iou), axis=1)
    loss = chosen(mask_loss) + iou_weight * iou_mse
    return loss, {"focal": chosen(focal), "dice": chosen(dice), "iou_mse": iou_mse, "iou": chosen(iou)}, best
