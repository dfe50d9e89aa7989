"""J and F against hand-worked DAVIS-2017 cases and a literal transcription of the official code."""

import davis_official as official
import numpy as np
import pytest

from refsam_jax.evaluation import metrics


def _line(width, start, stop):
    """A 1 x width mask with pixels start..stop-1 set."""
    m = np.zeros((1, width), bool)
    m[0, start:stop] = True
    return m


def test_empty_and_full_conventions():
    empty = np.zeros((6, 7), bool)
    full = np.ones((6, 7), bool)
    blob = empty.copy()
    blob[2:4, 2:5] = True
    # empty/empty: union 0 -> J = 1; no boundary on either side -> P = R = 1 -> F = 1.
    assert metrics.jaccard(empty, empty) == 1.0
    assert metrics.boundary_f(empty, empty) == 1.0
    # miss (GT blob, empty prediction): J = 0/6; prediction has no boundary -> P = 1, R = 0 -> F = 0.
    assert metrics.jaccard(blob, empty) == 0.0
    assert metrics.boundary_f(blob, empty) == 0.0
    # hallucination (empty GT, predicted blob): J = 0; P = 0, R = 1 -> F = 0.
    assert metrics.jaccard(empty, blob) == 0.0
    assert metrics.boundary_f(empty, blob) == 0.0
    # An all-ones mask has no boundary (the image border is not one): full vs empty gives J = 0
    # but F = 1 (both boundaries empty), exactly as the official code does.
    assert metrics.jaccard(empty, full) == 0.0
    assert metrics.boundary_f(empty, full) == 1.0
    assert metrics.jaccard(full, full) == 1.0 and metrics.boundary_f(full, full) == 1.0


def test_one_row_and_one_column_images():
    # 1 x 9, radius ceil(0.008 * sqrt(1 + 81)) = ceil(0.072) = 1 (only horizontal neighbours exist).
    gt = _line(9, 2, 5)     # 001110000: boundary where m[x] != m[x+1] -> x = 1, 4
    pred = _line(9, 4, 7)   # 000011100: boundary x = 3, 6
    # J: I = {4} = 1, U = {2..6} = 5 -> 0.2.
    assert metrics.jaccard(gt, pred) == pytest.approx(0.2)
    # dilated GT boundary = {0..5} holds pred boundary 3 (not 6) -> P = 1/2;
    # dilated pred boundary = {2..7} holds GT boundary 4 (not 1) -> R = 1/2; F = 2 * 1/4 / 1 = 0.5.
    np.testing.assert_array_equal(np.flatnonzero(metrics.seg2bmap(gt)), [1, 4])
    np.testing.assert_array_equal(np.flatnonzero(metrics.seg2bmap(pred)), [3, 6])
    assert metrics.boundary_f(gt, pred) == pytest.approx(0.5)
    # 9 x 1 is the same case transposed: the last-column rule mirrors the last-row rule.
    np.testing.assert_array_equal(np.flatnonzero(metrics.seg2bmap(gt.T)), [1, 4])
    assert metrics.jaccard(gt.T, pred.T) == pytest.approx(0.2)
    assert metrics.boundary_f(gt.T, pred.T) == pytest.approx(0.5)


def test_void_pixels_are_excluded():
    gt = _line(9, 2, 5)
    pred = _line(9, 4, 7)
    void = _line(9, 5, 7)
    # J over non-void pixels: I = {4} = 1, U = {2, 3, 4} = 3 -> 1/3.
    assert metrics.jaccard(gt, pred, void) == pytest.approx(1 / 3)
    # pred & ~void = 000010000: boundary {3, 4}, both within 1 of GT boundary {1, 4} -> P = 1;
    # dilated pred boundary {2..5} holds 4 but not 1 -> R = 1/2; F = 2 * 1/2 / (3/2) = 2/3.
    assert metrics.boundary_f(gt, pred, void) == pytest.approx(2 / 3)
    # Everything void: union 0 -> J = 1; no boundaries left -> F = 1.
    everything = np.ones_like(gt)
    assert metrics.jaccard(gt, pred, everything) == 1.0
    assert metrics.boundary_f(gt, pred, everything) == 1.0


@pytest.mark.parametrize("pred_column,expected_f", [(5, 1.0), (6, 1.0), (7, 0.5), (8, 0.0)])
def test_thin_vertical_lines(pred_column, expected_f):
    # 10 x 10, radius ceil(0.008 * 14.14) = 1 (a 3x3 cross). A full-height line at column c has the
    # boundary columns c - 1 (outside, left) and c (inside, right), 10 pixels each.
    gt = np.zeros((10, 10), bool)
    gt[:, 5] = True
    pred = np.zeros((10, 10), bool)
    pred[:, pred_column] = True
    # GT boundary = columns 4, 5; its dilation = columns 3..6.
    # c = 6: pred boundary 5, 6 all within 3..6 -> P = 1; dilated pred 4..7 covers 4, 5 -> R = 1 -> F = 1.
    # c = 7: pred boundary 6, 7 -> only column 6 matched -> P = 10/20; dilated pred 5..8 covers
    #        column 5 only -> R = 10/20 -> F = 0.5.
    # c = 8: pred boundary 7, 8 outside 3..6 -> P = 0; dilated pred 6..9 misses 4, 5 -> R = 0 -> F = 0.
    assert metrics.boundary_f(gt, pred) == pytest.approx(expected_f)
    # J: the lines are disjoint unless c = 5.
    assert metrics.jaccard(gt, pred) == (1.0 if pred_column == 5 else 0.0)


