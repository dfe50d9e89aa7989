"""Evaluation source: every (video, expression) of a built split, with original frames and GT.

    for item in iterate_eval_videos("ref_davis17", data_dir, "valid"):
        item.frames     # list of T uint8 [H, W, 3], original resolution, shared by a video's expressions
        item.masks      # bool [T, H, W] (label map == obj_id), or None without GT (Ref-YouTube-VOS valid)

Videos come sorted by id, expressions in exp_id order. RefCOCO variants ('refcoco/refcocog') yield
one 1-frame item per sentence: video_id = COCO image id, expression_id = sentence id.
"""

import dataclasses
import itertools
from typing import Iterator, List, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from refsam_jax.data import builders
from refsam_jax.data.builders.common import decode_label_map, decode_rgb, decode_text


@dataclasses.dataclass
class EvalExpression:
    video_id: str
    expression_id: str
    sentence: str  # as in the annotation file (no cleaning)
    frame_names: List[str]
    frames: List[np.ndarray]
    masks: Optional[np.ndarray]
    obj_id: int  # -1 when unknown (Ref-YouTube-VOS valid); RefCOCO: the COCO annotation id
    annotator: int = -1  # Ref-DAVIS17: 0 or 1
    kind: str = ""  # Ref-DAVIS17: 'first_frame' or 'full_video'


def iterate_eval_videos(
    name: str,
    data_dir: epath.PathLike,
    split: str,
    *,
    manual_dir: Optional[epath.PathLike] = None,
    builder_config: Optional[tfds.core.BuilderConfig] = None,
    max_videos: int = 0,
    max_expressions: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[EvalExpression]:
    """Yields one EvalExpression per (video, expression) of `split`.

    `manual_dir`: build the dataset from this raw layout first if it is not prepared yet.
    `builder_config`: e.g. `pipeline.builder_config(name, config.data)` for a non-default held-out split.
    `max_videos` / `max_expressions`: only the first videos / expressions of that order (0: all).
    `shard_index` / `shard_count`: of those, only the videos at positions shard_index, shard_index +
    shard_count, ... (one process's share of an evaluation; only its videos are decoded).
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if manual_dir is not None:
        builders.build(name, manual_dir, data_dir, config=builder_config)
    source = builders.open_split(name, data_dir, split, config=builder_config)
    refcoco = builders.parse_name(name)[0] == "refcoco"
    if refcoco:
        records = _records_in_order(source, lambda r: int(r["image_id"]))
        expressions_of, items_of = (lambda r: r["sentences"]["sentence_id"]), _refcoco_items
    else:
        records = _records_in_order(source, lambda r: decode_text(r["video_id"]))
        expressions_of, items_of = (lambda r: r["expressions"]["exp_id"]), _video_items
    remaining = max_expressions or float("inf")
    for position, record in enumerate(records):
        if remaining <= 0 or (max_videos and position == max_videos):
            return
        count = int(min(len(expressions_of(record)), remaining))
        remaining -= count
        if position % shard_count == shard_index:
            yield from itertools.islice(items_of(record), count)


def _records_in_order(source, key) -> Iterator[dict]:
    """The records of a split sorted by `key(record)` (its video id or COCO image id)."""
    return (source[i] for i in sorted(range(len(source)), key=lambda i: key(source[i])))


def _video_items(record) -> Iterator[EvalExpression]:
    """One video's expressions, in exp_id order (sharing the decoded frames)."""
    frames = [decode_rgb(data) for data in record["frames"]]
    label_maps = (
        np.stack([decode_label_map(data) for data in record["label_maps"]]) if len(record["label_maps"]) else None
    )
    expressions = record["expressions"]
    for e, exp_id in enumerate(expressions["exp_id"]):
        obj_id = int(expressions["obj_id"][e])
        yield EvalExpression(
            video_id=decode_text(record["video_id"]),
            expression_id=decode_text(exp_id),
            sentence=decode_text(expressions["sentence"][e]),
            frame_names=[decode_text(n) for n in record["frame_names"]],
            frames=frames,
            masks=None if label_maps is None else label_maps == obj_id,
            obj_id=obj_id,
            annotator=int(expressions["annotator"][e]) if "annotator" in expressions else -1,
            kind=decode_text(expressions["kind"][e]) if "kind" in expressions else "",
        )


def _refcoco_items(record) -> Iterator[EvalExpression]:
    """One COCO image's sentences, one 1-frame item each."""
    frames = [decode_rgb(record["image"])]
    objects, sentences = record["objects"], record["sentences"]
    for s, sentence_id in enumerate(sentences["sentence_id"]):
        obj = int(sentences["object_index"][s])
        yield EvalExpression(
            video_id=str(int(record["image_id"])),
            expression_id=str(int(sentence_id)),
            sentence=decode_text(sentences["sentence"][s]),
            frame_names=[decode_text(record["file_name"])],
            frames=frames,
            masks=(decode_label_map(objects["mask"][obj]) > 0)[None],
            obj_id=int(objects["ann_id"][obj]),
        )
