"""RefCOCO oIoU / mIoU / precision@X on worked examples, the float32 epsilon quirk, folders and CLI."""

import json
import os

import numpy as np
import pytest

from refsam_jax.evaluation import EvaluationInputError, save_binary_mask_png
from refsam_jax.evaluation import __main__ as cli
from refsam_jax.evaluation.refcoco import RefCocoMetrics, evaluate_mask_folders, sample_iou


def _pair(inter, pred_only, gt_only, size=16):
    """A (pred, gt) pair of 1 x size masks with the given pixel counts."""
    pred = np.zeros((1, size), bool)
    gt = np.zeros((1, size), bool)
    pred[0, :inter + pred_only] = True
    gt[0, :inter] = True
    gt[0, inter + pred_only:inter + pred_only + gt_only] = True
    return pred, gt


SAMPLES = [_pair(3, 1, 0),   # I = 3, U = 4 -> IoU 0.75
           _pair(0, 0, 0),   # empty / empty: (0 + 1e-6) / (0 + 1e-6) = 1
           _pair(1, 1, 0),   # I = 1, U = 2 -> (1 + 1e-6) / (2 + 1e-6) = 0.50000025 > 0.5
           _pair(0, 2, 3)]   # I = 0, U = 5 -> about 2e-7


def test_worked_example():
    metrics = RefCocoMetrics()
    for pred, gt in SAMPLES:
        metrics.update(pred, gt)
    result = metrics.result()
    # oIoU = (3 + 0 + 1 + 0) / (4 + 0 + 2 + 5) = 4/11.
    assert result["oIoU"] == pytest.approx(4 / 11)
    # mIoU = (0.75 + 1 + 0.5 + 0) / 4 = 0.5625 (up to the 1e-6 terms).
    assert result["mIoU"] == pytest.approx(0.5625, abs=1e-6)
    # IoU > X: 0.5 -> {0.75, 1, 0.50000025}; 0.6 and 0.7 -> {0.75, 1}; 0.8 and 0.9 -> {1}.
    assert [result[f"P@{x}"] for x in (0.5, 0.6, 0.7, 0.8, 0.9)] == [0.75, 0.5, 0.5, 0.25, 0.25]
    assert result["num_samples"] == 4 and len(metrics) == 4


def test_batched_update_equals_single_updates():
    single, batched = RefCocoMetrics(), RefCocoMetrics()
    preds = np.stack([p for p, _ in SAMPLES])
    gts = np.stack([g for _, g in SAMPLES])
    for pred, gt in SAMPLES:
        single.update(pred, gt)
    ious = batched.update(preds, gts)
    assert ious.shape == (4,) and ious.dtype == np.float32
    assert single.result() == batched.result()


def test_float32_epsilon_as_the_reference():
    # The reference computes (I + 1e-6) / (U + 1e-6) in float32: with U = 10000 the epsilon is lost
    # and an exact half stays 0.5 (not > 0.5), while with U = 2 it tips the IoU above 0.5.
    assert sample_iou(5000, 10000) == np.float32(0.5)
    assert sample_iou(1, 2) > 0.5
    metrics = RefCocoMetrics()
    pred = np.zeros((100, 100), bool)
    pred[:, :50] = True
    metrics.update(pred, np.ones((100, 100), bool))
    assert metrics.result()["P@0.5"] == 0.0


def test_bad_shapes_and_empty():
    with pytest.raises(ValueError, match="share"):
        RefCocoMetrics().update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no samples"):
        RefCocoMetrics().result()


def test_folders_and_cli(tmp_path, capsys):
    pred_dir, gt_dir = str(tmp_path / "pred"), str(tmp_path / "gt")
    for i, (pred, gt) in enumerate(SAMPLES):
        save_binary_mask_png(pred, os.path.join(pred_dir, f"{i}.png"))
        save_binary_mask_png(gt, os.path.join(gt_dir, f"{i}.png"))
    metrics, missing = evaluate_mask_folders(pred_dir, gt_dir)
    assert metrics.result()["oIoU"] == pytest.approx(4 / 11) and missing == []
    assert cli.main(["refcoco", "--pred", pred_dir, "--gt", gt_dir]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["oIoU"] == pytest.approx(4 / 11) and summary["P@0.5"] == 0.75
    os.remove(os.path.join(pred_dir, "0.png"))
    with pytest.raises(EvaluationInputError, match="1 of 4 expected files are missing"):
        evaluate_mask_folders(pred_dir, gt_dir)
    # Skipped, sample 0 is an empty prediction: I = 0, U = 3 -> oIoU = 1 / (3 + 0 + 2 + 5) = 0.1.
    metrics, missing = evaluate_mask_folders(pred_dir, gt_dir, skip_missing=True)
    assert missing == [os.path.join(pred_dir, "0.png")] and metrics.result()["oIoU"] == pytest.approx(0.1)
