"""Region similarity J and boundary F-measure, exactly as the DAVIS-2017 evaluation computes them.

Follows `davis2017/metrics.py` (`db_eval_iou`, `db_eval_boundary`, `f_measure`, `_seg2bmap`) and
`davis2017/utils.py` (`db_statistics`) of davisvideochallenge/davis2017-evaluation, in numpy only:
- J = |pred & gt & ~void| / |(pred | gt) & ~void|, and 1 when that union is empty.
- F: boundary maps by `seg2bmap`, dilated by a disk of radius `ceil(0.008 * image diagonal)`
  (`skimage.morphology.disk` + `cv2.dilate` with zero borders in the official code), precision and
  recall of boundary pixels within that radius, F = 2PR / (P + R). Empty boundaries: both empty -> 1,
  one empty -> 0. An all-ones mask has no boundary (the image border is not a boundary).
Masks are `[..., H, W]`; leading axes (frames) are evaluated independently. Ground truth and
prediction must have the same size (the official resize branch of `_seg2bmap` is not reproduced).
"""

import math
from typing import Optional, Tuple

import numpy as np

DEFAULT_BOUND_TH = 0.008


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"{name} must have shape [..., H, W], got {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_shapes(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray]) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} shapes differ")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void mask {void.shape} and ground truth {gt.shape} shapes differ")


def jaccard(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None) -> np.ndarray:
    """Region similarity J of bool masks `[..., H, W]` -> float64 `[...]` (`db_eval_iou`)."""
    gt, pred = _as_bool(gt, "ground truth"), _as_bool(pred, "prediction")
    void = None if void is None else _as_bool(void, "void")
    _check_shapes(gt, pred, void)
    inter, union = _and_or(gt, pred)
    if void is not None:
        void_inter, void_union = _and_or(gt & void, pred & void)
        inter, union = inter - void_inter, union - void_union
    return _iou(inter, union)


