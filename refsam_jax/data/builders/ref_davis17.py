"""Ref-DAVIS17 in the layout of ReferFormer's `convert_davis_to_ytvos.py`, as a TFDS builder.

Splits: valid (30 videos in the real data) and train, whichever `meta_expressions/<split>` exists.
The converter writes, per object k (sorted by obj_id as a string), four expressions in the order
annot1-first-frame, annot1-full-video, annot2-first-frame, annot2-full-video, so exp_id = 4k + a.
Each record keeps that as `annotator` = a // 2 (0 or 1) and `kind` = ('first_frame', 'full_video')[a % 2].
One record per video; the layout is in `common.py` (label maps from Annotations_unsupervised).
"""

import logging
from typing import Dict

import tensorflow_datasets as tfds
from etils import epath

from refsam_jax.data.builders import common
from refsam_jax.data.builders.ref_youtube_vos import read_meta_videos
from refsam_jax.paths import natural_key

KINDS = ("first_frame", "full_video")
_LOG = logging.getLogger(__name__)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Run ReferFormer's tools/data/convert_davis_to_ytvos.py, then give its output folder (data/ref-davis):
  {train,valid}/JPEGImages/<video>/<00000>.jpg
  {train,valid}/Annotations/<video>/<00000>.png    palette PNG, pixel value = obj_id
  {train,valid}/meta.json                          optional (object categories)
  meta_expressions/{train,valid}/meta_expressions.json   4 expressions per object
"""


def expression_annotator_and_kind(index: int):
    """Position of an expression in its video's list -> (annotator 0/1, kind)."""
    slot = index % 4
    return slot // 2, KINDS[slot % 2]


class RefDavis17(common.SkipReportMixin, tfds.core.GeneratorBasedBuilder):
    """Ref-DAVIS17: one array_record record per video, expressions tagged with annotator and kind."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "One record per video: encoded frames, palette PNGs, expressions.",
                     "1.1.0": "Frames in numeric order of their names (2 before 10), not string order."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Ref-DAVIS17 (Khoreva et al. 2018) in ReferFormer's Ref-YouTube-VOS layout.",
            features=common.video_features(with_annotator=True),
            homepage="https://www.mpi-inf.mpg.de/departments/computer-vision-and-machine-learning/research/video-segmentation/video-object-segmentation-with-language-referring-expressions",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = epath.Path(dl_manager.manual_dir)
        splits = {}
        for split in ("train", "valid"):
            meta_path = root / "meta_expressions" / split / "meta_expressions.json"
            if not meta_path.exists():
                continue
            videos = read_meta_videos(meta_path)
            split_dir = root / split
            common.require_dir(split_dir / "JPEGImages", f"{split} frames")
            common.require_dir(split_dir / "Annotations", f"{split} masks")
            categories = self._read_categories(split_dir / "meta.json")
            splits[split] = self._generate_examples(split_dir, videos, meta_path, categories)
        if not splits:
            raise common.DataError(
                "missing_file", f"{root / 'meta_expressions'}: no train/ or valid/ meta_expressions.json"
            )
        return splits

    def _read_categories(self, path: epath.Path) -> Dict[str, Dict[int, str]]:
        if not path.exists():
            return {}
        videos = common.expect_key(common.read_json(path), "videos", path, "top level")
        return {
            vid: {
                int(oid): str(obj.get("category", ""))
                for oid, obj in common.expect_key(video, "objects", path, f"video {vid!r}").items()
            }
            for vid, video in videos.items()
        }

    def _generate_examples(self, split_dir, videos, meta_path, categories):
        for vid in sorted(videos):
            video = videos[vid]
            try:
                exp_ids = common.sorted_exp_ids(video["expressions"], meta_path, vid)
                if len(exp_ids) % 4:
                    raise common.DataError(
                        "bad_annotation",
                        f"{meta_path}: video {vid!r} has {len(exp_ids)} expressions, expected 4 per object "
                        "(annot1 first-frame, annot1 full-video, annot2 first-frame, annot2 full-video)",
                    )
                expressions = []
                for index, exp_id in enumerate(exp_ids):
                    exp = video["expressions"][exp_id]
                    annotator, kind = expression_annotator_and_kind(index)
                    expressions.append(
                        {
                            "exp_id": exp_id,
                            "sentence": exp["exp"],
                            "obj_id": common.parse_obj_id(exp.get("obj_id"), meta_path, vid, exp_id),
                            "annotator": annotator,
                            "kind": kind,
                        }
                    )
                for start in range(0, len(expressions), 4):
                    group = {e["obj_id"] for e in expressions[start : start + 4]}
                    if len(group) != 1:
                        raise common.DataError(
                            "bad_annotation",
                            f"{meta_path}: video {vid!r}: expressions {exp_ids[start:start + 4]} should refer to one object, got {sorted(group)}",
                        )
                example = common.video_example(
                    video_id=vid,
                    frame_names=sorted(video["frames"], key=natural_key),
                    jpeg_dir=split_dir / "JPEGImages",
                    annotation_dir=split_dir / "Annotations",
                    categories=categories.get(vid, {}),
                    expressions=expressions,
                    meta_path=meta_path,
                    policy=self.policy,
                )
            except common.DataError as e:
                self.policy.handle(e, "video")
                continue
            if example is None:
                continue
            gt_objects = int(common.decode_label_map(example["label_maps"][0]).max())
            if gt_objects != len(exp_ids) // 4:
                _LOG.warning(  # DATASETS.md §2.5: the DAVIS evaluator scores max(first-frame GT) objects.
                    "%s: video %r has %d objects in its first GT frame but expressions for %d",
                    meta_path,
                    vid,
                    gt_objects,
                    len(exp_ids) // 4,
                )
            yield vid, example
