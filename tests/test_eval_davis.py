"""Ref-DAVIS17 protocol end to end on tiny synthetic DAVIS trees, with worked expected numbers."""

import json
import os
import subprocess
import sys

import davis_official as official
import numpy as np
import pytest
from PIL import Image

from refsam_jax.evaluation import EvaluationInputError, ref_davis
from refsam_jax.evaluation import __main__ as cli

H, W = 24, 32  # F radius: ceil(0.008 * sqrt(24^2 + 32^2)) = ceil(0.32) = 1
FRAMES = ["00000", "00001", "00002"]


def _palette_png(labels, path):
    """Writes a palette PNG the way DAVIS stores annotations (independently of ref_davis)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.astype(np.uint8).tobytes())
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def _gt_frames():
    """Two videos, two objects each, three frames; objects move right by one pixel per frame."""
    videos = {}
    for name, (top1, top2) in {"alpha": (2, 13), "beta": (4, 14)}.items():
        frames = []
        for t in range(3):
            labels = np.zeros((H, W), np.uint8)
            labels[top1:top1 + 8, 2 + t:10 + t] = 1
            labels[top2:top2 + 7, 18 + t:28 + t] = 2
            frames.append(labels)
        videos[name] = frames
    return videos


def _write_davis(root, videos):
    for video, frames in videos.items():
        for frame, labels in zip(FRAMES, frames):
            _palette_png(labels, os.path.join(root, "Annotations_unsupervised", "480p", video,
                                              f"{frame}.png"))
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "2017", "val.txt"), "w") as f:
        f.write("\n".join(videos) + "\n")


def _write_predictions(root, annotator, videos):
    for video, frames in videos.items():
        for frame, labels in zip(FRAMES, frames):
            _palette_png(labels, os.path.join(root, str(annotator), video, f"{frame}.png"))


@pytest.fixture
def davis_tree(tmp_path):
    """DAVIS GT plus predictions for the 4 sets:
    0: perfect; 1: alpha's object 2 never predicted; 2: beta's ids swapped; 3: alpha's object 1
    missing in the last frame.
    """
    gt = _gt_frames()
    _write_davis(str(tmp_path / "DAVIS"), gt)
    pred = str(tmp_path / "pred")
    _write_predictions(pred, 0, gt)
    no_alpha_2 = {v: [np.where(f == 2, 0, f) if v == "alpha" else f for f in fs] for v, fs in gt.items()}
    _write_predictions(pred, 1, no_alpha_2)
    swapped = {v: [np.choose(f, [0, 2, 1]).astype(np.uint8) if v == "beta" else f for f in fs]
               for v, fs in gt.items()}
    _write_predictions(pred, 2, swapped)
    dropped = {v: [f.copy() for f in fs] for v, fs in gt.items()}
    dropped["alpha"][2][dropped["alpha"][2] == 1] = 0
    _write_predictions(pred, 3, dropped)
    return pred, str(tmp_path / "DAVIS")


def test_four_sets_worked_numbers(davis_tree):
    pred, gt = davis_tree
    result = ref_davis.evaluate_ref_davis(pred, gt)
    summary = result.summary()
    # Set 0: every object perfect -> J = F = 1.
    # Set 1: alpha has 1 proposal, padded with an empty one for GT object 2 -> J = F = 0 on all frames
    #        for that object; per-object means over (alpha1, alpha2, beta1, beta2) = (1, 0, 1, 1) -> 3/4.
    # Set 2: the Hungarian matching undoes the id swap -> 1.
    # Set 3: alpha object 1 scores (1, 1, 0) over its frames -> 2/3; set mean (2/3 + 3) / 4 = 11/12.
    expected = {"0": 1.0, "1": 0.75, "2": 1.0, "3": 11 / 12}
    for a, value in expected.items():
        assert summary["sets"][a]["J"] == pytest.approx(value)
        assert summary["sets"][a]["F"] == pytest.approx(value)
        assert summary["sets"][a]["JF"] == pytest.approx(value)
    # Final = plain mean of the 4 sets: (1 + 3/4 + 1 + 11/12) / 4 = 11/12.
    assert summary["J"] == pytest.approx(11 / 12)
    assert summary["F"] == pytest.approx(11 / 12)
    assert summary["JF"] == pytest.approx(11 / 12)
    assert summary["num_objects"] == 4 and summary["num_sequences"] == 2 and summary["missing"] == 0
    # Per-object rows are labelled by GT id; the swapped set matched proposal 2 to object 1.
    beta = [o for o in result.sets[2].objects if o.sequence == "beta"]
    assert [(o.object_id, o.proposal_id) for o in beta] == [(1, 2), (2, 1)]
    # Recall of alpha object 1 in set 3 (J = 1, 1, 0): frames > 0.5 = 2 of 3; decay with T = 3: bins
    # round(linspace(1, 3, 5) + 1e-10) - 1 = round([1, 1.5, 2, 2.5, 3]) - 1 = [0, 1, 1, 2, 2]
    # -> mean(v[0:2]) - mean(v[2:3]) = 1 - 0 = 1.
    alpha1 = result.sets[3].objects[0]
    assert (alpha1.j_recall, alpha1.j_decay) == pytest.approx((2 / 3, 1.0))


def test_identity_matching_keeps_swapped_ids_wrong(davis_tree):
    pred, gt = davis_tree
    result = ref_davis.evaluate_ref_davis(pred, gt, annotators=[2], matching="identity")
    # beta's objects face each other's (disjoint, > 1 px apart) masks: J = 0, P = R = 0 -> F = 0.
    # Set 2 = (1 + 1 + 0 + 0) / 4.
    assert result.summary()["J"] == pytest.approx(0.5)
    assert result.summary()["F"] == pytest.approx(0.5)


def test_void_is_excluded_and_later_ids_unscored(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[5:9, 5:9] = 1
    ring = np.zeros((H, W), bool)
    ring[4:10, 4:10] = True
    gt_frame = labels.copy()
    gt_frame[ring & (labels == 0)] = 255
    later = gt_frame.copy()
    later[20:22, 20:22] = 3  # id 3 first appears in frame 1: not a GT object
    _write_davis(str(tmp_path / "DAVIS"), {"seq": [gt_frame, later, gt_frame]})
    pred = np.where(ring, 1, 0).astype(np.uint8)
    _write_predictions(str(tmp_path / "pred"), 0, {"seq": [pred] * 3})
    result = ref_davis.evaluate_ref_davis(str(tmp_path / "pred"), str(tmp_path / "DAVIS"), annotators=[0])
    # The 255 ring is void and left out of both masks, as in the official code: the prediction's
    # non-void part is the 4x4 object itself -> J = 16 / 16 on every frame (void as background
    # would give 16 / 36).
    (obj,) = result.sets[0].objects
    assert obj.j_mean == pytest.approx(1.0)


def _row(width, runs):
    """A 1 x width label row: `runs` maps a label to the pixel indices that get it."""
    row = np.zeros((1, width), np.uint8)
    for label, pixels in runs.items():
        row[0, list(pixels)] = label
    return row


def test_void_hand_worked(tmp_path):
    # 1 x 16 frames: F radius = ceil(0.008 * sqrt(1 + 16^2)) = ceil(0.128) = 1, and in a single row a
    # pixel x < 15 is boundary when it differs from pixel x + 1 (pixel 15 never is). V = 255.
    #   frame 0  GT   . 1 1 . . . V . . . . 2 2 . . .    pred  . 1 1 1 1 1 1 1 1 . . 2 2 . . .
    #   frame 1  GT   . 1 1 . . . . . . . . V V V . .    pred  . 1 1 . . . . . . . . . 2 . . .
    gt = [_row(16, {1: (1, 2), 255: (6,), 2: (11, 12)}), _row(16, {1: (1, 2), 255: (11, 12, 13)})]
    pred = [_row(16, {1: range(1, 9), 2: (11, 12)}), _row(16, {1: (1, 2), 2: (12,)})]
    _write_davis(str(tmp_path / "DAVIS"), {"seq": gt})
    _write_predictions(str(tmp_path / "pred"), 0, {"seq": pred})
    result = ref_davis.evaluate_ref_davis(str(tmp_path / "pred"), str(tmp_path / "DAVIS"), annotators=[0])
    # Object 1, frame 0: void pixel 6 leaves both masks.
    #   J = |{1, 2}| / |{1..8} - {6}| = 2 / 7   (void as background would give 2 / 8).
    #   F: pred - void = {1..5, 7, 8} has boundary {0, 5, 6, 8}; GT {1, 2} has boundary {0, 2}.
    #      dilate(GT boundary) = {0..3} holds pred boundary 0 only -> P = 1/4;
    #      dilate(pred boundary) = {0, 1, 4..9} holds GT boundary 0, not 2 -> R = 1/2;
    #      F = 2 * 1/4 * 1/2 / (3/4) = 1/3   (void as background: boundaries {0, 8} -> P = R = 1/2, F = 1/2).
    # Object 1, frame 1: identical masks -> J = F = 1. Per object: J = (2/7 + 1) / 2 = 9/14,
    #   F = (1/3 + 1) / 2 = 2/3.
    # Object 2: frame 0 identical -> 1, 1. Frame 1: absent in GT, and the predicted pixel 12 is void, so
    #   nothing is left on either side: empty union -> J = 1, no boundaries -> P = R = 1 -> F = 1
    #   (void as background would make it a false positive: J = 0, F = 0). Per object J = F = 1.
    # Cross pairs (proposal 1 / object 2, proposal 2 / object 1) score 0 everywhere, so the matching is
    # the identity. Set: J = (9/14 + 1) / 2 = 23/28, F = (2/3 + 1) / 2 = 5/6, J&F = 139/168.
    obj1, obj2 = result.sets[0].objects
    assert (obj1.proposal_id, obj2.proposal_id) == (1, 2)
    assert (obj1.j_mean, obj1.f_mean) == pytest.approx((9 / 14, 2 / 3), abs=1e-12)
    assert (obj2.j_mean, obj2.f_mean) == pytest.approx((1.0, 1.0), abs=1e-12)
    summary = result.summary()
    assert (summary["J"], summary["F"], summary["JF"]) == pytest.approx((23 / 28, 5 / 6, 139 / 168),
                                                                      abs=1e-12)


# The reference: tests/davis_official.py, a numpy transcription of the official evaluation.

def _random_video(rng, num_frames, height, width):
    """GT and prediction id frames with void bands and blocks, objects absent in some frames, ids that
    start later, and predictions with swapped, dropped, shifted, spurious and void-covering ids."""
    num_objects = int(rng.integers(1, 5))
    yy, xx = np.mgrid[:height, :width]
    centres = rng.uniform(0, 1, (num_objects + 1, 2)) * (height, width)
    radii = rng.uniform(0.1, 0.35, (num_objects + 1, 2)) * (height, width) + 1
    band = rng.random() < 0.8
    gt_frames = []
    for t in range(num_frames):
        labels = np.zeros((height, width), np.uint8)
        for k in range(num_objects + 1):
            if k == num_objects and t == 0:
                continue  # id num_objects + 1 only appears later: not scored
            if t > 0 and rng.random() < 0.2:
                continue  # object absent in this frame
            cy, cx = centres[k] + t * rng.uniform(-2, 2, 2)
            shape = ((yy - cy) / radii[k, 0]) ** 2 + ((xx - cx) / radii[k, 1]) ** 2 < 1
            if rng.random() < 0.3:
                shape = (np.abs(yy - cy) < radii[k, 0]) & (np.abs(xx - cx) < radii[k, 1])
            labels[shape & (labels == 0)] = k + 1
        objects = labels > 0
        if band:  # a 1-2 px void band around the objects, as DAVIS annotations have
            grown = objects.copy()
            for _ in range(int(rng.integers(1, 3))):
                grown = official.dilate(grown, 1)
            labels[grown & ~objects] = 255
        if rng.random() < 0.5:  # a void block, possibly over an object
            y, x = rng.integers(0, height), rng.integers(0, width)
            dy, dx = int(rng.integers(1, height // 2 + 2)), int(rng.integers(1, width // 2 + 2))
            labels[y:y + dy, x:x + dx] = 255
        labels[rng.random((height, width)) < 0.01] = 255
        gt_frames.append(labels)
    if rng.random() < 0.1:
        return gt_frames, [np.zeros((height, width), np.uint8)] * num_frames  # nothing predicted
    num_ids = int(rng.integers(1, num_objects + 4))  # fewer ids than objects -> padding; more -> spurious
    relabel = rng.permutation(np.arange(1, max(num_ids, num_objects + 1) + 1))  # swapped ids
    pred_frames = []
    for labels in gt_frames:
        ids = labels.astype(np.int64)
        ids[ids == 255] = rng.integers(0, num_objects + 2, int(np.sum(ids == 255)))
        ids = np.where(ids > 0, relabel[np.maximum(ids, 1) - 1], 0)
        ids[ids > num_ids] = 0
        ids = np.roll(ids, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        if rng.random() < 0.3:
            ids[ids == rng.integers(1, num_ids + 1)] = 0  # a dropped object
        if rng.random() < 0.5:  # a spurious blob
            y, x = rng.integers(0, height), rng.integers(0, width)
            ids[y:y + int(rng.integers(1, 8)), x:x + int(rng.integers(1, 8))] = rng.integers(1, num_ids + 1)
        noise = rng.random((height, width)) < 0.02
        ids[noise] = rng.integers(0, num_ids + 1, int(noise.sum()))
        pred_frames.append(ids.astype(np.uint8))
    return gt_frames, pred_frames


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_official_unsupervised_transcription(tmp_path, seed):
    rng = np.random.default_rng(seed)
    # Radius 1 at 20x30 and 41x57, 2 at 70x110 (ceil(0.008 * 130.4) = 2); 1 x 40 is a single row.
    sizes = [(20, 30), (41, 57), (70, 110), (1, 40)]
    videos = {}
    for i in range(8):
        height, width = sizes[i % len(sizes)]
        videos[f"seq{i}"] = _random_video(rng, int(rng.integers(1, 6)), height, width)
    for name, (gt_frames, pred_frames) in videos.items():
        frame_names = [f"{t:05d}" for t in range(len(gt_frames))]
        for frame, gt_labels, pred_labels in zip(frame_names, gt_frames, pred_frames):
            _palette_png(gt_labels, str(tmp_path / "DAVIS" / "Annotations_unsupervised" / "480p" / name
                                        / f"{frame}.png"))
            _palette_png(pred_labels, ref_davis.prediction_path(str(tmp_path / "pred"), 0, name, frame))
    reference, per_sequence = official.evaluate(videos)
    result = ref_davis.evaluate_ref_davis(str(tmp_path / "pred"), str(tmp_path / "DAVIS"),
                                          annotators=[0], sequences=list(videos))
    ours = result.summary()["sets"]["0"]
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    for name, (j_means, f_means) in per_sequence.items():
        objects = [o for o in result.sets[0].objects if o.sequence == name]
        np.testing.assert_allclose(sorted(o.j_mean for o in objects), j_means, rtol=0, atol=1e-6)
        np.testing.assert_allclose(sorted(o.f_mean for o in objects), f_means, rtol=0, atol=1e-6)
    # The data exercise the void rule: treating void as background changes the numbers.
    background, _ = official.evaluate(videos, void_as_background=True)
    assert abs(background["JF"] - reference["JF"]) > 1e-3


def test_sequence_without_first_frame_objects(tmp_path):
    empty = np.zeros((H, W), np.uint8)
    later = empty.copy()
    later[3:6, 3:6] = 1
    videos = {**_gt_frames(), "gamma": [empty, later, later]}
    _write_davis(str(tmp_path / "DAVIS"), videos)
    _write_predictions(str(tmp_path / "pred"), 0, videos)
    result = ref_davis.evaluate_ref_davis(str(tmp_path / "pred"), str(tmp_path / "DAVIS"), annotators=[0])
    assert result.sequences_without_objects == ["gamma"]
    assert result.summary()["num_objects"] == 4


def test_merge_object_masks():
    logits = {1: np.array([[0.5, -1.0, 0.05, 0.3]]), 2: np.array([[0.2, 0.4, 0.0, 0.3]])}
    # RefSAM: negatives -> 0, background 0.1 first, argmax; the tie 0.3/0.3 goes to the lower id.
    np.testing.assert_array_equal(ref_davis.merge_object_masks(logits), [[1, 2, 0, 1]])
    probs = {1: np.array([[0.45, 0.9, 0.6]]), 3: np.array([[0.3, 0.95, 0.55]])}
    # ReferFormer: probabilities < 0.5 -> 0 (so 0.45 loses to the 0.1 background).
    np.testing.assert_array_equal(ref_davis.merge_object_masks(probs, zero_below=0.5), [[0, 3, 1]])
    with pytest.raises(ValueError, match="one shape"):
        ref_davis.merge_object_masks({1: np.zeros((2, 2)), 2: np.zeros((2, 3))})


def test_write_davis_prediction_round_trip(tmp_path):
    scores = {1: np.full((4, 5), -1.0), 2: np.full((4, 5), 2.0)}
    scores[1][0, 0] = 5.0
    path = ref_davis.write_davis_prediction(str(tmp_path), 3, "vid", "00007", scores)
    assert path == os.path.join(str(tmp_path), "3", "vid", "00007.png")
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3:9] == [128, 0, 0, 0, 128, 0]  # DAVIS ids 1 and 2
        labels = np.array(image)
    expected = np.full((4, 5), 2)
    expected[0, 0] = 1
    np.testing.assert_array_equal(labels, expected)


def _error(pred, gt, **kwargs):
    with pytest.raises(EvaluationInputError) as info:
        ref_davis.evaluate_ref_davis(pred, gt, **kwargs)
    return str(info.value)


def test_missing_frame_and_sequence(davis_tree):
    pred, gt = davis_tree
    frame = os.path.join(pred, "3", "alpha", "00002.png")
    os.remove(frame)
    assert frame in _error(pred, gt)
    # skip_missing scores the frame as empty and reports it; set 3 is unchanged here because that
    # frame's object 2 now scores 0 too: alpha2 -> (1, 1, 0) -> set 3 = (2/3 + 2/3 + 1 + 1) / 4 = 5/6.
    result = ref_davis.evaluate_ref_davis(pred, gt, skip_missing=True)
    assert result.sets[3].missing == [frame]
    assert result.summary()["sets"]["3"]["J"] == pytest.approx(5 / 6)
    assert result.summary()["missing"] == 1
    sequence = os.path.join(pred, "0", "beta")
    for name in os.listdir(sequence):
        os.remove(os.path.join(sequence, name))
    os.rmdir(sequence)
    # All missing files are listed at once; a missing folder once.
    message = _error(pred, gt)
    assert message.startswith("4 of 24 expected files are missing")
    assert f"{sequence}{os.sep} (no such folder; 3 files expected in it)" in message and frame in message


def test_missing_annotator_folder(davis_tree):
    pred, gt = davis_tree
    os.rename(os.path.join(pred, "1"), os.path.join(pred, "one"))
    assert "expression set 1" in _error(pred, gt)
    os.rename(os.path.join(pred, "one"), os.path.join(pred, "anno_1"))  # ReferFormer naming works
    assert ref_davis.evaluate_ref_davis(pred, gt, annotators=[1]).summary()["J"] == pytest.approx(0.75)


def test_bad_prediction_files(davis_tree):
    pred, gt = davis_tree
    path = os.path.join(pred, "0", "alpha", "00001.png")
    original = open(path, "rb").read()

    Image.new("P", (W + 1, H)).save(path)
    message = _error(pred, gt)
    assert path in message and "33x24" in message and "32x24" in message

    Image.new("RGB", (W, H)).save(path, format="JPEG")
    assert f"{path} is a JPEG file, not a PNG" in _error(pred, gt)

    with open(path, "wb") as f:
        f.write(original[:len(original) // 2])
    assert f"cannot read {path}" in _error(pred, gt)

    Image.new("RGB", (W, H)).save(path)
    assert "mode RGB" in _error(pred, gt)

    mask = np.zeros((H, W), np.uint8)
    mask[:4, :4] = 255
    Image.fromarray(mask).save(path)  # a 0/255 "L" mask is read as id 255
    assert "0/255 masks?" in _error(pred, gt)

    os.remove(path)
    Image.new("P", (W, H)).save(path[:-4] + ".jpg", format="PNG")
    assert f"{path} (found 00001.jpg; expected 00001.png)" in _error(pred, gt)


def test_cli_json_and_csv(davis_tree, tmp_path, capsys):
    pred, gt = davis_tree
    csv_path = str(tmp_path / "per_object.csv")
    assert cli.main(["davis", "--pred", pred, "--gt", gt, "--csv", csv_path]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["J"] == pytest.approx(11 / 12) and summary["F"] == pytest.approx(11 / 12)
    assert summary["JF"] == pytest.approx(11 / 12)
    assert any(line.startswith("alpha") for line in out)
    rows = open(csv_path).read().strip().splitlines()
    assert rows[0] == "sequence,object,J_0,F_0,J_1,F_1,J_2,F_2,J_3,F_3,J,F,JF"
    assert len(rows) == 5 and rows[2].startswith("alpha,2,1.0,1.0,0.0,0.0,")


def test_cli_module_entry_point_reports_errors(davis_tree):
    pred, gt = davis_tree
    os.remove(os.path.join(pred, "2", "beta", "00000.png"))
    run = subprocess.run([sys.executable, "-m", "refsam_jax.evaluation", "davis", "--pred", pred,
                          "--gt", gt], capture_output=True, text=True)
    assert run.returncode == 2
    assert os.path.join(pred, "2", "beta", "00000.png") in run.stderr
    assert not run.stdout.strip().endswith("}")


def test_cli_skip_missing_reports_the_skip(davis_tree, capsys):
    pred, gt = davis_tree
    os.remove(os.path.join(pred, "2", "beta", "00000.png"))
    assert cli.main(["davis", "--pred", pred, "--gt", gt, "--skip-missing"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["missing"] == 1 and "skipped 1 missing" in captured.err
    # beta frame 0 of set 2 is empty: both beta objects score (0, 1, 1) -> set 2 = (1 + 1 + 2/3 + 2/3) / 4.
    assert summary["sets"]["2"]["J"] == pytest.approx(5 / 6)
