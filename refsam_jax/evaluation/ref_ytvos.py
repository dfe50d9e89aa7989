"""Ref-YouTube-VOS: the CodaLab submission zip and a local J&F on held-out train videos.

Submission (DATASETS.md §1.5, REFSAM_SPEC.md §6.2): the valid videos are
`sorted(set(valid meta) - set(test meta))` (202 of them), and the zip holds
`Annotations/<video>/<exp_id>/<frame>.png` for every expression of those videos and every frame in
the video's `frames` list: single-channel "L" PNGs with values 0/255 at the original frame size.

Local J&F (DATASETS.md §1.6, MeViS `eval_mevis.py` protocol): per (video, expression), j and f are
the means of the official per-frame J and F over all listed frames (a frame empty in both scores 1),
the ground truth being `train/Annotations/<video>/<frame>.png == obj_id`; J and F are the means over
expressions and J&F = (J + F) / 2.
"""

import csv
import dataclasses
import io
import json
import os
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from refsam_jax.evaluation import (
    EvaluationInputError,
    binary_mask_image,
    describe_paths,
    read_mask_png,
    require_files,
    save_binary_mask_png,  # noqa: F401  (the writer inference uses)
)
from refsam_jax.evaluation.metrics import DEFAULT_BOUND_TH, boundary_f, jaccard

NUM_VALID_VIDEOS = 202
ZIP_ROOT = "Annotations"
Entry = Tuple[str, str, str]  # (video, exp_id, frame)
Predictions = Union[str, os.PathLike, Mapping[Entry, np.ndarray]]


