"""A numpy transcription of the official DAVIS-2017 evaluation (davisvideochallenge/davis2017-evaluation:
davis.py, results.py, metrics.py, evaluation.py, utils.py), written in our words, with a brute-force disk
dilation standing in for skimage + cv2: the reference the metric tests compare against."""

import numpy as np
from scipy.optimize import linear_sum_assignment


def gt_masks(frames):
    """davis.py `DAVIS.get_all_masks(seq, True)`: per-object bool masks [N, T, H, W] and void [T, H, W]."""
    ids = np.stack(frames).astype(np.float64)
    void = ids == 255  # taken before 255 is set to 0
    ids[void] = 0
    num_objects = int(ids[0].max())  # ids of the first frame only
    return np.arange(1, num_objects + 1)[:, None, None, None] == ids[None], void


def read_masks(frames):
    """results.py `Results.read_masks`: per-proposal bool masks [M, T, H, W], M = largest id."""
    ids = np.stack(frames).astype(np.float64)
    return np.arange(1, int(ids.max()) + 1)[:, None, None, None] == ids[None]


def iou(annotation, segmentation, void):
    """metrics.py `db_eval_iou` on [..., H, W]: void left out of intersection and union; empty union -> 1."""
    kept = np.logical_not(void)
    inters = np.sum(segmentation & annotation & kept, axis=(-2, -1))
    union = np.sum((segmentation | annotation) & kept, axis=(-2, -1))
    return np.where(np.isclose(union, 0), 1.0, inters / np.maximum(union, 1))


def seg2bmap(seg):
    """metrics.py `_seg2bmap` (same-size branch)."""
    seg = seg.astype(bool)
    right, down, diag = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    b[-1, :] = seg[-1, :] ^ right[-1, :]
    b[:, -1] = seg[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def dilate(b, radius):
    """cv2.dilate(b, skimage.morphology.disk(radius)): zeros outside the image."""
    h, w = b.shape
    padded = np.pad(b, radius)
    out = np.zeros_like(b)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out


def f_measure(foreground, gt, void, bound_th=0.008):
    """metrics.py `f_measure(foreground_mask, gt_mask, void_pixels)`: void zeroed in both masks first."""
    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground.shape))
    fg_b = seg2bmap(foreground & np.logical_not(void))
    gt_b = seg2bmap(gt & np.logical_not(void))
    fg_dil, gt_dil = dilate(fg_b, int(radius)), dilate(gt_b, int(radius))
    n_fg, n_gt = np.sum(fg_b), np.sum(gt_b)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_b & gt_dil) / float(n_fg)
        recall = np.sum(gt_b & fg_dil) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def boundary(annotation, segmentation, void, bound_th=0.008):
    """metrics.py `db_eval_boundary` on [T, H, W]: `f_measure(segmentation[t], annotation[t], void[t])`."""
    return np.array([f_measure(segmentation[t], annotation[t], void[t], bound_th)
                     for t in range(annotation.shape[0])])


def unsupervised(gt_masks, res_masks, void, max_n_proposals=20):
    """evaluation.py `DAVISEvaluation._evaluate_unsupervised` with metric ('J', 'F')."""
    assert res_masks.shape[0] <= max_n_proposals  # the official code exits
    if res_masks.shape[0] < gt_masks.shape[0]:
        padding = np.zeros((gt_masks.shape[0] - res_masks.shape[0],) + res_masks.shape[1:], bool)
        res_masks = np.concatenate([res_masks, padding])
    j = np.zeros((res_masks.shape[0], gt_masks.shape[0], gt_masks.shape[1]))
    f = np.zeros_like(j)
    for ii in range(gt_masks.shape[0]):
        for jj in range(res_masks.shape[0]):
            j[jj, ii] = iou(gt_masks[ii], res_masks[jj], void)
            f[jj, ii] = boundary(gt_masks[ii], res_masks[jj], void)
    rows, cols = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    return j[rows, cols], f[rows, cols]


def statistics(values):
    """utils.py `db_statistics`: mean, recall (> 0.5), decay (first - last of 4 bins)."""
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [values[ids[i]:ids[i + 1] + 1] for i in range(4)]
    return np.nanmean(values), np.nanmean(values > 0.5), np.nanmean(bins[0]) - np.nanmean(bins[3])


def evaluate(videos, void_as_background=False):
    """evaluation.py `DAVISEvaluation.evaluate` + evaluation_method.py's global J, F, J&F (and
    recall/decay) over {name: (gt frames, predicted frames)}; also the per-sequence object means."""
    stats = {key: [] for key in ("J", "J_recall", "J_decay", "F", "F_recall", "F_decay")}
    per_sequence = {}
    for name, (gt_frames, pred_frames) in videos.items():
        objects, void = gt_masks(gt_frames)
        if void_as_background:
            void = np.zeros_like(void)
        j, f = unsupervised(objects, read_masks(pred_frames), void)
        per_sequence[name] = (sorted(float(np.mean(v)) for v in j), sorted(float(np.mean(v)) for v in f))
        for values, prefix in ((j, "J"), (f, "F")):
            for per_object in values:
                mean, recall, decay = statistics(per_object)
                stats[prefix].append(mean)
                stats[prefix + "_recall"].append(recall)
                stats[prefix + "_decay"].append(decay)
    out = {key: float(np.mean(v)) for key, v in stats.items()}
    out["JF"] = (out["J"] + out["F"]) / 2
    return out, per_sequence
