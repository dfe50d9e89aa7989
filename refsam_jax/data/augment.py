"""Clip augmentation for training, sampled once per clip (REFSAM_SPEC.md §5.1-5.2, fixed behaviour).

For each clip, one draw of:
  crop      with prob `crop_prob`, a box whose sides are U[crop_min_fraction, 1] of the frame's
            (RefSAM: resize to {400,500,600}², crop U[384, side]); kept only if the referred object
            keeps a pixel in some frame, else no crop;
  flip      with prob `flip_prob`, horizontal, frames and masks; the sentence swaps left <-> right;
  resize    the crop goes to SAM's input shape (longest side = model size). With `resize_sizes`,
            the aspect ratio first becomes (h, w) drawn independently from that list (RefSAM's
            {288..512}² resize); the reference's intermediate down-then-up resize is folded into one
            resize, so the aspect jitter is kept and the detail loss is not. Images bilinear (PIL,
            antialiased, as SAM's ResizeLongestSide), masks nearest. `max_size` (data.max_crop_size)
            restores the reference's protocol: the crop first goes to that size (at most `max_size` px
            per side), then up to the model size;
  colour    brightness, contrast, saturation, hue, contrast again, each applied with prob
            `color_jitter_prob`, factors U[1-b, 1+b] (hue: shift U[-hue, hue] of a turn, as a
            rotation of the YIQ chroma plane), as RefSAM's ColorJitter; applied after the resize
            as one affine colour map, clipped to 0..255 once (`jitter_colour`).
`per_frame=True` is RefSAM's own behaviour: colour factors and crop offsets drawn again for every
frame (apply/skip decisions, flip and sizes shared); it makes RefCOCO pseudo-clips move a little.
"""

import dataclasses
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from refsam_jax.sam.transforms import get_preprocess_shape

_LEFT_RIGHT = re.compile(r"\b(left|right)", re.IGNORECASE)
_COLOUR_OPS = ("brightness", "contrast", "saturation", "hue", "contrast")


def swap_left_right(sentence: str) -> str:
    """'the dog on the left' -> 'the dog on the right'; also leftmost/rightward, not bright/upright."""

    def swap(match: re.Match) -> str:
        word = match.group(1)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(swap, sentence)


@dataclasses.dataclass(frozen=True)
class ClipAugment:
    """One clip's augmentation. crops: per frame (top, left, height, width) in source pixels."""

    flip: bool
    crops: Tuple[Tuple[int, int, int, int], ...]
    aspect_hw: Optional[Tuple[int, int]]
    colour_ops: Tuple[Tuple[Tuple[str, float], ...], ...]  # per frame, the ops applied in order


def sample_clip_augment(rng: np.random.Generator, masks: np.ndarray, cfg) -> ClipAugment:
    """Draws one clip's augmentation; `masks` bool `[T, H, W]` (the referred object), `cfg` = data.augment."""
    num_frames, h, w = masks.shape
    per_frame = bool(cfg.per_frame)
    crops = [(0, 0, h, w)] * num_frames
    if rng.random() < cfg.crop_prob:
        ch = int(round(h * rng.uniform(cfg.crop_min_fraction, 1.0)))
        cw = int(round(w * rng.uniform(cfg.crop_min_fraction, 1.0)))
        offsets = [(int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)))]
        offsets += [
            (int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))) if per_frame else offsets[0]
            for _ in range(num_frames - 1)
        ]
        candidate = [(top, left, ch, cw) for top, left in offsets]
        if any(masks[t, top : top + ch, left : left + cw].any() for t, (top, left, ch, cw) in enumerate(candidate)):
            crops = candidate
    flip = bool(rng.random() < cfg.flip_prob)
    sizes = tuple(cfg.resize_sizes)
    aspect_hw = (int(rng.choice(sizes)), int(rng.choice(sizes))) if sizes else None
    applied = [op for op in _COLOUR_OPS if rng.random() < cfg.color_jitter_prob]

    def factors() -> Tuple[Tuple[str, float], ...]:
        return tuple(
            (
                op,
                (
                    float(rng.uniform(-cfg.hue, cfg.hue))
                    if op == "hue"
                    else float(rng.uniform(1 - getattr(cfg, op), 1 + getattr(cfg, op)))
                ),
            )
            for op in applied
        )

    first = factors()
    colour_ops = (first,) + tuple(factors() if per_frame else first for _ in range(num_frames - 1))
    return ClipAugment(flip=flip, crops=tuple(crops), aspect_hw=aspect_hw, colour_ops=colour_ops)


