"""Scorers that run a video segmenter over a dataset split: Ref-YouTube-VOS held-out J&F, Ref-DAVIS17 J&F, and
the Ref-YouTube-VOS valid submission.

A segmenter is anything with `stream(frames, sentences, chains=None)` yielding `(t, logits [E, H, W])` per frame and a
`threshold` (`refsam_jax.segmenter.Segmenter`); masks are `logits > segmenter.threshold`. Nothing here knows
the model.

In a multi-process run every process calls the scorer: each segments its share of the videos (every
process_count()-th), and the scores are gathered, in the order of a one-process run, so every process
returns the numbers one process would. Prediction files go to `out_dir` on each host; the valid
submission zip (written by process 0) needs `out_dir` on a file system every host writes to.
"""

import dataclasses
import itertools
import os
import sys
from typing import Iterator, List, Optional, Tuple

import jax
import numpy as np
import tqdm

from refsam_jax import processes
from refsam_jax.data import builders, iterate_eval_videos
from refsam_jax.evaluation import save_binary_mask_png
from refsam_jax.evaluation.metrics import boundary_f, jaccard
from refsam_jax.evaluation.ref_davis import ANNOTATORS, RefDavisResult, score_ref_davis, write_davis_prediction
from refsam_jax.evaluation.ref_ytvos import (
    ExpressionScore,
    SubmissionReport,
    YtvosResult,
    load_meta_expressions,
    valid_video_ids,
    write_submission_zip,
)


def video_groups(items: Iterator) -> Iterator[Tuple[str, List]]:
    """`iterate_eval_videos` items (one per expression, a video's together) -> (video id, its items)."""
    for video, group in itertools.groupby(items, key=lambda item: item.video_id):
        yield video, list(group)


class EmptyPrediction:
    """A segmenter that predicts no mask anywhere: the floor a model must beat (frames where the referred object
    is absent score J = F = 1, so an empty prediction does not score 0)."""

    threshold = 0.0

    def stream(self, frames, sentences) -> Iterator[Tuple[int, np.ndarray]]:
        for t, frame in enumerate(frames):
            yield t, np.full((len(sentences), *np.shape(frame)[:2]), -1.0, np.float32)


def _my_videos(name: str, data_dir: str, split: str, desc: str, *, manual_dir=None, builder_config=None,
               progress: bool = True, **limits) -> Iterator[Tuple[str, List]]:
    """(video id, its items) of this process's share of the split (`iterate_eval_videos` limits), with a
    progress bar on process 0. With `manual_dir`, process 0 builds the dataset first if needed."""
    if manual_dir is not None:
        processes.process_zero_first(lambda: builders.build(name, manual_dir, data_dir, config=builder_config),
                                     f"{name} built", timeout_s=24 * 3600)
    items = iterate_eval_videos(name, data_dir, split, builder_config=builder_config,
                                shard_index=jax.process_index(), shard_count=jax.process_count(), **limits)
    return tqdm.tqdm(video_groups(items), unit="video", desc=desc, file=sys.stderr,
                     disable=not progress or jax.process_index() > 0)


def evaluate_ytvos_heldout(segmenter, data_dir: str, out_dir: Optional[str] = None, *, split: str = "heldout",
                           manual_dir: Optional[str] = None, builder_config=None, max_videos: int = 0,
                           max_expressions: int = 0, progress: bool = True) -> YtvosResult:
    """J, F, J&F of `segmenter` on the Ref-YouTube-VOS `split` (with ground truth); with `out_dir`, writes the
    0/255 masks to `<out_dir>/<video>/<exp_id>/<frame>.png`. `manual_dir`: the raw data, to build the dataset
    if it is not built yet; `builder_config`: a non-default held-out split (`data.pipeline.builder_config`);
    `max_videos` / `max_expressions`: only the first ones (0: all)."""
    scores = []
    videos = _my_videos("ref_youtube_vos", data_dir, split, split, manual_dir=manual_dir,
                        builder_config=builder_config, progress=progress, max_videos=max_videos,
                        max_expressions=max_expressions)
    for video, expressions in videos:
        first = expressions[0]
        j = np.zeros((len(expressions), len(first.frame_names)))
        f = np.zeros_like(j)
        for t, logits in segmenter.stream(first.frames, [e.sentence for e in expressions]):
            for e, item in enumerate(expressions):
                prediction = logits[e] > segmenter.threshold
                if out_dir is not None:
                    save_binary_mask_png(prediction, os.path.join(out_dir, video, item.expression_id,
                                                                  f"{item.frame_names[t]}.png"))
                j[e, t] = jaccard(item.masks[t], prediction)
                f[e, t] = boundary_f(item.masks[t], prediction)
        scores += [ExpressionScore(video, item.expression_id, item.obj_id, float(j[e].mean()), float(f[e].mean()),
                                   len(item.frame_names)) for e, item in enumerate(expressions)]
    gathered = processes.allgather("ytvos scores", [dataclasses.astuple(score) for score in scores])
    scores = sorted((ExpressionScore(*row) for part in gathered for row in part), key=lambda score: score.video)
    if not scores:
        raise ValueError(f"split {split!r} of ref_youtube_vos in {data_dir} has no expressions")
    return YtvosResult(scores, [])


