"""SAM's pre- and post-processing: ResizeLongestSide, normalisation, padding, mask upsampling.

Equal to `segment_anything.utils.transforms.ResizeLongestSide` and `Sam.preprocess/postprocess_masks`,
but channels-last: images are `[H, W, 3]`, masks `[..., H, W]`.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def get_preprocess_shape(old_h: int, old_w: int, long_side: int) -> Tuple[int, int]:
    """(new_h, new_w) with the longest side equal to `long_side`, rounded as SAM rounds."""
    scale = long_side * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Raises a clear error unless `image` is a uint8 `[H, W, 3]` RGB array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB in 0..255, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [H, W, 3] (HWC RGB), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """uint8 `[H, W, 3]` -> uint8 `[h, w, 3]`, PIL bilinear with antialiasing (as SAM's apply_image)."""
    image = check_image(image)
    new_h, new_w = get_preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def resize_shortest_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 `[H, W, 3]` -> uint8 `[h, w, 3]` with the shortest side `short_side` (up or down), PIL bilinear:
    torchvision's `Resize(short_side)` as the official RefSAM inference scripts apply it before SAM's resize
    (longest side `int(short_side * long / short)`)."""
    image = check_image(image)
    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    long_side = int(short_side * max(h, w) / min(h, w))
    new_h, new_w = (short_side, long_side) if h <= w else (long_side, short_side)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def apply_coords(coords: np.ndarray, original_size: Sequence[int], long_side: int) -> np.ndarray:
    """Point coordinates `[..., 2]` (x, y) in the original image -> the resized image."""
    old_h, old_w = original_size
    new_h, new_w = get_preprocess_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def apply_boxes(boxes: np.ndarray, original_size: Sequence[int], long_side: int) -> np.ndarray:
    """Boxes `[B, 4]` (x0, y0, x1, y1) in the original image -> the resized image."""
    boxes = np.asarray(boxes)
    return apply_coords(boxes.reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


class ResizeLongestSide:
    """segment_anything's `ResizeLongestSide` interface: coordinates and boxes of an `original_size` image
    mapped into the resized frame of long side `target_length` (what `predict_batch` takes)."""

    def __init__(self, target_length: int):
        self.target_length = int(target_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return resize_longest_side(image, self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        return apply_coords(coords, original_size, self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
        return apply_boxes(boxes, original_size, self.target_length)


def normalize(image):
    """SAM's pixel normalisation `(x - mean) / std` of `[..., 3]` values in 0..255 (numpy or JAX, float32)."""
    return (image - np.asarray(PIXEL_MEAN, np.float32)) * (1.0 / np.asarray(PIXEL_STD, np.float32))


def normalize_and_pad(image, img_size: int):
    """Float `[..., h, w, 3]` in 0..255 -> normalised and zero-padded (bottom/right) `[..., S, S, 3]`; numpy in,
    numpy out (host-side data loading), else JAX."""
    image = normalize(image)
    h, w = image.shape[-3:-1]
    if h > img_size or w > img_size:
        raise ValueError(f"image of size {(h, w)} is larger than the model input {img_size}")
    pad = [(0, 0)] * (image.ndim - 3) + [(0, img_size - h), (0, img_size - w), (0, 0)]
    return np.pad(image, pad) if isinstance(image, np.ndarray) else jnp.pad(image, pad)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """`[out, in]` weights of a 1-D bilinear resize as `F.interpolate(bilinear, align_corners=False)` (half-pixel
    centres, source index clamped at 0, no antialiasing; positions in float32, as PyTorch computes them)."""
    half = np.float32(0.5)
    source = np.maximum((np.arange(out_size, dtype=np.float32) + half) * np.float32(in_size / out_size) - half, 0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    weight = (source - low).astype(np.float64)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.arange(out_size), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(out_size), high), weight)
    return matrix


def padded_size(n: int) -> int:
    """The smallest of 64 x {1, 1.5, 2, 3, 4, 6, ...} that is >= n: the sizes post-processing compiles for."""
    size = 64
    while size < n:
        size = size * 3 // 2 if (size & (size - 1)) == 0 else size * 4 // 3
    return size


def postprocess_matrices(low_res_size: int, input_size: Sequence[int], original_size: Sequence[int],
                         img_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """SAM's mask post-processing (upsample `[l, l]` to the padded input `[S, S]`, crop `input_size`, resize to
    `original_size`) as one linear map per axis: float32 `[Hp, l]`, `[Wp, l]`, zero rows past H0 / W0
    (Hp, Wp = `padded_size` of H0, W0)."""
    matrices = []
    for content, original in zip(input_size, original_size):
        up = bilinear_matrix(img_size, low_res_size)[:content]
        matrix = np.zeros((padded_size(original), low_res_size), np.float32)
        matrix[:original] = bilinear_matrix(original, content) @ up
        matrices.append(matrix)
    return matrices[0], matrices[1]


@jax.jit
def apply_postprocess(masks: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Low-res logits `[..., l, l]` and `postprocess_matrices` -> float32 `[..., Hp, Wp]`; compiled once per
    padded size, so a new image size rarely compiles anything."""
    highest = jax.lax.Precision.HIGHEST
    masks = jnp.einsum("...ij,wj->...iw", masks.astype(jnp.float32), cols, precision=highest)
    return jnp.einsum("hi,...iw->...hw", rows, masks, precision=highest)


def postprocess_masks(
    masks: jax.Array, input_size: Sequence[int], original_size: Sequence[int], img_size: int
) -> jax.Array:
    """Low-res mask logits `[..., l, l]` -> float32 `[..., H0, W0]`: upsample to the padded input, crop, resize
    (`apply_postprocess` then the crop to `original_size`)."""
    rows, cols = postprocess_matrices(masks.shape[-1], input_size, original_size, img_size)
    return apply_postprocess(masks, rows, cols)[..., : original_size[0], : original_size[1]]
