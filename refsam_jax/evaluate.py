"""Evaluates a trained RefSAM: Ref-YouTube-VOS held-out J&F, Ref-DAVIS17 J&F, or the Ref-YouTube-VOS valid zip.

    python -m refsam_jax.evaluate --workdir runs/refytvos [--config configs/refytvos.py] --dataset ytvos_heldout
    python -m refsam_jax.evaluate --workdir runs/refytvos --dataset davis --data_dir tfds --manual_dir ref-davis
    python -m refsam_jax.evaluate --workdir runs/refytvos --dataset ytvos_valid

The model is the latest checkpoint of `<workdir>/checkpoints` (`--untrained`: the model as training
initialises it), built from `--config` or `<workdir>/config.json`. Its data settings (`config.data`, or the
synthetic data under `<workdir>/data` when `config.synthetic.enabled`) locate Ref-YouTube-VOS;
`--data_dir` / `--manual_dir` override them (Ref-DAVIS17 needs them: the training config names Ref-YTVOS).

Datasets (inference protocol in inference.py; masks are `logit > --threshold`):
  ytvos_heldout  train videos held out of training: J, F, J&F per expression (MeViS protocol,
                 DATASETS.md §1.6), reported as "local", never as Ref-YTVOS valid.
  davis          Ref-DAVIS17 valid: per expression set, each frame's objects merged into an index PNG (a
                 pixel goes to the object of highest logit above the threshold), scored with the official
                 unsupervised DAVIS J&F; the number is the mean over the 4 sets (DATASETS.md §2.3).
  ytvos_valid    Ref-YouTube-VOS valid: 0/255 PNGs for every expression and frame, zipped for the server.
Outputs go to `--out` (default `<workdir>/eval/<dataset>/step_<N>`): `predictions/`, `results.json`
and a per-expression (or per-object) CSV, or `submission.zip`.
"""

import itertools
import json
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Tuple

from absl import app
from absl import flags
from ml_collections import config_flags

from refsam_jax import paths

DATASETS = ("ytvos_heldout", "davis", "ytvos_valid")


def define_flags() -> dict:
    """The command line's flags (defined only when run as a program, so importing this module defines none)."""
    return {
        "workdir": flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/, config.json)."),
        "config": config_flags.DEFINE_config_file("config", None,
                                                  "Training config file (default: <workdir>/config.json)."),
        "dataset": flags.DEFINE_enum("dataset", "ytvos_heldout", DATASETS, "What to evaluate on."),
        "out": flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval/<dataset>/step_<N>)."),
        "untrained": flags.DEFINE_bool("untrained", False, "Evaluate the model at initialisation instead."),
        "data_dir": flags.DEFINE_string("data_dir", None, "TFDS data dir (default: config.data.data_dir)."),
        "manual_dir": flags.DEFINE_string("manual_dir", None, "Raw dataset folder (default: config.data.manual_dir)."),
        "threshold": flags.DEFINE_float("threshold", 0.0, "Mask = logit > threshold (official: 0.01 / 0.1)."),
        "chunk_size": flags.DEFINE_integer("chunk_size", 8, "Frames per model call."),
        "expression_batch": flags.DEFINE_integer("expression_batch", 4, "Expressions decoded together."),
        "max_videos": flags.DEFINE_integer("max_videos", 0, "Evaluate only the first N videos (0: all)."),
    }


def video_groups(items: Iterator, max_videos: int = 0) -> Iterator[Tuple[str, List]]:
    """`iterate_eval_videos` items (one per expression, a video's together) -> (video id, its items)."""
    groups = itertools.groupby(items, key=lambda item: item.video_id)
    if max_videos:
        groups = itertools.islice(groups, max_videos)
    for video, group in groups:
        yield video, list(group)


def evaluate_ytvos_heldout(segmenter, data_dir: str, out_dir: str, *, split: str = "heldout",
                           manual_dir: Optional[str] = None, builder_config=None, threshold: float = 0.0,
                           max_videos: int = 0):
    """J, F, J&F of `segmenter` on the Ref-YouTube-VOS `split` (with ground truth); writes the 0/255 masks
    to `<out_dir>/<video>/<exp_id>/<frame>.png`. `manual_dir`: the raw data, to build the dataset if it is
    not built yet; `builder_config`: a non-default held-out split (`data.pipeline.builder_config`).
    Returns an `evaluation.ref_ytvos.YtvosResult`."""
    import numpy as np
    import tqdm

    from refsam_jax.data import iterate_eval_videos
    from refsam_jax.evaluation import save_binary_mask_png
    from refsam_jax.evaluation.metrics import boundary_f, jaccard
    from refsam_jax.evaluation.ref_ytvos import ExpressionScore, YtvosResult

    scores = []
    items = iterate_eval_videos("ref_youtube_vos", data_dir, split, manual_dir=manual_dir,
                                builder_config=builder_config)
    for video, expressions in tqdm.tqdm(video_groups(items, max_videos), unit="video", desc=split, file=sys.stderr):
        first = expressions[0]
        j = np.zeros((len(expressions), len(first.frame_names)))
        f = np.zeros_like(j)
        for t, logits in segmenter.segment(first.frames, [e.sentence for e in expressions]):
            for e, item in enumerate(expressions):
                prediction = logits[e] > threshold
                save_binary_mask_png(prediction, os.path.join(out_dir, video, item.expression_id,
                                                              f"{item.frame_names[t]}.png"))
                j[e, t] = jaccard(item.masks[t], prediction)
                f[e, t] = boundary_f(item.masks[t], prediction)
        scores += [ExpressionScore(video, item.expression_id, item.obj_id, float(j[e].mean()), float(f[e].mean()),
                                   len(item.frame_names)) for e, item in enumerate(expressions)]
    if not scores:
        raise ValueError(f"split {split!r} of ref_youtube_vos in {data_dir} has no expressions")
    return YtvosResult(scores, [])