def load_meta_expressions(path: str) -> Dict[str, dict]:
    """`meta_expressions.json` -> {video: {"expressions": {exp_id: {...}}, "frames": [...]}}."""
    if not os.path.isfile(path):
        raise EvaluationInputError(f"missing meta expressions file {path}")
    try:
        with open(path) as f:
            videos = json.load(f)["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EvaluationInputError(f"{path} is not a meta_expressions.json ({e!r})") from e
    for video, record in videos.items():
        if not isinstance(record, dict) or "expressions" not in record or "frames" not in record:
            raise EvaluationInputError(f"{path}: video {video} lacks 'expressions' or 'frames'")
    return videos


def valid_video_ids(meta_valid: Mapping[str, dict], meta_test: Mapping[str, dict],
                    expected_num_videos: Optional[int] = NUM_VALID_VIDEOS) -> List[str]:
    """Sorted `valid - test` video ids; checks there are `expected_num_videos` (None: no check)."""
    videos = sorted(set(meta_valid) - set(meta_test))
    if expected_num_videos is not None and len(videos) != expected_num_videos:
        raise EvaluationInputError(
            f"valid minus test meta gives {len(videos)} videos, expected {expected_num_videos} "
            "(are these the competition meta_expressions/valid and /test files?)")
    return videos


def submission_entries(meta_valid: Mapping[str, dict], videos: Sequence[str]) -> List[Entry]:
    """Every (video, exp_id, frame) the submission must contain, in a stable order."""
    return [(video, exp_id, frame) for video in videos
            for exp_id in sorted(meta_valid[video]["expressions"], key=_natural)
            for frame in sorted(meta_valid[video]["frames"])]


def _natural(exp_id: str) -> Tuple[int, str]:
    return (int(exp_id), exp_id) if exp_id.isdigit() else (1 << 30, exp_id)


def _arcname(entry: Entry) -> str:
    video, exp_id, frame = entry
    return f"{ZIP_ROOT}/{video}/{exp_id}/{frame}.png"


def _check_binary_png(data: bytes, name: str) -> Tuple[int, int]:
    """Checks PNG bytes are a mode "L" image with values in {0, 255}; returns (H, W)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise EvaluationInputError(f"{name} is a {image.format} file, not a PNG")
            if image.mode != "L":
                raise EvaluationInputError(f"{name} has mode {image.mode}; submission masks are "
                                           "single-channel 'L' PNGs with values 0/255")
            histogram = image.histogram()
            shape = (image.height, image.width)
    except EvaluationInputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise EvaluationInputError(f"cannot read {name}: {e}") from e
    bad = [value for value in range(1, 255) if histogram[value]]
    if bad:
        raise EvaluationInputError(f"{name} has values {bad[:5]}; submission masks are 0/255")
    return shape


class _SizeReference:
    """Expected (H, W) of each mask: its frame `images_root/<video>/<frame>.jpg`, else the first mask
    seen of the same video."""

    def __init__(self, images_root: Optional[str]):
        self.images_root = images_root
        self.sizes: Dict[str, Tuple[int, int]] = {}
        self.first_masks: Dict[str, Tuple[Tuple[int, int], str]] = {}

    @property
    def kind(self) -> str:
        return "images" if self.images_root else "consistency"

    def check(self, entry: Entry, shape: Tuple[int, int], name: str) -> None:
        video, _, frame = entry
        if self.images_root:
            key = f"{video}/{frame}"
            if key not in self.sizes:
                path = os.path.join(self.images_root, video, f"{frame}.jpg")
                try:
                    with Image.open(path) as image:
                        self.sizes[key] = (image.height, image.width)
                except (OSError, SyntaxError) as e:
                    raise EvaluationInputError(f"cannot read frame {path} for its size: {e}") from e
            expected, source = self.sizes[key], f"frame {key}.jpg"
        else:
            expected, first = self.first_masks.setdefault(video, (tuple(shape), name))
            source = f"the video's first mask {first}"
        if tuple(shape) != expected:
            raise EvaluationInputError(f"{name} is {shape[1]}x{shape[0]} (WxH) but {source} is "
                                       f"{expected[1]}x{expected[0]}")


@dataclasses.dataclass
class SubmissionReport:
    """What a submission zip holds, and which expected files were left out (skip_missing only)."""
    num_videos: int
    num_expressions: int
    num_files: int
    missing: List[str]
    size_reference: str

    def summary(self) -> Dict[str, object]:
        return {"num_videos": self.num_videos, "num_expressions": self.num_expressions,
                "num_files": self.num_files, "missing": len(self.missing),
                "size_reference": self.size_reference}


def _load_split(meta_valid_path: str, meta_test_path: str,
                expected_num_videos: Optional[int]) -> Tuple[Dict[str, dict], List[str]]:
    meta_valid = load_meta_expressions(meta_valid_path)
    videos = valid_video_ids(meta_valid, load_meta_expressions(meta_test_path), expected_num_videos)
    return meta_valid, videos


def _entry_name(predictions: Predictions, entry: Entry) -> str:
    """The file of `entry` in a predictions folder, or "video/exp_id/frame" for a mapping."""
    if isinstance(predictions, (str, os.PathLike)):
        return os.path.join(os.fspath(predictions), entry[0], entry[1], f"{entry[2]}.png")
    return "/".join(entry)


def _entry_png(predictions: Predictions, entry: Entry, name: str) -> bytes:
    """The PNG bytes of `entry`: the file as it is, or the mapping's bool mask encoded as 0/255 "L"."""
    if isinstance(predictions, (str, os.PathLike)):
        with open(name, "rb") as f:
            return f.read()
    try:
        image = binary_mask_image(predictions[entry])
    except ValueError as e:
        raise EvaluationInputError(f"prediction {name}: {e}") from e
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_submission_zip(predictions: Predictions, meta_valid_path: str, meta_test_path: str,
                         out_zip: str, images_root: Optional[str] = None, skip_missing: bool = False,
                         expected_num_videos: Optional[int] = NUM_VALID_VIDEOS) -> SubmissionReport:
    """Checks and zips a Ref-YouTube-VOS valid submission.

    Args:
      predictions: a folder `<dir>/<video>/<exp_id>/<frame>.png` of 0/255 "L" PNGs (as
        `save_binary_mask_png` writes them), or a mapping (video, exp_id, frame) -> bool `[H, W]`.
      meta_valid_path, meta_test_path: `meta_expressions/{valid,test}/meta_expressions.json`.
      out_zip: the zip to write (only written when every check passes).
      images_root: `valid/JPEGImages`; when given, each mask must have its frame's size, otherwise
        all masks of a video must share one size.
      skip_missing: leave missing masks out and list them in the report instead of raising.
      expected_num_videos: the number of valid videos to insist on (None: no check).

    Raises:
      EvaluationInputError: listing the missing files, or naming a wrong-size, non-binary,
        non-"L" or unreadable mask.
    """
    meta_valid, videos = _load_split(meta_valid_path, meta_test_path, expected_num_videos)
    entries = submission_entries(meta_valid, videos)
    names = {e: _entry_name(predictions, e) for e in entries}
    if isinstance(predictions, (str, os.PathLike)):
        missing = require_files([names[e] for e in entries], skip_missing)
    else:
        missing = [names[e] for e in entries if e not in predictions]
        if missing and not skip_missing:
            raise EvaluationInputError(f"{len(missing)} of {len(entries)} expected masks are missing: "
                                       f"{describe_paths(missing)}")
    missing_set = set(missing)
    sizes = _SizeReference(images_root)
    written = 0
    partial = f"{out_zip}.partial"
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for entry in entries:
                if names[entry] in missing_set:
                    continue
                data = _entry_png(predictions, entry, names[entry])
                sizes.check(entry, _check_binary_png(data, names[entry]), names[entry])
                zf.writestr(_arcname(entry), data)
                written += 1
        os.replace(partial, out_zip)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    num_expressions = sum(len(meta_valid[v]["expressions"]) for v in videos)
    return SubmissionReport(len(videos), num_expressions, written, missing, sizes.kind)


def check_submission_zip(zip_path: str, meta_valid_path: str, meta_test_path: str,
                         images_root: Optional[str] = None,
                         expected_num_videos: Optional[int] = NUM_VALID_VIDEOS) -> SubmissionReport:
    """Checks a submission zip holds exactly the expected masks, each 0/255 "L" at the right size.

    Raises `EvaluationInputError` listing missing and unexpected entries, or naming a bad mask.
    """
    meta_valid, videos = _load_split(meta_valid_path, meta_test_path, expected_num_videos)
    entries = submission_entries(meta_valid, videos)
    if not os.path.isfile(zip_path):
        raise EvaluationInputError(f"missing zip file {zip_path}")
    if not zipfile.is_zipfile(zip_path):
        raise EvaluationInputError(f"{zip_path} is not a zip file")
    with zipfile.ZipFile(zip_path) as zf:
        names = {n for n in zf.namelist() if not n.endswith("/")}
        expected = {_arcname(e): e for e in entries}
        missing = [n for n in expected if n not in names]
        unexpected = sorted(names - set(expected))
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {describe_paths(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {describe_paths(unexpected)}")
        if problems:
            raise EvaluationInputError(f"{zip_path} does not match the expected layout "
                                       f"{ZIP_ROOT}/<video>/<exp_id>/<frame>.png; "
                                       + "; ".join(problems))
        sizes = _SizeReference(images_root)
        for arcname, entry in expected.items():
            name = f"{zip_path}:{arcname}"
            sizes.check(entry, _check_binary_png(zf.read(arcname), name), name)
    num_expressions = sum(len(meta_valid[v]["expressions"]) for v in videos)
    return SubmissionReport(len(videos), num_expressions, len(entries), [], sizes.kind)


@dataclasses.dataclass(frozen=True)
class ExpressionScore:
    """Mean J and F over the listed frames of one expression."""
    video: str
    exp_id: str
    obj_id: int
    j: float
    f: float
    num_frames: int


@dataclasses.dataclass
class YtvosResult:
    expressions: List[ExpressionScore]
    missing: List[str]

    def summary(self) -> Dict[str, object]:
        j = float(np.mean([e.j for e in self.expressions]))
        f = float(np.mean([e.f for e in self.expressions]))
        return {"J": j, "F": f, "JF": (j + f) / 2, "num_expressions": len(self.expressions),
                "num_videos": len({e.video for e in self.expressions}), "missing": len(self.missing)}

    def write_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "exp_id", "obj_id", "J", "F", "JF", "frames"])
            for e in self.expressions:
                writer.writerow([e.video, e.exp_id, e.obj_id, e.j, e.f, (e.j + e.f) / 2, e.num_frames])


def read_video_list(path: str) -> List[str]:
    """One video id per line (blank lines and '#' comments ignored)."""
    if not os.path.isfile(path):
        raise EvaluationInputError(f"missing video list {path}")
    with open(path) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def evaluate_ytvos_local(pred_root: str, ytvos_root: str, videos: Optional[Sequence[str]] = None,
                         skip_missing: bool = False,
                         bound_th: float = DEFAULT_BOUND_TH) -> YtvosResult:
    """Local J&F of `<pred_root>/<video>/<exp_id>/<frame>.png` against Ref-YTVOS train annotations.

    Args:
      pred_root: binary mask PNGs (any non-zero value is foreground).
      ytvos_root: the `ref-youtube-vos` folder (`train/Annotations`,
        `meta_expressions/train/meta_expressions.json`).
      videos: held-out video ids to score; None scores every video folder in `pred_root`.
      skip_missing: score missing frames/expressions as empty masks and list them, instead of raising.
    """
    meta = load_meta_expressions(
        os.path.join(ytvos_root, "meta_expressions", "train", "meta_expressions.json"))
    if videos is None:
        if not os.path.isdir(pred_root):
            raise EvaluationInputError(f"missing prediction folder {pred_root}")
        videos = sorted(d for d in os.listdir(pred_root) if os.path.isdir(os.path.join(pred_root, d)))
    unknown = [v for v in videos if v not in meta]
    if unknown:
        raise EvaluationInputError(f"videos not in the train meta expressions: {describe_paths(unknown)}")
    if not videos:
        raise EvaluationInputError(f"no videos to evaluate in {pred_root}")
    expected = {(video, exp_id): [os.path.join(pred_root, video, exp_id, f"{frame}.png")
                                  for frame in sorted(meta[video]["frames"])]
                for video in videos for exp_id in sorted(meta[video]["expressions"], key=_natural)}
    missing = require_files([p for paths in expected.values() for p in paths], skip_missing)
    missing_set = set(missing)
    scores = []
    for video in videos:
        frames = sorted(meta[video]["frames"])
        gt_dir = os.path.join(ytvos_root, "train", "Annotations", video)
        first = read_mask_png(os.path.join(gt_dir, f"{frames[0]}.png"))
        gt_labels = np.stack([first] + [read_mask_png(os.path.join(gt_dir, f"{frame}.png"), first.shape)
                                        for frame in frames[1:]])
        for exp_id in sorted(meta[video]["expressions"], key=_natural):
            expression = meta[video]["expressions"][exp_id]
            if "obj_id" not in expression:
                raise EvaluationInputError(f"train meta: {video}/{exp_id} has no obj_id")
            gt = gt_labels == int(expression["obj_id"])
            pred = np.zeros(gt_labels.shape, bool)
            for t, path in enumerate(expected[video, exp_id]):
                if path not in missing_set:
                    pred[t] = read_mask_png(path, first.shape) > 0
            scores.append(ExpressionScore(video, exp_id, int(expression["obj_id"]),
                                          float(jaccard(gt, pred).mean()),
                                          float(boundary_f(gt, pred, bound_th=bound_th).mean()),
                                          len(frames)))
    return YtvosResult(scores, missing)
