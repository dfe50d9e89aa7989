"""Evaluation: J/F metrics, Ref-DAVIS17, Ref-YouTube-VOS and RefCOCO protocols.

This module holds what the protocols share: the input error type and the mask PNG reader/writer.
Submodules: `metrics` (J, F), `ref_davis`, `ref_ytvos`, `refcoco`; the CLI is
`python -m refsam_jax.evaluation {davis,ytvos,zip,refcoco}`.
"""

import collections
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

SINGLE_CHANNEL_MODES = ("P", "L", "1")


class EvaluationInputError(ValueError):
    """Predictions or ground truth that cannot be scored as given (missing, malformed, wrong size)."""


def describe_paths(paths: Iterable[str], limit: int = 10) -> str:
    """'a, b, c ... and N more' for error messages."""
    paths = list(paths)
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" ... and {len(paths) - limit} more" if len(paths) > limit else "")


def require_files(paths: Sequence[str], skip_missing: bool = False) -> List[str]:
    """Returns the paths that are not files; unless `skip_missing`, raises if there are any.

    The error lists them all at once (truncated), a wholly missing folder once, and names a file with
    the same stem but another extension when there is one.
    """
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and not skip_missing:
        raise EvaluationInputError(
            f"{len(missing)} of {len(paths)} expected files are missing: {_describe_missing(missing)}")
    return missing


def _describe_missing(missing: Sequence[str]) -> str:
    by_folder = collections.defaultdict(list)
    for path in missing:
        by_folder[os.path.dirname(path)].append(path)
    items = []
    for folder, paths in by_folder.items():
        if not os.path.isdir(folder):
            items.append(f"{folder}{os.sep} (no such folder; {len(paths)} files expected in it)")
            continue
        stems = collections.defaultdict(list)
        for name in sorted(os.listdir(folder)):
            stems[os.path.splitext(name)[0]].append(name)
        for path in paths:
            name = os.path.basename(path)
            others = [n for n in stems[os.path.splitext(name)[0]] if n != name]
            items.append(path + (f" (found {', '.join(others)}; expected {name})" if others else ""))
    return describe_paths(items)


def read_mask_png(path: str, expected_shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A single-channel PNG (palette, grayscale or 1-bit) -> its raw values `[H, W]`.

    Palette PNGs give their indices (as `np.array(Image.open(path))` in the official tools).
    Raises `EvaluationInputError` naming `path` if it is missing, not a PNG, unreadable, multi-channel,
    or not of `expected_shape` (H, W).
    """
    if not os.path.isfile(path):
        raise EvaluationInputError(f"missing file: {path}")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise EvaluationInputError(f"{path} is a {image.format} file, not a PNG")
            if image.mode not in SINGLE_CHANNEL_MODES:
                raise EvaluationInputError(
                    f"{path} has mode {image.mode}; masks must be single-channel PNGs "
                    f"(one of {', '.join(SINGLE_CHANNEL_MODES)})")
            values = np.array(image)
    except EvaluationInputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise EvaluationInputError(f"cannot read {path}: {e}") from e
    if expected_shape is not None and values.shape != tuple(expected_shape):
        raise EvaluationInputError(
            f"{path} is {values.shape[1]}x{values.shape[0]} (WxH), expected "
            f"{expected_shape[1]}x{expected_shape[0]}")
    return values


def binary_mask_image(mask: np.ndarray) -> Image.Image:
    """Bool `[H, W]` -> mode "L" image with values 0/255 (the Ref-YouTube-VOS submission format)."""
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.ndim != 2:
        raise ValueError(f"mask must be a bool [H, W] array, got {mask.dtype} {mask.shape}")
    return Image.fromarray(mask.astype(np.uint8) * 255)  # uint8 [H, W] -> mode "L"


def save_binary_mask_png(mask: np.ndarray, path: str) -> None:
    """Writes bool `[H, W]` as a mode "L" 0/255 PNG at `path`, creating parent folders."""
    image = binary_mask_image(mask)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path, format="PNG")