def test_square_boundary_map():
    # A 4x4 square at rows/cols 2..5 of a 10x10 image. Inside pixels whose right, lower or lower-right
    # neighbour is outside: the bottom row and right column of the square, 4 + 4 - 1 = 7 pixels.
    # Outside pixels with such a neighbour inside: row 1, cols 1..5 and col 1, rows 2..5 -> 5 + 4 = 9.
    m = np.zeros((10, 10), bool)
    m[2:6, 2:6] = True
    b = metrics.seg2bmap(m)
    assert b.sum() == 16
    assert b[5, 2:6].all() and b[2:6, 5].all() and b[1, 1:6].all() and b[2:6, 1].all()
    assert metrics.seg2bmap(np.ones((5, 3), bool)).sum() == 0


def test_disk_dilation_shape_and_borders():
    # Lattice points with dy^2 + dx^2 <= 9: 7 (dy = 0) + 2 * 5 (|dy| = 1) + 2 * 5 (|dy| = 2)
    # + 2 * 1 (|dy| = 3) = 29.
    b = np.zeros((21, 21), bool)
    b[10, 10] = True
    d = metrics.disk_dilate(b, 3)
    assert d.sum() == 29
    yy, xx = np.mgrid[-10:11, -10:11]
    np.testing.assert_array_equal(d, yy ** 2 + xx ** 2 <= 9)
    # In a corner only the quarter disk stays: 4 + 3 + 3 + 1 = 11 (zeros outside the image).
    corner = np.zeros((21, 21), bool)
    corner[0, 0] = True
    assert metrics.disk_dilate(corner, 3).sum() == 11


@pytest.mark.parametrize("height,width,radius", [
    (240, 427, 4), (480, 854, 8), (480, 910, 9), (720, 1280, 12), (1080, 1920, 18), (1, 9, 1)])
def test_boundary_radius(height, width, radius):
    assert metrics.boundary_radius(height, width) == radius


def test_boundary_radius_in_pixels():
    assert metrics.boundary_radius(100, 100, bound_th=3) == 3
    with pytest.raises(ValueError, match="integer"):
        metrics.boundary_radius(100, 100, bound_th=2.5)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.jaccard(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.boundary_f(np.zeros((4, 5)), np.zeros((4, 6)))


def test_frame_statistics():
    # T = 5: mean = 3 / 5; recall = #(> 0.5) / 5 = 3/5; bins from round(linspace(1, 5, 5)) - 1 =
    # [0, 1, 2, 3, 4]: decay = mean(v[0:2]) - mean(v[3:5]) = 0.9 - 0.3 = 0.6.
    mean, recall, decay = metrics.frame_statistics([1.0, 0.8, 0.6, 0.4, 0.2])
    assert (mean, recall, decay) == pytest.approx((0.6, 0.6, 0.6))


def _random_mask(rng, h, w):
    kind = rng.integers(4)
    if kind == 0:
        return rng.random((h, w)) < 0.5
    if kind == 1:
        return np.zeros((h, w), bool)
    if kind == 2:
        return np.ones((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.5, h), rng.uniform(0.5, w)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


@pytest.mark.parametrize("height,width", [(1, 9), (9, 1), (2, 2), (7, 13), (33, 50), (240, 427)])
def test_matches_official_transcription(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    for trial in range(6):
        gt, pred = _random_mask(rng, height, width), _random_mask(rng, height, width)
        void = rng.random((height, width)) < (0.05 if trial % 2 else 0.0)
        for bound_th in (0.008, 2):
            assert metrics.boundary_f(gt, pred, void, bound_th) == official.f_measure(pred, gt, void,
                                                                                        bound_th)
        assert metrics.jaccard(gt, pred, void) == official.iou(gt, pred, void)


def test_frames_are_independent_and_pairwise_agrees():
    rng = np.random.default_rng(0)
    num_frames, h, w = 3, 30, 41
    pred_labels = rng.integers(0, 4, (num_frames, h, w))
    pred_labels[:, :, :20] = 0
    gt_labels = np.zeros((num_frames, h, w), np.int64)
    for t in range(num_frames):
        for k in (1, 2):
            gt_labels[t][_random_mask(rng, h, w) & (gt_labels[t] == 0)] = k
    gt_labels[0, 0, 0] = 7  # an id beyond num_gt is background
    void = rng.random((num_frames, h, w)) < 0.05
    j, f = metrics.pairwise_jf(pred_labels, gt_labels, 4, 2, void)
    assert j.shape == f.shape == (4, 2, num_frames)
    for p in range(4):
        for k in range(2):
            gt, pred = gt_labels == k + 1, pred_labels == p + 1
            np.testing.assert_array_equal(j[p, k], metrics.jaccard(gt, pred, void))
            np.testing.assert_array_equal(f[p, k], metrics.boundary_f(gt, pred, void))
            np.testing.assert_array_equal(
                f[p, k], [official.f_measure(pred[t], gt[t], void[t]) for t in range(num_frames)])
