"""Ref-YouTube-VOS: submission zip layout and checks, local J&F with worked numbers, CLI."""

import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from refsam_jax.evaluation import EvaluationInputError, ref_ytvos, save_binary_mask_png
from refsam_jax.evaluation import __main__ as cli

VALID = {
    "v_a": {"expressions": {"0": {"exp": "a dog"}, "1": {"exp": "the left cat"}},
            "frames": ["00000", "00005", "00010"]},
    "v_b": {"expressions": {"0": {"exp": "a car"}}, "frames": ["00003", "00008"]},
    "v_test": {"expressions": {"0": {"exp": "a bird"}}, "frames": ["00000"]},
}
TEST = {"v_test": VALID["v_test"]}
SIZES = {"v_a": (20, 30), "v_b": (16, 24)}  # (H, W)
EXPECTED_FILES = [
    "Annotations/v_a/0/00000.png", "Annotations/v_a/0/00005.png", "Annotations/v_a/0/00010.png",
    "Annotations/v_a/1/00000.png", "Annotations/v_a/1/00005.png", "Annotations/v_a/1/00010.png",
    "Annotations/v_b/0/00003.png", "Annotations/v_b/0/00008.png",
]


def _write_json(path, videos):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"videos": videos}, f)


@pytest.fixture
def valid_root(tmp_path):
    root = tmp_path / "ref-youtube-vos"
    _write_json(str(root / "meta_expressions" / "valid" / "meta_expressions.json"), VALID)
    _write_json(str(root / "meta_expressions" / "test" / "meta_expressions.json"), TEST)
    for video, (h, w) in SIZES.items():
        for frame in VALID[video]["frames"]:
            path = root / "valid" / "JPEGImages" / video / f"{frame}.jpg"
            os.makedirs(path.parent, exist_ok=True)
            Image.new("RGB", (w, h)).save(path)
    pred = tmp_path / "pred"
    for video, (h, w) in SIZES.items():
        for exp_id in VALID[video]["expressions"]:
            for frame in VALID[video]["frames"]:
                mask = np.zeros((h, w), bool)
                mask[2:5, 3:9] = True
                save_binary_mask_png(mask, str(pred / video / exp_id / f"{frame}.png"))
    return str(root), str(pred)


def _metas(root):
    meta = os.path.join(root, "meta_expressions")
    return (os.path.join(meta, "valid", "meta_expressions.json"),
            os.path.join(meta, "test", "meta_expressions.json"))


def _images(root):
    return os.path.join(root, "valid", "JPEGImages")


def _files_after_unzip(zip_path, into):
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(into)
    return sorted(os.path.relpath(os.path.join(d, n), into).replace(os.sep, "/")
                  for d, _, names in os.walk(into) for n in names)


def test_save_binary_mask_png(tmp_path):
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = True
    path = str(tmp_path / "a" / "b.png")
    save_binary_mask_png(mask, path)
    with Image.open(path) as image:
        assert image.mode == "L" and image.format == "PNG"
        np.testing.assert_array_equal(np.array(image), mask * 255)
    with pytest.raises(ValueError, match="bool"):
        save_binary_mask_png(mask.astype(np.uint8), path)


def test_zip_layout_is_exact(valid_root, tmp_path):
    root, pred = valid_root
    out = str(tmp_path / "submission.zip")
    report = ref_ytvos.write_submission_zip(pred, *_metas(root), out, images_root=_images(root),
                                            expected_num_videos=2)
    # v_test is in both meta files, so only v_a (2 expressions x 3 frames) and v_b (1 x 2) remain.
    assert report.summary() == {"num_videos": 2, "num_expressions": 3, "num_files": 8, "missing": 0,
                                "size_reference": "images"}
    assert _files_after_unzip(out, str(tmp_path / "unzipped")) == EXPECTED_FILES
    with Image.open(tmp_path / "unzipped" / "Annotations" / "v_b" / "0" / "00008.png") as image:
        assert image.mode == "L" and image.size == (24, 16)
    checked = ref_ytvos.check_submission_zip(out, *_metas(root), _images(root), expected_num_videos=2)
    assert checked.num_files == 8


def test_zip_from_mapping(valid_root, tmp_path):
    root, _ = valid_root
    masks = {(v, e, f): np.ones(SIZES[v], bool) for v in SIZES for e in VALID[v]["expressions"]
             for f in VALID[v]["frames"]}
    out = str(tmp_path / "mapping.zip")
    ref_ytvos.write_submission_zip(masks, *_metas(root), out, expected_num_videos=2)
    assert _files_after_unzip(out, str(tmp_path / "unzipped")) == EXPECTED_FILES
    masks["v_a", "0", "00000"] = np.ones(SIZES["v_a"], np.uint8)
    with pytest.raises(EvaluationInputError, match="v_a/0/00000: mask must be a bool"):
        ref_ytvos.write_submission_zip(masks, *_metas(root), out, expected_num_videos=2)