def davis_expression_set(item) -> int:
    """Ref-DAVIS17 expression set 0..3: annotator 1/2 x first-frame/full-video (DATASETS.md §2.3)."""
    return 2 * item.annotator + (item.kind == "full_video")


def evaluate_davis(segmenter, data_dir: str, manual_dir: str, out_dir: str, *, threshold: float = 0.0,
                   max_videos: int = 0):
    """Ref-DAVIS17 valid: index PNGs `<out_dir>/<set>/<video>/<frame>.png`, scored against
    `<manual_dir>/DAVIS` with the official protocol. Returns an `evaluation.ref_davis.RefDavisResult`."""
    import numpy as np
    import tqdm

    from refsam_jax.data import iterate_eval_videos
    from refsam_jax.evaluation.ref_davis import ANNOTATORS, evaluate_ref_davis, write_davis_prediction

    videos = []
    items = iterate_eval_videos("ref_davis17", data_dir, "valid", manual_dir=manual_dir)
    for video, expressions in tqdm.tqdm(video_groups(items, max_videos), unit="video", desc="davis", file=sys.stderr):
        videos.append(video)
        object_ids = sorted({item.obj_id for item in expressions})
        first = expressions[0]
        for t, logits in segmenter.segment(first.frames, [e.sentence for e in expressions]):
            for expression_set in ANNOTATORS:
                # Object k of the video (in obj_id order) gets id k + 1. The background scores the threshold, so
                # a pixel goes to the object of highest logit if that logit > threshold (RefSAM: 0.1).
                scores = {object_ids.index(item.obj_id) + 1: logits[e] for e, item in enumerate(expressions)
                          if davis_expression_set(item) == expression_set}
                if scores:
                    write_davis_prediction(out_dir, expression_set, video, first.frame_names[t], scores,
                                           background=threshold, zero_below=-np.inf)
    if not videos:
        raise ValueError(f"ref_davis17 valid in {data_dir} has no videos")
    return evaluate_ref_davis(out_dir, os.path.join(manual_dir, "DAVIS"), sequences=videos)


def predict_ytvos_valid(segmenter, data_dir: str, manual_dir: str, out_dir: str, *, builder_config=None,
                        threshold: float = 0.0, expected_num_videos: Optional[int] = 202):
    """Ref-YouTube-VOS valid: masks `<out_dir>/predictions/<video>/<exp_id>/<frame>.png` for every expression
    and frame, checked and zipped into `<out_dir>/submission.zip` (the dataset is built from `manual_dir`
    if it is not built yet). Returns the `SubmissionReport`."""
    import tqdm

    from refsam_jax.data import iterate_eval_videos
    from refsam_jax.evaluation import save_binary_mask_png
    from refsam_jax.evaluation.ref_ytvos import write_submission_zip

    predictions = os.path.join(out_dir, "predictions")
    items = iterate_eval_videos("ref_youtube_vos", data_dir, "valid", manual_dir=manual_dir,
                                builder_config=builder_config)
    for video, expressions in tqdm.tqdm(video_groups(items), unit="video", desc="valid", file=sys.stderr):
        first = expressions[0]
        for t, logits in segmenter.segment(first.frames, [e.sentence for e in expressions]):
            for e, item in enumerate(expressions):
                path = os.path.join(predictions, video, item.expression_id, f"{first.frame_names[t]}.png")
                save_binary_mask_png(logits[e] > threshold, path)
    meta = os.path.join(manual_dir, "meta_expressions")
    return write_submission_zip(predictions, os.path.join(meta, "valid", "meta_expressions.json"),
                                os.path.join(meta, "test", "meta_expressions.json"),
                                os.path.join(out_dir, "submission.zip"),
                                images_root=os.path.join(manual_dir, "valid", "JPEGImages"),
                                expected_num_videos=expected_num_videos)


def data_locations(config, workdir: str, data_dir: Optional[str], manual_dir: Optional[str]) -> Tuple[str, str]:
    """(TFDS data dir, raw folder): the flags, else the config's, else the synthetic data of the run."""
    if config.get("synthetic") and config.synthetic.enabled and not (data_dir or config.data.data_dir):
        from refsam_jax.train.task import write_synthetic_data

        write_synthetic_data(config, workdir)  # Already written by training: only locates (and checks) it.
    return data_dir or config.data.data_dir, manual_dir or config.data.manual_dir