def _and_or(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return np.count_nonzero(a & b, axis=(-2, -1)), np.count_nonzero(a | b, axis=(-2, -1))


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.asarray(inter / union, dtype=np.float64)
    return np.where(union == 0, 1.0, j)


def boundary_radius(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Dilation radius in pixels: `bound_th` itself if >= 1, else `ceil(bound_th * sqrt(H^2 + W^2))`."""
    if bound_th >= 1:
        if not float(bound_th).is_integer():
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be an integer, got {bound_th}")
        return int(bound_th)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be positive, got {bound_th}")
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of bool masks `[..., H, W]` (`_seg2bmap` at equal size).

    A pixel is boundary when it differs from its right, lower or lower-right neighbour (pixels past
    the image are 0); in the last row only the right neighbour counts, in the last column only the
    lower one, and the bottom-right pixel never is. Boundaries thus lie half a pixel towards the origin.
    """
    m = _as_bool(mask, "mask")
    e = np.zeros_like(m)
    s = np.zeros_like(m)
    se = np.zeros_like(m)
    e[..., :, :-1] = m[..., :, 1:]
    s[..., :-1, :] = m[..., 1:, :]
    se[..., :-1, :-1] = m[..., 1:, 1:]
    b = (m ^ e) | (m ^ s) | (m ^ se)
    b[..., -1, :] = m[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = m[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def disk_dilate(bmap: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of `[..., H, W]` by the disk `{dy^2 + dx^2 <= radius^2}`, zeros outside the image.

    Equals `cv2.dilate(b, skimage.morphology.disk(radius))`. The disk is a stack of horizontal runs
    (half-width `isqrt(r^2 - dy^2)` in row dy): each run is a box filter along W from a cumulative sum,
    shifted by dy. Only the bounding box of the set pixels (grown by the radius) is processed.
    """
    b = _as_bool(bmap, "boundary map")
    out = np.zeros_like(b)
    rows = np.flatnonzero(b.any(axis=tuple(a for a in range(b.ndim) if a != b.ndim - 2)))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(b.any(axis=tuple(range(b.ndim - 1))))
    height, width = b.shape[-2:]
    y0, y1 = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, height)
    x0, x1 = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, width)
    out[..., y0:y1, x0:x1] = _dilate_dense(b[..., y0:y1, x0:x1], radius)
    return out


def _dilate_dense(b: np.ndarray, r: int) -> np.ndarray:
    height, width = b.shape[-2:]
    # prefix[..., r + 1 + x] = number of set pixels in columns < x + 1; flat (no new pixels) past both ends.
    prefix = np.zeros(b.shape[:-1] + (width + 2 * r + 1,), np.int32)
    np.cumsum(b, axis=-1, dtype=np.int32, out=prefix[..., r + 1:width + r + 1])
    prefix[..., width + r + 1:] = prefix[..., width + r:width + r + 1]
    out = np.zeros_like(b)
    runs = {}
    for dy in range(-r, r + 1):
        if abs(dy) >= height:
            continue
        w = math.isqrt(r * r - dy * dy)
        if w not in runs:
            runs[w] = (prefix[..., r + w + 1:r + w + 1 + width] - prefix[..., r - w:r - w + width]) > 0
        run = runs[w]
        if dy >= 0:
            out[..., :height - dy, :] |= run[..., dy:, :]
        else:
            out[..., -dy:, :] |= run[..., :height + dy, :]
    return out


def f_from_counts(n_pred: np.ndarray, n_gt: np.ndarray, matched_pred: np.ndarray,
                                    matched_gt: np.ndarray) -> np.ndarray:
    """Boundary F from boundary pixel counts and matched counts (broadcasting), float64.

    Precision = matched_pred / n_pred (1 when the prediction has no boundary), recall =
    matched_gt / n_gt (1 when the ground truth has none); F = 0 when P + R = 0.
    """
    n_pred, n_gt = np.asarray(n_pred), np.asarray(n_gt)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, matched_pred / np.maximum(n_pred, 1), 1.0)
        recall = np.where(n_gt > 0, matched_gt / np.maximum(n_gt, 1), 1.0)
        f = 2 * precision * recall / (precision + recall)
    return np.where(precision + recall == 0, 0.0, f)


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: Optional[np.ndarray] = None,
                              bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
    """Boundary F-measure of bool masks `[..., H, W]` -> float64 `[...]` (`db_eval_boundary`)."""
    gt, pred = _as_bool(gt, "ground truth"), _as_bool(pred, "prediction")
    void = None if void is None else _as_bool(void, "void")
    _check_shapes(gt, pred, void)
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    radius = boundary_radius(*gt.shape[-2:], bound_th=bound_th)
    lead = gt.shape[:-2]
    gt = gt.reshape((-1,) + gt.shape[-2:])
    pred = pred.reshape((-1,) + pred.shape[-2:])
    f = np.empty(gt.shape[0])
    for t in range(gt.shape[0]):
        b_pred, b_gt = seg2bmap(pred[t]), seg2bmap(gt[t])
        matched_pred = np.count_nonzero(b_pred & disk_dilate(b_gt, radius))
        matched_gt = np.count_nonzero(b_gt & disk_dilate(b_pred, radius))
        f[t] = f_from_counts(np.count_nonzero(b_pred), np.count_nonzero(b_gt), matched_pred, matched_gt)
    return f.reshape(lead)


def pairwise_jf(pred_labels: np.ndarray, gt_labels: np.ndarray, num_pred: int, num_gt: int,
                                void: Optional[np.ndarray] = None,
                                bound_th: float = DEFAULT_BOUND_TH) -> Tuple[np.ndarray, np.ndarray]:
    """J and F of every (predicted id, ground-truth id) pair of two label-map videos.

    Args:
        pred_labels: int `[T, H, W]`; object p is `pred_labels == p` for p in 1..num_pred.
        gt_labels: int `[T, H, W]`; object k is `gt_labels == k` for k in 1..num_gt (other ids are
            background, as DAVIS scores only the ids of the first frame).
        num_pred, num_gt: how many ids to score on each side (ids with no pixels are empty masks).
        void: optional bool `[T, H, W]` of pixels excluded from both.
        bound_th: F's boundary tolerance (see `boundary_radius`).

    Returns:
        (j, f), each float64 `[num_pred, num_gt, T]`, equal to `jaccard` / `boundary_f` of each pair.
        Boundaries and dilations are computed once per object and frame, not once per pair.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape or pred_labels.ndim != 3:
        raise ValueError(f"label maps must both be [T, H, W], got {pred_labels.shape} and {gt_labels.shape}")
    if void is not None and np.shape(void) != gt_labels.shape:
        raise ValueError(f"void mask {np.shape(void)} and labels {gt_labels.shape} shapes differ")
    num_frames, height, width = gt_labels.shape
    j = np.empty((num_pred, num_gt, num_frames))
    f = np.empty((num_pred, num_gt, num_frames))
    if num_pred == 0 or num_gt == 0:
        return j, f
    radius = boundary_radius(height, width, bound_th=bound_th)
    pred_ids = np.arange(1, num_pred + 1)[:, None, None]
    gt_ids = np.arange(1, num_gt + 1)[:, None, None]
    for t in range(num_frames):
        keep = None if void is None else ~np.asarray(void[t], bool)
        j[:, :, t] = _pairwise_jaccard(pred_labels[t], gt_labels[t], num_pred, num_gt, keep)
        pred = pred_labels[t][None] == pred_ids
        gt = gt_labels[t][None] == gt_ids
        if keep is not None:
            pred, gt = pred & keep, gt & keep
        f[:, :, t] = _pairwise_boundary_f(pred, gt, radius)
    return j, f


def _pairwise_jaccard(pred_labels: np.ndarray, gt_labels: np.ndarray, num_pred: int, num_gt: int,
                      keep: Optional[np.ndarray]) -> np.ndarray:
    """J `[P, K]` of two label maps `[H, W]` from their joint histogram over the kept pixels."""
    pred = np.where((pred_labels >= 1) & (pred_labels <= num_pred), pred_labels, 0).astype(np.int64)
    gt = np.where((gt_labels >= 1) & (gt_labels <= num_gt), gt_labels, 0).astype(np.int64)
    codes = pred * (num_gt + 1) + gt
    if keep is not None:
        codes = codes[keep]
    joint = np.bincount(codes.ravel(), minlength=(num_pred + 1) * (num_gt + 1))
    joint = joint.reshape(num_pred + 1, num_gt + 1)
    inter = joint[1:, 1:]
    union = joint[1:].sum(1)[:, None] + joint[:, 1:].sum(0)[None] - inter
    return _iou(inter, union)


def _pairwise_boundary_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> np.ndarray:
    """F `[P, K]` of bool masks `[P, H, W]` and `[K, H, W]` (void already removed from both)."""
    b_pred, b_gt = seg2bmap(pred), seg2bmap(gt)
    d_pred = np.stack([disk_dilate(b, radius) for b in b_pred]).reshape(len(pred), -1)
    d_gt = np.stack([disk_dilate(b, radius) for b in b_gt]).reshape(len(gt), -1)
    matched_pred = np.stack([d_gt[:, np.flatnonzero(b)].sum(1) for b in b_pred])  # [P, K]
    matched_gt = np.stack([d_pred[:, np.flatnonzero(b)].sum(1) for b in b_gt]).T  # [P, K]
    n_pred = np.count_nonzero(b_pred, axis=(1, 2))[:, None]
    n_gt = np.count_nonzero(b_gt, axis=(1, 2))[None, :]
    return f_from_counts(n_pred, n_gt, matched_pred, matched_gt)


def frame_statistics(values: np.ndarray) -> Tuple[float, float, float]:
    """(mean, recall, decay) of per-frame scores `[T]` (`db_statistics`).

    mean = nanmean, recall = fraction of frames > 0.5, decay = mean of the first quarter minus mean
    of the last quarter (bins from `round(linspace(1, T, 5)) - 1`). The official code casts the bin
    indices to uint8, which wraps for T > 256; here they are plain ints.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"per-frame values must be a non-empty [T] array, got shape {values.shape}")
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    decay = float(np.nanmean(values[ids[0]:ids[1] + 1]) - np.nanmean(values[ids[3]:ids[4] + 1]))
    return mean, recall, decay