def test_missing_masks_error_or_counted_skip(valid_root, tmp_path):
    root, pred = valid_root
    gone = os.path.join(pred, "v_a", "1", "00005.png")
    os.remove(gone)
    out = str(tmp_path / "s.zip")
    with pytest.raises(EvaluationInputError) as info:
        ref_ytvos.write_submission_zip(pred, *_metas(root), out, expected_num_videos=2)
    assert str(info.value).startswith("1 of 8 expected files are missing") and gone in str(info.value)
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")
    report = ref_ytvos.write_submission_zip(pred, *_metas(root), out, skip_missing=True,
                                            expected_num_videos=2)
    assert report.missing == [gone] and report.num_files == 7
    with pytest.raises(EvaluationInputError, match="1 missing: Annotations/v_a/1/00005.png"):
        ref_ytvos.check_submission_zip(out, *_metas(root), expected_num_videos=2)


def _zip_error(root, pred, tmp_path, **kwargs):
    out = str(tmp_path / "bad.zip")
    with pytest.raises(EvaluationInputError) as info:
        ref_ytvos.write_submission_zip(pred, *_metas(root), out, expected_num_videos=2, **kwargs)
    assert not os.path.exists(out)
    return str(info.value)


def test_bad_masks_are_named(valid_root, tmp_path):
    root, pred = valid_root
    path = os.path.join(pred, "v_b", "0", "00003.png")
    save_binary_mask_png(np.zeros((16, 25), bool), path)
    message = _zip_error(root, pred, tmp_path, images_root=_images(root))
    assert path in message and "25x16" in message and "frame v_b/00003.jpg is 24x16" in message
    # Without the frames, every mask must match the first mask of its video (here the wrong one).
    assert f"is 24x16 (WxH) but the video's first mask {path} is 25x16" in _zip_error(root, pred, tmp_path)
    Image.fromarray(np.ones((16, 24), np.uint8)).save(path)
    assert f"{path} has values [1]" in _zip_error(root, pred, tmp_path)
    Image.new("P", (24, 16)).save(path)
    assert f"{path} has mode P" in _zip_error(root, pred, tmp_path)
    Image.new("L", (24, 16)).save(path, format="JPEG")
    assert f"{path} is a JPEG file, not a PNG" in _zip_error(root, pred, tmp_path)
    save_binary_mask_png(np.ones((16, 24), bool), path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    assert f"cannot read {path}" in _zip_error(root, pred, tmp_path)


def test_check_rejects_extra_entries_and_wrong_split(valid_root, tmp_path):
    root, pred = valid_root
    out = str(tmp_path / "s.zip")
    ref_ytvos.write_submission_zip(pred, *_metas(root), out, expected_num_videos=2)
    with zipfile.ZipFile(out, "a") as zf:
        zf.write(os.path.join(pred, "v_a", "0", "00000.png"), "Annotations/v_test/0/00000.png")
    with pytest.raises(EvaluationInputError, match="1 unexpected: Annotations/v_test/0/00000.png"):
        ref_ytvos.check_submission_zip(out, *_metas(root), expected_num_videos=2)
    with pytest.raises(EvaluationInputError, match="gives 2 videos, expected 202"):
        ref_ytvos.check_submission_zip(out, *_metas(root))


def test_cli_zip_and_check(valid_root, tmp_path, capsys):
    root, pred = valid_root
    out = str(tmp_path / "cli.zip")
    assert cli.main(["zip", "--ytvos-root", root, "--pred", pred, "--out", out, "--num-videos", "2"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["num_files"] == 8 and built["size_reference"] == "images"
    assert cli.main(["zip", "--ytvos-root", root, "--check", out, "--num-videos", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_files"] == 8
    assert cli.main(["zip", "--ytvos-root", root, "--check", out]) == 2  # 202 videos expected
    assert "expected 202" in capsys.readouterr().err


# Local J&F: 8x8 train frames. Object 1 = rows/cols 2..5 (16 px) in both frames; object 2 = rows 0..1,
# cols 6..7 in frame 00000 only.
TRAIN = {"t1": {"expressions": {"0": {"exp": "x", "obj_id": "1"}, "1": {"exp": "y", "obj_id": "2"},
                                "2": {"exp": "z", "obj_id": "1"}},
                "frames": ["00000", "00005"]},
         "t2": {"expressions": {"0": {"exp": "w", "obj_id": "1"}}, "frames": ["00000"]}}


@pytest.fixture
def train_root(tmp_path):
    root = tmp_path / "ref-youtube-vos"
    _write_json(str(root / "meta_expressions" / "train" / "meta_expressions.json"), TRAIN)
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = 1
    labels[0, 0:2, 6:8] = 2
    for t, frame in enumerate(TRAIN["t1"]["frames"]):
        path = root / "train" / "Annotations" / "t1" / f"{frame}.png"
        os.makedirs(path.parent, exist_ok=True)
        image = Image.frombytes("P", (8, 8), labels[t].tobytes())
        image.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87] + [0] * 759)
        image.save(path)
    pred = tmp_path / "pred"
    for t, frame in enumerate(TRAIN["t1"]["frames"]):
        save_binary_mask_png(labels[t] == 1, str(pred / "t1" / "0" / f"{frame}.png"))  # perfect
        save_binary_mask_png(np.zeros((8, 8), bool), str(pred / "t1" / "1" / f"{frame}.png"))  # empty
        save_binary_mask_png(np.ones((8, 8), bool), str(pred / "t1" / "2" / f"{frame}.png"))  # full
    return str(root), str(pred)


# exp 0 (perfect): j = 1, f = 1.
# exp 1 (object 2, predicted empty): frame 0 misses it (J = F = 0), frame 1 is empty/empty (J = F = 1)
#   -> j = f = 0.5.
# exp 2 (object 1, predicted full frame): J = 16/64 = 0.25 per frame; a full mask has no boundary while
#   the GT has one -> P = 1, R = 0 -> F = 0.
# J = (1 + 0.5 + 0.25) / 3 = 7/12, F = (1 + 0.5 + 0) / 3 = 1/2, J&F = 13/24.
def test_local_jf_worked_numbers(train_root):
    root, pred = train_root
    result = ref_ytvos.evaluate_ytvos_local(pred, root, ["t1"])
    assert [(e.exp_id, e.j, e.f) for e in result.expressions] == [("0", 1.0, 1.0), ("1", 0.5, 0.5),
                                                                   ("2", 0.25, 0.0)]
    summary = result.summary()
    assert summary["J"] == pytest.approx(7 / 12) and summary["F"] == pytest.approx(0.5)
    assert summary["JF"] == pytest.approx(13 / 24)
    assert summary["num_expressions"] == 3 and summary["num_videos"] == 1
    # With no list, every video folder in pred is scored (only t1 here).
    assert ref_ytvos.evaluate_ytvos_local(pred, root).summary() == summary


def test_local_jf_missing_and_bad_input(train_root):
    root, pred = train_root
    gone = os.path.join(pred, "t1", "0", "00005.png")
    os.remove(gone)
    with pytest.raises(EvaluationInputError, match="1 of 6 expected files are missing"):
        ref_ytvos.evaluate_ytvos_local(pred, root, ["t1"])
    # Skipped, the frame is scored as empty: exp 0 -> j = f = (1 + 0) / 2 -> J = (0.5 + 0.5 + 0.25) / 3.
    result = ref_ytvos.evaluate_ytvos_local(pred, root, ["t1"], skip_missing=True)
    assert result.missing == [gone] and result.summary()["J"] == pytest.approx(1.25 / 3)
    save_binary_mask_png(np.zeros((8, 9), bool), gone)
    with pytest.raises(EvaluationInputError, match="is 9x8 .* expected 8x8"):
        ref_ytvos.evaluate_ytvos_local(pred, root, ["t1"])
    with pytest.raises(EvaluationInputError, match="videos not in the train meta"):
        ref_ytvos.evaluate_ytvos_local(pred, root, ["nope"])
    with pytest.raises(EvaluationInputError, match="1 of 1 expected files are missing"):
        ref_ytvos.evaluate_ytvos_local(pred, root, ["t2"])


def test_cli_ytvos(train_root, tmp_path, capsys):
    root, pred = train_root
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("# held-out videos\nt1\n")
    csv_path = str(tmp_path / "exps.csv")
    assert cli.main(["ytvos", "--pred", pred, "--gt-root", root, "--heldout-file", str(heldout),
                     "--csv", csv_path]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["JF"] == pytest.approx(13 / 24) and summary["missing"] == 0
    assert open(csv_path).read().splitlines()[0] == "video,exp_id,obj_id,J,F,JF,frames"
