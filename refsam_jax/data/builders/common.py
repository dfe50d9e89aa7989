"""What the three builders share: bad-input policy, JSON and image reading, the video record.

Video record (Ref-YouTube-VOS and Ref-DAVIS17; one record per video, keyed by video id):
  video_id            str
  height, width       int32, the frame size (all frames and label maps of a video share it)
  frame_names         [F] str, the meta's `frames` in numeric order (`paths.natural_key`: 2 before 10)
  frames              [F] bytes, each JPEG file exactly as stored on disk
  label_maps          [F] bytes, each palette PNG exactly as stored on disk (pixel = object id);
                      empty where the split has no ground truth (Ref-YouTube-VOS valid)
  object_ids          [O] int32, sorted; the objects referred to or listed in meta.json
  object_categories   [O] str ('' when meta.json gives none)
  object_present      [O, F] bool, whether object o has pixels in frame f (from the label maps)
  expressions         [E] {exp_id: str, sentence: str (as in the json), obj_id: int32 (-1: unknown)}
                      in int(exp_id) order; Ref-DAVIS17 adds annotator (0/1) and kind
                      ('first_frame' / 'full_video')
Images stay encoded so a clip decodes only its T frames; decode with `decode_rgb`/`decode_label_map`.
Records come back from the array_record files in hash order, not in video-id order.
"""

import collections
import io
import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

ON_ERROR_CHOICES = ("raise", "skip")
_LOG = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad raw input; the message names the file (and video/expression) and the problem.

    `kind` is one of: corrupt_image, missing_frame, missing_mask, bad_mask, object_never_appears,
    bad_annotation, malformed_json, missing_file.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class ErrorPolicy:
    """`on_error="raise"`: raise the DataError. `"skip"`: count it, log it, and go on.

    JSON syntax errors and missing top-level files or keys always raise: nothing sensible can be skipped.
    """

    def __init__(self, on_error: str):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.on_error = on_error
        self.counts: collections.Counter = collections.Counter()
        self.messages: List[str] = []

    def handle(self, error: DataError, what: str) -> None:
        """Raise `error`, or record that one `what` ('video', 'expression', 'image', ...) was skipped."""
        if self.on_error == "raise":
            raise error
        self.counts[f"{what}:{error.kind}"] += 1
        self.messages.append(f"skipped {what}: {error}")
        _LOG.warning("skipped %s: %s", what, error)

    def report(self) -> Dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "messages": list(self.messages)}


