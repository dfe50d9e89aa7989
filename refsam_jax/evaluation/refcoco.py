"""RefCOCO/+/g referring image segmentation metrics: oIoU, mIoU and precision@{0.5..0.9}.

As ReferFormer's `datasets/a2d_eval.py` (from MTTR) computes them, one sample per referring sentence:
- per-sample IoU = (I + 1e-6) / (U + 1e-6) in float32, so an empty prediction of an empty target is 1;
- oIoU = sum of I / sum of U over all samples; mIoU = mean of the per-sample IoUs;
- P@X = fraction of samples with IoU > X (strictly), X in 0.5, 0.6, 0.7, 0.8, 0.9.
"""

import os
from typing import Dict, List, Tuple

import numpy as np

from refsam_jax.evaluation import EvaluationInputError, read_mask_png, require_files

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
_EPS = np.float32(1e-6)


class RefCocoMetrics:
    """Accumulates per-sample intersections and unions; `result()` gives the summary.

    >>> metrics = RefCocoMetrics()
    >>> metrics.update(pred_masks, gt_masks)   # bool [H, W] or [B, H, W]
    >>> metrics.result()["oIoU"]
    """

    def __init__(self):
        self.intersections: List[int] = []
        self.unions: List[int] = []

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Adds samples: bool `[H, W]` or `[B, H, W]` (non-zero is foreground); returns their IoUs `[B]`."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape or pred.ndim not in (2, 3):
            raise ValueError(f"pred and gt must share a [H, W] or [B, H, W] shape, got {pred.shape} "
                             f"and {gt.shape}")
        if pred.ndim == 2:
            pred, gt = pred[None], gt[None]
        pred, gt = pred.astype(bool), gt.astype(bool)
        inter = np.count_nonzero(pred & gt, axis=(1, 2))
        union = np.count_nonzero(pred | gt, axis=(1, 2))
        self.intersections += inter.tolist()
        self.unions += union.tolist()
        return sample_iou(inter, union)

    def __len__(self) -> int:
        return len(self.intersections)

    def result(self) -> Dict[str, float]:
        """{"oIoU", "mIoU", "P@0.5", ..., "P@0.9", "num_samples"}; oIoU is NaN if every union is 0."""
        if not self.intersections:
            raise ValueError("no samples were added")
        inter = np.asarray(self.intersections, np.int64)
        union = np.asarray(self.unions, np.int64)
        ious = sample_iou(inter, union).astype(np.float64)  # compared as Python floats, as the reference
        total_union = union.sum()
        result = {"oIoU": float(inter.sum() / total_union) if total_union else float("nan"),
                  "mIoU": float(np.mean(ious))}
        for threshold in PRECISION_THRESHOLDS:
            result[f"P@{threshold}"] = float(np.mean(ious > threshold))
        result["num_samples"] = len(ious)
        return result


def sample_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Per-sample IoU `(I + 1e-6) / (U + 1e-6)` in float32, as the reference computes it."""
    intersection = np.asarray(intersection, np.float32)
    union = np.asarray(union, np.float32)
    return (intersection + _EPS) / (union + _EPS)


def evaluate_mask_folders(pred_dir: str, gt_dir: str,
                          skip_missing: bool = False) -> Tuple[RefCocoMetrics, List[str]]:
    """Scores `<pred_dir>/<name>.png` against every `<gt_dir>/<name>.png` (one sample per file).

    Non-zero pixels are foreground. A missing prediction raises `EvaluationInputError` unless
    `skip_missing`, which scores it as an empty mask and lists it. Returns (metrics, missing paths).
    """
    if not os.path.isdir(gt_dir):
        raise EvaluationInputError(f"missing ground-truth folder {gt_dir}")
    names = sorted(n for n in os.listdir(gt_dir) if n.endswith(".png"))
    if not names:
        raise EvaluationInputError(f"no PNG masks in {gt_dir}")
    missing = require_files([os.path.join(pred_dir, name) for name in names], skip_missing)
    missing_set = set(missing)
    metrics = RefCocoMetrics()
    for name in names:
        gt = read_mask_png(os.path.join(gt_dir, name)) > 0
        path = os.path.join(pred_dir, name)
        pred = np.zeros_like(gt) if path in missing_set else read_mask_png(path, gt.shape) > 0
        metrics.update(pred, gt)
    return metrics, missing