_GREY = np.array([0.299, 0.587, 0.114], np.float64)  # PIL's RGB -> L weights (ITU-R 601-2)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)


def colour_affine(ops: Sequence[Tuple[str, float]], mean_rgb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The colour ops, in order, as one map x -> A x + b on RGB in 0..255; `mean_rgb` of the input image.

    brightness f: f x;  contrast f: f x + (1 - f) mean grey of the image so far (as PIL's
    ImageEnhance.Contrast);  saturation f: f x + (1 - f) grey(x) (ImageEnhance.Color);
    hue s: rotation of the YIQ chroma plane by 2 pi s (keeps luma; close to an HSV hue shift).
    """
    a, b = np.eye(3), np.zeros(3)
    for op, f in ops:
        if op == "brightness":
            a, b = f * a, f * b
        elif op == "contrast":
            grey_mean = _GREY @ (a @ mean_rgb + b)
            a, b = f * a, f * b + (1 - f) * grey_mean
        elif op == "saturation":
            m = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), _GREY)
            a, b = m @ a, m @ b
        elif op == "hue":
            cos, sin = np.cos(2 * np.pi * f), np.sin(2 * np.pi * f)
            rotation = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
            m = np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ
            a, b = m @ a, m @ b
        else:
            raise ValueError(f"unknown colour op {op!r}")
    return a.astype(np.float32), b.astype(np.float32)


def jitter_colour(frame: np.ndarray, ops: Sequence[Tuple[str, float]], out: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 `[h, w, 3]` -> float32 `[h, w, 3]` in 0..255 after the colour ops, clipped once at the end.

    All four ops are affine in RGB, so they fold into one 3x3 map: much cheaper than PIL's op-by-op
    uint8 path at 1024², which also clips and rounds after each op. `out`: float32 buffer to fill.
    """
    mean_rgb = np.array([frame[..., c].sum(dtype=np.uint64) for c in range(3)], np.float64) / (
        frame.shape[0] * frame.shape[1]
    )
    a, b = colour_affine(ops, mean_rgb)
    out = np.empty(frame.shape, np.float32) if out is None else out
    channels = [frame[..., c].astype(np.float32) for c in range(3)]
    for c in range(3):
        channel = out[..., c]
        np.multiply(channels[0], a[c, 0], out=channel)
        channel += a[c, 1] * channels[1]
        channel += a[c, 2] * channels[2] + b[c]
    return np.clip(out, 0.0, 255.0, out=out)


def resize_clip(
    frames: Sequence[np.ndarray],
    masks: np.ndarray,
    model_size: int,
    aug: Optional[ClipAugment] = None,
    max_size: int = 0,
) -> Tuple[List[np.ndarray], np.ndarray, Tuple[int, int]]:
    """Crops/flips/resizes a clip to SAM's input shape (no augmentation when `aug` is None).

    frames: T uint8 `[H, W, 3]`; masks: bool `[T, H, W]`, or uint8 label maps (nearest resizing keeps the
    values). `max_size` > 0: each crop first goes to the drawn (h, w) (else its own), shrunk to at most
    `max_size` px per side (images bilinear, masks nearest), and from there to the model size, as the
    reference trains. Returns T uint8 `[h, w, 3]`, masks `[T, h, w]` of the input dtype and (h, w), the
    content size before padding (longest side = model_size).
    """
    num_frames, h, w = masks.shape
    crops = aug.crops if aug else ((0, 0, h, w),) * num_frames
    _, _, ch, cw = crops[0]
    sizes = [aug.aspect_hw if aug and aug.aspect_hw else (ch, cw)]  # resize steps, (h, w) each
    if max_size > 0:
        if max(sizes[0]) > max_size:
            sizes[0] = get_preprocess_shape(*sizes[0], max_size)
        sizes.append(get_preprocess_shape(*sizes[0], model_size))
    else:
        sizes[0] = get_preprocess_shape(*sizes[0], model_size)
    out_h, out_w = sizes[-1]
    out_frames, out_masks = [], np.empty([num_frames, out_h, out_w], dtype=masks.dtype)
    for t in range(num_frames):
        top, left, ch, cw = crops[t]
        image = frames[t][top : top + ch, left : left + cw]
        mask = masks[t, top : top + ch, left : left + cw]
        if aug and aug.flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(image))
        mask = Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8))
        for size_h, size_w in sizes:
            image = image.resize((size_w, size_h), Image.BILINEAR)
            mask = mask.resize((size_w, size_h), Image.NEAREST)
        out_frames.append(np.asarray(image))
        out_masks[t] = np.asarray(mask)
    return out_frames, out_masks, (out_h, out_w)