def read_json(path: epath.Path) -> Any:
    """Parses a JSON file; a syntax error names the file, line and column."""
    path = epath.Path(path)
    if not path.exists():
        raise DataError("missing_file", f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError("malformed_json", f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                                          f"UTF-8") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError("malformed_json", f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from e


def require_dir(path: epath.Path, what: str) -> epath.Path:
    path = epath.Path(path)
    if not path.is_dir():
        raise DataError("missing_file", f"{path}: directory not found ({what})")
    return path


def expect_key(obj: Any, key: str, path: epath.Path, where: str) -> Any:
    """`obj[key]`, or a DataError naming the JSON file and the place in it."""
    if not isinstance(obj, Mapping) or key not in obj:
        raise DataError("malformed_json", f"{path}: {where}: missing key {key!r}")
    return obj[key]


def read_image_bytes(path: epath.Path, context: str = "") -> Tuple[bytes, Tuple[int, int]]:
    """The file's bytes and (h, w) after checking that it fully decodes to an RGB-convertible image.

    `context` (e.g. " (frame '00005' of video 'abc', listed in <meta>)") is added to error messages.
    """
    path = epath.Path(path)
    if not path.exists():
        raise DataError("missing_frame", f"{path}: image file not found{context}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image.convert("RGB")
            size = (image.height, image.width)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on corrupt data.
        raise DataError("corrupt_image", f"{path}: cannot decode image ({type(e).__name__}: {e}){context}") from e
    return data, size


def read_label_png(path: epath.Path, size: Tuple[int, int], context: str = "") -> Tuple[bytes, np.ndarray]:
    """A palette PNG's bytes and its index map uint8 `[H, W]`, checked against the frame size."""
    path = epath.Path(path)
    if not path.exists():
        raise DataError("missing_mask", f"{path}: annotation PNG not found{context}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            labels = np.asarray(image)
    except Exception as e:
        raise DataError(
            "missing_mask", f"{path}: cannot decode annotation PNG ({type(e).__name__}: {e}){context}"
        ) from e
    if mode not in ("P", "L"):
        raise DataError("bad_mask", f"{path}: annotation must be a palette (P) PNG of object ids, got mode {mode}")
    if labels.shape != tuple(size):
        raise DataError("bad_mask", f"{path}: annotation size {labels.shape} differs from the frame size {tuple(size)}")
    return data, labels


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image -> uint8 `[H, W, 3]` RGB (grey or CMYK JPEGs are converted)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_label_map(data: bytes) -> np.ndarray:
    """Palette PNG -> uint8 `[H, W]` index map (pixel value = object id)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def decode_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def video_features(with_annotator: bool) -> tfds.features.FeaturesDict:
    """Feature spec of the video record (see the module docstring)."""
    expression = {"exp_id": tfds.features.Text(), "sentence": tfds.features.Text(), "obj_id": np.int32}
    if with_annotator:
        expression.update(annotator=np.int32, kind=tfds.features.Text())
    return tfds.features.FeaturesDict(
        {
            "video_id": tfds.features.Text(),
            "height": np.int32,
            "width": np.int32,
            "frame_names": tfds.features.Sequence(tfds.features.Text()),
            "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
            "label_maps": tfds.features.Tensor(shape=(None,), dtype=np.object_),
            "object_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "object_categories": tfds.features.Sequence(tfds.features.Text()),
            "object_present": tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding="zlib"),
            "expressions": tfds.features.Sequence(expression),
        }
    )


def sorted_exp_ids(expressions: Mapping[str, Any], meta_path: epath.Path, video_id: str) -> List[str]:
    """Expression ids ("0", "1", ...) in numeric order."""
    try:
        return sorted(expressions, key=int)
    except ValueError as e:
        raise DataError(
            "malformed_json", f"{meta_path}: video {video_id!r}: expression ids must be integers: {e}"
        ) from e


def parse_obj_id(value: Any, meta_path: epath.Path, video_id: str, exp_id: str) -> int:
    try:
        obj_id = int(value)
    except (TypeError, ValueError) as e:
        raise DataError(
            "bad_annotation",
            f"{meta_path}: video {video_id!r}, expression {exp_id!r}: obj_id {value!r} is not an integer",
        ) from e
    if not 0 < obj_id < 256:
        raise DataError(
            "bad_annotation", f"{meta_path}: video {video_id!r}, expression {exp_id!r}: obj_id {obj_id} not in 1..255"
        )
    return obj_id


def video_example(
    *,
    video_id: str,
    frame_names: Sequence[str],
    jpeg_dir: epath.Path,
    annotation_dir: Optional[epath.Path],
    categories: Mapping[int, str],
    expressions: Sequence[Dict[str, Any]],
    meta_path: epath.Path,
    policy: ErrorPolicy,
) -> Optional[Dict[str, Any]]:
    """Reads and checks one video; returns its record, or None if every expression was skipped.

    `expressions`: dicts with exp_id, sentence, obj_id (-1 when unknown) and any extra fields.
    Raises DataError for a missing/corrupt frame or mask (the caller's policy decides).
    An expression whose object has no pixel in any frame goes through `policy` here.
    """
    if not frame_names:
        raise DataError("missing_frame", f"{meta_path}: video {video_id!r} lists no frames")
    frames, size = [], None
    for name in frame_names:
        data, frame_size = read_image_bytes(
            jpeg_dir / video_id / f"{name}.jpg", f" (frame {name!r} of video {video_id!r}, listed in {meta_path})"
        )
        if size is not None and frame_size != size:
            raise DataError(
                "corrupt_image",
                f"{jpeg_dir / video_id / (name + '.jpg')}: size {frame_size} differs from the video's {size}",
            )
        size = frame_size
        frames.append(data)
    object_ids = sorted(set(categories) | {e["obj_id"] for e in expressions if e["obj_id"] >= 0})
    label_maps: List[bytes] = []
    present = np.zeros([len(object_ids), len(frame_names)], dtype=bool)
    if annotation_dir is not None:
        for f, name in enumerate(frame_names):
            data, labels = read_label_png(
                annotation_dir / video_id / f"{name}.png", size, f" (frame {name!r} of video {video_id!r})"
            )
            label_maps.append(data)
            ids_here = set(np.unique(labels).tolist())
            present[:, f] = [oid in ids_here for oid in object_ids]
        kept = []
        for e in expressions:
            if e["obj_id"] >= 0 and not present[object_ids.index(e["obj_id"])].any():
                policy.handle(
                    DataError(
                        "object_never_appears",
                        f"{meta_path}: video {video_id!r}, expression {e['exp_id']!r} ({e['sentence']!r}): "
                        f"object {e['obj_id']} never appears in {annotation_dir / video_id}",
                    ),
                    "expression",
                )
                continue
            kept.append(e)
        expressions = kept
        if not expressions:
            policy.handle(
                DataError("object_never_appears", f"{meta_path}: video {video_id!r}: no expression left"), "video"
            )
            return None
    return {
        "video_id": video_id,
        "height": size[0],
        "width": size[1],
        "frame_names": list(frame_names),
        "frames": np.array(frames, dtype=object),
        "label_maps": np.array(label_maps, dtype=object),
        "object_ids": np.array(object_ids, dtype=np.int32),
        "object_categories": [categories.get(o, "") for o in object_ids],
        "object_present": present,
        "expressions": list(expressions),
    }


class SkipReportMixin:
    """Builds array_record files by default; collects skips in `self.policy` and logs + stores them
    (`info.metadata['skipped']`) after the build."""

    def __init__(self, *, on_error: str = "raise", **kwargs):
        """`on_error`: "raise" (default) or "skip" bad records, counted in `self.skipped`."""
        self.policy = ErrorPolicy(on_error)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @property
    def skipped(self) -> Dict[str, int]:
        """Skip counts of the build, keyed 'what:kind' (e.g. 'video:corrupt_image'); for a reused build, those
        recorded when it was built."""
        if self.policy.counts or not self.is_prepared():
            return dict(self.policy.counts)
        return dict(self.info.metadata.get("skipped", {}).get("counts", {}))

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        report = self.policy.report()
        self.info.metadata["source_fingerprint"] = getattr(self, "source_fingerprint", "")
        self.info.metadata["skipped"] = report
        total = sum(report["counts"].values())
        if total:
            _LOG.warning("%s: skipped %d item(s) of bad input: %s", self.name, total, report["counts"])
        else:
            _LOG.info("%s: no input skipped", self.name)