def davis_expression_set(item) -> int:
    """Ref-DAVIS17 expression set 0..3: annotator 1/2 x first-frame/full-video (DATASETS.md §2.3)."""
    return 2 * item.annotator + (item.kind == "full_video")


def davis_track_chains(expressions) -> List[List[int]]:
    """The official script's shared track state (spec §9.5): per object (in obj_id order), its expressions in
    set order, as indices into `expressions`."""
    objects = sorted({item.obj_id for item in expressions})
    return [sorted((e for e, item in enumerate(expressions) if item.obj_id == obj_id),
                   key=lambda e: davis_expression_set(expressions[e])) for obj_id in objects]


def evaluate_davis(segmenter, data_dir: str, manual_dir: str, out_dir: str, *, max_videos: int = 0,
                   shared_track: bool = False):
    """Ref-DAVIS17 valid: index PNGs `<out_dir>/<set>/<video>/<frame>.png`, scored against
    `<manual_dir>/DAVIS` with the official protocol. Returns an `evaluation.ref_davis.RefDavisResult`.
    `shared_track`: an object's expressions share one track state, updated by each in set order at every
    frame (`davis_track_chains`, the official script); else each expression has its own."""
    videos = []
    for video, expressions in _my_videos("ref_davis17", data_dir, "valid", "davis", manual_dir=manual_dir,
                                         max_videos=max_videos):
        videos.append(video)
        object_ids = sorted({item.obj_id for item in expressions})
        first = expressions[0]
        chains = davis_track_chains(expressions) if shared_track else None
        for t, logits in segmenter.stream(first.frames, [e.sentence for e in expressions], chains):
            for expression_set in ANNOTATORS:
                # Object k of the video (in obj_id order) gets id k + 1. The background scores the threshold, so
                # a pixel goes to the object of highest logit if that logit > threshold (RefSAM: 0.1).
                scores = {object_ids.index(item.obj_id) + 1: logits[e] for e, item in enumerate(expressions)
                          if davis_expression_set(item) == expression_set}
                if scores:
                    write_davis_prediction(out_dir, expression_set, video, first.frame_names[t], scores,
                                           background=segmenter.threshold, zero_below=-np.inf)
    mine = score_ref_davis(out_dir, os.path.join(manual_dir, "DAVIS"), videos)
    result = RefDavisResult.merge([RefDavisResult.from_json(part)
                                   for part in processes.allgather("davis scores", mine.to_json())])
    if not result.sequences:
        raise ValueError(f"ref_davis17 valid in {data_dir} has no videos")
    return result.check()


def predict_ytvos_valid(segmenter, data_dir: str, manual_dir: str, out_dir: str, *, builder_config=None,
                        expected_num_videos: Optional[int] = 202):
    """Ref-YouTube-VOS valid: masks `<out_dir>/predictions/<video>/<exp_id>/<frame>.png` for every expression
    and frame, checked and zipped into `<out_dir>/submission.zip` (the dataset is built from `manual_dir`
    if it is not built yet). The video count is checked before any inference. Returns the `SubmissionReport`."""
    meta = os.path.join(manual_dir, "meta_expressions")
    valid_meta = os.path.join(meta, "valid", "meta_expressions.json")
    test_meta = os.path.join(meta, "test", "meta_expressions.json")
    valid_video_ids(load_meta_expressions(valid_meta), load_meta_expressions(test_meta), expected_num_videos)
    predictions = os.path.join(out_dir, "predictions")
    for video, expressions in _my_videos("ref_youtube_vos", data_dir, "valid", "valid", manual_dir=manual_dir,
                                         builder_config=builder_config):
        first = expressions[0]
        for t, logits in segmenter.stream(first.frames, [e.sentence for e in expressions]):
            for e, item in enumerate(expressions):
                path = os.path.join(predictions, video, item.expression_id, f"{first.frame_names[t]}.png")
                save_binary_mask_png(logits[e] > segmenter.threshold, path)
    processes.barrier("valid predictions written", timeout_s=24 * 3600)
    report = None
    if jax.process_index() == 0:
        report = write_submission_zip(predictions, valid_meta, test_meta, os.path.join(out_dir, "submission.zip"),
                                      images_root=os.path.join(manual_dir, "valid", "JPEGImages"),
                                      expected_num_videos=expected_num_videos)
    return SubmissionReport(**processes.allgather("submission", report and dataclasses.asdict(report))[0])