def evaluate(loaded, dataset: str, workdir: str, out_dir: Optional[str] = None, *,
             data_dir: Optional[str] = None, manual_dir: Optional[str] = None, threshold: float = 0.0,
             chunk_size: int = 8, expression_batch: int = 4, max_videos: int = 0) -> Dict[str, object]:
    """Runs one evaluation of `loaded` (an `inference.LoadedModel`); writes its outputs and returns a summary."""
    from refsam_jax import inference

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    config = loaded.config
    out_dir = out_dir or os.path.join(workdir, "eval", dataset, f"step_{loaded.step}")
    data_dir, manual_dir = data_locations(config, workdir, data_dir, manual_dir)
    if not data_dir:
        raise ValueError("no TFDS data dir: set --data_dir (or config.data.data_dir)")
    if dataset in ("davis", "ytvos_valid") and not manual_dir:
        raise ValueError(f"--dataset {dataset} needs the raw dataset folder: set --manual_dir")
    if dataset == "ytvos_heldout" and config.data.name != "ref_youtube_vos":
        raise ValueError(f"ytvos_heldout is the held-out split of a ref_youtube_vos training run; this config "
                         f"trains on {config.data.name!r}")
    from refsam_jax.data.pipeline import builder_config

    ytvos_config = builder_config("ref_youtube_vos", config.data)  # The run's held-out fraction and seed.
    os.makedirs(out_dir, exist_ok=True)
    segmenter = inference.VideoSegmenter(loaded.model, loaded.text_encoder, chunk_size=chunk_size,
                                         expression_batch=expression_batch)
    start = time.perf_counter()
    summary: Dict[str, object] = {"dataset": dataset, "model": loaded.source, "step": loaded.step,
                                  "threshold": threshold, "out": out_dir}
    if dataset == "ytvos_heldout":
        result = evaluate_ytvos_heldout(segmenter, data_dir, os.path.join(out_dir, "predictions"),
                                        manual_dir=manual_dir or None, builder_config=ytvos_config,
                                        threshold=threshold, max_videos=max_videos)
        result.write_csv(os.path.join(out_dir, "per_expression.csv"))
        summary.update(result.summary())
    elif dataset == "davis":
        result = evaluate_davis(segmenter, data_dir, manual_dir, os.path.join(out_dir, "predictions"),
                                threshold=threshold, max_videos=max_videos)
        result.write_csv(os.path.join(out_dir, "per_object.csv"))
        summary.update(result.summary())
    else:
        synthetic = bool(config.get("synthetic") and config.synthetic.enabled)
        report = predict_ytvos_valid(segmenter, data_dir, manual_dir, out_dir, builder_config=ytvos_config,
                                     threshold=threshold, expected_num_videos=None if synthetic else 202)
        summary.update(report.summary(), zip=os.path.join(out_dir, "submission.zip"))
    summary["seconds"] = time.perf_counter() - start
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def format_summary(summary: Dict[str, object]) -> str:
    """One line: J&F, J, F and counts (or the zip written)."""
    if "JF" in summary:
        counts = (f"{summary['num_expressions']} expressions, {summary['num_videos']} videos"
                  if "num_expressions" in summary else f"{summary['num_sequences']} videos, "
                  f"{summary['num_objects']} objects x 4 expression sets")
        return (f"{summary['dataset']} ({summary['model']}): J&F {summary['JF']:.4f}  J {summary['J']:.4f}  "
                f"F {summary['F']:.4f}  ({counts}, {summary['seconds']:.1f} s)")
    return (f"{summary['dataset']} ({summary['model']}): wrote {summary['zip']} ({summary['num_files']} masks, "
            f"{summary['num_videos']} videos, {summary['seconds']:.1f} s)")


def main(argv, flag_values: dict):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    value = {name: holder.value for name, holder in flag_values.items()}
    value.update({name: paths.absolute(value[name]) for name in ("workdir", "out", "data_dir", "manual_dir")
                  if value[name]})
    if not value["workdir"]:
        raise app.UsageError("--workdir is required")
    from refsam_jax import inference

    try:
        checkpoint_dir, workdir = inference.checkpoint_location(value["workdir"])
        config = inference.training_config(value["config"], workdir)
        loaded = inference.load_model(config, None if value["untrained"] else checkpoint_dir)
        summary = evaluate(loaded, value["dataset"], workdir or value["workdir"], value["out"],
                           data_dir=value["data_dir"], manual_dir=value["manual_dir"], threshold=value["threshold"],
                           chunk_size=value["chunk_size"], expression_batch=value["expression_batch"],
                           max_videos=value["max_videos"])
    except (inference.VideoInputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(format_summary(summary))
    print(f"outputs: {summary['out']}")


if __name__ == "__main__":
    _flag_values = define_flags()
    app.run(lambda argv: main(argv, _flag_values))
